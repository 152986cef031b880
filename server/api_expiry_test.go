package server

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/server/registry"
)

// TestExpiry: registrations still awaiting their first handshake after
// the expiry are removed from the store and the device; one whose first
// handshake was recorded stays, and so do registrations made before
// expiry existed (not awaiting).
func TestExpiry(t *testing.T) {
	n, st := newTestNode(t)
	ctx := context.Background()
	reg := func(awaiting bool) registry.Client {
		t.Helper()
		pub, _ := ParsePublicKey(pubKey(t))
		c, err := n.RegisterClient(ctx, registry.Client{PublicKey: pub, AwaitingHandshake: awaiting})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	used, orphan, old, fresh := reg(true), reg(true), reg(false), registry.Client{}
	holdPeer(t, n, used, orphan, old)
	// used handshakes; the node records it once.
	hs := time.Now().Add(-time.Minute)
	n.markFrom([]peerState{{PublicKey: used.PublicKey, LastHandshake: hs}, {PublicKey: orphan.PublicKey}})
	got, _ := st.Get(ctx, used.ID)
	if got.AwaitingHandshake || !got.FirstHandshake.Equal(hs.UTC().Truncate(time.Second)) {
		t.Fatalf("after its handshake: %+v", got)
	}
	if got, _ := st.Get(ctx, orphan.ID); !got.AwaitingHandshake || !got.FirstHandshake.IsZero() {
		t.Fatalf("a peer without a handshake was marked: %+v", got)
	}
	// Recorded once: a later handshake does not write again.
	n.markFrom([]peerState{{PublicKey: used.PublicKey, LastHandshake: time.Now()}})
	if again, _ := st.Get(ctx, used.ID); again != got {
		t.Fatalf("a second handshake rewrote the record: %+v → %+v", got, again)
	}
	// Not yet old enough: nothing goes.
	n.expire(time.Now(), time.Hour)
	if all, _ := st.List(ctx); len(all) != 3 {
		t.Fatalf("%d registrations after an early sweep, want 3", len(all))
	}
	fresh = reg(true)
	holdPeer(t, n, fresh)
	// An hour later (the sweep's clock moved), with an expiry of 30 min:
	// the orphan and the fresh one go, from the store and the device.
	n.expire(time.Now().Add(time.Hour), 30*time.Minute)
	for _, c := range []registry.Client{orphan, fresh} {
		if _, err := st.Get(ctx, c.ID); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("expired registration %s still stored: %v", c.ID, err)
		}
		if hasPeer(n, c.PublicKey) {
			t.Errorf("expired registration %s still in the device", c.ID)
		}
	}
	for _, c := range []registry.Client{used, old} {
		if _, err := st.Get(ctx, c.ID); err != nil {
			t.Errorf("registration %s (awaiting %v) removed: %v", c.ID, c.AwaitingHandshake, err)
		}
		if !hasPeer(n, c.PublicKey) {
			t.Errorf("registration %s removed from the device", c.ID)
		}
	}
}

// TestExpiryRuns: StartExpiry's loop records a real handshake the
// device reports and, on its own, removes the registration that never
// handshook while keeping the one that did.
func TestExpiryRuns(t *testing.T) {
	var log syncBuffer
	binds := bindtest.NewChannelBinds()
	n, st := newTestNode(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&log, nil))
		c.Bind = binds[1]
	})
	ctx := context.Background()
	ck, _ := wgtypes.GeneratePrivateKey()
	used, err := n.RegisterClient(ctx, registry.Client{PublicKey: ck.PublicKey(), AwaitingHandshake: true})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := ParsePublicKey(pubKey(t))
	orphan, err := n.RegisterClient(ctx, registry.Client{PublicKey: pub, AwaitingHandshake: true})
	if err != nil {
		t.Fatal(err)
	}
	// used handshakes (a client device over bindtest, as in TestOnHandshake).
	cfg, _ := n.dev.IpcGet()
	port := regexp.MustCompile(`listen_port=(\d+)`).FindStringSubmatch(cfg)[1]
	clientTUN := tuntest.NewChannelTUN()
	client := device.NewDevice(clientTUN.TUN(), binds[0], device.NewLogger(device.LogLevelSilent, ""))
	defer client.Close()
	if err := client.IpcSet("private_key=" + hexKey(ck) + "\nlisten_port=0\npublic_key=" + hexKey(n.PublicKey()) +
		"\nallowed_ip=0.0.0.0/0\nendpoint=127.0.0.1:" + port + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := client.Up(); err != nil {
		t.Fatal(err)
	}
	peers, _ := n.peers()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		clientTUN.Outbound <- tuntest.Ping(netip.MustParseAddr("192.0.2.9"), used.V4)
		peers, _ = n.peers()
		if hs := handshakeOf(peers, used.PublicKey); !hs.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client did not handshake")
		}
	}
	n.StartExpiry(ExpiryConfig{After: time.Second, Every: 100 * time.Millisecond, MarkEvery: 50 * time.Millisecond})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := st.Get(ctx, orphan.ID); errors.Is(err, registry.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the orphan registration was not removed")
		}
	}
	got, err := st.Get(ctx, used.ID)
	if err != nil || got.AwaitingHandshake || got.FirstHandshake.IsZero() {
		t.Fatalf("the client that handshook: %+v, %v; want it kept with its first handshake recorded", got, err)
	}
	// The line is logged just after the store's delete, which the loop
	// above may see first.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(log.String(), "no handshake since it was made"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("no log line for the removal:\n%s", log.String())
			break
		}
	}
}

func handshakeOf(peers []peerState, pub wgtypes.Key) time.Time {
	for _, p := range peers {
		if p.PublicKey == pub {
			return p.LastHandshake
		}
	}
	return time.Time{}
}
