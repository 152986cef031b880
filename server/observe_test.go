package server

import (
	"context"
	"encoding/hex"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/server/registry"
)

// TestOnHandshake: a node with Config.OnHandshake learns each client it
// answers, and from where, before the client's first packet arrives.
func TestOnHandshake(t *testing.T) {
	st, err := registry.OpenBolt(filepath.Join(t.TempDir(), "reg.db"), registry.DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	binds := bindtest.NewChannelBinds()
	sk, _ := wgtypes.GeneratePrivateKey()
	type seen struct {
		c   registry.Client
		src netip.AddrPort
		at  time.Time
	}
	var mu sync.Mutex
	var got []seen
	serverTUN := tuntest.NewChannelTUN()
	n, err := New(context.Background(), Config{
		Name: "wedgetest", PrivateKey: sk, Store: st, MTU: 1420,
		TUN: serverTUN.TUN(), Bind: binds[1],
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnHandshake: func(c registry.Client, src netip.AddrPort) {
			mu.Lock()
			got = append(got, seen{c, src, time.Now()})
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ck, _ := wgtypes.GeneratePrivateKey()
	reg, err := n.Register(context.Background(), ck.PublicKey(), registry.Tags{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := n.dev.IpcGet()
	port := regexp.MustCompile(`listen_port=(\d+)`).FindStringSubmatch(cfg)[1]
	clientTUN := tuntest.NewChannelTUN()
	client := device.NewDevice(clientTUN.TUN(), binds[0], device.NewLogger(device.LogLevelSilent, ""))
	defer client.Close()
	hexk := func(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }
	if err := client.IpcSet("private_key=" + hexk(ck) + "\nlisten_port=0\npublic_key=" + hexk(sk.PublicKey()) +
		"\nallowed_ip=0.0.0.0/0\nendpoint=127.0.0.1:" + port + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := client.Up(); err != nil {
		t.Fatal(err)
	}
	clientTUN.Outbound <- tuntest.Ping(netip.MustParseAddr("192.0.2.9"), reg.V4)
	var arrived time.Time
	select {
	case <-serverTUN.Inbound:
		arrived = time.Now()
	case <-time.After(5 * time.Second):
		t.Fatal("the client's packet did not arrive")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("OnHandshake called %d times, want once", len(got))
	}
	g := got[0]
	if g.c.ID != reg.ID || g.c.ClientID != reg.ClientID {
		t.Errorf("OnHandshake got client %s (%v), want %s (%v)", g.c.ID, g.c.ClientID, reg.ID, reg.ClientID)
	}
	// bindtest delivers the client's messages from 127.0.0.1:4.
	if g.src != netip.MustParseAddrPort("127.0.0.1:4") {
		t.Errorf("OnHandshake got source %v, want 127.0.0.1:4", g.src)
	}
	if g.at.After(arrived) {
		t.Error("OnHandshake ran after the client's first packet arrived")
	}
	if n.Status().Indexes != nil {
		t.Error("observing handshakes turned the indexes section on")
	}
	if c := n.Counters(); c.Bind.ResponsesSent != 1 || c.Bind.InitiationsSent != 0 || c.Active != 1 {
		t.Errorf("counters after one handshake the client started: %d responses, %d initiations sent, %d active; want 1, 0, 1",
			c.Bind.ResponsesSent, c.Bind.InitiationsSent, c.Active)
	}
}
