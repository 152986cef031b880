package testutil

import (
	"fmt"
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
