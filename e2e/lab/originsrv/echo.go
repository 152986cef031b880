package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/proxy"
)

// serveEcho echoes every TCP connection on ln back to its sender.
func serveEcho(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// EchoResult is what `originsrv echo` prints: an interactive session's
// messages and the longest wait between two echoes coming back.
type EchoResult struct {
	Sent   int `json:"sent"`
	Echoed int `json:"echoed"`
	// MaxGapMS is the longest time between two consecutive echoes (or from
	// the session's start to the first one, or from the last one to the
	// end while messages were still out): how long the session stalled.
	MaxGapMS int64 `json:"max_gap_ms"`
	// GapAtMS is when the longest gap began, in ms since the start.
	GapAtMS int64 `json:"gap_at_ms"`
	// RTTs of the echoes, in microseconds: from writing a message to
	// reading its echo back in full.
	RTTP50US int64 `json:"rtt_p50_us"`
	RTTP99US int64 `json:"rtt_p99_us"`
	RTTMaxUS int64 `json:"rtt_max_us"`
	// Broken: the connection failed (reset, closed, corrupted echo).
	Broken bool   `json:"broken"`
	Err    string `json:"err,omitempty"`
}

// echoSession is `originsrv echo -to ADDR [-proxy socks5://H:P] [-size 512]
// [-every 20ms] [-d 10s]`: one TCP connection that sends a numbered
// message of size bytes every interval and reads the echoes back, as an
// interactive session (a terminal, a game) would. It prints an EchoResult.
func echoSession(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	to := fs.String("to", "", "echo server ADDR:PORT")
	proxyURL := fs.String("proxy", "", "SOCKS5 proxy URL, e.g. socks5://127.0.0.1:1080")
	size := fs.Int("size", 512, "message size in bytes (at least 8)")
	every := fs.Duration("every", 20*time.Millisecond, "interval between messages")
	d := fs.Duration("d", 10*time.Second, "how long the session lasts")
	dialTimeout := fs.Duration("dial-timeout", 10*time.Second, "timeout of the connection setup")
	fs.Parse(args)
	if *to == "" || *size < 8 {
		return errors.New("echo: want -to ADDR:PORT and -size ≥ 8")
	}
	c, err := dialEcho(*proxyURL, *to, *dialTimeout)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	r := runEcho(c, *size, *every, *d)
	return json.NewEncoder(os.Stdout).Encode(r)
}

func dialEcho(proxyURL, to string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if proxyURL == "" {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", to)
	}
	u, err := url.Parse(proxyURL)
	if err != nil {
		return nil, err
	}
	pd, err := proxy.FromURL(u, &net.Dialer{Timeout: timeout})
	if err != nil {
		return nil, err
	}
	return pd.(proxy.ContextDialer).DialContext(ctx, "tcp", to)
}

// runEcho runs the session on c for d and closes c.
func runEcho(c net.Conn, size int, every, d time.Duration) EchoResult {
	var (
		mu  sync.Mutex
		res EchoResult
	)
	start := time.Now()
	last := start
	// sentAt[seq] is when message seq was written (guarded by mu); the
	// reader turns it into an RTT.
	var sentAt []time.Time
	var rtts []time.Duration
	stop := make(chan struct{})
	done := make(chan struct{})
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if res.Err == "" {
			res.Broken, res.Err = true, err.Error()
		}
	}
	go func() { // the reader: every echo, in order
		defer close(done)
		buf := make([]byte, size)
		for seq := uint64(0); ; seq++ {
			if _, err := io.ReadFull(c, buf); err != nil {
				select {
				case <-stop:
				default:
					fail(fmt.Errorf("read echo %d: %w", seq, err))
				}
				return
			}
			if got := binary.BigEndian.Uint64(buf); got != seq {
				fail(fmt.Errorf("echo %d came back as %d", seq, got))
				return
			}
			now := time.Now()
			mu.Lock()
			if seq < uint64(len(sentAt)) {
				rtts = append(rtts, now.Sub(sentAt[seq]))
			}
			if gap := now.Sub(last).Milliseconds(); gap > res.MaxGapMS {
				res.MaxGapMS, res.GapAtMS = gap, last.Sub(start).Milliseconds()
			}
			last = now
			res.Echoed++
			mu.Unlock()
		}
	}()
	msg := make([]byte, size)
	t := time.NewTicker(every)
	end := time.After(d)
	sent := 0
loop:
	for {
		select {
		case <-end:
			break loop
		case <-done:
			break loop
		case <-t.C:
			binary.BigEndian.PutUint64(msg, uint64(sent))
			mu.Lock()
			sentAt = append(sentAt, time.Now())
			mu.Unlock()
			c.SetWriteDeadline(time.Now().Add(d))
			if _, err := c.Write(msg); err != nil {
				fail(fmt.Errorf("write message %d: %w", sent, err))
				break loop
			}
			sent++
		}
	}
	t.Stop()
	// Give the last messages one interval and a little to come back.
	wait := time.Now().Add(every + 500*time.Millisecond)
	for time.Now().Before(wait) {
		mu.Lock()
		n := res.Echoed
		mu.Unlock()
		if n >= sent {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	c.Close()
	<-done
	mu.Lock()
	defer mu.Unlock()
	res.Sent = sent
	if res.Echoed < sent { // still waiting at the end: that gap counts too
		if gap := time.Since(last).Milliseconds(); gap > res.MaxGapMS {
			res.MaxGapMS, res.GapAtMS = gap, last.Sub(start).Milliseconds()
		}
	}
	res.RTTP50US, res.RTTP99US, res.RTTMaxUS = percentileUS(rtts, 50), percentileUS(rtts, 99), percentileUS(rtts, 100)
	if res.Broken {
		log.Printf("echo: %s", res.Err)
	}
	return res
}

// percentileUS is the p-th percentile (nearest rank) of ds in
// microseconds; 0 for none.
func percentileUS(ds []time.Duration, p int) int64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1
	i = max(0, min(i, len(s)-1))
	return s[i].Microseconds()
}
