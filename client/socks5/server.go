// Package socks5 is a SOCKS5 proxy server (RFC 1928) that reaches its
// destinations through functions it is given: wedge connect's proxy mode
// passes the userspace tunnel's DialContext and Resolve. It supports the
// no-authentication method and the CONNECT and UDP ASSOCIATE commands;
// BIND is answered "command not supported". It knows nothing of the tunnel.
//
// It belongs to the client and must not import server/, lb/ or e2e/.
package socks5

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/wedge-edge/wedge/internal/happyeyeballs"
)

// Defaults for zero Server fields.
const (
	// DefaultHandshakeTimeout bounds the greeting and the request, which
	// a client sends at once: a slow or silent client holds a slot only
	// this long.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultDialTimeout bounds Resolve and Dial for one request.
	DefaultDialTimeout = 30 * time.Second
	// DefaultMaxConns caps concurrent client connections (CONNECT
	// relays, UDP associations and handshakes in progress).
	DefaultMaxConns = 1024
	// DefaultUDPIdleTimeout closes the tunnel side of one UDP
	// destination of an association after this long without a datagram
	// either way (RFC 4787's 2 minutes); the next datagram reopens it.
	// The association itself lasts as long as its TCP connection.
	DefaultUDPIdleTimeout = 2 * time.Minute
	// DefaultMaxUDPDestinations caps the destinations one association
	// holds open at once; datagrams to more are dropped.
	DefaultMaxUDPDestinations = 128
)

// ErrNoDial is returned by Serve when Server.Dial is nil.
var ErrNoDial = errors.New("socks5: nil Dial")

// Server is a SOCKS5 server. Set its fields before calling Serve and do not
// change them after; one Server may Serve several listeners.
type Server struct {
	// Dial reaches a CONNECT destination ("tcp") or a UDP ASSOCIATE one
	// ("udp", which must return a connected datagram conn). address is
	// "ip:port", or "host:port" when Resolve is nil. Its error picks the
	// reply code: ECONNREFUSED, ENETUNREACH, EHOSTUNREACH, EACCES/EPERM
	// and timeouts are told apart (errors.Is), the rest is a general
	// failure. Required.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Resolve turns domain names in requests into addresses, which are
	// then dialed in order (TCP: Happy Eyeballs between the families).
	// A *net.DNSError with IsNotFound or IsTimeout is answered "host
	// unreachable". Nil passes "host:port" to Dial.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// Logger receives per-connection events at debug level and Serve's
	// errors. Nil discards.
	Logger *slog.Logger

	// HandshakeTimeout (default DefaultHandshakeTimeout), DialTimeout
	// (DefaultDialTimeout), MaxConns (DefaultMaxConns), UDPIdleTimeout
	// (DefaultUDPIdleTimeout) and MaxUDPDestinations
	// (DefaultMaxUDPDestinations) are limits; zero takes the default.
	// MaxConns applies per Serve call; a connection beyond it is closed
	// at once.
	HandshakeTimeout   time.Duration
	DialTimeout        time.Duration
	MaxConns           int
	UDPIdleTimeout     time.Duration
	MaxUDPDestinations int
}

// conf is a Server with defaults applied, shared by one Serve's
// connections.
type conf struct {
	Server
	log *slog.Logger
}

func (s *Server) conf() *conf {
	c := &conf{Server: *s, log: s.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&c.DialTimeout, DefaultDialTimeout)
	def(&c.UDPIdleTimeout, DefaultUDPIdleTimeout)
	if c.MaxConns <= 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxUDPDestinations <= 0 {
		c.MaxUDPDestinations = DefaultMaxUDPDestinations
	}
	return c
}

// Serve accepts SOCKS5 clients on ln until ln is closed, then closes every
// connection it accepted (ending their relays and UDP associations),
// waits for their goroutines and returns nil. It returns earlier with an
// error only when Accept fails in a way that retrying cannot fix.
func (s *Server) Serve(ln net.Listener) error {
	if s.Dial == nil {
		return ErrNoDial
	}
	c := s.conf()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	slots := make(chan struct{}, c.MaxConns)
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !retryable(err) {
				return fmt.Errorf("socks5: accept: %w", err)
			}
			// Out of file descriptors or an aborted connection: back
			// off as net/http does, from 5 ms to 1 s.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			c.log.Warn("socks5: accept failed, retrying", "err", err, "backoff", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		select {
		case slots <- struct{}{}:
		default:
			c.log.Debug("socks5: connection limit reached, closing", "client", conn.RemoteAddr(), "max", c.MaxConns)
			conn.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			c.serveConn(ctx, conn)
		}()
	}
}

func retryable(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// serveConn runs one client connection: handshake, then the command. The
// connection is closed when it returns or when ctx ends (Serve stopping).
func (c *conf) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	log := c.log.With("client", conn.RemoteAddr().String())

	conn.SetDeadline(time.Now().Add(c.HandshakeTimeout))
	methods, err := readGreeting(conn)
	if err != nil {
		log.Debug("socks5: bad greeting", "err", err)
		return
	}
	if !bytes.Contains(methods, []byte{methodNoAuth}) {
		log.Debug("socks5: no acceptable method", "methods", methods)
		conn.Write([]byte{socksVersion, methodNoAcceptable})
		return
	}
	if _, err := conn.Write([]byte{socksVersion, methodNoAuth}); err != nil {
		return
	}
	req, err := readRequest(conn)
	if err != nil {
		log.Debug("socks5: bad request", "err", err)
		switch {
		case errors.Is(err, errAddrType):
			writeReply(conn, repAddrNotSupported, addr{})
		case errors.Is(err, errDomain):
			writeReply(conn, repGeneralFailure, addr{})
		}
		return
	}
	// The request is in: what follows is bounded by DialTimeout, and
	// replies by the handshake deadline's successor set on each write.
	conn.SetReadDeadline(time.Time{})
	switch req.cmd {
	case cmdConnect:
		c.connect(ctx, log, conn, req.dst)
	case cmdUDPAssociate:
		c.associate(ctx, log, conn, req.dst)
	default: // BIND and anything unknown
		log.Debug("socks5: command not supported", "cmd", req.cmd)
		writeReply(conn, repCommandNotSupported, addr{})
	}
}

// writeReply sends a reply, bounded by replyTimeout.
func writeReply(conn net.Conn, rep byte, bnd addr) error {
	conn.SetWriteDeadline(time.Now().Add(replyTimeout))
	_, err := conn.Write(appendReply(make([]byte, 0, 22), rep, bnd))
	conn.SetWriteDeadline(time.Time{})
	return err
}

// replyTimeout bounds writing one reply to a client that does not read.
const replyTimeout = 10 * time.Second

// connect serves CONNECT: dial, reply, then relay both ways.
func (c *conf) connect(ctx context.Context, log *slog.Logger, conn net.Conn, dst addr) {
	dctx, cancel := context.WithTimeout(ctx, c.DialTimeout)
	remote, err := c.dial(dctx, "tcp", dst)
	cancel()
	if err != nil {
		rep := replyCode(err)
		log.Debug("socks5: connect failed", "dst", dst, "err", err, "rep", rep)
		writeReply(conn, rep, addr{})
		return
	}
	defer remote.Close()
	defer context.AfterFunc(ctx, func() { remote.Close() })()
	if err := writeReply(conn, repSucceeded, addrFromNet(remote.LocalAddr())); err != nil {
		return
	}
	log.Debug("socks5: connected", "dst", dst)
	relay(conn, remote)
}

// dial reaches dst on network ("tcp" or "udp"), resolving a name with
// Resolve when set.
func (c *conf) dial(ctx context.Context, network string, dst addr) (net.Conn, error) {
	if dst.name == "" || c.Resolve == nil {
		return c.Dial(ctx, network, dst.hostPort())
	}
	ips, err := c.Resolve(ctx, dst.name)
	if err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: dst.name, IsNotFound: true}
	}
	aps := make([]netip.AddrPort, len(ips))
	for i, ip := range ips {
		aps[i] = netip.AddrPortFrom(ip.Unmap(), dst.port)
	}
	dial := func(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
		return c.Dial(ctx, network, ap.String())
	}
	if network != "tcp" {
		// A UDP dial only binds and routes: the first that does wins.
		return happyeyeballs.Serial(ctx, dial, aps)
	}
	return dialHappy(ctx, dial, aps)
}

// replyCode maps a Resolve or Dial error to a SOCKS reply code.
func replyCode(err error) byte {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return repConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return repNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return repHostUnreachable
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return repNotAllowed
	case errors.As(err, &dnsErr) && (dnsErr.IsNotFound || dnsErr.IsTimeout):
		return repHostUnreachable
	case errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return repHostUnreachable
	}
	return repGeneralFailure
}

// relayBufSize is the copy buffer per direction.
const relayBufSize = 64 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// relay copies a→b and b→a. At EOF from one side it half-closes the other
// (CloseWrite) and keeps copying the other way; an error either way, or a
// side that cannot half-close, closes both. It returns when both
// directions are done.
func relay(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(b, a)
	}()
	copyHalf(a, b)
	<-done
}

type closeWriter interface{ CloseWrite() error }

func copyHalf(dst, src net.Conn) {
	bp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bp)
	// Hide ReaderFrom/WriterTo so the pooled buffer is used.
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
	if cw, ok := dst.(closeWriter); ok && err == nil {
		if cw.CloseWrite() == nil {
			return
		}
	}
	dst.Close()
	src.Close()
}

// dialHappy dials the addresses of the first one's family in order and,
// happyeyeballs.Delay later or as soon as they all failed, those of the
// other family (RFC 8305, as net.Dialer).
func dialHappy(ctx context.Context, dial happyeyeballs.Func, dsts []netip.AddrPort) (net.Conn, error) {
	var primary, fallback []netip.AddrPort
	for _, d := range dsts {
		if d.Addr().Is4() == dsts[0].Addr().Is4() {
			primary = append(primary, d)
		} else {
			fallback = append(fallback, d)
		}
	}
	return happyeyeballs.Dial(ctx, dial, primary, fallback)
}
