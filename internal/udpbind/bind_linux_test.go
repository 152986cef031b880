package udpbind

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// openBind opens a Bind on port 0, closed when the test ends.
func openBind(t testing.TB, opts ...Option) (*Bind, []conn.ReceiveFunc, uint16) {
	t.Helper()
	b := New(opts...)
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatalf("Open(0): %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b, fns, port
}

// received is one packet a server goroutine saw.
type received struct {
	ep      *Endpoint
	payload []byte
}

// echo runs fns until they return net.ErrClosed, sending every packet back
// to its endpoint and reporting it on the returned channel (when there is
// room). The goroutines end with the Bind.
func echo(t testing.TB, b *Bind, fns []conn.ReceiveFunc) <-chan received {
	t.Helper()
	out := make(chan received, 1024)
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs, sizes, eps := batch(b.BatchSize())
			for {
				n, err := fn(bufs, sizes, eps)
				if err != nil {
					if !errors.Is(err, net.ErrClosed) {
						t.Errorf("receive: %v", err)
					}
					return
				}
				for i := range n {
					if sizes[i] == 0 {
						continue
					}
					p := bufs[i][:sizes[i]]
					if err := b.Send([][]byte{p}, eps[i]); err != nil {
						t.Errorf("send to %v: %v", eps[i].DstToString(), err)
					}
					select {
					case out <- received{ep: eps[i].(*Endpoint), payload: bytes.Clone(p)}:
					default:
					}
				}
			}
		}()
	}
	t.Cleanup(func() {
		b.Close()
		wg.Wait()
	})
	return out
}

func batch(n int) ([][]byte, []int, []conn.Endpoint) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	return bufs, make([]int, n), make([]conn.Endpoint, n)
}

// client opens a UDP socket on laddr (port 0).
func client(t testing.TB, laddr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(laddr)))
	if err != nil {
		t.Fatalf("listen %s: %v", laddr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func clientAddr(c *net.UDPConn) netip.AddrPort {
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// roundTrip sends msg from c to dst and returns the reply and its source.
func roundTrip(t testing.TB, c *net.UDPConn, dst netip.AddrPort, msg []byte) ([]byte, netip.AddrPort) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(msg, dst); err != nil {
		t.Fatalf("write to %v: %v", dst, err)
	}
	return readReply(t, c)
}

func readReply(t testing.TB, c *net.UDPConn) ([]byte, netip.AddrPort) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("read reply on %v: %v", c.LocalAddr(), err)
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

func haveIPv6Loopback(t testing.TB) {
	t.Helper()
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	c.Close()
}

// TestReplySource: a reply leaves from the address the client sent to.
// Every 127.0.0.0/8 address is local, so 127.0.0.2 stands in for a VIP.
func TestReplySource(t *testing.T) {
	tests := []struct {
		name   string
		client string // client socket address
		target string // server address the client sends to
	}{
		{"v4 secondary loopback", "127.0.0.1:0", "127.0.0.2"},
		{"v4 other loopback", "127.0.0.1:0", "127.0.0.77"},
		{"v4 primary loopback", "127.0.0.1:0", "127.0.0.1"},
		{"v6 loopback", "[::1]:0", "::1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if netip.MustParseAddr(tt.target).Is6() {
				haveIPv6Loopback(t)
			}
			b, fns, port := openBind(t)
			got := echo(t, b, fns)
			c := client(t, tt.client)
			dst := netip.AddrPortFrom(netip.MustParseAddr(tt.target), port)

			msg := []byte("hello " + tt.name)
			reply, from := roundTrip(t, c, dst, msg)
			if from != dst {
				t.Errorf("reply from %v, want %v", from, dst)
			}
			if !bytes.Equal(reply, msg) {
				t.Errorf("reply %q, want %q", reply, msg)
			}
			r := <-got
			if r.ep.AddrPort() != clientAddr(c) {
				t.Errorf("endpoint AddrPort %v, want %v", r.ep.AddrPort(), clientAddr(c))
			}
			if r.ep.Src() != dst.Addr() || r.ep.SrcIP() != dst.Addr() {
				t.Errorf("endpoint Src %v, want %v", r.ep.Src(), dst.Addr())
			}
			if got, want := r.ep.SrcToString(), dst.Addr().String(); got != want {
				t.Errorf("SrcToString %q, want %q", got, want)
			}
		})
	}
}

// TestReplySourceControl shows the test above can fail: an endpoint without
// Src gets replies from the kernel's choice, 127.0.0.1, not 127.0.0.2.
func TestReplySourceControl(t *testing.T) {
	b, fns, port := openBind(t)
	c := client(t, "127.0.0.1:0")
	dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port)
	if _, err := c.WriteToUDPAddrPort([]byte("ping"), dst); err != nil {
		t.Fatal(err)
	}
	bufs, sizes, eps := batch(b.BatchSize())
	if _, err := fns[0](bufs, sizes, eps); err != nil {
		t.Fatal(err)
	}
	noSrc, err := b.ParseEndpoint(eps[0].DstToString())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Send([][]byte{[]byte("pong")}, noSrc); err != nil {
		t.Fatal(err)
	}
	_, from := readReply(t, c)
	if want := netip.MustParseAddr("127.0.0.1"); from.Addr() != want {
		t.Errorf("reply without Src from %v, want %v", from.Addr(), want)
	}
}

// TestSrcFallback: when the kernel refuses Src (not a local address) the
// reply still goes out, from the kernel's choice, and is counted.
func TestSrcFallback(t *testing.T) {
	b, _, _ := openBind(t)
	c := client(t, "127.0.0.1:0")
	ep := &Endpoint{dst: clientAddr(c), src: netip.MustParseAddr("192.0.2.1")}
	if err := b.Send([][]byte{[]byte("a"), []byte("b")}, ep); err != nil {
		t.Fatalf("Send: %v", err)
	}
	for _, want := range []string{"a", "b"} {
		got, from := readReply(t, c)
		if string(got) != want {
			t.Errorf("got %q, want %q", got, want)
		}
		if from.Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("fallback reply from %v, want 127.0.0.1", from)
		}
	}
	if got := b.Stats().SrcFallbacks; got != 1 {
		t.Errorf("SrcFallbacks %d, want 1", got)
	}
}

// TestAlternatingFamilies is wireguard-go's StdNetBind bug: a pooled
// *net.UDPAddr shrunk to 4 bytes by an IPv4 send made the next IPv6 send go
// to an address built from stale bytes. Alternate families, with and without
// Src, v4-mapped too, and check each peer gets exactly its packets.
func TestAlternatingFamilies(t *testing.T) {
	haveIPv6Loopback(t)
	b, _, _ := openBind(t)
	c4 := client(t, "127.0.0.1:0")
	c6 := client(t, "[::1]:0")
	a4, a6 := clientAddr(c4), clientAddr(c6)
	mapped := netip.AddrPortFrom(netip.AddrFrom16(a4.Addr().As16()), a4.Port())
	eps := []struct {
		ep   *Endpoint
		peer *net.UDPConn
	}{
		{&Endpoint{dst: a4}, c4},
		{&Endpoint{dst: a6}, c6},
		{&Endpoint{dst: a4, src: netip.MustParseAddr("127.0.0.1")}, c4},
		{&Endpoint{dst: a6, src: netip.MustParseAddr("::1")}, c6},
		{&Endpoint{dst: mapped}, c4},
		{&Endpoint{dst: a6}, c6},
	}
	const rounds = 30 // ~180 packets a peer: fits a default socket buffer
	want := map[*net.UDPConn][]string{}
	for r := range rounds {
		for i, e := range eps {
			// Batches of 1..3 datagrams.
			var bufs [][]byte
			for j := range 1 + (r+i)%3 {
				msg := fmt.Sprintf("%v/%d/%d/%d", e.peer.LocalAddr(), r, i, j)
				bufs = append(bufs, []byte(msg))
				want[e.peer] = append(want[e.peer], msg)
			}
			if err := b.Send(bufs, e.ep); err != nil {
				t.Fatalf("Send to %v: %v", e.ep.dst, err)
			}
		}
	}
	for _, c := range []*net.UDPConn{c4, c6} {
		for i, w := range want[c] {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 2048)
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("%v: packet %d (%q) of %d: %v", c.LocalAddr(), i, w, len(want[c]), err)
			}
			got := buf[:n]
			if string(got) != w {
				t.Fatalf("%v: packet %d is %q, want %q", c.LocalAddr(), i, got, w)
			}
		}
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if n, from, err := c.ReadFromUDPAddrPort(make([]byte, 2048)); err == nil {
			t.Errorf("%v: unexpected extra packet of %d bytes from %v", c.LocalAddr(), n, from)
		}
	}
}

// TestReceiveBatch: many packets from several peers arrive in few calls,
// intact, each with its peer's endpoint, shared for the same peer.
func TestReceiveBatch(t *testing.T) {
	b, fns, port := openBind(t)
	const peers, perPeer = 4, 40
	var cs []*net.UDPConn
	for range peers {
		cs = append(cs, client(t, "127.0.0.1:0"))
	}
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.5"), port)
	for j := range perPeer {
		for i, c := range cs {
			msg := fmt.Sprintf("peer %d packet %d", i, j)
			if _, err := c.WriteToUDPAddrPort([]byte(msg), target); err != nil {
				t.Fatal(err)
			}
		}
	}

	bufs, sizes, eps := batch(b.BatchSize())
	byPeer := map[netip.AddrPort][]string{}
	seen := map[netip.AddrPort]*Endpoint{}
	calls := 0
	for total := 0; total < peers*perPeer; {
		n, err := fns[0](bufs, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		calls++
		for i := range n {
			e := eps[i].(*Endpoint)
			if prev, ok := seen[e.AddrPort()]; ok && prev != e {
				t.Errorf("peer %v: endpoint %p, earlier %p: not shared", e.AddrPort(), e, prev)
			}
			seen[e.AddrPort()] = e
			if e.Src() != target.Addr() {
				t.Errorf("peer %v: Src %v, want %v", e.AddrPort(), e.Src(), target.Addr())
			}
			byPeer[e.AddrPort()] = append(byPeer[e.AddrPort()], string(bufs[i][:sizes[i]]))
			total++
		}
	}
	t.Logf("%d packets in %d receive calls", peers*perPeer, calls)
	for i, c := range cs {
		got := byPeer[clientAddr(c)]
		if len(got) != perPeer {
			t.Fatalf("peer %d: got %d packets, want %d", i, len(got), perPeer)
		}
		for j, msg := range got {
			if want := fmt.Sprintf("peer %d packet %d", i, j); msg != want {
				t.Errorf("peer %d: packet %d is %q, want %q", i, j, msg, want)
			}
		}
	}
}

// TestAllocs: receiving a batch from known peers and sending one allocate
// nothing.
func TestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	b, fns, port := openBind(t)
	const peers, perPeer = 4, 32 // 128 = one full batch
	var cs []*net.UDPConn
	for range peers {
		cs = append(cs, client(t, "127.0.0.1:0"))
	}
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port)
	payload := make([]byte, 100)
	bufs, sizes, eps := batch(b.BatchSize())

	sendAll := func() {
		for range perPeer {
			for _, c := range cs {
				if _, err := c.WriteToUDPAddrPort(payload, target); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	receiveAll := func() {
		for total := 0; total < peers*perPeer; {
			n, err := fns[0](bufs, sizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			total += n
		}
	}
	if a := testing.AllocsPerRun(20, sendAll); a != 0 {
		t.Logf("client sends allocate %v per run; counted below", a)
	}
	receiveAll() // drain the above
	a := testing.AllocsPerRun(50, func() { sendAll(); receiveAll() })
	t.Logf("receive of %d packets from %d known peers: %v allocs", peers*perPeer, peers, a)
	if a != 0 {
		t.Errorf("receive allocates %v per batch, want 0", a)
	}

	// Send a full batch to one peer, which drains it.
	ep := eps[0]
	out := make([][]byte, b.BatchSize())
	for i := range out {
		out[i] = payload
	}
	dst := cs[0]
	peer := ep.(*Endpoint).AddrPort()
	for _, c := range cs {
		if clientAddr(c) == peer {
			dst = c
		}
	}
	rbuf := make([]byte, 2048)
	a = testing.AllocsPerRun(50, func() {
		if err := b.Send(out, ep); err != nil {
			t.Fatal(err)
		}
		for range out {
			if _, _, err := dst.ReadFromUDPAddrPort(rbuf); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Logf("send of %d packets: %v allocs", len(out), a)
	if a != 0 {
		t.Errorf("send allocates %v per batch, want 0", a)
	}
}

// TestCacheBound: a full endpoint cache is emptied, not grown, and
// endpoints stay correct.
func TestCacheBound(t *testing.T) {
	b, fns, port := openBind(t, WithEndpointCacheSize(2))
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	bufs, sizes, eps := batch(b.BatchSize())
	var cs []*net.UDPConn
	for range 5 {
		cs = append(cs, client(t, "127.0.0.1:0"))
	}
	for round := range 2 {
		for _, c := range cs {
			if _, err := c.WriteToUDPAddrPort([]byte("x"), target); err != nil {
				t.Fatal(err)
			}
			if _, err := fns[0](bufs[:1], sizes, eps); err != nil {
				t.Fatal(err)
			}
			if got, want := eps[0].(*Endpoint).AddrPort(), clientAddr(c); got != want {
				t.Errorf("round %d: endpoint %v, want %v", round, got, want)
			}
		}
	}
	if got := b.Stats().CacheResets; got == 0 {
		t.Errorf("CacheResets = 0 after 10 packets from 5 peers with a cache of 2")
	}
}

// TestOpenSamePort: Open(0) gives both families the same port.
func TestOpenSamePort(t *testing.T) {
	haveIPv6Loopback(t)
	b, fns, port := openBind(t)
	if len(fns) != 2 {
		t.Fatalf("Open returned %d ReceiveFuncs, want 2", len(fns))
	}
	if got := []string{fns[0].PrettyName(), fns[1].PrettyName()}; got[0] != "v4" || got[1] != "v6" {
		t.Errorf("PrettyName: %v, want [v4 v6]", got)
	}
	got := echo(t, b, fns)
	for _, dst := range []string{"127.0.0.1", "::1"} {
		c := client(t, netip.AddrPortFrom(netip.MustParseAddr(dst), 0).String())
		to := netip.AddrPortFrom(netip.MustParseAddr(dst), port)
		if _, from := roundTrip(t, c, to, []byte("x")); from != to {
			t.Errorf("reply from %v, want %v", from, to)
		}
		<-got
	}
}

// TestOpenFixedPort: Open(port) binds that port for both families, and a
// second Bind on it fails.
func TestOpenFixedPort(t *testing.T) {
	_, _, port := openBind(t)
	other := New()
	if _, _, err := other.Open(port); !errors.Is(err, unix.EADDRINUSE) {
		other.Close()
		t.Errorf("Open(%d) on a used port: %v, want EADDRINUSE", port, err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	des, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(des)
}

// TestClose: every ReceiveFunc returns net.ErrClosed after Close, blocked
// or not; Send fails; the Bind reopens on the same port; nothing leaks.
func TestClose(t *testing.T) {
	goroutines := runtime.NumGoroutine()
	fds := openFDs(t)

	b := New()
	var port uint16
	for cycle := range 20 {
		fns, p, err := b.Open(port)
		if err != nil {
			t.Fatalf("cycle %d: Open(%d): %v", cycle, port, err)
		}
		if port != 0 && p != port {
			t.Fatalf("cycle %d: reopened on %d, want %d", cycle, p, port)
		}
		port = p
		if _, _, err := b.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
			t.Fatalf("second Open: %v, want ErrBindAlreadyOpen", err)
		}
		errs := make(chan error, len(fns))
		for _, fn := range fns {
			go func() {
				bufs, sizes, eps := batch(conn.IdealBatchSize)
				_, err := fn(bufs, sizes, eps)
				errs <- err
			}()
		}
		time.Sleep(time.Millisecond) // let them block in recvmmsg
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		for range fns {
			select {
			case err := <-errs:
				if err != net.ErrClosed {
					t.Fatalf("blocked ReceiveFunc after Close: %v, want net.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("ReceiveFunc still blocked 5s after Close")
			}
		}
		bufs, sizes, eps := batch(1)
		for _, fn := range fns {
			if _, err := fn(bufs, sizes, eps); err != net.ErrClosed {
				t.Fatalf("ReceiveFunc called after Close: %v, want net.ErrClosed", err)
			}
		}
		ep, _ := b.ParseEndpoint("127.0.0.1:9")
		if err := b.Send([][]byte{{0}}, ep); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Send after Close: %v, want net.ErrClosed", err)
		}
	}
	if err := b.Close(); err != nil {
		t.Errorf("Close of a closed Bind: %v", err)
	}

	if got := openFDs(t); got > fds {
		t.Errorf("%d fds open after 20 open/close cycles, %d before", got, fds)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > goroutines {
		t.Errorf("%d goroutines after Close, %d before", got, goroutines)
	}
}

func TestWrongEndpointType(t *testing.T) {
	b, _, _ := openBind(t)
	if err := b.Send([][]byte{{0}}, &conn.StdNetEndpoint{}); err != conn.ErrWrongEndpointType {
		t.Errorf("Send with a foreign endpoint: %v, want ErrWrongEndpointType", err)
	}
}

func TestSetMark(t *testing.T) {
	b, _, _ := openBind(t)
	if err := b.SetMark(0x5eed); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skip("SO_MARK needs CAP_NET_ADMIN")
		}
		t.Fatalf("SetMark: %v", err)
	}
	check := func(when string) {
		b.mu.RLock()
		defer b.mu.RUnlock()
		for _, s := range []*socket{b.v4, b.v6} {
			if s == nil {
				continue
			}
			var mark int
			var err error
			s.rc.Control(func(fd uintptr) {
				mark, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK)
			})
			if err != nil || mark != 0x5eed {
				t.Errorf("%s: %s socket SO_MARK = %#x, %v; want 0x5eed", when, s.pc.LocalAddr(), mark, err)
			}
		}
	}
	check("after SetMark")
	b.Close()
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	check("after reopen")
}

func TestParseEndpoint(t *testing.T) {
	b := New()
	tests := []struct {
		in        string
		wantDst   string
		wantScope uint32
		wantErr   bool
	}{
		{in: "192.0.2.1:51820", wantDst: "192.0.2.1:51820"},
		{in: "[2001:db8::1]:443", wantDst: "[2001:db8::1]:443"},
		{in: "[::ffff:192.0.2.1]:53", wantDst: "192.0.2.1:53"},
		{in: "[fe80::1%1]:5", wantDst: "[fe80::1%1]:5", wantScope: 1},
		{in: "[fe80::1%lo]:5", wantDst: "[fe80::1%lo]:5", wantScope: 1},
		{in: "[fe80::1%nosuchif0]:5", wantErr: true},
		{in: "192.0.2.1", wantErr: true},
		{in: "example.com:1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ep, err := b.ParseEndpoint(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Errorf("ParseEndpoint(%q) = %v, want error", tt.in, ep.DstToString())
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseEndpoint(%q): %v", tt.in, err)
			}
			e := ep.(*Endpoint)
			if got := e.DstToString(); got != tt.wantDst {
				t.Errorf("DstToString %q, want %q", got, tt.wantDst)
			}
			if e.scope != tt.wantScope {
				t.Errorf("scope %d, want %d", e.scope, tt.wantScope)
			}
			if e.SrcIP().IsValid() || e.SrcToString() != "" {
				t.Errorf("parsed endpoint has Src %v", e.SrcIP())
			}
			want, _ := e.AddrPort().MarshalBinary()
			if !bytes.Equal(e.DstToBytes(), want) {
				t.Errorf("DstToBytes %x, want %x", e.DstToBytes(), want)
			}
			e.ClearSrc() // no-op, must not panic
		})
	}
}

func TestMmsghdrLayout(t *testing.T) {
	// struct mmsghdr: msghdr, unsigned int, padded to msghdr's alignment.
	want := unsafe.Sizeof(unix.Msghdr{}) + 4
	if a := unsafe.Alignof(unix.Msghdr{}); want%a != 0 {
		want += a - want%a
	}
	if got := unsafe.Sizeof(mmsghdr{}); got != want {
		t.Errorf("sizeof(mmsghdr) = %d, want %d", got, want)
	}
	if runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64" {
		if got := unsafe.Sizeof(mmsghdr{}); got != 64 {
			t.Errorf("sizeof(mmsghdr) = %d on %s, want 64", got, runtime.GOARCH)
		}
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
