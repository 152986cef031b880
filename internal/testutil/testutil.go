// Package testutil holds helpers for tests. It is imported only from
// _test.go files and imports nothing of wedge's, so any package's tests
// can use it without an import cycle.
package testutil

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// WaitFor polls cond until it holds and fails tb (Fatalf) if it still does
// not after d. It polls every millisecond at first, backing off to every
// 10 ms, so a condition that is about to hold costs little and a long wait
// does not spin. what names the condition in the failure.
func WaitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	poll := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", d, what)
			return // a testing.TB that does not stop the goroutine
		}
		time.Sleep(poll)
		poll = min(2*poll, 10*time.Millisecond)
	}
}

// goroutineWait is how long CheckGoroutines lets the goroutines f started
// take to end once f has returned.
var goroutineWait = 5 * time.Second

// CheckGoroutines runs f and fails t (Fatalf, with every goroutine's
// stack) if, goroutineWait (5 s) after f returns, more goroutines run than
// before f: f leaked some. It counts the goroutines of the whole process,
// so a test using it must not run in parallel with others.
func CheckGoroutines(t testing.TB, f func()) {
	t.Helper()
	runtime.GC()
	before := runtime.NumGoroutine()
	f()
	deadline := time.Now().Add(goroutineWait)
	for {
		now := runtime.NumGoroutine()
		if now <= before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d running %v after f returned, want <= %d as before f\n%s", now, goroutineWait, before, allStacks())
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CheckEcho writes size random bytes to c, half-closes it and fails tb
// (Fatalf) unless the same bytes come back, then EOF, within 20 seconds:
// c must lead to an echo server, and have CloseWrite (as *net.TCPConn and
// gVisor's TCP conns do).
func CheckEcho(tb testing.TB, c net.Conn, size int) {
	tb.Helper()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		tb.Fatalf("echo: %T has no CloseWrite", c)
		return
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = cw.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		tb.Fatalf("read echo: %v", err)
		return
	}
	if err := <-errc; err != nil {
		tb.Fatalf("write: %v", err)
		return
	}
	if !bytes.Equal(got, data) {
		tb.Fatalf("echo: got %d bytes, want the %d sent back intact", len(got), len(data))
	}
}

// allStacks returns the stacks of all goroutines, growing the buffer
// until they fit (up to 64 MiB).
func allStacks() []byte {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) || len(buf) >= 64<<20 {
			return buf[:n]
		}
		buf = make([]byte, 2*len(buf))
	}
}

// ListenUDPEcho answers each datagram on network/addr (e.g. "udp4",
// "127.0.0.1:0") with "echo:" and the datagram, until the test ends, and
// returns the address it listens on.
func ListenUDPEcho(tb testing.TB, network, addr string) netip.AddrPort {
	tb.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		tb.Fatal(err)
		return netip.AddrPort{}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	tb.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}
