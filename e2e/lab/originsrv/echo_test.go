package main

import (
	"io"
	"net"
	"testing"
	"time"
)

// echoServer answers like serveEcho, pausing pause once after the first
// echo (a stalled session); pause 0 never stalls.
func echoServer(t *testing.T, pause time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		c.Write(buf)
		time.Sleep(pause)
		io.Copy(c, c)
	}()
	return ln.Addr().String()
}

func TestEcho(t *testing.T) {
	for _, c := range []struct {
		name     string
		pause    time.Duration
		minGapMS int64
		maxGapMS int64
	}{
		{"steady", 0, 0, 300},
		{"stalled", 800 * time.Millisecond, 750, 3000},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := dialEcho("", echoServer(t, c.pause), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			r := runEcho(conn, 64, 10*time.Millisecond, time.Second)
			if r.Broken || r.Sent < 20 || r.Echoed != r.Sent {
				t.Fatalf("got %+v, want every message echoed and nothing broken", r)
			}
			if r.MaxGapMS < c.minGapMS || r.MaxGapMS > c.maxGapMS {
				t.Errorf("max gap %d ms, want %d..%d", r.MaxGapMS, c.minGapMS, c.maxGapMS)
			}
			if r.RTTP50US <= 0 || r.RTTP50US > r.RTTP99US || r.RTTP99US > r.RTTMaxUS {
				t.Errorf("RTTs p50 %d µs, p99 %d µs, max %d µs: want 0 < p50 ≤ p99 ≤ max", r.RTTP50US, r.RTTP99US, r.RTTMaxUS)
			}
			// The messages written during the pause waited for it.
			if c.pause > 0 && r.RTTMaxUS < (c.pause-100*time.Millisecond).Microseconds() {
				t.Errorf("RTT max %d µs after a %v stall", r.RTTMaxUS, c.pause)
			}
		})
	}
	t.Run("broken", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err == nil {
				time.Sleep(100 * time.Millisecond)
				c.Close() // a session the server side lost
			}
		}()
		conn, err := dialEcho("", ln.Addr().String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if r := runEcho(conn, 64, 10*time.Millisecond, time.Second); !r.Broken {
			t.Errorf("got %+v, want a broken session", r)
		}
	})
}

func TestPercentileUS(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		ds = append(ds, time.Duration(i)*time.Microsecond)
	}
	for _, c := range []struct {
		p    int
		want int64
	}{{50, 50}, {99, 99}, {100, 100}, {1, 1}} {
		if got := percentileUS(ds, c.p); got != c.want {
			t.Errorf("p%d = %d µs, want %d", c.p, got, c.want)
		}
	}
	if got := percentileUS(nil, 50); got != 0 {
		t.Errorf("p50 of nothing = %d", got)
	}
	if got := percentileUS(ds[:1], 99); got != 100 {
		t.Errorf("p99 of one = %d", got)
	}
}
