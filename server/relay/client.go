package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// maxFrame is the largest HTTP/2 frame either side accepts: larger than
// the default 16 KiB, so bulk data costs fewer frames (and fewer trips
// through the HTTP/2 server's write loop).
const maxFrame = 256 << 10

// ClientConfig configures a Client.
type ClientConfig struct {
	Credentials *Credentials // required
	// DialContext connects to an exit's listener (default: a net.Dialer).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// ConnectTimeout bounds setting up one connection to an exit: TCP,
	// TLS, HTTP/2 (default 5 s). It runs on even after the flow that
	// started it gave up, so the next flow finds the path warm.
	ConnectTimeout time.Duration
	// FallbackAfter is how long DialOrDirect waits for the relay before it
	// dials direct (default 750 ms: the direct dial starts within 1 s).
	FallbackAfter time.Duration
	// MinBackoff and MaxBackoff bound how long an exit that failed is left
	// unused before it is probed again (defaults 1 s and 30 s; doubling
	// while it keeps failing).
	MinBackoff, MaxBackoff time.Duration
	// Logf, if set, receives a line when an exit goes down or comes back.
	Logf func(format string, args ...any)
	// OnRTT, if set, receives round-trip times to an exit measured on the
	// relay connections themselves: the TCP handshake of each new one,
	// and each PING (Client.Ping, the probes). The path table's
	// Observer.ObserveDC takes them.
	OnRTT func(exit string, rtt time.Duration)
	// OnDown and OnUp, if set, are called when an exit goes into backoff
	// and when it answers again (the path table's Observer.DCDown), one
	// call at a time, never the same twice in a row for an exit, with no
	// lock of the Client held.
	OnDown, OnUp func(exit string)
}

// Meta is what a relayed flow carries besides its destination.
type Meta struct {
	Tags      Tags
	Keepalive time.Duration // Exit-Tcp-Keepalive-Duration, whole seconds; 0: off
	// Hops is how many relays the flow went through before this one: 0
	// at the entry; an exit relaying once more passes its Request's Hops.
	Hops int
}

// Client is a relay's entry side: it keeps long-lived HTTP/2 connections
// to exits and opens each relayed flow as a CONNECT stream on one of them.
type Client struct {
	cfg ClientConfig
	tls *tls.Config
	tr  *http2.Transport

	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu    sync.Mutex
	exits map[string]*exitState

	hookMu sync.Mutex // one OnDown or OnUp call at a time

	st clientCounters
}

type exitState struct {
	addr    string
	conns   []exitConn
	dialing *dialCall

	down     bool // in backoff: DialOrDirect goes direct
	reported bool // down, as last told OnDown/OnUp
	backoff  time.Duration
	retryAt  time.Time
	probing  bool
	since    time.Time // down since
}

// exitConn is one connection to an exit, with its local address
// (http2.ClientConn does not say).
type exitConn struct {
	cc    *http2.ClientConn
	local net.Addr
}

type dialCall struct {
	done chan struct{}
	err  error
}

// Stats are a Client's counters since NewClient. Every DialOrDirect
// counts once in Relayed or Direct; Fallbacks and Skipped split Direct.
type Stats struct {
	Relayed   uint64 `json:"relayed"`   // flows relayed (the exit answered 200)
	Direct    uint64 `json:"direct"`    // flows DialOrDirect dialed direct
	Fallbacks uint64 `json:"fallbacks"` // of Direct: the relay was tried and failed, refused or was too slow
	Skipped   uint64 `json:"skipped"`   // of Direct: the exit was in backoff, not tried
	Refused   uint64 `json:"refused"`   // relay attempts the exit answered other than 200
	Failed    uint64 `json:"failed"`    // relay attempts that got no answer (connection failed, timed out)
	Conns     uint64 `json:"conns"`     // connections to exits set up
	ExitsDown int    `json:"exits_down"`
}

type clientCounters struct {
	relayed, direct, fallbacks, skipped, refused, failed, conns atomic.Uint64
}

// NewClient returns a Client. Close ends its connections.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Credentials == nil {
		return nil, errors.New("relay: ClientConfig needs Credentials")
	}
	if cfg.DialContext == nil {
		cfg.DialContext = (&net.Dialer{}).DialContext
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.FallbackAfter <= 0 {
		cfg.FallbackAfter = 750 * time.Millisecond
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(cfg.MinBackoff, 30*time.Second)
	}
	// The receive windows: through a plain http.Transport's HTTP2 config,
	// the only way to set them. They bound what a connection buffers for
	// flows whose reader is slow: 4 MiB a flow, 64 MiB in all.
	t1 := &http.Transport{HTTP2: &http.HTTP2Config{
		MaxReceiveBufferPerStream:     4 << 20,
		MaxReceiveBufferPerConnection: 64 << 20,
	}}
	tr, err := http2.ConfigureTransports(t1)
	if err != nil {
		return nil, err
	}
	tr.DisableCompression = true
	tr.MaxReadFrameSize = maxFrame
	// Health checks of idle connections: a dead exit's connection is
	// found and dropped before a flow needs it; so is one whose writes
	// make no progress (the exit stopped reading its socket).
	tr.ReadIdleTimeout = 15 * time.Second
	tr.PingTimeout = 5 * time.Second
	tr.WriteByteTimeout = 15 * time.Second
	ctx, stop := context.WithCancel(context.Background())
	return &Client{
		cfg:   cfg,
		tls:   cfg.Credentials.ClientTLS(),
		tr:    tr,
		ctx:   ctx,
		stop:  stop,
		exits: map[string]*exitState{},
	}, nil
}

// Close closes every connection (the flows on them end) and stops the
// probes.
func (c *Client) Close() error {
	c.stop()
	c.mu.Lock()
	for _, e := range c.exits {
		for _, x := range e.conns {
			x.cc.Close()
		}
		e.conns = nil
	}
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	s := Stats{
		Relayed: c.st.relayed.Load(), Direct: c.st.direct.Load(), Fallbacks: c.st.fallbacks.Load(),
		Skipped: c.st.skipped.Load(), Refused: c.st.refused.Load(), Failed: c.st.failed.Load(),
		Conns: c.st.conns.Load(),
	}
	c.mu.Lock()
	for _, e := range c.exits {
		if e.down {
			s.ExitsDown++
		}
	}
	c.mu.Unlock()
	return s
}

// Usable reports whether exit is not in backoff after a failure.
func (c *Client) Usable(exit string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.exits[exit]
	return e == nil || !e.down
}

// Conns is how many connections to exit are open.
func (c *Client) Conns(exit string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.exits[exit]
	if e == nil {
		return 0
	}
	n := 0
	for _, x := range e.conns {
		if !x.cc.State().Closed {
			n++
		}
	}
	return n
}

// RefusedError is an exit's answer other than 200.
type RefusedError struct {
	Exit   string
	Status int
	Reason string // the Wedge-Error header, if any
	Msg    string // the start of the body
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("relay: exit %s refused: %d %s %s: %s", e.Exit, e.Status, http.StatusText(e.Status), e.Reason, e.Msg)
}

// exitFault reports whether the answer says the exit itself is unwell
// (rather than the request or the origin).
func (e *RefusedError) exitFault() bool {
	return e.Status >= 500 && e.Reason != ReasonDial && e.Reason != ReasonTimeout
}

// Dial opens a relayed flow to dst through the exit listening at exit
// (host:port). It returns once the exit answered 200: the exit is then
// connected to dst and the net.Conn is a byte pipe to it (CloseWrite
// half-closes). ctx bounds the opening only. An answer other than 200 is
// a *RefusedError. A connection failure, or ctx's deadline passing before
// the exit answered, puts the exit in backoff (see Usable).
func (c *Client) Dial(ctx context.Context, exit string, dst netip.AddrPort, meta Meta) (net.Conn, error) {
	if meta.Hops < 0 || meta.Hops >= hopsCeiling {
		return nil, fmt.Errorf("relay: hops %d", meta.Hops)
	}
	if !dst.Addr().IsValid() || dst.Port() == 0 {
		return nil, fmt.Errorf("relay: invalid destination %v", dst)
	}
	if err := meta.Tags.Validate(); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	ka := min(max(meta.Keepalive, 0), MaxKeepalive).Truncate(time.Second)
	req := Request{Dst: dst, Keepalive: ka, Tags: meta.Tags, Hops: meta.Hops + 1}
	var (
		resp    *http.Response
		pw      *io.PipeWriter
		scancel context.CancelFunc
		raddr   net.Addr
	)
	for attempt := 0; ; attempt++ {
		var cc *http2.ClientConn
		var err error
		cc, raddr, err = c.conn(ctx, exit)
		if err != nil {
			c.st.failed.Add(1)
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
				c.markDown(exit, fmt.Errorf("no connection within the flow's deadline"))
			}
			return nil, err
		}
		resp, pw, scancel, err = roundTrip(ctx, cc, req)
		if err == nil {
			break
		}
		if ctx.Err() == nil && attempt == 0 && (cc.State().Closing || cc.State().Closed) {
			// The connection was going away (GOAWAY, or it just broke):
			// once more, on another.
			continue
		}
		c.st.failed.Add(1)
		if ctx.Err() == nil {
			// The connection broke under the stream.
			c.markDown(exit, err)
		} else if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			// No answer in time on a connection that was there: the exit
			// may be slow to reach the origin, or gone. Ask it.
			c.goTracked(func() { c.check(exit, cc) })
		}
		return nil, fmt.Errorf("relay: exit %s: %w", exit, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		scancel()
		pw.Close()
		c.st.refused.Add(1)
		re := &RefusedError{Exit: exit, Status: resp.StatusCode, Reason: resp.Header.Get(HeaderError), Msg: strings.TrimSpace(string(body))}
		if re.exitFault() {
			c.markDown(exit, re)
		}
		return nil, re
	}
	c.st.relayed.Add(1)
	return &streamConn{body: resp.Body, pw: pw, cancel: scancel, local: raddr, remote: net.TCPAddrFromAddrPort(dst)}, nil
}

// roundTrip sends req's CONNECT on cc and returns the answer, the request
// body's writing end and the stream's cancel. ctx bounds the wait for the
// answer only: the stream's own context lives until cancel.
func roundTrip(ctx context.Context, cc *http2.ClientConn, req Request) (*http.Response, *io.PipeWriter, context.CancelFunc, error) {
	authority := req.Dst.String()
	pr, pw := io.Pipe()
	sctx, scancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, scancel)
	hr := (&http.Request{
		Method:        http.MethodConnect,
		URL:           &url.URL{Host: authority},
		Host:          authority,
		Header:        req.Header(),
		Body:          pr,
		ContentLength: -1,
	}).WithContext(sctx)
	resp, err := cc.RoundTrip(hr)
	if !stop() {
		// ctx ended while waiting: the stream is cancelled.
		err = errors.Join(ctx.Err(), err)
		if resp != nil {
			resp.Body.Close()
			resp = nil
		}
	}
	if err != nil {
		scancel()
		pw.CloseWithError(err)
		return nil, nil, nil, err
	}
	return resp, pw, scancel, nil
}

// goTracked runs f in a goroutine Close waits for, unless the Client is
// closed.
func (c *Client) goTracked(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx.Err() != nil {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
}

// check pings cc after a stream on it timed out; no answer puts the exit
// in backoff and drops the connection.
func (c *Client) check(exit string, cc *http2.ClientConn) {
	ctx, cancel := context.WithTimeout(c.ctx, time.Second)
	defer cancel()
	start := time.Now()
	if err := cc.Ping(ctx); err != nil {
		if c.ctx.Err() == nil {
			cc.Close()
			c.markDown(exit, fmt.Errorf("no answer to a ping after a stream timed out: %w", err))
		}
		return
	}
	c.rtt(exit, time.Since(start))
}

// conn returns a connection to exit that can take a new stream, setting
// one up if there is none, and its local address.
func (c *Client) conn(ctx context.Context, exit string) (*http2.ClientConn, net.Addr, error) {
	for {
		c.mu.Lock()
		if c.ctx.Err() != nil {
			c.mu.Unlock()
			return nil, nil, errors.New("relay: client closed")
		}
		e := c.exit(exit)
		e.conns = slices.DeleteFunc(e.conns, func(x exitConn) bool { return x.cc.State().Closed })
		for _, x := range e.conns {
			if x.cc.CanTakeNewRequest() {
				c.mu.Unlock()
				return x.cc, x.local, nil
			}
		}
		call := e.dialing
		if call == nil {
			call = &dialCall{done: make(chan struct{})}
			e.dialing = call
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.connect(e, call)
			}()
		}
		c.mu.Unlock()
		select {
		case <-call.done:
			if call.err != nil {
				return nil, nil, call.err
			}
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

func (c *Client) exit(addr string) *exitState {
	e := c.exits[addr]
	if e == nil {
		e = &exitState{addr: addr}
		c.exits[addr] = e
	}
	return e
}

// connect sets up one connection to e (TCP, TLS, HTTP/2) and completes
// call.
func (c *Client) connect(e *exitState, call *dialCall) {
	cc, local, err := c.handshake(e.addr)
	c.mu.Lock()
	e.dialing = nil
	call.err = err
	if err == nil {
		e.conns = append(e.conns, exitConn{cc, local})
		c.st.conns.Add(1)
		c.markUpLocked(e)
	}
	c.mu.Unlock()
	if err != nil && c.ctx.Err() == nil {
		c.markDown(e.addr, err)
	}
	close(call.done)
	c.notify(e)
}

func (c *Client) handshake(addr string) (*http2.ClientConn, net.Addr, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ConnectTimeout)
	defer cancel()
	start := time.Now()
	raw, err := c.cfg.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("relay: exit %s: %w", addr, err)
	}
	c.rtt(addr, time.Since(start))
	cork := &corkConn{Conn: raw}
	tc := tls.Client(cork, c.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, nil, fmt.Errorf("relay: exit %s: TLS: %w", addr, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		raw.Close()
		return nil, nil, fmt.Errorf("relay: exit %s: negotiated %q, not h2", addr, p)
	}
	cc, err := c.tr.NewClientConn(&corkedTLS{Conn: tc, raw: cork})
	if err != nil {
		raw.Close()
		return nil, nil, fmt.Errorf("relay: exit %s: %w", addr, err)
	}
	return cc, raw.LocalAddr(), nil
}

// markDown puts exit in backoff (or doubles its backoff) and makes sure
// a probe will try it when the backoff ends.
func (c *Client) markDown(exit string, why error) {
	c.mu.Lock()
	if c.ctx.Err() != nil {
		c.mu.Unlock()
		return
	}
	e := c.exit(exit)
	defer c.notify(e)
	defer c.mu.Unlock()
	now := time.Now()
	if e.down {
		return // the probe doubles the backoff as it fails
	}
	e.down, e.since, e.backoff = true, now, c.cfg.MinBackoff
	e.retryAt = now.Add(e.backoff)
	c.logf("relay: exit %s down, backoff %v: %v", exit, e.backoff, why)
	if !e.probing {
		e.probing = true
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.probe(e)
		}()
	}
}

func (c *Client) markUpLocked(e *exitState) {
	if e.down {
		c.logf("relay: exit %s answers again after %v", e.addr, time.Since(e.since).Round(time.Millisecond))
	}
	e.down = false
}

// notify tells OnDown or OnUp of e's state if it changed since last told.
func (c *Client) notify(e *exitState) {
	if c.cfg.OnDown == nil && c.cfg.OnUp == nil {
		return
	}
	c.hookMu.Lock()
	defer c.hookMu.Unlock()
	c.mu.Lock()
	down := e.down
	changed := down != e.reported
	e.reported = down
	c.mu.Unlock()
	switch {
	case !changed:
	case down && c.cfg.OnDown != nil:
		c.cfg.OnDown(e.addr)
	case !down && c.cfg.OnUp != nil:
		c.cfg.OnUp(e.addr)
	}
}

func (c *Client) rtt(exit string, d time.Duration) {
	if c.cfg.OnRTT != nil {
		c.cfg.OnRTT(exit, d)
	}
}

// Ping measures the round trip to exit with an HTTP/2 PING on its
// connection (set up first if there is none), and reports it to OnRTT.
// No answer puts the exit in backoff.
func (c *Client) Ping(ctx context.Context, exit string) (time.Duration, error) {
	cc, _, err := c.conn(ctx, exit)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := cc.Ping(ctx); err != nil {
		if c.ctx.Err() == nil && !errors.Is(ctx.Err(), context.Canceled) {
			cc.Close()
			c.markDown(exit, fmt.Errorf("no answer to a ping: %w", err))
		}
		return 0, err
	}
	d := time.Since(start)
	c.rtt(exit, d)
	return d, nil
}

func (c *Client) logf(format string, args ...any) {
	if c.cfg.Logf != nil {
		c.cfg.Logf(format, args...)
	}
}

// probe waits out e's backoff and tries it: a ping on a connection it
// still has, or a new connection. Success ends the backoff; failure
// doubles it and waits again.
func (c *Client) probe(e *exitState) {
	for {
		c.mu.Lock()
		wait := time.Until(e.retryAt)
		c.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-c.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		c.mu.Lock()
		if !e.down {
			e.probing = false
			c.mu.Unlock()
			return
		}
		if time.Now().Before(e.retryAt) { // a failure meanwhile pushed it back
			c.mu.Unlock()
			continue
		}
		var cc *http2.ClientConn
		for _, x := range e.conns {
			if x.cc.CanTakeNewRequest() { // not one going away (GOAWAY)
				cc = x.cc
				break
			}
		}
		c.mu.Unlock()
		var err error
		if cc != nil {
			ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ConnectTimeout)
			start := time.Now()
			err = cc.Ping(ctx)
			cancel()
			if err != nil {
				cc.Close()
			} else {
				c.rtt(e.addr, time.Since(start))
			}
		} else {
			ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ConnectTimeout)
			_, _, err = c.conn(ctx, e.addr)
			cancel()
		}
		c.mu.Lock()
		if err == nil {
			c.markUpLocked(e)
			e.probing = false
			c.mu.Unlock()
			c.notify(e)
			return
		}
		if c.ctx.Err() != nil {
			c.mu.Unlock()
			return
		}
		e.backoff = min(2*e.backoff, c.cfg.MaxBackoff)
		e.retryAt = time.Now().Add(e.backoff)
		c.mu.Unlock()
	}
}

// DirectFunc dials a flow's destination without a relay (the node's own
// egress).
type DirectFunc func(ctx context.Context) (net.Conn, error)

// DialOrDirect opens a flow through exit, or direct when exit is "", is
// in backoff, or does not answer 200 within FallbackAfter: a relay that is
// down, refuses or is slow costs the flow at most FallbackAfter before
// direct is dialed. relayed says which way the flow went.
func (c *Client) DialOrDirect(ctx context.Context, exit string, dst netip.AddrPort, meta Meta, direct DirectFunc) (conn net.Conn, relayed bool, err error) {
	if exit != "" && !c.Usable(exit) {
		c.st.skipped.Add(1)
		exit = ""
	}
	if exit != "" {
		rctx, cancel := context.WithTimeout(ctx, c.cfg.FallbackAfter)
		conn, err := c.Dial(rctx, exit, dst, meta)
		cancel()
		if err == nil {
			return conn, true, nil
		}
		if ctx.Err() != nil {
			return nil, false, err
		}
		c.st.fallbacks.Add(1)
	}
	c.st.direct.Add(1)
	conn, err = direct(ctx)
	return conn, false, err
}

// streamConn is a relayed flow: reads from the response body, writes into
// the request body.
type streamConn struct {
	body          io.ReadCloser
	pw            *io.PipeWriter
	cancel        context.CancelFunc
	local, remote net.Addr
	once          sync.Once
}

func (s *streamConn) Read(b []byte) (int, error)  { return s.body.Read(b) }
func (s *streamConn) Write(b []byte) (int, error) { return s.pw.Write(b) }

// CloseWrite ends the request (END_STREAM): the exit half-closes its
// connection to the origin.
func (s *streamConn) CloseWrite() error { return s.pw.Close() }

// Close resets the stream unless both sides already ended it.
func (s *streamConn) Close() error {
	s.once.Do(func() {
		s.pw.CloseWithError(net.ErrClosed)
		s.body.Close()
		s.cancel()
	})
	return nil
}

func (s *streamConn) LocalAddr() net.Addr  { return s.local }
func (s *streamConn) RemoteAddr() net.Addr { return s.remote }

// Deadlines are not supported on a relayed flow (the netstack's splice
// uses none): they return errors.ErrUnsupported.
func (s *streamConn) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (s *streamConn) SetReadDeadline(time.Time) error  { return errors.ErrUnsupported }
func (s *streamConn) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }
