package server

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/internal/udpbind"
	"github.com/wedge-edge/wedge/server/wgmsg"
)

// Bind wraps the node's conn.Bind. On every received message it reads the
// ClientID a WARP-style client stamped into bytes 1..3 and zeroes them before
// wireguard-go sees the message (wireguard-go drops messages whose first four
// bytes are not exactly the type). Standard clients send zeros and pass
// through unchanged. Receiving allocates nothing.
//
// The ClientID seen is remembered per source address in a fixed-size table
// (see Seen), from which the node attributes it to the peer at that endpoint:
// a bounded table, so a flood of stamped packets from many addresses costs no
// memory, only evictions.
type Bind struct {
	conn.Bind

	stamped   atomic.Uint64 // messages that carried a ClientID
	unstamped atomic.Uint64 // messages with zero reserved bytes
	cookies   atomic.Uint64 // cookie replies sent (wireguard-go under load)
	inits     atomic.Uint64 // handshake initiations sent (the node initiating)
	responses atomic.Uint64 // handshake responses sent (not withheld)

	mu   sync.Mutex // guards seen
	seen [seenSlots]seenEntry

	// hs, once set (Node.EnableIndexes), translates session indexes: the
	// node's own tagged ones back on receive, wireguard-go's to tagged
	// ones in the handshake messages it sends.
	hs atomic.Pointer[handshakes]
	// door, once set (New), adds the peer of a registered client whose
	// initiation arrives without one, and guards that (ondemand.go).
	door atomic.Pointer[demand]
}

var _ conn.Bind = (*Bind)(nil)

const seenSlots = 1 << 14

type seenEntry struct {
	ep netip.AddrPort
	id clientid.ID
	// data counts transport messages since the last TakeData: a client
	// sending data here, session or not.
	data uint32
}

// NewBind wraps inner.
func NewBind(inner conn.Bind) *Bind { return &Bind{Bind: inner} }

// Open opens the inner Bind and wraps its receive functions.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return nil, 0, err
	}
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		wrapped[i] = b.wrap(fn)
	}
	return wrapped, actual, nil
}

func (b *Bind) wrap(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, err := fn(packets, sizes, eps)
		var stamped, unstamped uint64
		locked := false
		hs := b.hs.Load()
		door := b.door.Load()
		for i := range n {
			id := clientid.Zero(packets[i][:sizes[i]])
			if door != nil && sizes[i] == wgmsg.InitiationSize && packets[i][0] == msgInitiation &&
				!door.admit(packets[i][:sizes[i]], eps[i], id != 0) {
				sizes[i] = 0 // wireguard-go skips it
				if id == 0 {
					unstamped++
				} else {
					stamped++
				}
				continue
			}
			if hs != nil {
				hs.received(packets[i][:sizes[i]], eps[i], id != 0)
			}
			if id == 0 {
				unstamped++
				continue
			}
			stamped++
			ap, ok := endpointAddrPort(eps[i])
			if !ok {
				continue
			}
			if !locked {
				b.mu.Lock()
				locked = true
			}
			e := &b.seen[slot(ap)]
			if e.ep != ap || e.id != id {
				*e = seenEntry{ep: ap, id: id}
			}
			if packets[i][0] == msgTransport {
				e.data++
			}
		}
		if locked {
			b.mu.Unlock()
		}
		if stamped > 0 {
			b.stamped.Add(stamped)
		}
		if unstamped > 0 {
			b.unstamped.Add(unstamped)
		}
		return n, err
	}
}

// Send passes bufs to the inner Bind, with the session index of a
// handshake message translated (or the message withheld: forwarded to its
// client's owner) once tagged indexes are on. wireguard-go sends each
// handshake message alone; batches of transport messages go straight
// through.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if len(bufs) == 1 && len(bufs[0]) > 0 && bufs[0][0] != msgTransport {
		if bufs[0][0] == msgCookieReply {
			b.cookies.Add(1)
		}
		if hs := b.hs.Load(); hs != nil && !hs.sending(bufs[0], ep) {
			return nil
		}
		switch bufs[0][0] {
		case msgInitiation:
			b.inits.Add(1)
		case msgResponse:
			b.responses.Add(1)
		}
	}
	return b.Bind.Send(bufs, ep)
}

// CookieReplies returns how many cookie replies the node sent: wireguard-go
// answers initiations with them while it is under load.
func (b *Bind) CookieReplies() uint64 { return b.cookies.Load() }

// HandshakesSent returns how many handshake initiations and responses the
// node sent (a response withheld to forward its initiation to the
// client's owner is not counted): each response is a handshake this node
// completed.
func (b *Bind) HandshakesSent() (initiations, responses uint64) {
	return b.inits.Load(), b.responses.Load()
}

// Seen returns the ClientID last stamped by the client at ep, or 0.
func (b *Bind) Seen(ep netip.AddrPort) clientid.ID {
	ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.seen[slot(ep)]; e.ep == ep {
		return e.id
	}
	return 0
}

// WireGuard's message types that the Bind looks at.
const (
	msgInitiation  = 1
	msgResponse    = 2
	msgCookieReply = 3
	msgTransport   = 4
)

// DataSeen is a client that sent stamped transport messages.
type DataSeen struct {
	Endpoint netip.AddrPort
	ClientID clientid.ID
	Messages uint32
}

// TakeData returns the endpoints that sent stamped transport messages
// since the last call, and starts counting afresh. It scans the whole
// table: call it about once a second, not per packet.
func (b *Bind) TakeData() []DataSeen {
	var out []DataSeen
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.seen {
		e := &b.seen[i]
		if e.data != 0 {
			out = append(out, DataSeen{e.ep, e.id, e.data})
			e.data = 0
		}
	}
	return out
}

// Counts returns how many received messages were stamped and unstamped.
func (b *Bind) Counts() (stamped, unstamped uint64) {
	return b.stamped.Load(), b.unstamped.Load()
}

func endpointAddrPort(ep conn.Endpoint) (netip.AddrPort, bool) {
	switch e := ep.(type) {
	case *udpbind.Endpoint:
		ap := e.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
	case *conn.StdNetEndpoint:
		return netip.AddrPortFrom(e.Addr().Unmap(), e.Port()), true
	case nil:
		return netip.AddrPort{}, false
	}
	// Other Binds (tests' in-memory ones): parse the string form. Only the
	// standard Bind is on the hot path.
	ap, err := netip.ParseAddrPort(ep.DstToString())
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// slot hashes ep (FNV-1a over the 16-byte address and the port).
func slot(ep netip.AddrPort) uint32 {
	a := ep.Addr().As16()
	h := uint32(2166136261)
	for _, c := range a {
		h = (h ^ uint32(c)) * 16777619
	}
	h = (h ^ uint32(ep.Port()>>8)) * 16777619
	h = (h ^ uint32(ep.Port()&0xff)) * 16777619
	return h % seenSlots
}
