package udpbind

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

func sized(lens ...int) [][]byte {
	bufs := make([][]byte, len(lens))
	for i, l := range lens {
		bufs[i] = bytes.Repeat([]byte{byte(i)}, l)
	}
	return bufs
}

// segmentOf returns the UDP_SEGMENT value in message i's control, 0 if none.
func segmentOf(t *txBatch, i int) int {
	h := &t.hs[i].hdr
	if h.Control == nil {
		return 0
	}
	oob := unsafe.Slice(h.Control, h.Controllen)
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_UDP && m.Header.Type == unix.UDP_SEGMENT {
			return int(*(*uint16)(unsafe.Pointer(&m.Data[0])))
		}
	}
	return 0
}

func TestFillGSO(t *testing.T) {
	tests := []struct {
		name     string
		lens     []int
		gso      bool
		wantMsgs []int // datagrams per message
		wantSeg  []int // UDP_SEGMENT per message (0: none)
	}{
		{"no gso", []int{100, 100, 100}, false, []int{1, 1, 1}, []int{0, 0, 0}},
		{"equal run", []int{100, 100, 100}, true, []int{3}, []int{100}},
		{"short tail ends a message", []int{100, 100, 60, 100, 100}, true, []int{3, 2}, []int{100, 100}},
		{"larger starts a new one", []int{60, 100, 100}, true, []int{1, 2}, []int{0, 100}},
		{"single", []int{148}, true, []int{1}, []int{0}},
		{"64 max", make64(70, 1000), true, []int{64, 6}, []int{1000, 1000}},
		{"payload limit", []int{30000, 30000, 30000}, true, []int{2, 1}, []int{30000, 0}},
		// 46 x 1,424 is 65,504 bytes: one IP datagram holds it, but the
		// frame (65,546 with its headers) passes gso_max_size.
		{"frame under gso_max_size", make64(46, 1424), true, []int{45, 1}, []int{1424, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx := newTxBatch()
			tx.setDst(netip.MustParseAddr("192.0.2.1"), 51820, 0)
			tx.fill(sized(tt.lens...), false, tt.gso)
			if tx.vlen != len(tt.wantMsgs) {
				t.Fatalf("%d messages, want %d", tx.vlen, len(tt.wantMsgs))
			}
			for i := range tx.vlen {
				if got := int(tx.hs[i].hdr.Iovlen); got != tt.wantMsgs[i] {
					t.Errorf("message %d carries %d datagrams, want %d", i, got, tt.wantMsgs[i])
				}
				if got := segmentOf(tx, i); got != tt.wantSeg[i] {
					t.Errorf("message %d UDP_SEGMENT %d, want %d", i, got, tt.wantSeg[i])
				}
			}
			tx.release()
		})
	}
}

// TestFillFrameSize: for every datagram length, v4 and v6, no message's
// frame (payload, UDP, IP and a 14-byte Ethernet header) reaches the
// default gso_max_size, where the kernel would segment it in software.
func TestFillFrameSize(t *testing.T) {
	for _, v := range []struct {
		dst string
		hdr int // IP + UDP
	}{{"192.0.2.1", 28}, {"2001:db8::1", 48}} {
		tx := newTxBatch()
		tx.setDst(netip.MustParseAddr(v.dst), 51820, 0)
		full := sized(make64(conn.IdealBatchSize, 9000)...)
		bufs := make([][]byte, len(full))
		for l := 1; l <= 9000; l++ {
			for i := range bufs {
				bufs[i] = full[i][:l]
			}
			tx.fill(bufs, false, true)
			for i := range tx.vlen {
				h := &tx.hs[i].hdr
				payload := 0
				for _, iov := range unsafe.Slice(h.Iov, h.Iovlen) {
					payload += int(iov.Len)
				}
				if frame := payload + v.hdr + 14; h.Iovlen > 1 && frame >= 1<<16 {
					t.Fatalf("%s, %d-byte datagrams: message %d is a %d-byte frame (%d datagrams)", v.dst, l, i, frame, h.Iovlen)
				}
			}
			tx.release()
		}
	}
}

// TestSendGSOWhole: a full batch of WireGuard-sized datagrams reaches a
// UDP_GRO socket as GSO packets, not datagram by datagram: the kernel kept
// every message whole. (With a 65,507-byte limit the 46-datagram message
// was segmented before the device and arrived as 46 datagrams.)
func TestSendGSOWhole(t *testing.T) {
	b, fns, port := openBind(t)
	c := client(t, "127.0.0.1:0")
	c.SetReadBuffer(8 << 20)
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var soErr error
	rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		soErr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1)
	})
	if soErr != nil {
		t.Skipf("no UDP_GRO: %v", soErr)
	}
	ep := peerEndpoint(t, b, fns, c, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port))
	const n, size = 92, 1424 // two full messages of 46 under the old limit
	if err := b.Send(sized(make64(n, size)...), ep); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<16)
	got, reads, segmented := 0, 0, 0
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for got < n*size {
		m, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("after %d bytes in %d reads: %v", got, reads, err)
		}
		got += m
		reads++
		if m == size {
			segmented++
		}
	}
	// 92 datagrams fill two messages of 45 and one of 2 (or so): three
	// reads. Arriving one by one would take 92.
	if reads > 4 || segmented > 0 {
		t.Errorf("%d datagrams arrived in %d reads, %d single datagrams: the kernel segmented the GSO packets", n, reads, segmented)
	}
}

func make64(n, l int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = l
	}
	return out
}

// TestSendGSO sends runs of equal datagrams with short tails through the
// kernel's segmentation to a plain socket: every datagram arrives intact,
// in order, from the address the client targeted.
func TestSendGSO(t *testing.T) {
	for _, tc := range []struct{ name, client, target string }{
		{"v4", "127.0.0.1:0", "127.0.0.2"},
		{"v6", "[::1]:0", "::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if netip.MustParseAddr(tc.target).Is6() {
				haveIPv6Loopback(t)
			}
			b, fns, port := openBind(t)
			c := client(t, tc.client)
			// Hold the whole burst: the default buffer (~200 KiB of
			// truesize) would drop the tail and blame GSO.
			c.SetReadBuffer(8 << 20)
			if rc, err := c.SyscallConn(); err == nil {
				rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) })
			}
			dst := netip.AddrPortFrom(netip.MustParseAddr(tc.target), port)
			ep := peerEndpoint(t, b, fns, c, dst)
			// Without root the buffer stays at net.core.rmem_max: a
			// smaller burst (still two GSO messages) fits it.
			n := 150
			if os.Geteuid() != 0 {
				n = 60
			}
			var lens []int
			for i := range n {
				l := 1200
				if i%37 == 36 {
					l = 333
				}
				lens = append(lens, l)
			}
			bufs := sized(lens...)
			for i, p := range bufs {
				copy(p, fmt.Sprintf("%04d", i))
			}
			if err := b.Send(bufs, ep); err != nil {
				t.Fatal(err)
			}
			for i, want := range bufs {
				got, from := readReply(t, c)
				if from != dst {
					t.Fatalf("datagram %d from %v, want %v", i, from, dst)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("datagram %d: got %d bytes starting %q, want %d starting %q", i, len(got), got[:4], len(want), want[:4])
				}
			}
			if s := b.Stats(); s.GSOOff != 0 {
				t.Errorf("GSO turned off on loopback: %+v", s)
			}
		})
	}
}

// peerEndpoint sends a datagram from c to dst and returns the Endpoint
// the Bind reports it from, whichever of its sockets received it.
func peerEndpoint(t *testing.T, b *Bind, fns []conn.ReceiveFunc, c *net.UDPConn, dst netip.AddrPort) conn.Endpoint {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte("hi"), dst); err != nil {
		t.Fatal(err)
	}
	rb, sizes, eps := batch(b.BatchSize())
	for _, fn := range fns {
		if n, _ := fnOnce(fn, rb, sizes, eps); n > 0 {
			return eps[0]
		}
	}
	t.Fatal("no packet received")
	return nil
}

// fnOnce runs a ReceiveFunc in a goroutine with a short wait, since the
// packet may have gone to the other family's socket.
func fnOnce(fn conn.ReceiveFunc, bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	type res struct {
		n   int
		err error
	}
	ch := make(chan res, 1)
	go func() { n, err := fn(bufs, sizes, eps); ch <- res{n, err} }()
	select {
	case r := <-ch:
		return r.n, r.err
	case <-timeAfter():
		return 0, nil
	}
}

func timeAfter() <-chan time.Time { return time.After(500 * time.Millisecond) }

// sendGSO sends lens as one UDP GSO message from c to dst: the kernel keeps
// it one packet up to the receiving socket.
func sendGSO(t *testing.T, c *net.UDPConn, dst netip.AddrPort, payloads [][]byte) {
	t.Helper()
	var msg []byte
	for _, p := range payloads {
		msg = append(msg, p...)
	}
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = uint16(len(payloads[0]))
	if _, _, err := c.WriteMsgUDPAddrPort(msg, oob, dst); err != nil {
		t.Fatalf("GSO send: %v", err)
	}
}

// TestReceiveGRO: trains of datagrams that arrive as one message (UDP GRO)
// come out as the datagrams that were sent, in order, each with its
// sender's endpoint, also when the caller's batch is smaller than a train
// (the rest waits for the next call) and with single datagrams of another
// peer in between. WithoutGRO gets the same datagrams one by one.
func TestReceiveGRO(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     []Option
		coalesce bool
	}{{"gro", nil, true}, {"without", []Option{WithoutGRO()}, false}} {
		t.Run(tc.name, func(t *testing.T) {
			b, fns, port := openBind(t, tc.opts...)
			dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
			a, other := client(t, "127.0.0.1:0"), client(t, "127.0.0.1:0")
			type dgram struct {
				from netip.AddrPort
				data []byte
			}
			var want []dgram
			train := func(n, size, tail int, tag byte) {
				var ps [][]byte
				for i := range n {
					l := size
					if i == n-1 && tail > 0 {
						l = tail
					}
					p := bytes.Repeat([]byte{tag}, l)
					p[0] = byte(i)
					ps = append(ps, p)
					want = append(want, dgram{clientAddr(a), p})
				}
				sendGSO(t, a, dst, ps)
			}
			single := func(tag byte) {
				p := []byte{tag, tag, tag}
				if _, err := other.WriteToUDPAddrPort(p, dst); err != nil {
					t.Fatal(err)
				}
				want = append(want, dgram{clientAddr(other), p})
			}
			train(40, 1200, 333, 'a')
			single('x')
			train(7, 1424, 0, 'b')
			single('y')
			train(44, 1456, 100, 'c')

			var got []dgram
			bufs, sizes, eps := batch(16)
			for len(got) < len(want) {
				n, err := fnOnce(fns[0], bufs, sizes, eps)
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					t.Fatalf("after %d of %d datagrams: nothing more", len(got), len(want))
				}
				for i := range n {
					got = append(got, dgram{eps[i].(*Endpoint).AddrPort(), bytes.Clone(bufs[i][:sizes[i]])})
				}
			}
			for i := range want {
				if got[i].from != want[i].from || !bytes.Equal(got[i].data, want[i].data) {
					t.Fatalf("datagram %d: %d bytes from %v, want %d from %v", i, len(got[i].data), got[i].from, len(want[i].data), want[i].from)
				}
			}
			st := b.Stats()
			if tc.coalesce && (st.Coalesced < 3 || st.Datagrams != 40+7+44) {
				t.Errorf("Stats %+v: want 3 coalesced messages holding %d datagrams", st, 40+7+44)
			}
			if !tc.coalesce && st.Coalesced != 0 {
				t.Errorf("Stats %+v: coalesced without GRO", st)
			}
		})
	}
}
