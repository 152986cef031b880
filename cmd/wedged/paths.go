package main

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/internal/ratelog"
	"github.com/wedge-edge/wedge/server/paths"
)

// pathsResample is when a client's TCP connection's RTT is read a second
// time (after its data's round trips, not only the handshake's).
const pathsResample = 2 * time.Second

// pathsParts is the path table of a node in a cluster and its goroutines.
type pathsParts struct {
	table  *paths.Table // nil alone
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startPaths keeps the path table in a cluster (server/paths): the
// egress dialer's TCP connections feed its Observer, and its summary is
// published on the node's lease and the other nodes' mirrored until
// stop. Alone: no table.
func startPaths(ctx context.Context, st *nodeStore, relayAddr netip.AddrPort, log *slog.Logger) *pathsParts {
	p := &pathsParts{}
	if st.member == nil {
		return p
	}
	self := st.member.Self()
	o := paths.Options{DC: self.DC, Node: self.ID,
		Observer: paths.NewObserver(paths.ObserverOptions{Resample: pathsResample})}
	if relayAddr.IsValid() {
		o.Relay = relayAddr.String()
	}
	p.table = paths.NewTable(o)
	p.ctx, p.cancel = context.WithCancel(ctx)
	lim := &ratelog.Limiter{}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		paths.Run(p.ctx, st.cli, p.table, paths.RunOptions{Prefix: st.prefix, Lease: st.member.Lease, OnError: func(err error) {
			if n, ok := lim.Allow("paths"); ok {
				log.Warn("paths: etcd", "err", err, "suppressed", n)
			}
		}})
	}()
	return p
}

// probe starts the table's probes (paths.Table.RunProbes): destinations
// dialed under the egress ACL from the source the node's own queries use
// (the egress plan's DNS source, else --egress's address of the family),
// the other data centers' relay listeners from the host's choice.
func (p *pathsParts) probe(eg *egressParts, sources []netip.Addr) {
	if p.table == nil {
		return
	}
	dial, node := probeDials(eg, sources)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.table.RunProbes(p.ctx, paths.ProbeOptions{Dial: dial, DialNode: node})
	}()
}

// probeDials are paths.ProbeOptions' Dial and DialNode.
func probeDials(eg *egressParts, sources []netip.Addr) (dial, node func(context.Context, netip.AddrPort) (net.Conn, error)) {
	dns := eg.dnsDial()
	dial = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		if err := eg.dialer.ACL().Check(dst.Addr()); err != nil {
			return nil, err
		}
		if dns != nil {
			return dns(ctx, "tcp", dst)
		}
		var src egress.Source
		for _, s := range sources {
			if s.Is4() == dst.Addr().Is4() && !src.Addr.IsValid() {
				src.Addr = s
			}
		}
		return eg.dialer.DialNode(ctx, "tcp", src, dst)
	}
	node = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		return eg.dialer.DialNode(ctx, "tcp", egress.Source{}, dst)
	}
	return dial, node
}

// observe is egress.Config.ObserveTCP: nil alone.
func (p *pathsParts) observe() func(net.Conn, netip.AddrPort) {
	if p.table == nil {
		return nil
	}
	return p.table.Observer().ObserveConn
}

// stop ends the goroutines and waits for them.
func (p *pathsParts) stop() {
	if p.cancel != nil {
		p.cancel()
		p.wg.Wait()
	}
}
