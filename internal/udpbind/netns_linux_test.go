package udpbind

// IPv6 tests need a second local IPv6 address. They run in a network
// namespace of their own (root only):
//
//	netns udpbind-test-PID-N
//	┌──────────────────────────────────────────────┐
//	│ lo: 127.0.0.1/8, ::1, 2001:db8::2, 2001:db8::3 │
//	│                                              │
//	│  Bind [::]:port, 0.0.0.0:port                │
//	│  clients [::1]:0, [2001:db8::3]:0, 127.0.0.1:0 │
//	└──────────────────────────────────────────────┘

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

var netnsSeq atomic.Int32

// newNetns creates a network namespace with lo up and addrs on lo, deleted
// when the test ends. It skips the test unless root with ip(8).
func newNetns(t *testing.T, addrs ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) to create a network namespace")
	}
	ns := fmt.Sprintf("udpbind-test-%d-%d", os.Getpid(), netnsSeq.Add(1))
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("-n", ns, "link", "set", "lo", "up")
	for _, a := range addrs {
		ip("-n", ns, "addr", "add", a, "dev", "lo", "nodad")
	}
	// The kernel finishes adding an IPv6 address (its local route) in a
	// workqueue after ip(8) returns, even with nodad: wait until each
	// address can talk to itself.
	inNetns(t, ns, func() {
		for _, a := range addrs {
			addr := netip.MustParsePrefix(a).Addr()
			if err := waitLocal(addr); err != nil {
				t.Errorf("address %v in %s: %v", addr, ns, err)
			}
		}
	})
	return ns
}

// waitLocal waits up to 5s until a UDP socket on addr receives from itself.
func waitLocal(addr netip.Addr) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := selfPing(addr)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func selfPing(addr netip.Addr) error {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort([]byte{1}, clientAddr(c)); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, _, err = c.ReadFromUDPAddrPort(make([]byte, 1))
	return err
}

// inNetns runs f on a thread in ns. Sockets f creates stay in ns whichever
// thread uses them later. The thread is never returned to the scheduler.
func inNetns(t *testing.T, ns string, f func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread exits with us
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		f()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestIPv6Netns(t *testing.T) {
	ns := newNetns(t, "2001:db8::2/128", "2001:db8::3/128")

	var (
		b                  *Bind
		echoFns            []conn.ReceiveFunc
		port               uint16
		c1, c3, c4, cNoSrc *net.UDPConn
		openErr            error
	)
	inNetns(t, ns, func() {
		b = New()
		var err error
		echoFns, port, err = b.Open(0)
		if err != nil {
			openErr = err
			return
		}
		var cs []*net.UDPConn
		for _, a := range []string{"[::1]:0", "[2001:db8::3]:0", "127.0.0.1:0", "[::1]:0"} {
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(a)))
			if err != nil {
				openErr = err
				return
			}
			cs = append(cs, c)
		}
		c1, c3, c4, cNoSrc = cs[0], cs[1], cs[2], cs[3]
	})
	if openErr != nil {
		t.Fatal(openErr)
	}
	for _, c := range []*net.UDPConn{c1, c3, c4, cNoSrc} {
		t.Cleanup(func() { c.Close() })
	}
	t.Cleanup(func() { b.Close() })
	got := echo(t, b, echoFns)

	t.Run("reply source", func(t *testing.T) {
		tests := []struct {
			name   string
			c      *net.UDPConn
			target string
		}{
			{"to second address from ::1", c1, "2001:db8::2"},
			{"to second address from third", c3, "2001:db8::2"},
			{"to ::1 from ::1", c1, "::1"},
			{"to third address from ::1", c1, "2001:db8::3"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				dst := netip.AddrPortFrom(netip.MustParseAddr(tt.target), port)
				if _, from := roundTrip(t, tt.c, dst, []byte(tt.name)); from != dst {
					t.Errorf("reply from %v, want %v", from, dst)
				}
				r := <-got
				if r.ep.Src() != dst.Addr() {
					t.Errorf("endpoint Src %v, want %v", r.ep.Src(), dst.Addr())
				}
			})
		}
	})

	// StdNetBind's bug: after an IPv4 send, an IPv6 send copied only the
	// first 4 bytes of the address. With two IPv6 peers whose addresses
	// differ after byte 4 that misroutes packets.
	t.Run("alternating families", func(t *testing.T) {
		peers := []*net.UDPConn{c1, c4, c3, c4, cNoSrc}
		want := map[*net.UDPConn][]string{}
		for r := range 30 {
			for i, c := range peers {
				msg := fmt.Sprintf("%d/%d", r, i)
				ep := &Endpoint{dst: clientAddr(c)}
				if i%2 == 0 && c != cNoSrc {
					ep.src = netip.MustParseAddr("2001:db8::2")
				}
				if err := b.Send([][]byte{[]byte(msg)}, ep); err != nil {
					t.Fatalf("Send to %v: %v", ep.dst, err)
				}
				want[c] = append(want[c], msg)
			}
		}
		for _, c := range []*net.UDPConn{c1, c3, c4, cNoSrc} {
			for i, w := range want[c] {
				got, _ := readReply(t, c)
				if string(got) != w {
					t.Fatalf("%v: packet %d is %q, want %q", c.LocalAddr(), i, got, w)
				}
			}
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if _, from, err := c.ReadFromUDPAddrPort(make([]byte, 64)); err == nil {
				t.Errorf("%v: extra packet from %v", c.LocalAddr(), from)
			}
		}
	})
}
