package happyeyeballs

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

var (
	v6 = netip.MustParseAddrPort("[2001:db8::1]:80")
	v4 = netip.MustParseAddrPort("192.0.2.1:80")
)

type fakeConn struct {
	net.Conn
	dst    netip.AddrPort
	closed *atomic.Int32
}

func (c fakeConn) Close() error { c.closed.Add(1); return nil }

// dialer answers per address after a delay, or fails, or hangs until ctx ends.
func dialer(closed *atomic.Int32, plan map[netip.AddrPort]time.Duration, fail map[netip.AddrPort]error) Func {
	return func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		if err := fail[dst]; err != nil {
			return nil, err
		}
		d, ok := plan[dst]
		if !ok {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		select {
		case <-time.After(d):
			return fakeConn{dst: dst, closed: closed}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func TestDial(t *testing.T) {
	refused := errors.New("refused")
	for _, tc := range []struct {
		name    string
		plan    map[netip.AddrPort]time.Duration
		fail    map[netip.AddrPort]error
		want    netip.AddrPort
		wantErr error
		within  time.Duration
	}{
		{"primary answers", map[netip.AddrPort]time.Duration{v6: 0, v4: 0}, nil, v6, nil, Delay},
		{"primary hangs: fallback after Delay", map[netip.AddrPort]time.Duration{v4: 0}, nil, v4, nil, 2 * Delay},
		{"primary fails: fallback at once", map[netip.AddrPort]time.Duration{v4: 0}, map[netip.AddrPort]error{v6: refused}, v4, nil, Delay / 2},
		{"both fail: primary's error", nil, map[netip.AddrPort]error{v6: refused, v4: errors.New("other")}, netip.AddrPort{}, refused, Delay / 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var closed atomic.Int32
			start := time.Now()
			c, err := Dial(context.Background(), dialer(&closed, tc.plan, tc.fail), []netip.AddrPort{v6}, []netip.AddrPort{v4})
			if took := time.Since(start); took > tc.within {
				t.Errorf("took %v, want under %v", took, tc.within)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || c.(fakeConn).dst != tc.want {
				t.Fatalf("Dial = %v, %v; want a conn to %v", c, err, tc.want)
			}
		})
	}
}

// TestLoserClosed: when both families connect, the one that lost is closed.
func TestLoserClosed(t *testing.T) {
	var closed atomic.Int32
	plan := map[netip.AddrPort]time.Duration{v6: Delay + 50*time.Millisecond, v4: 0}
	c, err := Dial(context.Background(), func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		// Ignore ctx: both dials complete, as real ones may.
		time.Sleep(plan[dst])
		return fakeConn{dst: dst, closed: &closed}, nil
	}, []netip.AddrPort{v6}, []netip.AddrPort{v4})
	if err != nil || c.(fakeConn).dst != v4 {
		t.Fatalf("Dial = %v, %v; want v4", c, err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for closed.Load() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if closed.Load() != 1 {
		t.Fatalf("the losing connection was closed %d times, want 1", closed.Load())
	}
}
