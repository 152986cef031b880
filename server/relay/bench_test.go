package relay

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"
)

// delayConn delays everything written to it by oneWay, in order, as a
// path with that one-way latency would (Write returns at once, as into a
// socket buffer).
type delayConn struct {
	net.Conn
	q      chan delayed
	mu     sync.Mutex
	closed bool
}

type delayed struct {
	at time.Time
	b  []byte
}

func newDelayConn(c net.Conn, oneWay time.Duration) net.Conn {
	d := &delayConn{Conn: c, q: make(chan delayed, 4096)}
	go func() {
		for p := range d.q {
			time.Sleep(time.Until(p.at.Add(oneWay)))
			if _, err := c.Write(p.b); err != nil {
				c.Close()
				for range d.q {
				}
				return
			}
		}
	}()
	return d
}

func (d *delayConn) Write(b []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, net.ErrClosed
	}
	d.q <- delayed{time.Now(), append([]byte(nil), b...)}
	return len(b), nil
}

func (d *delayConn) Close() error {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		close(d.q)
	}
	d.mu.Unlock()
	return d.Conn.Close()
}

type delayListener struct {
	net.Listener
	oneWay time.Duration
}

func (l delayListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newDelayConn(c, l.oneWay), nil
}

// BenchmarkOpen measures opening a relayed flow (Dial returning: the
// exit answered 200 and is connected to the origin) over a path of rtt,
// cold (a new connection: TCP, TLS 1.3, HTTP/2, CONNECT) and warm (a
// CONNECT stream on the connection already open). Run:
//
//	go test -run XXX -bench Open -benchtime 20x ./server/relay
func BenchmarkOpen(b *testing.B) {
	const rtt = 20 * time.Millisecond
	cr := creds(b, 1, "n1")
	srv, err := NewServer(ServerConfig{Credentials: cr, Dial: func(ctx context.Context, dst netip.AddrPort, _ Tags, _ time.Duration) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", dst.String())
	}})
	if err != nil {
		b.Fatal(err)
	}
	ln := listen(b)
	go srv.Serve(delayListener{ln, rtt / 2})
	defer srv.Close()
	exit := ln.Addr().String()
	origin := echoOrigin(b)
	cfg := ClientConfig{Credentials: cr, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		time.Sleep(rtt) // SYN, SYN-ACK
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newDelayConn(c, rtt/2), nil
	}}
	open := func(b *testing.B, c *Client) {
		conn, err := c.Dial(context.Background(), exit, origin, Meta{})
		if err != nil {
			b.Fatal(err)
		}
		conn.Close()
	}
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			c, err := NewClient(cfg)
			if err != nil {
				b.Fatal(err)
			}
			open(b, c)
			b.StopTimer()
			c.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(b.Elapsed())/float64(b.N)/float64(rtt), "RTT/op")
	})
	b.Run("warm", func(b *testing.B) {
		c, err := NewClient(cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		open(b, c)
		for b.Loop() {
			open(b, c)
		}
		b.ReportMetric(float64(b.Elapsed())/float64(b.N)/float64(rtt), "RTT/op")
	})
}

// BenchmarkThroughput is the relay's own cost on loopback: a download
// from an origin, direct and relayed (TLS, HTTP/2 framing and flow
// control, the exit's copy). Run:
//
//	go test -run XXX -bench Throughput -benchtime 10x ./server/relay
func BenchmarkThroughput(b *testing.B) {
	const size = 64 << 20
	ln := listen(b)
	defer ln.Close()
	go func() {
		buf := make([]byte, 256<<10)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for n := 0; n < size; n += len(buf) {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	origin := ln.Addr().(*net.TCPAddr).AddrPort()
	cr := creds(b, 1, "n1")
	srv, err := NewServer(ServerConfig{Credentials: cr, Dial: func(ctx context.Context, dst netip.AddrPort, _ Tags, _ time.Duration) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", dst.String())
	}})
	if err != nil {
		b.Fatal(err)
	}
	rl := listen(b)
	go srv.Serve(rl)
	defer srv.Close()
	c, err := NewClient(ClientConfig{Credentials: cr})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	drain := func(b *testing.B, conn net.Conn) {
		defer conn.Close()
		n, err := io.CopyBuffer(io.Discard, conn, make([]byte, 256<<10))
		if err != nil || n != size {
			b.Fatalf("read %d bytes, %v", n, err)
		}
	}
	b.Run("direct", func(b *testing.B) {
		b.SetBytes(size)
		defer cpuPerMB(b, size)()
		for b.Loop() {
			conn, err := net.Dial("tcp", origin.String())
			if err != nil {
				b.Fatal(err)
			}
			drain(b, conn)
		}
	})
	b.Run("relayed", func(b *testing.B) {
		b.SetBytes(size)
		defer cpuPerMB(b, size)()
		for b.Loop() {
			conn, err := c.Dial(context.Background(), rl.Addr().String(), origin, Meta{})
			if err != nil {
				b.Fatal(err)
			}
			drain(b, conn)
		}
	})
}

// cpuPerMB reports, when the function it returns is called, the process's
// CPU time (user and system, both ends of the pipe included) per MB moved.
func cpuPerMB(b *testing.B, size int) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() {
		b.ReportMetric(float64(cpu()-start)/float64(time.Millisecond)/(float64(b.N)*float64(size)/1e6), "cpu-ms/MB")
	}
}
