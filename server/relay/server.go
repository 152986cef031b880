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
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

// DialFunc connects the exit to a relayed flow's origin. The node plugs
// its egress in: its Router picks the source (an address of this data
// center with tags.Country, a port of this node's slice) and its Dialer
// applies this node's ACL. keepalive is Exit-Tcp-Keepalive-Duration (0:
// off; see SetKeepalive). An error wrapping ErrDenied is answered 403
// (the ACL), a timeout 504, anything else 502. ctx carries the Request
// (RequestFrom) and ends when the entry gives up on the stream.
type DialFunc func(ctx context.Context, dst netip.AddrPort, tags Tags, keepalive time.Duration) (net.Conn, error)

// ErrDenied: a DialFunc's egress refused the destination.
var ErrDenied = errors.New("relay: destination denied")

// ServerConfig configures a Server.
type ServerConfig struct {
	Credentials *Credentials // required
	Dial        DialFunc     // required
	// MaxHops is the largest Wedge-Hops served (default DefaultMaxHops).
	MaxHops int
	// DialTimeout bounds a DialFunc call (default 10 s).
	DialTimeout time.Duration
	// HandshakeTimeout bounds a connection's TLS handshake (default 5 s).
	HandshakeTimeout time.Duration
	// MaxStreams is how many relayed flows one connection carries at once
	// (default 1000); an entry opens another connection past it.
	MaxStreams uint32
	// Logf, if set, receives one line per refused connection or request:
	// anyone who reaches the port can cause them, so rate-limit it (as
	// internal/ratelog does).
	Logf func(format string, args ...any)
}

// Server is a relay's exit side: it serves CONNECT over HTTP/2 over
// mutually authenticated TLS 1.3 to the other nodes of the cluster.
type Server struct {
	cfg  ServerConfig
	tls  *tls.Config
	h2   *http2.Server
	base *http.Server // its Shutdown sends the HTTP/2 connections GOAWAY
	ctx  context.Context

	stop  context.CancelFunc
	mu    sync.Mutex
	lns   map[net.Listener]struct{}
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	done  bool

	st serverCounters
}

// ServerStats are a Server's counters since NewServer.
type ServerStats struct {
	Conns        uint64 `json:"conns"`         // connections accepted (TLS and HTTP/2 set up)
	ConnsOpen    int64  `json:"conns_open"`    // of which open now
	TLSRefused   uint64 `json:"tls_refused"`   // connections whose handshake failed (no cluster certificate, ...)
	Probes       uint64 `json:"probes"`        // connections closed before a TLS hello: RTT probes (server/paths)
	Streams      uint64 `json:"streams"`       // flows relayed (answered 200)
	StreamsOpen  int64  `json:"streams_open"`  // of which open now
	BadRequests  uint64 `json:"bad_requests"`  // 400
	HopLimit     uint64 `json:"hop_limit"`     // 403 hop-limit
	Denied       uint64 `json:"denied"`        // 403 denied (the exit's ACL)
	DialFailures uint64 `json:"dial_failures"` // 502 and 504
}

type serverCounters struct {
	conns, tlsRefused, probes, streams, bad, hops, denied, dialFailed atomic.Uint64
	connsOpen, streamsOpen                                            atomic.Int64
}

// NewServer returns a Server; Serve starts it on a listener.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Credentials == nil || cfg.Dial == nil {
		return nil, errors.New("relay: ServerConfig needs Credentials and Dial")
	}
	if cfg.MaxHops <= 0 {
		cfg.MaxHops = DefaultMaxHops
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 5 * time.Second
	}
	if cfg.MaxStreams == 0 {
		cfg.MaxStreams = 1000
	}
	tc := cfg.Credentials.ServerTLS()
	tc.NextProtos = []string{"h2"}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{
		cfg:  cfg,
		tls:  tc,
		base: &http.Server{},
		h2: &http2.Server{
			MaxConcurrentStreams: cfg.MaxStreams,
			// Windows large enough for a long, fast path: the buffers
			// fill only as data waits for the origin.
			MaxUploadBufferPerStream:     4 << 20,
			MaxUploadBufferPerConnection: 64 << 20,
			MaxReadFrameSize:             maxFrame,
			ReadIdleTimeout:              30 * time.Second,
			PingTimeout:                  10 * time.Second,
			WriteByteTimeout:             15 * time.Second,
		},
		ctx:   ctx,
		stop:  stop,
		lns:   map[net.Listener]struct{}{},
		conns: map[net.Conn]struct{}{},
	}
	if err := http2.ConfigureServer(s.base, s.h2); err != nil {
		return nil, err
	}
	return s, nil
}

// ErrServerClosed is what Serve returns after Close.
var ErrServerClosed = errors.New("relay: server closed")

// Serve accepts connections on ln (plain TCP: the Server does TLS) until
// Close, and returns ErrServerClosed then.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if !s.track(c) {
			c.Close()
			return ErrServerClosed
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serveConn(c)
		}()
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) serveConn(c net.Conn) {
	cork := &corkConn{Conn: c}
	tc := tls.Server(cork, s.tls)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err == nil && tc.ConnectionState().NegotiatedProtocol != "h2" {
		err = errors.New("no HTTP/2 (ALPN h2)")
	}
	if errors.Is(err, io.EOF) {
		// Closed before a byte: the path table's probes measure the
		// RTT to this listener with a TCP handshake alone.
		s.st.probes.Add(1)
		return
	}
	if err != nil {
		s.st.tlsRefused.Add(1)
		s.logf("relay: refused connection from %v: %v", c.RemoteAddr(), err)
		return
	}
	if s.closing() {
		return
	}
	s.st.conns.Add(1)
	s.st.connsOpen.Add(1)
	defer s.st.connsOpen.Add(-1)
	s.h2.ServeConn(&corkedTLS{Conn: tc, raw: cork}, &http2.ServeConnOpts{Context: s.ctx, Handler: s, BaseConfig: s.base})
}

func (s *Server) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

func (s *Server) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// Shutdown drains the Server: it stops accepting connections, tells every
// entry (HTTP/2 GOAWAY) to open no new flow on its connection, and waits
// for the flows already relayed to end, or for ctx to; then it closes
// what is left as Close does. An entry refused a new connection puts this
// exit in backoff and goes direct (or to another exit) meanwhile.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.done = true
	for ln := range s.lns {
		ln.Close()
	}
	s.mu.Unlock()
	s.base.Shutdown(ctx) // no listener or connection of its own: returns at once
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	var err error
	for s.st.connsOpen.Load() > 0 {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-t.C:
			continue
		}
		break
	}
	s.Close()
	return err
}

// Close stops every Serve, closes every connection (their relayed flows
// end with them) and waits for their goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	s.done = true
	s.stop()
	for ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{
		Conns: s.st.conns.Load(), ConnsOpen: s.st.connsOpen.Load(), TLSRefused: s.st.tlsRefused.Load(), Probes: s.st.probes.Load(),
		Streams: s.st.streams.Load(), StreamsOpen: s.st.streamsOpen.Load(),
		BadRequests: s.st.bad.Load(), HopLimit: s.st.hops.Load(), Denied: s.st.denied.Load(),
		DialFailures: s.st.dialFailed.Load(),
	}
}

func refuse(w http.ResponseWriter, code int, reason string, err error) {
	w.Header().Set(HeaderError, reason)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	io.WriteString(w, err.Error()+"\n")
}

// ServeHTTP serves one CONNECT stream. It is exported for http2's sake;
// use Serve.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		s.st.bad.Add(1)
		refuse(w, http.StatusMethodNotAllowed, ReasonBadRequest, fmt.Errorf("%w: method %s: want CONNECT", ErrBadRequest, strconv.Quote(r.Method)))
		return
	}
	req, err := ParseRequest(r.Host, r.Header)
	if err != nil {
		s.st.bad.Add(1)
		s.logf("relay: %v: %v", r.RemoteAddr, err)
		refuse(w, http.StatusBadRequest, ReasonBadRequest, err)
		return
	}
	if req.Hops > s.cfg.MaxHops {
		s.st.hops.Add(1)
		s.logf("relay: %v: %s %d past the limit %d", r.RemoteAddr, HeaderHops, req.Hops, s.cfg.MaxHops)
		refuse(w, http.StatusForbidden, ReasonHopLimit, fmt.Errorf("relay: %s %d is past this exit's limit of %d", HeaderHops, req.Hops, s.cfg.MaxHops))
		return
	}
	ctx, cancel := context.WithTimeout(context.WithValue(r.Context(), requestKey{}, req), s.cfg.DialTimeout)
	origin, err := s.cfg.Dial(ctx, req.Dst, req.Tags, req.Keepalive)
	cancel()
	if err != nil {
		var ne net.Error
		switch {
		case r.Context().Err() != nil:
			return // the entry gave up: nobody reads an answer
		case errors.Is(err, ErrDenied):
			s.st.denied.Add(1)
			refuse(w, http.StatusForbidden, ReasonDenied, err)
		case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
			s.st.dialFailed.Add(1)
			refuse(w, http.StatusGatewayTimeout, ReasonTimeout, err)
		default:
			s.st.dialFailed.Add(1)
			refuse(w, http.StatusBadGateway, ReasonDial, err)
		}
		return
	}
	s.st.streams.Add(1)
	s.st.streamsOpen.Add(1)
	defer s.st.streamsOpen.Add(-1)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		origin.Close()
		return
	}
	pipe(r.Context(), w, rc, r.Body, origin)
}

// pipe copies the stream's request body to origin and origin to the
// stream's response until the origin's EOF (or an error either way).
//
// The entry's end of its request (END_STREAM) half-closes origin's
// writing side, and origin's answer keeps flowing. Origin's EOF ends the
// response, and with it the stream: net/http has no way to end a response
// while still reading its request, so the entry's writing side is cut
// then (RST_STREAM NO_ERROR, RFC 9113 §8.1), as when an origin closes
// rather than half-closes. A reset either way resets the other.
func pipe(ctx context.Context, w io.Writer, rc *http.ResponseController, body io.Reader, origin net.Conn) {
	// The stream's end (the entry's reset, its connection's loss, or the
	// handler's return) closes the origin's connection, which ends both
	// copies even while the origin is idle.
	defer context.AfterFunc(ctx, func() { origin.Close() })()
	up := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		_, err := io.CopyBuffer(origin, body, buf)
		if err == nil {
			err = closeWrite(origin)
		} else {
			origin.Close()
		}
		up <- err
	}()
	buf := make([]byte, 256<<10)
	var derr error
	for {
		n, rerr := origin.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				derr = werr
				break
			}
			if werr := rc.Flush(); werr != nil {
				derr = werr
				break
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				derr = rerr
			}
			break
		}
	}
	if derr != nil {
		origin.Close()
		// The upload ends when the stream does (its body then fails).
		// Resets the stream (RST_STREAM), so the entry sees an error
		// rather than a clean end.
		panic(http.ErrAbortHandler)
	}
	// A clean EOF from the origin. If the entry already ended its side,
	// wait for its last bytes to reach the origin; otherwise return now.
	select {
	case err := <-up:
		origin.Close()
		if err != nil && ctx.Err() == nil {
			panic(http.ErrAbortHandler)
		}
	default:
		origin.Close() // the upload ends with it (up is buffered)
	}
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("relay: the origin connection cannot half-close")
}

// SetKeepalive applies Exit-Tcp-Keepalive-Duration to a connection to an
// origin: keepalive probes after d idle (and every d/3, at least 1 s,
// after), off when d is 0. A DialFunc calls it; a connection other than
// *net.TCPConn is left as it is.
func SetKeepalive(c net.Conn, d time.Duration) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	if d <= 0 {
		return tc.SetKeepAlive(false)
	}
	return tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: d, Interval: max(d/3, time.Second), Count: 3})
}
