package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"gvisor.dev/gvisor/pkg/waiter"
)

// The Client's DNS resolver: Resolve and the UDP and TCP exchanges
// beneath it, over the Client's own stack. DialContext (client.go)
// resolves host names with it.

// Resolver settings.
const (
	// dnsPort is where Resolve sends queries on each ClientConfig.DNS.
	dnsPort = 53
	// dnsAttemptTimeout bounds one UDP try at one server; dnsAttempts
	// tries are made per server, resending unanswered queries (UDP loss),
	// as glibc's defaults (timeout:5 attempts:2) but shorter: the tunnel
	// hop is one RTT and the node's resolver answers or fails quickly.
	dnsAttemptTimeout = 2 * time.Second
	dnsAttempts       = 2
	// dnsUDPSize is the EDNS0 payload size advertised: DNS Flag Day
	// 2020's 1232 bytes, which fits any tunnel MTU without fragmenting.
	// Larger answers come truncated and are retried over TCP.
	dnsUDPSize = 1232
	// dnsTCPTimeout bounds one TCP query, connect included.
	dnsTCPTimeout = 5 * time.Second
)

// Resolve looks host up through the tunnel: A and AAAA queries to each
// ClientConfig.DNS server in turn, over UDP, retried over TCP when the
// answer is truncated. An IP literal is returned as is. Addresses of the
// families the client has come first, IPv6 before IPv4 within that order.
// CNAME chains in the answer are followed. Errors are *net.DNSError
// (IsNotFound for NXDOMAIN, no address or an invalid name, IsTimeout when
// no server answered in time), or net.ErrClosed after Close.
func (c *Client) Resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, nil
	}
	if c.ctx.Err() != nil {
		return nil, net.ErrClosed
	}
	fqdn := host
	if !strings.HasSuffix(fqdn, ".") {
		fqdn += "."
	}
	if !isDomainName(fqdn) {
		return nil, &net.DNSError{Err: "invalid domain name", Name: host, IsNotFound: true}
	}
	name, err := dnsmessage.NewName(fqdn)
	if err != nil {
		return nil, &net.DNSError{Err: "invalid domain name", Name: host, IsNotFound: true}
	}
	if len(c.cfg.DNS) == 0 {
		return nil, &net.DNSError{Err: "no DNS server configured", Name: host}
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	defer context.AfterFunc(c.ctx, stop)()
	var lastErr *net.DNSError
	for _, srv := range c.cfg.DNS {
		addrs, err := c.lookup(ctx, srv, name)
		if err == nil {
			if len(addrs) == 0 {
				return nil, &net.DNSError{Err: "no such host", Name: host, Server: srv.String(), IsNotFound: true}
			}
			return c.sortAddrs(addrs), nil
		}
		if c.ctx.Err() != nil {
			return nil, net.ErrClosed
		}
		lastErr = &net.DNSError{Err: err.Error(), Name: host, Server: srv.String(), IsTimeout: isTimeout(err)}
		if errors.Is(err, errNXDomain) {
			lastErr.Err, lastErr.IsNotFound = "no such host", true
			return nil, lastErr
		}
		if ctx.Err() != nil {
			lastErr.IsTimeout = true
			break
		}
	}
	return nil, lastErr
}

// sortAddrs puts the families the client can reach first, IPv6 before
// IPv4, keeping the server's order within a family (it may balance).
func (c *Client) sortAddrs(addrs []netip.Addr) []netip.Addr {
	rank := func(a netip.Addr) int {
		switch {
		case a.Is6() && c.has6:
			return 0
		case a.Is4() && c.has4:
			return 1
		case a.Is6():
			return 2
		}
		return 3
	}
	slices.SortStableFunc(addrs, func(a, b netip.Addr) int { return rank(a) - rank(b) })
	return addrs
}

var (
	errNXDomain   = errors.New("no such host")
	errServerFail = errors.New("server failure")
)

// dnsQuery is one question in flight and, once answered, its outcome.
type dnsQuery struct {
	qtype dnsmessage.Type
	id    uint16
	msg   []byte
	done  bool
	tcp   bool // truncated over UDP: ask again over TCP
	rcode dnsmessage.RCode
	addrs []netip.Addr
}

// lookup asks server for name's A and AAAA records. Both queries share one
// UDP socket; unanswered ones are resent each attempt. It returns the
// addresses (possibly none: NODATA), errNXDomain, or another error when
// this server gave no usable answer.
func (c *Client) lookup(ctx context.Context, server netip.Addr, name dnsmessage.Name) ([]netip.Addr, error) {
	qs := []*dnsQuery{{qtype: dnsmessage.TypeAAAA}, {qtype: dnsmessage.TypeA}}
	for _, q := range qs {
		q.id = uint16(rand.Uint32())
		var err error
		if q.msg, err = buildQuery(q.id, name, q.qtype); err != nil {
			return nil, err
		}
	}
	dst := netip.AddrPortFrom(server, dnsPort)
	conn, wq, err := c.dialUDPQueue("udp", dst)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()
	// An ICMP port or host unreachable for the server: give up on it at
	// once rather than at the timeout.
	var unreachable atomic.Bool
	we := waiter.NewFunctionEntry(waiter.EventErr, func(waiter.EventMask) {
		unreachable.Store(true)
		conn.SetReadDeadline(time.Now())
	})
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)

	buf := make([]byte, dnsUDPSize+512)
	var lastErr error
	for attempt := 0; attempt < dnsAttempts && ctx.Err() == nil; attempt++ {
		pending := 0
		for _, q := range qs {
			if !q.done {
				pending++
				if _, err := conn.Write(q.msg); err != nil {
					return nil, err
				}
			}
		}
		conn.SetReadDeadline(time.Now().Add(dnsAttemptTimeout))
		for pending > 0 {
			n, err := conn.Read(buf)
			if unreachable.Load() {
				return nil, fmt.Errorf("DNS server %v: %w", dst, syscall.ECONNREFUSED)
			}
			if err != nil {
				if isTimeout(err) || ctx.Err() != nil {
					lastErr = err
					break
				}
				// An ICMP error on the connected socket (port
				// unreachable): the server is not there.
				return nil, err
			}
			if q := matchAnswer(qs, name, buf[:n]); q != nil {
				pending--
			}
		}
		if pending == 0 {
			lastErr = nil
			break
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	for _, q := range qs {
		if !q.done {
			if lastErr == nil {
				lastErr = os.ErrDeadlineExceeded
			}
			return nil, fmt.Errorf("no answer from %v: %w", dst, lastErr)
		}
		if q.tcp {
			if err := c.exchangeTCP(ctx, dst, name, q); err != nil {
				return nil, err
			}
		}
	}
	var addrs []netip.Addr
	for _, q := range qs {
		switch q.rcode {
		case dnsmessage.RCodeSuccess:
			addrs = append(addrs, q.addrs...)
		case dnsmessage.RCodeNameError:
			return nil, errNXDomain
		default:
			return nil, fmt.Errorf("%w: %v", errServerFail, q.rcode)
		}
	}
	return addrs, nil
}

// exchangeTCP asks q again over TCP (RFC 7766) and records the answer.
func (c *Client) exchangeTCP(ctx context.Context, dst netip.AddrPort, name dnsmessage.Name, q *dnsQuery) error {
	ctx, cancel := context.WithTimeout(ctx, dnsTCPTimeout)
	defer cancel()
	conn, err := c.dialTCP(ctx, "tcp", dst)
	if err != nil {
		return err
	}
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })()
	msg := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(q.msg)), uint16(len(q.msg)))
	if _, err := conn.Write(append(msg, q.msg...)); err != nil {
		return err
	}
	var l [2]byte
	if _, err := io.ReadFull(conn, l[:]); err != nil {
		return err
	}
	buf := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	q.done, q.tcp = false, false
	if matchAnswer([]*dnsQuery{q}, name, buf) == nil || q.tcp {
		return fmt.Errorf("bad answer over TCP from %v", dst)
	}
	return nil
}

// buildQuery returns a recursive query for name, type qtype, with an EDNS0
// record advertising dnsUDPSize.
func buildQuery(id uint16, name dnsmessage.Name, qtype dnsmessage.Type) ([]byte, error) {
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), dnsmessage.Header{ID: id, RecursionDesired: true})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(dnsmessage.Question{Name: name, Type: qtype, Class: dnsmessage.ClassINET}); err != nil {
		return nil, err
	}
	if err := b.StartAdditionals(); err != nil {
		return nil, err
	}
	var rh dnsmessage.ResourceHeader
	if err := rh.SetEDNS0(dnsUDPSize, dnsmessage.RCodeSuccess, false); err != nil {
		return nil, err
	}
	if err := b.OPTResource(rh, dnsmessage.OPTResource{}); err != nil {
		return nil, err
	}
	return b.Finish()
}

// matchAnswer parses msg as a response to one of the pending qs (same ID
// and question) and records its outcome there, returning it; nil for
// anything else (a stray, late or malformed message).
func matchAnswer(qs []*dnsQuery, name dnsmessage.Name, msg []byte) *dnsQuery {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || !h.Response {
		return nil
	}
	question, err := p.Question()
	if err != nil || question.Class != dnsmessage.ClassINET || !strings.EqualFold(question.Name.String(), name.String()) {
		return nil
	}
	var q *dnsQuery
	for _, c := range qs {
		if c.id == h.ID && c.qtype == question.Type && !c.done {
			q = c
		}
	}
	if q == nil {
		return nil
	}
	q.done = true
	if h.Truncated {
		q.tcp = true
		return q
	}
	q.rcode = h.RCode
	if h.RCode != dnsmessage.RCodeSuccess {
		return q
	}
	if err := p.SkipAllQuestions(); err != nil {
		q.rcode = dnsmessage.RCodeFormatError
		return q
	}
	// Follow the CNAME chain from name; keep only addresses of names on
	// it. Recursive servers put the chain in order, so one pass suffices.
	owner := strings.ToLower(name.String())
	for {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			q.rcode = dnsmessage.RCodeFormatError
			return q
		}
		onChain := rh.Class == dnsmessage.ClassINET && strings.ToLower(rh.Name.String()) == owner
		switch {
		case onChain && rh.Type == dnsmessage.TypeCNAME:
			r, err := p.CNAMEResource()
			if err != nil {
				q.rcode = dnsmessage.RCodeFormatError
				return q
			}
			owner = strings.ToLower(r.CNAME.String())
		case onChain && rh.Type == dnsmessage.TypeA && q.qtype == dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				q.rcode = dnsmessage.RCodeFormatError
				return q
			}
			q.addrs = append(q.addrs, netip.AddrFrom4(r.A))
		case onChain && rh.Type == dnsmessage.TypeAAAA && q.qtype == dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				q.rcode = dnsmessage.RCodeFormatError
				return q
			}
			q.addrs = append(q.addrs, netip.AddrFrom16(r.AAAA))
		default:
			if err := p.SkipAnswer(); err != nil {
				q.rcode = dnsmessage.RCodeFormatError
				return q
			}
		}
	}
	return q
}

// isDomainName reports whether s (ending in a dot) is a name Resolve will
// ask for: labels of 1..63 letters, digits, '-' and '_', at most 254
// bytes with the dot (net's rules).
func isDomainName(s string) bool {
	if len(s) < 2 || len(s) > 254 {
		return false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9', ch == '_', ch == '-':
			label++
			if label > 63 {
				return false
			}
		case ch == '.':
			if label == 0 {
				return false
			}
			label = 0
		default:
			return false
		}
	}
	return true
}
