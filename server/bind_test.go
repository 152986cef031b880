package server

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"regexp"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
)

// stampBind is what a WARP-style client does: stamp the ClientID into every
// message it sends, after wireguard-go computed MAC1.
type stampBind struct {
	conn.Bind
	id clientid.ID
}

func (s *stampBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	for _, b := range bufs {
		clientid.Stamp(b, s.id)
	}
	return s.Bind.Send(bufs, ep)
}

type devPair struct {
	client, server       *device.Device
	clientTUN, serverTUN *tuntest.ChannelTUN
}

// newPair brings up a client and a server device over in-memory binds; wrap
// decorates each side's Bind.
func newPair(t *testing.T, wrapClient, wrapServer func(conn.Bind) conn.Bind) devPair {
	t.Helper()
	binds := bindtest.NewChannelBinds()
	ck, _ := wgtypes.GeneratePrivateKey()
	sk, _ := wgtypes.GeneratePrivateKey()
	hexk := func(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }
	var p devPair
	p.clientTUN, p.serverTUN = tuntest.NewChannelTUN(), tuntest.NewChannelTUN()
	quiet := device.NewLogger(device.LogLevelSilent, "")
	p.client = device.NewDevice(p.clientTUN.TUN(), wrapClient(binds[0]), quiet)
	p.server = device.NewDevice(p.serverTUN.TUN(), wrapServer(binds[1]), quiet)
	t.Cleanup(p.client.Close)
	t.Cleanup(p.server.Close)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(p.server.IpcSet("private_key=" + hexk(sk) + "\nlisten_port=0\npublic_key=" + hexk(ck.PublicKey()) + "\nallowed_ip=1.0.0.1/32\n"))
	must(p.server.Up())
	// bindtest picks the server's port at Open; the client must aim at it.
	cfg, err := p.server.IpcGet()
	must(err)
	port := regexp.MustCompile(`listen_port=(\d+)`).FindStringSubmatch(cfg)[1]
	must(p.client.IpcSet("private_key=" + hexk(ck) + "\nlisten_port=0\npublic_key=" + hexk(sk.PublicKey()) + "\nallowed_ip=1.0.0.2/32\nendpoint=127.0.0.1:" + port + "\n"))
	must(p.client.Up())
	return p
}

// ping sends one packet client → server and one back; it reports whether
// both arrived.
func (p devPair) ping(t *testing.T) bool {
	t.Helper()
	src, dst := netip.MustParseAddr("1.0.0.1"), netip.MustParseAddr("1.0.0.2")
	req := tuntest.Ping(dst, src)
	p.clientTUN.Outbound <- req
	select {
	case got := <-p.serverTUN.Inbound:
		if !bytes.Equal(got, req) {
			t.Fatalf("server got % x, want % x", got, req)
		}
	case <-time.After(3 * time.Second):
		return false
	}
	resp := tuntest.Ping(src, dst)
	p.serverTUN.Outbound <- resp
	select {
	case got := <-p.clientTUN.Inbound:
		return bytes.Equal(got, resp)
	case <-time.After(3 * time.Second):
		return false
	}
}

func TestBindStampedClient(t *testing.T) {
	var sb *Bind
	const id clientid.ID = 0xabc123
	p := newPair(t,
		func(b conn.Bind) conn.Bind { return &stampBind{Bind: b, id: id} },
		func(b conn.Bind) conn.Bind { sb = NewBind(b); return sb })
	if !p.ping(t) {
		t.Fatal("stamped client could not reach the server through Bind")
	}
	stamped, unstamped := sb.Counts()
	if stamped < 2 || unstamped != 0 {
		t.Errorf("counts: stamped %d, unstamped %d; want ≥2 (initiation, data) and 0", stamped, unstamped)
	}
	// bindtest delivers the client's messages from endpoint 4 ("127.0.0.1:4").
	if got := sb.Seen(netip.MustParseAddrPort("127.0.0.1:4")); got != id {
		t.Errorf("Seen = %#x, want %#x", got, id)
	}
	if got := sb.Seen(netip.MustParseAddrPort("127.0.0.1:9")); got != 0 {
		t.Errorf("Seen(unknown) = %#x, want 0", got)
	}
}

func TestBindStandardClient(t *testing.T) {
	var sb *Bind
	p := newPair(t,
		func(b conn.Bind) conn.Bind { return b },
		func(b conn.Bind) conn.Bind { sb = NewBind(b); return sb })
	if !p.ping(t) {
		t.Fatal("standard client could not reach the server through Bind")
	}
	if stamped, unstamped := sb.Counts(); stamped != 0 || unstamped < 2 {
		t.Errorf("counts: stamped %d, unstamped %d; want 0 and ≥2", stamped, unstamped)
	}
}

// TestBindNeeded shows the wrapper is what makes stamped clients work: a
// stock wireguard-go server drops their messages.
func TestBindNeeded(t *testing.T) {
	p := newPair(t,
		func(b conn.Bind) conn.Bind { return &stampBind{Bind: b, id: 7} },
		func(b conn.Bind) conn.Bind { return b })
	if p.ping(t) {
		t.Fatal("a stock server accepted stamped messages; the test no longer shows why Bind exists")
	}
}

func TestBindReceiveAllocs(t *testing.T) {
	b := NewBind(nil)
	msgs := make([][]byte, 16)
	for i := range msgs {
		msgs[i] = make([]byte, 148)
		rand.Read(msgs[i])
		msgs[i][0] = 4
	}
	sizes := make([]int, len(msgs))
	eps := make([]conn.Endpoint, len(msgs))
	for i := range eps {
		eps[i] = &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("203.0.113.7:4000")}
	}
	inner := func(packets [][]byte, sz []int, ep []conn.Endpoint) (int, error) {
		for i := range packets {
			clientid.Stamp(packets[i], clientid.ID(i+1))
			sz[i] = len(packets[i])
		}
		return len(packets), nil
	}
	fn := b.wrap(inner)
	allocs := testing.AllocsPerRun(100, func() { fn(msgs, sizes, eps) })
	if allocs != 0 {
		t.Errorf("receive allocated %.1f times per batch, want 0", allocs)
	}
	for i, m := range msgs {
		if m[1]|m[2]|m[3] != 0 {
			t.Fatalf("message %d not zeroed: % x", i, m[:4])
		}
	}
	if got := b.Seen(netip.MustParseAddrPort("203.0.113.7:4000")); got != 16 {
		t.Errorf("Seen = %d, want 16 (the last stamped in the batch)", got)
	}
}
