package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// hostile is a client that takes all the node lets it: it keeps -flows
// connections to -zerowin open, each asking for a large body it never
// reads (a receive buffer of 4 KiB, so its window closes at once), and
// -pending connections to -blackhole, a destination that never answers a
// SYN, re-dialing each as soon as it fails (after a second when the node
// refused it at once). It runs for -d and prints, every second and at the
// end, {"zero_window","pending_tries","refused","open_fails","closed",
// "first_error"}: how many zero-window connections are open, how many
// blackhole dials it started, how many of those the node refused within a
// second, how many zero-window connections failed to open and how many
// were closed on it. The zero-window connections are opened first.
func hostile(args []string) error {
	fs := flag.NewFlagSet("hostile", flag.ExitOnError)
	zerowin := fs.String("zerowin", "", "URL of a large body, asked for and never read")
	flows := fs.Int("flows", 0, "zero-window connections to keep open")
	blackhole := fs.String("blackhole", "", "ADDR:PORT that never answers a SYN")
	pending := fs.Int("pending", 0, "dials to keep in flight to -blackhole")
	d := fs.Duration("d", time.Minute, "how long to run")
	fs.Parse(args)
	if (*flows > 0 && *zerowin == "") || (*pending > 0 && *blackhole == "") {
		return errors.New("hostile: -flows needs -zerowin, -pending needs -blackhole")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *d)
	defer cancel()
	var open, tries, refused, openFails, closed atomic.Int64
	var firstErr atomic.Value
	fail := func(err error) {
		firstErr.CompareAndSwap(nil, err.Error())
	}

	if *flows > 0 {
		u, err := url.Parse(*zerowin)
		if err != nil {
			return fmt.Errorf("hostile: -zerowin: %w", err)
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
		req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", u.RequestURI(), u.Host)
		for range *flows {
			go func() {
				for ctx.Err() == nil {
					c, err := zeroWindowDial(ctx, host)
					if err == nil {
						_, err = c.Write([]byte(req))
					}
					if err != nil {
						fail(err)
						openFails.Add(1)
						if c != nil {
							c.Close()
						}
						sleepCtx(ctx, time.Second)
						continue
					}
					open.Add(1)
					// Never read; wait for the end (or the node closing it:
					// a write fails then).
					for ctx.Err() == nil {
						sleepCtx(ctx, time.Second)
						if _, err := c.Write(nil); err != nil {
							fail(err)
							break
						}
					}
					open.Add(-1)
					if ctx.Err() == nil {
						closed.Add(1)
					}
					c.Close()
				}
			}()
		}
	}
	// The zero-window flows first, so that the dials below (which take
	// the client's share of the dial slots) do not crowd them out.
	for deadline := time.Now().Add(20 * time.Second); open.Load() < int64(*flows) && time.Now().Before(deadline); {
		sleepCtx(ctx, 100*time.Millisecond)
	}
	for range *pending {
		go func() {
			var nd net.Dialer
			for ctx.Err() == nil {
				tries.Add(1)
				start := time.Now()
				c, err := nd.DialContext(ctx, "tcp", *blackhole)
				if err == nil {
					c.Close() // not a blackhole after all
				}
				if time.Since(start) < time.Second {
					refused.Add(1)
					sleepCtx(ctx, time.Second)
				}
			}
		}()
	}
	report := func() {
		r := map[string]any{
			"zero_window": open.Load(), "pending_tries": tries.Load(), "refused": refused.Load(),
			"open_fails": openFails.Load(), "closed": closed.Load(),
		}
		if e := firstErr.Load(); e != nil {
			r["first_error"] = e
		}
		json.NewEncoder(os.Stdout).Encode(r)
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			report()
			return nil
		case <-t.C:
			report()
		}
	}
}

// zeroWindowDial connects to addr with a 4 KiB receive buffer, set before
// connect so the window scale stays small.
func zeroWindowDial(ctx context.Context, addr string) (net.Conn, error) {
	nd := net.Dialer{Timeout: 15 * time.Second, Control: func(network, address string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return nd.DialContext(ctx, "tcp", addr)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
