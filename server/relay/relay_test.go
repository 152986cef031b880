package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/internal/testutil"
)

func creds(tb testing.TB, seed byte, node string) *Credentials {
	tb.Helper()
	var k [32]byte
	for i := range k {
		k[i] = seed + byte(i)
	}
	c, err := NewCredentials(k, node)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// countingListener counts the connections it accepted.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func listen(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return ln
}

// echoOrigin is an origin that sends back what it reads and half-closes
// at EOF.
func echoOrigin(tb testing.TB) netip.AddrPort {
	tb.Helper()
	ln := listen(tb)
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// dialCall is what a test DialFunc saw.
type dialSeen struct {
	dst       netip.AddrPort
	tags      Tags
	keepalive time.Duration
	req       Request
	idle      int // TCP_KEEPIDLE of the origin connection, seconds (-1: off)
}

type exitNode struct {
	srv  *Server
	ln   *countingListener
	addr string
	mu   sync.Mutex
	seen []dialSeen
	// dial, if set, replaces the loopback dial.
	dial DialFunc
}

func (x *exitNode) calls() []dialSeen {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]dialSeen(nil), x.seen...)
}

// startExit runs a Server on loopback whose DialFunc records its calls and
// dials dst on loopback with SetKeepalive.
func startExit(tb testing.TB, cr *Credentials, cfg ServerConfig) *exitNode {
	tb.Helper()
	x := &exitNode{}
	cfg.Credentials = cr
	cfg.Dial = func(ctx context.Context, dst netip.AddrPort, tags Tags, ka time.Duration) (net.Conn, error) {
		if x.dial != nil {
			return x.dial(ctx, dst, tags, ka)
		}
		req, _ := RequestFrom(ctx)
		c, err := (&net.Dialer{KeepAlive: -1}).DialContext(ctx, "tcp", dst.String())
		if err != nil {
			return nil, err
		}
		if err := SetKeepalive(c, ka); err != nil {
			c.Close()
			return nil, err
		}
		s := dialSeen{dst: dst, tags: tags, keepalive: ka, req: req, idle: keepIdle(tb, c)}
		x.mu.Lock()
		x.seen = append(x.seen, s)
		x.mu.Unlock()
		return c, nil
	}
	srv, err := NewServer(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	x.srv = srv
	x.ln = &countingListener{Listener: listen(tb)}
	x.addr = x.ln.Addr().String()
	go srv.Serve(x.ln)
	tb.Cleanup(func() { srv.Close() })
	return x
}

// keepIdle is c's TCP_KEEPIDLE in seconds, -1 with SO_KEEPALIVE off.
func keepIdle(tb testing.TB, c net.Conn) int {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		tb.Error(err)
		return 0
	}
	idle := 0
	rc.Control(func(fd uintptr) {
		on, _ := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		if on == 0 {
			idle = -1
			return
		}
		idle, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
	})
	return idle
}

func newClient(tb testing.TB, cr *Credentials, cfg ClientConfig) *Client {
	tb.Helper()
	cfg.Credentials = cr
	c, err := NewClient(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func ctxT(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

func TestRoundTrip(t *testing.T) {
	cr := creds(t, 1, "n1")
	x := startExit(t, cr, ServerConfig{})
	origin := echoOrigin(t)
	c := newClient(t, cr, ClientConfig{})
	conn, err := c.Dial(ctxT(t, 5*time.Second), x.addr, origin, Meta{Keepalive: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	testutil.CheckEcho(t, conn, 8<<20)
	if got := conn.RemoteAddr().String(); got != origin.String() {
		t.Errorf("RemoteAddr %s, want %s", got, origin)
	}
	if s := c.Stats(); s.Relayed != 1 || s.Conns != 1 {
		t.Errorf("client stats %+v, want 1 relayed over 1 connection", s)
	}
	testutil.WaitFor(t, 2*time.Second, "the exit's stream to end", func() bool { return x.srv.Stats().StreamsOpen == 0 })
	if s := x.srv.Stats(); s.Streams != 1 || s.Conns != 1 {
		t.Errorf("server stats %+v, want 1 stream on 1 connection", s)
	}
}

// TestHeaders: the client's tags, keepalive and hop count reach the
// exit's DialFunc, and the keepalive is set on the origin connection.
func TestHeaders(t *testing.T) {
	cr := creds(t, 1, "n1")
	x := startExit(t, cr, ServerConfig{MaxHops: 3})
	origin := echoOrigin(t)
	c := newClient(t, cr, ClientConfig{})
	for _, m := range []Meta{
		{Tags: Tags{Country: "NL", Pool: "gold-1"}, Keepalive: 15 * time.Second, Hops: 0},
		{Tags: Tags{Country: "JP"}, Keepalive: 0, Hops: 2},
	} {
		conn, err := c.Dial(ctxT(t, 5*time.Second), x.addr, origin, m)
		if err != nil {
			t.Fatal(err)
		}
		testutil.CheckEcho(t, conn, 10)
		conn.Close()
		seen := x.calls()
		s := seen[len(seen)-1]
		if s.dst != origin || s.tags != m.Tags || s.keepalive != m.Keepalive || s.req.Hops != m.Hops+1 {
			t.Errorf("Dial saw %+v, want dst %v tags %+v keepalive %v hops %d", s, origin, m.Tags, m.Keepalive, m.Hops+1)
		}
		want := int(m.Keepalive / time.Second)
		if m.Keepalive == 0 {
			want = -1
		}
		if s.idle != want {
			t.Errorf("origin connection's TCP_KEEPIDLE %d, want %d", s.idle, want)
		}
	}
}

// rawCONNECT sends a CONNECT with header h over a connection of c to exit.
func rawCONNECT(t *testing.T, c *Client, exit, authority string, h http.Header) *http.Response {
	t.Helper()
	cc, _, err := c.conn(ctxT(t, 5*time.Second), exit)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	resp, err := cc.RoundTrip(&http.Request{Method: http.MethodConnect, URL: &url.URL{Host: authority}, Host: authority,
		Header: h, Body: pr, ContentLength: -1})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestHopLimit(t *testing.T) {
	cr := creds(t, 1, "n1")
	x := startExit(t, cr, ServerConfig{MaxHops: 2})
	origin := echoOrigin(t)
	c := newClient(t, cr, ClientConfig{})
	// Hops 1 before this one: header 2, at the limit.
	conn, err := c.Dial(ctxT(t, 5*time.Second), x.addr, origin, Meta{Hops: 1})
	if err != nil {
		t.Fatalf("at the hop limit: %v", err)
	}
	conn.Close()
	_, err = c.Dial(ctxT(t, 5*time.Second), x.addr, origin, Meta{Hops: 2})
	var re *RefusedError
	if !errors.As(err, &re) || re.Status != http.StatusForbidden || re.Reason != ReasonHopLimit {
		t.Fatalf("past the hop limit: %v, want a 403 %s", err, ReasonHopLimit)
	}
	if !c.Usable(x.addr) {
		t.Error("a refusal put the exit in backoff")
	}
	good := Request{Dst: origin, Keepalive: 15 * time.Second, Hops: 1}.Header()
	for name, mod := range map[string]func(http.Header){
		"no hops":        func(h http.Header) { h.Del(HeaderHops) },
		"zero hops":      func(h http.Header) { h.Set(HeaderHops, "0") },
		"no keepalive":   func(h http.Header) { h.Del(HeaderKeepalive) },
		"no application": func(h http.Header) { h.Del(HeaderApplication) },
		"other app":      func(h http.Header) { h.Set(HeaderApplication, "curl") },
		"two hops":       func(h http.Header) { h.Add(HeaderHops, "1") },
		"bad country":    func(h http.Header) { h.Set(HeaderCountry, "nl") },
	} {
		h := good.Clone()
		mod(h)
		resp := rawCONNECT(t, c, x.addr, origin.String(), h)
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(HeaderError) != ReasonBadRequest {
			t.Errorf("%s: %d %s, want 400 %s", name, resp.StatusCode, resp.Header.Get(HeaderError), ReasonBadRequest)
		}
	}
	if resp := rawCONNECT(t, c, x.addr, "example.com:80", good); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a host name: %d, want 400", resp.StatusCode)
	}
	if resp := rawCONNECT(t, c, x.addr, origin.String(), good); resp.StatusCode != http.StatusOK {
		t.Errorf("the good header: %d, want 200", resp.StatusCode)
	}
	if s := x.srv.Stats(); s.HopLimit != 1 || s.BadRequests != 8 {
		t.Errorf("server stats %+v, want 1 hop limit, 8 bad requests", s)
	}
}

// TestMutualTLS: a node with another service key cannot use the relay,
// nor can a TLS client without a certificate; and a client does not
// accept an exit of another cluster.
func TestMutualTLS(t *testing.T) {
	a, b := creds(t, 1, "a"), creds(t, 2, "b")
	if !a.CAPublicKey().Equal(creds(t, 1, "a2").CAPublicKey()) {
		t.Fatal("two nodes with the same service key derived different CAs")
	}
	if a.CAPublicKey().Equal(b.CAPublicKey()) {
		t.Fatal("two service keys derived the same CA")
	}
	x := startExit(t, a, ServerConfig{})
	origin := echoOrigin(t)

	stranger := newClient(t, b, ClientConfig{})
	if _, err := stranger.Dial(ctxT(t, 5*time.Second), x.addr, origin, Meta{}); err == nil {
		t.Fatal("a node with another service key was relayed")
	}
	// The exit may see the refusal after the client gave up.
	testutil.WaitFor(t, 2*time.Second, "the exit to count the refusal", func() bool { return x.srv.Stats().TLSRefused == 1 })

	// A TLS client with no certificate (anything that is not a node).
	conf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13}
	tc, err := tls.Dial("tcp", x.addr, conf)
	if err == nil {
		// TLS 1.3: the server's refusal comes with the first read.
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = tc.Read(make([]byte, 1))
		tc.Close()
	}
	if err == nil {
		t.Fatal("a client without a certificate got through")
	}
	testutil.WaitFor(t, 2*time.Second, "the exit to count the second refusal", func() bool { return x.srv.Stats().TLSRefused == 2 })

	// A plain TCP client speaking HTTP.
	pc, err := net.Dial("tcp", x.addr)
	if err != nil {
		t.Fatal(err)
	}
	pc.Write([]byte("CONNECT " + origin.String() + " HTTP/1.1\r\nHost: " + origin.String() + "\r\n\r\n"))
	pc.SetDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(pc); len(b) > 0 && string(b[:4]) == "HTTP" {
		t.Errorf("a plain TCP client got an HTTP answer: %q", b)
	}
	pc.Close()
	testutil.WaitFor(t, 2*time.Second, "the exit to count the third refusal", func() bool { return x.srv.Stats().TLSRefused == 3 })

	// A TCP handshake alone (the path table's probe) is no refusal.
	if pc, err = net.Dial("tcp", x.addr); err != nil {
		t.Fatal(err)
	}
	pc.Close()
	testutil.WaitFor(t, 2*time.Second, "the exit to count the probe", func() bool { return x.srv.Stats().Probes == 1 })
	if s := x.srv.Stats(); s.TLSRefused != 3 {
		t.Errorf("a probe counted as a TLS refusal: %+v", s)
	}

	// The exit of another cluster: the client refuses its certificate.
	y := startExit(t, b, ServerConfig{})
	c := newClient(t, a, ClientConfig{})
	if _, err := c.Dial(ctxT(t, 5*time.Second), y.addr, origin, Meta{}); err == nil {
		t.Fatal("a client accepted an exit of another cluster")
	}
	if len(y.calls()) != 0 || y.srv.Stats().Streams != 0 {
		t.Error("the other cluster's exit dialed")
	}
	// And the right pair works.
	conn, err := c.Dial(ctxT(t, 5*time.Second), x.addr, origin, Meta{})
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckEcho(t, conn, 100)
	conn.Close()
}

// TestHalfClose: the entry's CloseWrite reaches the origin as EOF while
// the origin's answer still flows back; the origin's close reaches the
// entry as EOF.
func TestHalfClose(t *testing.T) {
	cr := creds(t, 1, "n1")
	x := startExit(t, cr, ServerConfig{})
	c := newClient(t, cr, ClientConfig{})

	// An origin that reads to EOF, then answers and closes.
	ln := listen(t)
	defer ln.Close()
	go func() {
		for {
			oc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer oc.Close()
				b, _ := io.ReadAll(oc)
				oc.Write([]byte("got " + string(b)))
			}()
		}
	}()
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	conn, err := c.Dial(ctxT(t, 5*time.Second), x.addr, dst, Meta{})
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("hello"))
	if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := readAllWithin(conn, 5*time.Second)
	if err != nil || string(got) != "got hello" {
		t.Fatalf("read %q, %v; want \"got hello\" then EOF", got, err)
	}
	conn.Close()

	// An origin that speaks first and closes: the entry, still open for
	// writing, reads EOF.
	ln2 := listen(t)
	defer ln2.Close()
	go func() {
		oc, err := ln2.Accept()
		if err != nil {
			return
		}
		oc.Write([]byte("banner"))
		oc.Close()
	}()
	conn, err = c.Dial(ctxT(t, 5*time.Second), x.addr, ln2.Addr().(*net.TCPAddr).AddrPort(), Meta{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got, err := readAllWithin(conn, 5*time.Second); err != nil || string(got) != "banner" {
		t.Errorf("read %q, %v; want \"banner\" then EOF", got, err)
	}
	// The stream is over: writing fails rather than blocks.
	werr := make(chan error, 1)
	go func() {
		for {
			if _, err := conn.Write(make([]byte, 64<<10)); err != nil {
				werr <- err
				return
			}
		}
	}()
	select {
	case <-werr:
	case <-time.After(5 * time.Second):
		t.Error("writes to a flow whose origin closed block")
	}
}

// readAllWithin reads c to EOF, closing it if that takes longer than d
// (a relayed flow has no deadlines).
func readAllWithin(c net.Conn, d time.Duration) ([]byte, error) {
	t := time.AfterFunc(d, func() { c.Close() })
	b, err := io.ReadAll(c)
	if !t.Stop() {
		return b, errors.Join(errors.New("no EOF within the time"), err)
	}
	return b, err
}

// TestManyStreamsOneConnection: concurrent flows to one exit share one
// TCP connection.
func TestManyStreamsOneConnection(t *testing.T) {
	cr := creds(t, 1, "n1")
	x := startExit(t, cr, ServerConfig{})
	origin := echoOrigin(t)
	c := newClient(t, cr, ClientConfig{})
	// Warm up, so the server's SETTINGS (its stream limit) are known.
	conn, err := c.Dial(ctxT(t, 5*time.Second), x.addr, origin, Meta{})
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	const n = 200
	var wg sync.WaitGroup
	conns := make(chan net.Conn, n)
	for range n {
		wg.Go(func() {
			conn, err := c.Dial(ctxT(t, 10*time.Second), x.addr, origin, Meta{})
			if err != nil {
				t.Error(err)
				return
			}
			conns <- conn
		})
	}
	wg.Wait()
	close(conns)
	if got := x.srv.Stats().StreamsOpen; got < n {
		t.Errorf("%d streams open at once, want at least %d", got, n)
	}
	for conn := range conns {
		wg.Go(func() {
			defer conn.Close()
			testutil.CheckEcho(t, conn, 4096)
		})
	}
	wg.Wait()
	if got := x.ln.n.Load(); got != 1 {
		t.Errorf("%d TCP connections accepted, want 1", got)
	}
	if got := c.Conns(x.addr); got != 1 {
		t.Errorf("client holds %d connections, want 1", got)
	}
	if s := c.Stats(); s.Relayed != n+1 || s.Conns != 1 {
		t.Errorf("client stats %+v", s)
	}
}

// direct is a DirectFunc to dst that counts its calls.
func direct(dst netip.AddrPort, n *atomic.Int64) DirectFunc {
	return func(ctx context.Context) (net.Conn, error) {
		n.Add(1)
		return (&net.Dialer{}).DialContext(ctx, "tcp", dst.String())
	}
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	ln := listen(t)
	a := ln.Addr().String()
	ln.Close()
	return a
}

func TestFallbackDown(t *testing.T) {
	cr := creds(t, 1, "n1")
	origin := echoOrigin(t)
	c := newClient(t, cr, ClientConfig{MinBackoff: time.Hour})
	exit := deadAddr(t)
	var n atomic.Int64
	start := time.Now()
	conn, relayed, err := c.DialOrDirect(ctxT(t, 5*time.Second), exit, origin, Meta{}, direct(origin, &n))
	if err != nil || relayed || n.Load() != 1 {
		t.Fatalf("relayed %v, direct dials %d, err %v; want direct", relayed, n.Load(), err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("took %v, want the direct dial within 1 s", el)
	}
	testutil.CheckEcho(t, conn, 100)
	conn.Close()
	if c.Usable(exit) {
		t.Error("a refused connection did not put the exit in backoff")
	}
	// In backoff: not tried at all.
	conn, relayed, err = c.DialOrDirect(ctxT(t, 5*time.Second), exit, origin, Meta{}, direct(origin, &n))
	if err != nil || relayed {
		t.Fatal(relayed, err)
	}
	conn.Close()
	if s := c.Stats(); s.Direct != 2 || s.Fallbacks != 1 || s.Skipped != 1 || s.Relayed != 0 || s.ExitsDown != 1 {
		t.Errorf("stats %+v, want 2 direct: 1 fallback, 1 skipped", s)
	}
}

// TestFallbackBlackhole: an exit that accepts TCP and never answers costs
// a flow less than 1 s.
func TestFallbackBlackhole(t *testing.T) {
	cr := creds(t, 1, "n1")
	origin := echoOrigin(t)
	ln := listen(t)
	defer ln.Close()
	go func() {
		for {
			hc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, hc); hc.Close() }()
		}
	}()
	c := newClient(t, cr, ClientConfig{MinBackoff: time.Hour})
	var n atomic.Int64
	start := time.Now()
	conn, relayed, err := c.DialOrDirect(ctxT(t, 5*time.Second), ln.Addr().String(), origin, Meta{}, direct(origin, &n))
	el := time.Since(start)
	if err != nil || relayed || n.Load() != 1 {
		t.Fatalf("relayed %v, direct dials %d, err %v; want direct", relayed, n.Load(), err)
	}
	testutil.CheckEcho(t, conn, 100)
	conn.Close()
	if el > time.Second {
		t.Errorf("took %v, want under 1 s", el)
	}
	if c.Usable(ln.Addr().String()) {
		t.Error("the silent exit is still usable")
	}
	if s := c.Stats(); s.Fallbacks != 1 || s.Failed != 1 {
		t.Errorf("stats %+v", s)
	}
	c.Close()
}

// TestSlowExitOrigin: a stream that times out on a healthy connection
// (the exit is slow to reach the origin) falls back, and the ping that
// follows keeps the exit usable.
func TestSlowExitOrigin(t *testing.T) {
	cr := creds(t, 1, "n1")
	x := startExit(t, cr, ServerConfig{})
	release := make(chan struct{})
	defer close(release)
	gaveUp := make(chan struct{})
	x.dial = func(ctx context.Context, dst netip.AddrPort, _ Tags, _ time.Duration) (net.Conn, error) {
		select {
		case <-release:
		case <-ctx.Done():
			close(gaveUp)
		}
		return nil, errors.New("slow")
	}
	origin := echoOrigin(t)
	c := newClient(t, cr, ClientConfig{FallbackAfter: 200 * time.Millisecond})
	var n atomic.Int64
	conn, relayed, err := c.DialOrDirect(ctxT(t, 5*time.Second), x.addr, origin, Meta{}, direct(origin, &n))
	if err != nil || relayed {
		t.Fatal(relayed, err)
	}
	conn.Close()
	select {
	case <-gaveUp: // the entry's reset ended the exit's dial
	case <-time.After(2 * time.Second):
		t.Error("the exit's dial went on after the entry gave up")
	}
	time.Sleep(300 * time.Millisecond) // the ping
	if !c.Usable(x.addr) {
		t.Error("an exit answering pings was put in backoff for a slow origin")
	}
}

// TestRefusedFallback: an exit whose ACL refuses the destination is
// answered direct, and stays usable.
func TestRefusedFallback(t *testing.T) {
	cr := creds(t, 1, "n1")
	x := startExit(t, cr, ServerConfig{})
	x.dial = func(context.Context, netip.AddrPort, Tags, time.Duration) (net.Conn, error) {
		return nil, errors.Join(ErrDenied, errors.New("acl"))
	}
	origin := echoOrigin(t)
	c := newClient(t, cr, ClientConfig{})
	var n atomic.Int64
	conn, relayed, err := c.DialOrDirect(ctxT(t, 5*time.Second), x.addr, origin, Meta{}, direct(origin, &n))
	if err != nil || relayed || n.Load() != 1 {
		t.Fatal(relayed, err)
	}
	conn.Close()
	if s := c.Stats(); s.Refused != 1 || s.Fallbacks != 1 || s.Direct != 1 {
		t.Errorf("stats %+v, want 1 refused, 1 fallback", s)
	}
	if !c.Usable(x.addr) {
		t.Error("a refusal put the exit in backoff")
	}
	if s := x.srv.Stats(); s.Denied != 1 {
		t.Errorf("server stats %+v, want 1 denied", s)
	}
}

// TestBackoffRecovery: an exit that was down is used again once it
// answers, without a flow paying for the probe.
func TestBackoffRecovery(t *testing.T) {
	cr := creds(t, 1, "n1")
	origin := echoOrigin(t)
	exit := deadAddr(t)
	var evMu sync.Mutex
	var events []string
	event := func(s string) { evMu.Lock(); events = append(events, s); evMu.Unlock() }
	var rtts atomic.Int64
	c := newClient(t, cr, ClientConfig{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		OnDown: func(e string) { event("down " + e) }, OnUp: func(e string) { event("up " + e) },
		OnRTT: func(e string, d time.Duration) {
			if e == exit && d > 0 {
				rtts.Add(1)
			}
		}})
	var n atomic.Int64
	conn, relayed, err := c.DialOrDirect(ctxT(t, 5*time.Second), exit, origin, Meta{}, direct(origin, &n))
	if err != nil || relayed {
		t.Fatal(relayed, err)
	}
	conn.Close()
	if c.Usable(exit) {
		t.Fatal("the dead exit is usable")
	}
	time.Sleep(400 * time.Millisecond) // a few failed probes: the backoff grows to its max
	if c.Usable(exit) {
		t.Fatal("the dead exit became usable")
	}

	// The exit comes up on its address.
	srv, err := NewServer(ServerConfig{Credentials: cr, Dial: func(ctx context.Context, dst netip.AddrPort, _ Tags, _ time.Duration) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", dst.String())
	}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", exit)
	if err != nil {
		t.Skipf("the port was taken meanwhile: %v", err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	testutil.WaitFor(t, 2*time.Second, "the probe to find the exit back", func() bool { return c.Usable(exit) })
	if s := c.Stats(); s.Conns != 1 {
		t.Errorf("stats %+v: want the probe's connection", s)
	}
	conn, relayed, err = c.DialOrDirect(ctxT(t, 5*time.Second), exit, origin, Meta{}, direct(origin, &n))
	if err != nil || !relayed {
		t.Fatalf("after recovery: relayed %v, %v", relayed, err)
	}
	testutil.CheckEcho(t, conn, 100)
	conn.Close()
	if s := c.Stats(); s.Conns != 1 || s.Relayed != 1 {
		t.Errorf("stats %+v: want the flow on the probe's connection", s)
	}
	d, err := c.Ping(ctxT(t, 5*time.Second), exit)
	if err != nil || d <= 0 {
		t.Errorf("Ping: %v, %v", d, err)
	}
	evMu.Lock()
	defer evMu.Unlock()
	if want := []string{"down " + exit, "up " + exit}; !slices.Equal(events, want) {
		t.Errorf("hooks saw %q, want %q", events, want)
	}
	if n := rtts.Load(); n < 2 { // the connection's TCP handshake, the Ping
		t.Errorf("%d RTT samples, want 2 or more", n)
	}
}

// TestExitDies: the exit's end resets the flows it carried (a read
// fails, it does not hang), and the next flow goes direct at once.
func TestExitDies(t *testing.T) {
	cr := creds(t, 1, "n1")
	x := startExit(t, cr, ServerConfig{})
	origin := echoOrigin(t)
	c := newClient(t, cr, ClientConfig{MinBackoff: time.Hour})
	conn, err := c.Dial(ctxT(t, 5*time.Second), x.addr, origin, Meta{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("x"))
	if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	x.srv.Close()
	rerr := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 1))
		rerr <- err
	}()
	select {
	case err := <-rerr:
		if err == nil || errors.Is(err, io.EOF) {
			t.Errorf("read after the exit died: %v, want a reset", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a relayed flow hangs after its exit died")
	}
	var n atomic.Int64
	start := time.Now()
	conn2, relayed, err := c.DialOrDirect(ctxT(t, 5*time.Second), x.addr, origin, Meta{}, direct(origin, &n))
	if err != nil || relayed {
		t.Fatal(relayed, err)
	}
	conn2.Close()
	if el := time.Since(start); el > time.Second {
		t.Errorf("direct after %v, want under 1 s", el)
	}
}

// freezer is a TCP proxy to an exit that can stop forwarding (both ways,
// every connection), as a path that blackholes or a host that hangs.
type freezer struct {
	ln     net.Listener
	frozen atomic.Bool
}

func newFreezer(t *testing.T, to string) *freezer {
	f := &freezer{ln: listen(t)}
	t.Cleanup(func() { f.ln.Close() })
	go func() {
		for {
			a, err := f.ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", to)
			if err != nil {
				a.Close()
				continue
			}
			t.Cleanup(func() { a.Close(); b.Close() })
			copyUnlessFrozen := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if err != nil {
						dst.Close()
						return
					}
					if f.frozen.Load() {
						continue // dropped
					}
					dst.Write(buf[:n])
				}
			}
			go copyUnlessFrozen(a, b)
			go copyUnlessFrozen(b, a)
		}
	}()
	return f
}

// TestFrozenExit: the exit behind a warm connection stops answering: the
// next flow goes direct within 1 s, the exit is put in backoff after its
// PING goes unanswered, and taken back when it answers again.
func TestFrozenExit(t *testing.T) {
	cr := creds(t, 1, "n1")
	x := startExit(t, cr, ServerConfig{})
	f := newFreezer(t, x.addr)
	exit := f.ln.Addr().String()
	origin := echoOrigin(t)
	c := newClient(t, cr, ClientConfig{MinBackoff: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	var n atomic.Int64
	conn, relayed, err := c.DialOrDirect(ctxT(t, 5*time.Second), exit, origin, Meta{}, direct(origin, &n))
	if err != nil || !relayed {
		t.Fatal(relayed, err)
	}
	conn.Close()

	f.frozen.Store(true)
	start := time.Now()
	conn, relayed, err = c.DialOrDirect(ctxT(t, 5*time.Second), exit, origin, Meta{}, direct(origin, &n))
	if err != nil || relayed {
		t.Fatal(relayed, err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("direct after %v, want under 1 s", el)
	}
	testutil.CheckEcho(t, conn, 100)
	conn.Close()
	testutil.WaitFor(t, 3*time.Second, "the unanswered PING to put the exit in backoff", func() bool { return !c.Usable(exit) })

	f.frozen.Store(false)
	testutil.WaitFor(t, 8*time.Second, "the exit to be taken back", func() bool { return c.Usable(exit) })
	conn, relayed, err = c.DialOrDirect(ctxT(t, 5*time.Second), exit, origin, Meta{}, direct(origin, &n))
	if err != nil || !relayed {
		t.Fatalf("after the thaw: relayed %v, %v", relayed, err)
	}
	testutil.CheckEcho(t, conn, 100)
	conn.Close()
}

// TestEntryCloses: an entry that closes a flow (or loses its connection)
// while the origin is idle closes the exit's connection to the origin.
func TestEntryCloses(t *testing.T) {
	cr := creds(t, 1, "n1")
	x := startExit(t, cr, ServerConfig{})
	ln := listen(t)
	defer ln.Close()
	ended := make(chan error, 2)
	go func() {
		for {
			oc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer oc.Close()
				_, err := io.Copy(io.Discard, oc) // idle: never writes
				ended <- err
			}()
		}
	}()
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	c := newClient(t, cr, ClientConfig{})
	conn, err := c.Dial(ctxT(t, 5*time.Second), x.addr, dst, Meta{})
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("x"))
	conn.Close()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the origin connection outlived the entry's close")
	}
	testutil.WaitFor(t, 2*time.Second, "the exit's stream to end", func() bool { return x.srv.Stats().StreamsOpen == 0 })

	// The entry's whole client goes away.
	if _, err = c.Dial(ctxT(t, 5*time.Second), x.addr, dst, Meta{}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the origin connection outlived the entry's connection")
	}
}

// TestNoLeaks: a client and a server, closed, leave no goroutine behind,
// with flows open, an exit in backoff and its probe running.
func TestNoLeaks(t *testing.T) {
	testutil.CheckGoroutines(t, func() {
		cr := creds(t, 1, "n1")
		origin := listen(t)
		go func() {
			for {
				oc, err := origin.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(oc, oc); oc.Close() }()
			}
		}()
		srv, err := NewServer(ServerConfig{Credentials: cr, Dial: func(ctx context.Context, dst netip.AddrPort, _ Tags, _ time.Duration) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", dst.String())
		}})
		if err != nil {
			t.Fatal(err)
		}
		ln := listen(t)
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		c, err := NewClient(ClientConfig{Credentials: cr, MinBackoff: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		dst := origin.Addr().(*net.TCPAddr).AddrPort()
		var open []net.Conn
		for range 5 {
			conn, err := c.Dial(ctxT(t, 5*time.Second), ln.Addr().String(), dst, Meta{})
			if err != nil {
				t.Fatal(err)
			}
			conn.Write([]byte("x"))
			open = append(open, conn)
		}
		var n atomic.Int64
		if conn, _, err := c.DialOrDirect(ctxT(t, 5*time.Second), deadAddr(t), dst, Meta{}, direct(dst, &n)); err == nil {
			conn.Close()
		}
		time.Sleep(50 * time.Millisecond) // a few probes
		c.Close()
		srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
		for _, conn := range open {
			conn.Close()
		}
		origin.Close()
	})
}

// TestExitRestarts: an exit that restarted on its address is used again
// by the next flow, on a new connection, without a backoff.
func TestExitRestarts(t *testing.T) {
	cr := creds(t, 1, "n1")
	origin := echoOrigin(t)
	dial := func(ctx context.Context, dst netip.AddrPort, _ Tags, _ time.Duration) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", dst.String())
	}
	srv, _ := NewServer(ServerConfig{Credentials: cr, Dial: dial})
	ln := listen(t)
	addr := ln.Addr().String()
	go srv.Serve(ln)
	c := newClient(t, cr, ClientConfig{MinBackoff: time.Hour})
	for i := range 3 {
		conn, err := c.Dial(ctxT(t, 5*time.Second), addr, origin, Meta{})
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		testutil.CheckEcho(t, conn, 100)
		conn.Close()
		srv.Close()
		srv, _ = NewServer(ServerConfig{Credentials: cr, Dial: dial})
		if ln, err = net.Listen("tcp", addr); err != nil {
			t.Skipf("the port was taken meanwhile: %v", err)
		}
		go srv.Serve(ln)
	}
	defer srv.Close()
	if !c.Usable(addr) {
		t.Error("a restart put the exit in backoff")
	}
	if s := c.Stats(); s.Conns != 3 || s.Relayed != 3 {
		t.Errorf("stats %+v, want 3 flows on 3 connections", s)
	}
}

// TestShutdown: a draining exit takes no new flow (the entry goes direct
// at once) while the flows it carries go on, and Shutdown returns when
// they end.
func TestShutdown(t *testing.T) {
	cr := creds(t, 1, "n1")
	x := startExit(t, cr, ServerConfig{})
	origin := echoOrigin(t)
	c := newClient(t, cr, ClientConfig{MinBackoff: time.Hour})
	conn, err := c.Dial(ctxT(t, 5*time.Second), x.addr, origin, Meta{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- x.srv.Shutdown(ctxT(t, 10*time.Second)) }()
	testutil.WaitFor(t, 2*time.Second, "the GOAWAY", func() bool { return c.Conns(x.addr) == 0 || !c.canTake(x.addr) })

	var n atomic.Int64
	start := time.Now()
	c2, relayed, err := c.DialOrDirect(ctxT(t, 5*time.Second), x.addr, origin, Meta{}, direct(origin, &n))
	if err != nil || relayed {
		t.Fatalf("during the drain: relayed %v, %v", relayed, err)
	}
	c2.Close()
	if el := time.Since(start); el > time.Second {
		t.Errorf("direct after %v", el)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with a flow open", err)
	default:
	}
	testutil.CheckEcho(t, conn, 1<<16) // the open flow still works
	conn.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last flow ended")
	}
}

// canTake reports whether a connection to exit can take a new stream (for
// tests).
func (c *Client) canTake(exit string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.exits[exit]
	if e == nil {
		return false
	}
	for _, x := range e.conns {
		if x.cc.CanTakeNewRequest() {
			return true
		}
	}
	return false
}

// TestRelayChainAndLoop: an exit may relay once more (Wedge-Hops grows by
// one a relay, the tags and keepalive go along); two exits that relay to
// each other stop at the hop limit instead of looping.
func TestRelayChainAndLoop(t *testing.T) {
	cr := creds(t, 1, "n1")
	origin := echoOrigin(t)
	a := startExit(t, cr, ServerConfig{})
	b := startExit(t, cr, ServerConfig{})
	ca := newClient(t, cr, ClientConfig{})
	cb := newClient(t, cr, ClientConfig{})
	relayTo := func(c *Client, next *exitNode) DialFunc {
		return func(ctx context.Context, dst netip.AddrPort, tags Tags, ka time.Duration) (net.Conn, error) {
			req, _ := RequestFrom(ctx)
			return c.Dial(ctx, next.addr, dst, Meta{Tags: tags, Keepalive: ka, Hops: req.Hops})
		}
	}
	entry := newClient(t, cr, ClientConfig{})

	// A chain: entry → a → b → origin.
	a.dial = relayTo(ca, b)
	conn, err := entry.Dial(ctxT(t, 5*time.Second), a.addr, origin, Meta{Tags: Tags{Country: "NL"}, Keepalive: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckEcho(t, conn, 1<<16)
	conn.Close()
	seen := b.calls()
	if len(seen) != 1 || seen[0].req.Hops != 2 || seen[0].tags.Country != "NL" || seen[0].keepalive != 20*time.Second {
		t.Fatalf("the second exit saw %+v, want hops 2, country NL, keepalive 20s", seen)
	}

	// A loop: a → b → a → ...
	b.dial = relayTo(cb, a)
	_, err = entry.Dial(ctxT(t, 5*time.Second), a.addr, origin, Meta{})
	var re *RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("a relay loop: %v, want a refusal", err)
	}
	if s := a.srv.Stats(); s.HopLimit != 1 {
		t.Errorf("a's stats %+v, want 1 hop-limit refusal (hops 3)", s)
	}
	if !entry.Usable(a.addr) {
		t.Error("the loop put the first exit in backoff")
	}
}
