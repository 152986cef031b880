package netstack

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	wgnetstack "golang.zx2c4.com/wireguard/tun/netstack"
)

// bulkServer serves the benchmark protocol: the first byte picks the
// direction. 'u': read to EOF, answer the byte count. 'd': read an 8-byte
// count, send that many bytes, close.
func bulkServer(c net.Conn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case 'u':
		n, _ := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(n))
		c.Write(b[:])
	case 'd':
		var b [8]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		buf := make([]byte, 256<<10)
		for left := int64(binary.BigEndian.Uint64(b[:])); left > 0; {
			n := min(left, int64(len(buf)))
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
			left -= n
		}
	}
}

// BenchmarkTCPThroughput pushes bulk TCP through a client tun/netstack and
// the server-side device, both directions:
//
//	wedge: client tun/netstack ─ pumps ─ Stack ─ fakeDialer ─ 127.0.0.1 server
//	stock: client tun/netstack ─ pumps ─ tun/netstack with the server in it
//
// (the stock case is wireguard-go's tun/netstack on both sides, the
// baseline; compare MB/s of the same direction within one run).
func BenchmarkTCPThroughput(b *testing.B) {
	const chunk = 1 << 20
	dst := netip.AddrPortFrom(remote, 5001)
	setups := []struct {
		name string
		make func(b *testing.B) *harness
	}{
		{"wedge", func(b *testing.B) *harness {
			addr := listenTCP(b, func(c *net.TCPConn) { bulkServer(c) })
			return newHarness(b, Config{Dialer: &fakeDialer{tcpTarget: addr}}, clientA)
		}},
		{"stock", func(b *testing.B) *harness {
			dev, n, err := wgnetstack.CreateNetTUN([]netip.Addr{remote}, nil, testMTU)
			if err != nil {
				b.Fatal(err)
			}
			l, err := n.ListenTCPAddrPort(dst)
			if err != nil {
				b.Fatal(err)
			}
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go bulkServer(c)
				}
			}()
			b.Cleanup(func() { l.Close() })
			return newHarnessDev(b, dev, clientA)
		}},
	}
	for _, setup := range setups {
		for _, dir := range []string{"upload", "download"} {
			b.Run(setup.name+"/"+dir, func(b *testing.B) {
				h := setup.make(b)
				c, err := h.dialTCP(b, 0, dst, 5*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				total := int64(b.N) * chunk
				b.SetBytes(chunk)
				b.ResetTimer()
				if dir == "upload" {
					c.Write([]byte{'u'})
					buf := make([]byte, chunk)
					for range b.N {
						if _, err := c.Write(buf); err != nil {
							b.Fatal(err)
						}
					}
					c.(interface{ CloseWrite() error }).CloseWrite()
					var r [8]byte
					if _, err := io.ReadFull(c, r[:]); err != nil {
						b.Fatal(err)
					}
					if got := int64(binary.BigEndian.Uint64(r[:])); got != total {
						b.Fatalf("server got %d bytes, want %d", got, total)
					}
				} else {
					var r [9]byte
					r[0] = 'd'
					binary.BigEndian.PutUint64(r[1:], uint64(total))
					c.Write(r[:])
					n, err := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
					if err != nil || n != total {
						b.Fatalf("downloaded %d bytes (%v), want %d", n, err, total)
					}
				}
				b.StopTimer()
				if h.stack != nil {
					st := h.stack.Stats()
					b.Logf("dropped out %d in %d; retransmits %d", st.DroppedOut, st.DroppedIn, h.stack.stack.Stats().TCP.Retransmits.Value())
				}
			})
		}
	}
}
