package client

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/server"
)

const testID clientid.ID = 0xabc123

// captureBind records a copy of every message sent through it: it sits
// under the client Bind, so it sees what goes on the wire.
type captureBind struct {
	conn.Bind
	mu   sync.Mutex
	msgs [][]byte
}

func (c *captureBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	c.mu.Lock()
	for _, b := range bufs {
		c.msgs = append(c.msgs, append([]byte(nil), b...))
	}
	c.mu.Unlock()
	return c.Bind.Send(bufs, ep)
}

// byType returns how many captured messages of each type there are, and
// fails the test for any whose bytes 1..3 are not want.
func (c *captureBind) check(t *testing.T, want clientid.ID) map[byte]int {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := map[byte]int{}
	for _, m := range c.msgs {
		n[m[0]]++
		if got := clientid.Read(m); got != want {
			t.Errorf("type %d message sent with bytes 1..3 = %#x, want %#x", m[0], uint32(got), uint32(want))
		}
	}
	return n
}

type pair struct {
	client, server       *device.Device
	clientTUN, serverTUN *tuntest.ChannelTUN
	ck, sk               wgtypes.Key
}

var (
	clientIP = netip.MustParseAddr("1.0.0.1")
	serverIP = netip.MustParseAddr("1.0.0.2")
)

func hexKey(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }

// newPair brings up a client device on cb and a server device on sb.
// endpoint returns the client's peer endpoint given the server's port;
// serverPeer is extra UAPI for the server's peer (such as its endpoint).
func newPair(t *testing.T, cb, sb conn.Bind, serverPort uint16, endpoint func(port string) string) *pair {
	t.Helper()
	p := &pair{clientTUN: tuntest.NewChannelTUN(), serverTUN: tuntest.NewChannelTUN()}
	p.ck, _ = wgtypes.GeneratePrivateKey()
	p.sk, _ = wgtypes.GeneratePrivateKey()
	quiet := device.NewLogger(device.LogLevelSilent, "")
	p.client = device.NewDevice(p.clientTUN.TUN(), cb, quiet)
	p.server = device.NewDevice(p.serverTUN.TUN(), sb, quiet)
	t.Cleanup(p.client.Close)
	t.Cleanup(p.server.Close)
	must(t, p.server.IpcSet("private_key="+hexKey(p.sk)+"\nlisten_port="+itoa(serverPort)+"\npublic_key="+hexKey(p.ck.PublicKey())+"\nallowed_ip=1.0.0.1/32\n"))
	must(t, p.server.Up())
	port := listenPort(t, p.server)
	must(t, p.client.IpcSet("private_key="+hexKey(p.ck)+"\nlisten_port=0\npublic_key="+hexKey(p.sk.PublicKey())+"\nallowed_ip=1.0.0.2/32\nendpoint="+endpoint(port)+"\n"))
	must(t, p.client.Up())
	return p
}

func itoa(n uint16) string { return strconv.Itoa(int(n)) }

func listenPort(t *testing.T, d *device.Device) string {
	t.Helper()
	cfg, err := d.IpcGet()
	must(t, err)
	return regexp.MustCompile(`listen_port=(\d+)`).FindStringSubmatch(cfg)[1]
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// roundTrip sends a ping from one side and an answer from the other,
// retrying until both arrive or the deadline passes.
func (p *pair) roundTrip(t *testing.T, serverFirst bool, within time.Duration) bool {
	t.Helper()
	aTUN, bTUN, a, b := p.clientTUN, p.serverTUN, clientIP, serverIP
	if serverFirst {
		aTUN, bTUN, a, b = bTUN, aTUN, b, a
	}
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		req := tuntest.Ping(b, a)
		aTUN.Outbound <- req
		select {
		case got := <-bTUN.Inbound:
			if !bytes.Equal(got, req) {
				continue // a late copy of an earlier ping
			}
		case <-time.After(100 * time.Millisecond):
			continue
		}
		resp := tuntest.Ping(a, b)
		bTUN.Outbound <- resp
		select {
		case got := <-aTUN.Inbound:
			if bytes.Equal(got, resp) {
				return true
			}
		case <-time.After(time.Second):
		}
	}
	return false
}

func TestStampsEveryMessageType(t *testing.T) {
	binds := bindtest.NewChannelBinds()
	capture := &captureBind{Bind: binds[0]}
	cb, err := NewBind(capture, Options{ClientID: testID})
	must(t, err)
	sb := server.NewBind(binds[1])
	p := newPair(t, cb, sb, 0, func(port string) string { return "127.0.0.1:" + port })

	// Types 1 and 4: the client initiates.
	if !p.roundTrip(t, false, 5*time.Second) {
		t.Fatal("stamped client could not reach the server")
	}
	// Type 2: the server initiates a new handshake (it knows the client's
	// endpoint from the first one) after its keys are dropped.
	p.server.RemoveAllPeers()
	must(t, p.server.IpcSet("public_key="+hexKey(p.ck.PublicKey())+"\nallowed_ip=1.0.0.1/32\nendpoint=127.0.0.1:"+listenPort(t, p.client)+"\n"))
	if !p.roundTrip(t, true, 5*time.Second) {
		t.Fatal("server-initiated handshake with a stamped client failed")
	}
	n := capture.check(t, testID)
	for _, typ := range []byte{msgInitiation, msgResponse, msgTransport} {
		if n[typ] == 0 {
			t.Errorf("no type %d message sent (sent %v)", typ, n)
		}
	}
	stamped, unstamped := sb.Counts()
	if stamped < 4 || unstamped != 0 {
		t.Errorf("server Bind counts: stamped %d, unstamped %d; want ≥4 and 0", stamped, unstamped)
	}
	// bindtest delivers the client's messages from "127.0.0.1:4".
	if got := sb.Seen(netip.MustParseAddrPort("127.0.0.1:4")); got != testID {
		t.Errorf("server Bind saw ClientID %#x, want %#x", uint32(got), uint32(testID))
	}
}

// TestStampsCookieReply puts the client device under load (a flood of
// handshake initiations with a valid MAC1 and no MAC2) so it answers with
// cookie replies, and checks those are stamped too.
func TestStampsCookieReply(t *testing.T) {
	binds := bindtest.NewChannelBinds()
	capture := &captureBind{Bind: binds[0]}
	cb, err := NewBind(capture, Options{ClientID: testID})
	must(t, err)
	ck, _ := wgtypes.GeneratePrivateKey()
	d := device.NewDevice(tuntest.NewChannelTUN().TUN(), cb, device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(d.Close)
	must(t, d.IpcSet("private_key="+hexKey(ck)+"\nlisten_port=0\n"))
	must(t, d.Up())

	var gen device.CookieGenerator
	gen.Init(device.NoisePublicKey(ck.PublicKey()))
	const flood = 2000
	msgs := make([][]byte, flood)
	for i := range msgs {
		m := make([]byte, device.MessageInitiationSize)
		rand.Read(m)
		m[0], m[1], m[2], m[3] = msgInitiation, 0, 0, 0
		gen.AddMacs(m)
		msgs[i] = m
	}
	// binds[1] is the attacker; ChannelEndpoint(2) is the client's IPv4.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && capture.check(t, testID)[msgCookieReply] == 0 {
		for _, m := range msgs {
			binds[1].Send([][]byte{m}, bindtest.ChannelEndpoint(2))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := capture.check(t, testID); n[msgCookieReply] == 0 {
		t.Fatalf("the client sent no cookie reply under load (sent %v)", n)
	}
}

func TestStandardClient(t *testing.T) {
	binds := bindtest.NewChannelBinds()
	capture := &captureBind{Bind: binds[0]}
	cb, err := NewBind(capture, Options{})
	must(t, err)
	sb := server.NewBind(binds[1])
	p := newPair(t, cb, sb, 0, func(port string) string { return "127.0.0.1:" + port })
	if !p.roundTrip(t, false, 5*time.Second) {
		t.Fatal("standard client could not reach the server")
	}
	capture.check(t, 0)
	if stamped, unstamped := sb.Counts(); stamped != 0 || unstamped < 2 {
		t.Errorf("server Bind counts: stamped %d, unstamped %d; want 0 and ≥2", stamped, unstamped)
	}
}

// dualPair is a client and a server on a memNet, the client racing the
// server's IPv6 and IPv4 endpoints.
type dualPair struct {
	*pair
	net    *memNet
	cb     *Bind
	inner  *memBind
	server *server.Bind
}

var (
	srv4 = netip.MustParseAddrPort("192.0.2.1:51820")
	srv6 = netip.MustParseAddrPort("[2001:db8::1]:51820")
)

func newDualPair(t *testing.T, o Options, before func(*memNet)) *dualPair {
	t.Helper()
	n := newMemNet()
	if before != nil {
		before(n)
	}
	inner := n.newBind("203.0.113.2", "2001:db8:2::2")
	o.ClientID = testID
	o.Endpoints = []netip.AddrPort{srv4, srv6}
	cb, err := NewBind(inner, o)
	must(t, err)
	sb := server.NewBind(n.newBind("192.0.2.1", "2001:db8::1"))
	p := newPair(t, cb, sb, 51820, func(string) string { return DualEndpoint })
	return &dualPair{pair: p, net: n, cb: cb, inner: inner, server: sb}
}

func TestHappyEyeballsSettles(t *testing.T) {
	for _, c := range []struct {
		name       string
		blackhole  int
		wantFamily int
	}{
		{"IPv6 blackholed", 6, 4},
		{"IPv4 blackholed", 4, 6},
		{"both work: IPv6 preferred", 0, 6},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newDualPair(t, Options{HappyEyeballsDelay: 300 * time.Millisecond}, func(n *memNet) {
				if c.blackhole != 0 {
					n.blackhole(c.blackhole, true)
				}
			})
			start := time.Now()
			if !p.roundTrip(t, false, 5*time.Second) {
				t.Fatal("no round trip")
			}
			st := p.cb.State()
			if st.Family != c.wantFamily {
				t.Errorf("settled on IPv%d, want IPv%d (state %+v)", st.Family, c.wantFamily, st)
			}
			want := srv6
			if c.wantFamily == 4 {
				want = srv4
			}
			if st.Endpoint != want || st.Since.Before(start) {
				t.Errorf("state %+v, want endpoint %v settled after %v", st, want, start)
			}
			if cfg, _ := p.client.IpcGet(); !regexp.MustCompile(`endpoint=` + regexp.QuoteMeta(want.String())).MatchString(cfg) {
				t.Errorf("device reports the peer endpoint as\n%s\nwant %v", cfg, want)
			}
		})
	}
}

func TestHappyEyeballsFallback(t *testing.T) {
	p := newDualPair(t, Options{StaleAfter: 500 * time.Millisecond, HappyEyeballsDelay: 300 * time.Millisecond}, nil)
	if !p.roundTrip(t, false, 5*time.Second) {
		t.Fatal("no round trip")
	}
	if st := p.cb.State(); st.Family != 6 {
		t.Fatalf("settled on IPv%d, want 6", st.Family)
	}
	step := func(dead, want int) {
		t.Helper()
		p.net.blackhole(dead, true)
		p.net.blackhole(10-dead, false)
		if !p.roundTrip(t, false, 10*time.Second) {
			t.Fatalf("no round trip after IPv%d went dark", dead)
		}
		if st := p.cb.State(); st.Family != want {
			t.Fatalf("with IPv%d dark, settled on IPv%d, want IPv%d (%+v)", dead, st.Family, want, st)
		}
	}
	step(6, 4)
	step(4, 6)
	if st := p.cb.State(); st.Races != 2 || st.Reason == "" {
		t.Errorf("state %+v, want 2 races with a reason", st)
	}
	// The server attributed everything to the one ClientID.
	if stamped, unstamped := p.server.Counts(); stamped == 0 || unstamped != 0 {
		t.Errorf("server counts %d stamped, %d unstamped", stamped, unstamped)
	}
}

// TestSendUnreachableFallsBack: the settled family's socket says the
// network is unreachable (its route went away): the Bind races at once
// instead of waiting for the path to go stale.
func TestSendUnreachableFallsBack(t *testing.T) {
	p := newDualPair(t, Options{}, nil)
	if !p.roundTrip(t, false, 5*time.Second) || p.cb.State().Family != 6 {
		t.Fatalf("no round trip over IPv6 (%+v)", p.cb.State())
	}
	p.inner.unreach6.Store(true)
	if !p.roundTrip(t, false, 5*time.Second) {
		t.Fatal("no round trip after IPv6 became unreachable")
	}
	if st := p.cb.State(); st.Family != 4 {
		t.Errorf("state %+v, want IPv4", st)
	}
}

func lastHandshake(t *testing.T, d *device.Device) string {
	t.Helper()
	cfg, err := d.IpcGet()
	must(t, err)
	return regexp.MustCompile(`last_handshake_time_nsec=(\d+)`).FindStringSubmatch(cfg)[1]
}

func TestReconnectOnSendError(t *testing.T) {
	p := newDualPair(t, Options{}, nil)
	if !p.roundTrip(t, false, 5*time.Second) {
		t.Fatal("no round trip")
	}
	hs, port, opens := lastHandshake(t, p.client), p.cb.State().Port, p.inner.opens.Load()
	p.inner.failSends.Store(1)
	// One try: the failed send is retried on the new socket, nothing lost.
	if !p.roundTrip(t, false, 500*time.Millisecond) {
		t.Fatal("no round trip after a send failed with ENOBUFS")
	}
	st := p.cb.State()
	if st.Reopens != 1 || p.inner.opens.Load() != opens+1 || st.Port != port {
		t.Errorf("state %+v, inner opened %d more times; want 1 reopen on port %d", st, p.inner.opens.Load()-opens, port)
	}
	if st.Family != 6 || st.Races != 0 {
		t.Errorf("state %+v: the reopen changed the family or raced again", st)
	}
	if got := lastHandshake(t, p.client); got != hs {
		t.Errorf("handshake redone (%s → %s): the tunnel did not survive", hs, got)
	}
}

func TestReconnectOnReceiveError(t *testing.T) {
	p := newDualPair(t, Options{}, nil)
	if !p.roundTrip(t, false, 5*time.Second) {
		t.Fatal("no round trip")
	}
	p.inner.failRecvs.Store(1)
	// Wake a receiver so it sees the error.
	deadline := time.Now().Add(5 * time.Second)
	for p.cb.State().Reopens == 0 && time.Now().Before(deadline) {
		p.roundTrip(t, false, 200*time.Millisecond)
	}
	if st := p.cb.State(); st.Reopens != 1 {
		t.Fatalf("state %+v, want 1 reopen", st)
	}
	if !p.roundTrip(t, false, 5*time.Second) {
		t.Fatal("no round trip after a receive error")
	}
}

func TestCloseWhileReopening(t *testing.T) {
	n := newMemNet()
	inner := n.newBind("203.0.113.2", "2001:db8:2::2")
	b, err := NewBind(inner, Options{Endpoints: []netip.AddrPort{srv6}})
	must(t, err)
	fns, _, err := b.Open(0)
	must(t, err)
	done := make(chan error, len(fns))
	for _, fn := range fns {
		go func() {
			bufs, sizes, eps := [][]byte{make([]byte, 1500)}, make([]int, 1), make([]conn.Endpoint, 1)
			for {
				if _, err := fn(bufs, sizes, eps); err != nil {
					done <- err
					return
				}
			}
		}()
	}
	inner.failSends.Store(100)
	ep, _ := b.ParseEndpoint(DualEndpoint)
	for range 3 {
		b.Send([][]byte{make([]byte, 64)}, ep) // reopen, then rate-limited
	}
	must(t, b.Close())
	for range fns {
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("receive returned %v, want net.ErrClosed", err)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("a ReceiveFunc did not return after Close")
		}
	}
	// A scheduled reopen must not reopen a closed Bind.
	time.Sleep(minReopenInterval + 200*time.Millisecond)
	inner.mu.Lock()
	reopened := inner.closed != nil
	inner.mu.Unlock()
	if reopened {
		t.Error("inner Bind reopened after Close")
	}
}

func TestNoAllocs(t *testing.T) {
	b, err := NewBind(nopBind{}, Options{ClientID: testID, Endpoints: []netip.AddrPort{srv4}})
	must(t, err)
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	ep, _ := b.ParseEndpoint(DualEndpoint)
	bufs := make([][]byte, 16)
	sizes := make([]int, 16)
	eps := make([]conn.Endpoint, 16)
	from := conn.Endpoint(&conn.StdNetEndpoint{AddrPort: srv4})
	for i := range bufs {
		bufs[i] = make([]byte, 1400)
		bufs[i][0] = msgTransport
		sizes[i] = len(bufs[i])
	}
	if a := testing.AllocsPerRun(100, func() { b.Send(bufs, ep) }); a != 0 {
		t.Errorf("Send allocated %.1f times per batch, want 0", a)
	}
	for i := range bufs {
		if clientid.Read(bufs[i]) != testID {
			t.Fatalf("message %d not stamped", i)
		}
	}
	if a := testing.AllocsPerRun(100, func() {
		for i := range eps {
			eps[i] = from
		}
		b.received(bufs, sizes, eps, len(bufs))
	}); a != 0 {
		t.Errorf("receive allocated %.1f times per batch, want 0", a)
	}
	if clientid.Read(bufs[0]) != 0 || eps[0] != ep {
		t.Errorf("received message not zeroed (% x) or endpoint %v not the dual one", bufs[0][:4], eps[0])
	}
}

// TestSecondAnswerDropped: two nodes that answered copies of one
// initiation (sent over both families while racing) must not both reach
// wireguard-go, which would consume both responses concurrently and keep
// either node's keys. The Bind passes the first response for an
// initiation's index, drops later ones, and passes responses to other
// initiations.
func TestSecondAnswerDropped(t *testing.T) {
	b, err := NewBind(nopBind{}, Options{ClientID: testID, Endpoints: []netip.AddrPort{srv4, srv6}})
	must(t, err)
	resp := func(receiver uint32) []byte {
		m := make([]byte, device.MessageResponseSize)
		m[0] = msgResponse
		m[1], m[2], m[3] = 0xde, 0xad, 0x01 // stamped by the node's front: zeroed on receipt
		binary.LittleEndian.PutUint32(m[4:], 0x01000000|receiver)
		binary.LittleEndian.PutUint32(m[8:], receiver)
		return m
	}
	deliver := func(m []byte, from netip.AddrPort) int {
		pk, sizes := [][]byte{m}, []int{len(m)}
		eps := []conn.Endpoint{memEndpoint{ap: from}}
		b.received(pk, sizes, eps, 1)
		return sizes[0]
	}
	if n := deliver(resp(7), srv6); n != device.MessageResponseSize {
		t.Fatalf("first response to initiation 7: size %d after receive, want it passed", n)
	}
	if n := deliver(resp(7), srv4); n != 0 {
		t.Fatalf("second response to initiation 7 (another node's answer over IPv4) passed on (size %d)", n)
	}
	if n := deliver(resp(8), srv4); n != device.MessageResponseSize {
		t.Fatalf("response to a new initiation 8 dropped")
	}
	// Transport data is never deduplicated here (wireguard-go's counters do it).
	d := make([]byte, 64)
	d[0] = msgTransport
	binary.LittleEndian.PutUint32(d[4:], 7)
	if n := deliver(d, srv6); n != 64 {
		t.Fatalf("transport message dropped")
	}
	// The window is bounded, and the oldest answers leave it.
	for r := uint32(100); r < 100+answeredKept; r++ {
		deliver(resp(r), srv6)
	}
	if n := deliver(resp(7), srv6); n != device.MessageResponseSize {
		t.Fatalf("response to an initiation %d handshakes ago still dropped", answeredKept+1)
	}
}
