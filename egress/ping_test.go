package egress

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	lo4 = netip.MustParseAddr("127.0.0.1")
	lo6 = netip.MustParseAddr("::1")
)

// skipNoPing skips when this process can open neither a datagram nor a raw
// ICMP socket (not root, and ping_group_range excludes our group).
func skipNoPing(t *testing.T, raw bool) {
	t.Helper()
	if !raw {
		if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP); err == nil {
			unix.Close(fd)
			return
		}
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	if err != nil {
		t.Skipf("needs root (CAP_NET_RAW) or a net.ipv4.ping_group_range that includes gid %d: %v", os.Getgid(), err)
	}
	unix.Close(fd)
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// checkNoLeak fails when goroutines or file descriptors outlive a test
// body; the raw pinger must close its socket and reader after the last
// ping.
func checkNoLeak(t *testing.T) func() {
	g0, f0 := runtime.NumGoroutine(), countFDs(t)
	return func() {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			g, f := runtime.NumGoroutine(), countFDs(t)
			if g <= g0 && f <= f0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				t.Fatalf("leak: goroutines %d -> %d, fds %d -> %d\n%s", g0, g, f0, f, buf[:runtime.Stack(buf, true)])
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func hasIPv6Loopback() bool {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return unix.Bind(fd, &unix.SockaddrInet6{Addr: lo6.As16()}) == nil
}

// pingMany sends n concurrent pings to each dst, each with its own data,
// and fails unless every one got its own reply.
func pingMany(t *testing.T, p *pinger, dsts []netip.Addr, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, n*len(dsts))
	for _, dst := range dsts {
		for i := range n {
			wg.Go(func() {
				data := fmt.Appendf(nil, "wedge ping %d to %s", i, dst)
				if err := p.ping(ctx, dst, data); err != nil {
					errs <- fmt.Errorf("ping %s #%d: %w", dst, i, err)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func loopbacks() []netip.Addr {
	if hasIPv6Loopback() {
		return []netip.Addr{lo4, lo6}
	}
	return []netip.Addr{lo4}
}

// TestPingLoopback pings through whatever mode the host permits.
func TestPingLoopback(t *testing.T) {
	skipNoPing(t, false)
	defer checkNoLeak(t)()
	p := newPinger(netip.Addr{}, netip.Addr{})
	for _, dst := range loopbacks() {
		if err := p.ping(context.Background(), dst, []byte("hello")); err != nil {
			t.Fatalf("ping %s: %v", dst, err)
		}
	}
	pingMany(t, p, loopbacks(), 32)
}

// TestPingRaw forces the shared raw socket and checks that many pings in
// flight each get their own reply, with and without a bound source.
func TestPingRaw(t *testing.T) {
	skipNoPing(t, true)
	for _, src := range []netip.Addr{{}, lo4} {
		name := "unbound"
		if src.IsValid() {
			name = "bound"
		}
		t.Run(name, func(t *testing.T) {
			defer checkNoLeak(t)()
			s6 := netip.Addr{}
			if src.IsValid() && hasIPv6Loopback() {
				s6 = lo6
			}
			p := newPinger(src, s6)
			p.v4.mode.Store(modeRaw)
			p.v6.mode.Store(modeRaw)
			pingMany(t, p, loopbacks(), 64)
			for range 3 { // socket reopened after going idle
				pingMany(t, p, loopbacks(), 1)
			}
		})
	}
}

func TestPingCanceled(t *testing.T) {
	p := newPinger(netip.Addr{}, netip.Addr{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.ping(ctx, lo4, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestDialerPing(t *testing.T) {
	skipNoPing(t, false)
	d := newLoopbackDialer(t, Config{})
	if err := d.Ping(context.Background(), lo4, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := d.Stats().Ping; got.OK != 1 {
		t.Fatalf("got stats %+v, want 1 ok", got)
	}
}

// inNetns runs fn on a goroutine locked to a thread in a new network
// namespace with lo up, after writing the given sysctls there. The thread
// is never unlocked, so it exits with its namespace. Sockets must be
// created by fn's goroutine.
func inNetns(t *testing.T, sysctls map[string]string, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		if err := linkUp("lo"); err != nil {
			t.Errorf("lo up: %v", err)
			return
		}
		for k, v := range sysctls {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
				t.Errorf("sysctl %s: %v", k, err)
				return
			}
		}
		fn()
	}()
	<-done
}

func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// TestPingDgramNetns checks the unprivileged datagram path in a namespace
// whose ping_group_range admits every group.
func TestPingDgramNetns(t *testing.T) {
	inNetns(t, map[string]string{"net/ipv4/ping_group_range": "0 2147483647"}, func() {
		p := newPinger(netip.Addr{}, netip.Addr{})
		for _, dst := range []netip.Addr{lo4, lo6} {
			if dst.Is6() && !hasIPv6Loopback() {
				continue
			}
			if err := p.ping(context.Background(), dst, []byte("dgram")); err != nil {
				t.Errorf("ping %s: %v", dst, err)
			}
		}
		if got := p.v4.mode.Load(); got != modeDgram {
			t.Errorf("got mode %d, want datagram", got)
		}
	})
}

// TestPingTimeoutNetns pings a namespace that ignores echo requests: each
// mode must give up when ctx ends, without leaking.
func TestPingTimeoutNetns(t *testing.T) {
	defer checkNoLeak(t)()
	inNetns(t, map[string]string{
		"net/ipv4/ping_group_range":     "0 2147483647",
		"net/ipv4/icmp_echo_ignore_all": "1",
		"net/ipv6/icmp/echo_ignore_all": "1",
	}, func() {
		for _, mode := range []int32{modeDgram, modeRaw} {
			p := newPinger(netip.Addr{}, netip.Addr{})
			p.v4.mode.Store(mode)
			p.v6.mode.Store(mode)
			for _, dst := range []netip.Addr{lo4, lo6} {
				if dst.Is6() && !hasIPv6Loopback() {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				start := time.Now()
				err := p.ping(ctx, dst, []byte("nobody home"))
				cancel()
				if err == nil || !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("mode %d ping %s: got %v, want a deadline error", mode, dst, err)
				}
				if el := time.Since(start); el > 2*time.Second {
					t.Errorf("mode %d ping %s: took %v", mode, dst, el)
				}
			}
		}
	})
}
