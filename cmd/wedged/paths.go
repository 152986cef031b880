package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/wedge-edge/wedge/internal/ratelog"
	"github.com/wedge-edge/wedge/server/paths"
)

// pathsResample is when a client's TCP connection's RTT is read a second
// time (after its data's round trips, not only the handshake's).
const pathsResample = 2 * time.Second

// startPaths keeps the path table in a cluster (server/paths): the
// egress dialer's TCP connections feed its Observer, and its summary is
// published on the node's lease and the other nodes' mirrored until the
// returned stop, which waits for that to end. Alone: nil, and a no-op.
func startPaths(ctx context.Context, st *nodeStore, log *slog.Logger) (*paths.Table, func()) {
	if st.member == nil {
		return nil, func() {}
	}
	self := st.member.Self()
	t := paths.NewTable(paths.Options{DC: self.DC, Node: self.ID,
		Observer: paths.NewObserver(paths.ObserverOptions{Resample: pathsResample})})
	ctx, cancel := context.WithCancel(ctx)
	lim := &ratelog.Limiter{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		paths.Run(ctx, st.cli, t, paths.RunOptions{Prefix: st.prefix, Lease: st.member.Lease, OnError: func(err error) {
			if n, ok := lim.Allow("paths"); ok {
				log.Warn("paths: etcd", "err", err, "suppressed", n)
			}
		}})
	}()
	return t, func() { cancel(); wg.Wait() }
}
