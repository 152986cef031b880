package egress

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/wedge-edge/wedge/internal/ratelog"
)

// refusalLogEvery is how often at most the Dialer logs a refused flow of
// one reason.
const refusalLogEvery = time.Minute

// refusalLog logs the flows the Dialer refuses: the first of each reason
// at once, then at most one line per reason every refusalLogEvery, which
// counts the flows of that reason refused since the line before
// (refused_since_last, the logged one included). Counting every refusal
// is Stats' job; this is so that an operator reading the log learns that
// flows are refused, and why, without a line per flow.
type refusalLog struct {
	log   *slog.Logger
	limit ratelog.Limiter
}

// refusalReason is the reason a refused flow's error names, as a stable
// log key value, and the level of its line; "" for errors that are not a
// refusal by the node (the destination's own, a timeout).
func refusalReason(err error) (string, slog.Level) {
	switch {
	case errors.Is(err, ErrDenied):
		return "acl", slog.LevelInfo // the client's choice of destination
	case errors.Is(err, ErrNoEgress):
		return "no_egress", slog.LevelWarn // the plan or the node's slot
	case errors.Is(err, ErrSliceExhausted):
		return "slice_exhausted", slog.LevelWarn
	case errors.Is(err, ErrPortShare):
		return "port_share", slog.LevelInfo // one client's share
	}
	return "", 0
}

// note logs the refusal of a proto flow of client to dst with err if its
// reason is due a line.
func (l *refusalLog) note(proto string, client netip.Addr, dst netip.AddrPort, err error) {
	reason, level := refusalReason(err)
	if reason == "" {
		return
	}
	n, ok := l.limit.Allow(reason)
	if !ok {
		return
	}
	l.log.Log(context.Background(), level, "flow refused", "reason", reason, "proto", proto, "client", client, "dst", dst,
		"err", err.Error(), "refused_since_last", n, "next_line_after", l.limit.Interval().String())
}
