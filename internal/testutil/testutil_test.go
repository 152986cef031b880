package testutil

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeTB records Fatalf instead of stopping the test, so the helpers'
// failures can be checked. Other methods go to the real test.
type fakeTB struct {
	testing.TB
	mu    sync.Mutex
	fatal []string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fatal = append(f.fatal, fmt.Sprintf(format, args...))
}

func (f *fakeTB) failures() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fatal
}

func TestWaitForHolds(t *testing.T) {
	tb := &fakeTB{TB: t}
	calls := 0
	WaitFor(tb, 5*time.Second, "the third call", func() bool { calls++; return calls == 3 })
	if got := tb.failures(); len(got) != 0 || calls != 3 {
		t.Fatalf("WaitFor: failures %q after %d calls, want none after 3", got, calls)
	}
}

func TestWaitForTimesOut(t *testing.T) {
	tb := &fakeTB{TB: t}
	start := time.Now()
	WaitFor(tb, 50*time.Millisecond, "never", func() bool { return false })
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Errorf("WaitFor gave up after %v, before its 50ms", took)
	}
	got := tb.failures()
	if len(got) != 1 || !strings.Contains(got[0], "waiting for never") {
		t.Fatalf("WaitFor: failures %q, want one naming what it waited for", got)
	}
}

func TestCheckGoroutinesClean(t *testing.T) {
	tb := &fakeTB{TB: t}
	CheckGoroutines(tb, func() {
		done := make(chan struct{})
		go func() { close(done) }()
		<-done
	})
	if got := tb.failures(); len(got) != 0 {
		t.Fatalf("CheckGoroutines: failures %q, want none", got)
	}
}

func TestCheckGoroutinesLeak(t *testing.T) {
	defer func(d time.Duration) { goroutineWait = d }(goroutineWait)
	goroutineWait = 100 * time.Millisecond
	tb := &fakeTB{TB: t}
	stop := make(chan struct{})
	defer close(stop)
	CheckGoroutines(tb, func() {
		go func() { <-stop }()
	})
	got := tb.failures()
	if len(got) != 1 || !strings.Contains(got[0], "running 100ms after f returned") || !strings.Contains(got[0], "TestCheckGoroutinesLeak") {
		t.Fatalf("CheckGoroutines: failures %q, want one with the leaked goroutine's stack", got)
	}
}

// echoServer serves one connection on 127.0.0.1, echoing all it reads but
// the last drop bytes, then half-closing.
func echoServer(t *testing.T, drop int) net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		c.Write(b[:len(b)-drop])
		c.(*net.TCPConn).CloseWrite()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); <-done })
	return c
}

func TestCheckEcho(t *testing.T) {
	tb := &fakeTB{TB: t}
	CheckEcho(tb, echoServer(t, 0), 100000)
	if got := tb.failures(); len(got) != 0 {
		t.Fatalf("CheckEcho of a faithful echo: failures %q, want none", got)
	}
	CheckEcho(tb, echoServer(t, 1), 100000)
	if got := tb.failures(); len(got) != 1 || !strings.Contains(got[0], "got 99999 bytes") {
		t.Fatalf("CheckEcho of an echo one byte short: failures %q, want one", got)
	}
}
