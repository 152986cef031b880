package front

import (
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/lb"
)

// Forwarder sends a standard client's handshake initiation that reached
// this node, though the front gives the client to another node, to that
// owner (server.IndexConfig.Forward): inside GUE, as the program forwards
// stamped ones, so the owner's wireguard-go sees it from the client's own
// address and answers it directly. It also installs a flow entry for the
// client's address, so the program forwards what else comes from there
// (the next rekey) without userspace.
//
// Flow entries are a cache, left to the LRU: one that names a node that has
// gone falls back to this node, whose userspace forwards again.
type Forwarder struct {
	front      *lb.Front
	objs       *lb.Objects
	gue        *lb.GUESender
	wgPort     uint16
	vip4, vip6 netip.Addr
	log        *slog.Logger

	forwarded, sendErrs, flowErrs atomic.Uint64
	lastErr                       atomic.Int64 // UnixNano of the last logged error
}

// Forward sends msg, client cid's initiation from src to dst, to the node
// the front gives cid to, and reports whether it did (false: cid is this
// node's, or its owner is unreachable, and this node serves it).
func (f *Forwarder) Forward(cid clientid.ID, src netip.AddrPort, dst netip.Addr, msg []byte) bool {
	r, ok := f.front.Route(uint32(cid))
	if !ok || r.Self {
		return false
	}
	if !dst.IsValid() || dst.Is4() != src.Addr().Is4() {
		dst = f.vip6
		if src.Addr().Is4() {
			dst = f.vip4
		}
		if !dst.IsValid() {
			return false
		}
	}
	if err := f.gue.Send(r.Underlay, src, netip.AddrPortFrom(dst, f.wgPort), msg); err != nil {
		// Served here rather than not at all: the owner is unreachable.
		f.sendErrs.Add(1)
		f.logErr("xdp: initiation not forwarded; serving the client here", "client_id", cid, "owner", r.ID, "err", err)
		return false
	}
	f.forwarded.Add(1)
	if err := f.objs.SetFlow(src, r.Index); err != nil {
		f.flowErrs.Add(1)
		f.logErr("xdp: flow entry not installed", "client", src, "err", err)
	}
	return true
}

// logErr logs at most one error a second: the path is per handshake.
func (f *Forwarder) logErr(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := f.lastErr.Load()
	if now-last < int64(time.Second) || !f.lastErr.CompareAndSwap(last, now) {
		return
	}
	f.log.Warn(msg, args...)
}

func (f *Forwarder) stats(m map[string]uint64) {
	m["initiations_forwarded"] = f.forwarded.Load()
	m["forward_errors"] = f.sendErrs.Load()
	m["flow_errors"] = f.flowErrs.Load()
}
