// Package happyeyeballs dials one of several addresses the RFC 8305 way, as
// net.Dialer does, for dialers that are not net.Dialer (a userspace stack,
// a proxy's upstream).
//
// The client's userspace stack (netstack) and its SOCKS5 server both dial
// with it, so it lives in internal/ and must not import any room of the tree.
package happyeyeballs

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// Delay is RFC 8305's Connection Attempt Delay, as net.Dialer's.
const Delay = 300 * time.Millisecond

// Func dials one address.
type Func func(context.Context, netip.AddrPort) (net.Conn, error)

// Serial tries dsts in order and returns the first connection, or the first
// error when all fail or ctx ends.
func Serial(ctx context.Context, dial Func, dsts []netip.AddrPort) (net.Conn, error) {
	var first error
	for _, dst := range dsts {
		conn, err := dial(ctx, dst)
		if err == nil {
			return conn, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// Dial races primary against fallback, started Delay later or as soon as
// primary fails, as net.Dialer does. Within each list the addresses are
// tried in turn. The first connection wins; a later one is closed. With an
// empty fallback it is Serial.
func Dial(ctx context.Context, dial Func, primary, fallback []netip.AddrPort) (net.Conn, error) {
	if len(fallback) == 0 {
		return Serial(ctx, dial, primary)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		conn    net.Conn
		err     error
		primary bool
	}
	results := make(chan result, 2) // both senders never block
	start := func(primary bool, dsts []netip.AddrPort) {
		go func() {
			conn, err := Serial(ctx, dial, dsts)
			results <- result{conn, err, primary}
		}()
	}
	start(true, primary)
	timer := time.NewTimer(Delay)
	defer timer.Stop()
	var firstErr error
	pending, fallbackStarted := 1, false
	for {
		select {
		case <-timer.C:
			if !fallbackStarted {
				fallbackStarted = true
				pending++
				start(false, fallback)
			}
		case r := <-results:
			pending--
			if r.err == nil {
				if pending > 0 {
					// Cancel the loser and close it if it won too.
					cancel()
					go func() {
						if r := <-results; r.conn != nil {
							r.conn.Close()
						}
					}()
				}
				return r.conn, nil
			}
			if firstErr == nil || r.primary {
				firstErr = r.err
			}
			if !fallbackStarted {
				fallbackStarted = true
				pending++
				start(false, fallback)
			} else if pending == 0 {
				return nil, firstErr
			}
		}
	}
}
