package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Resolver tests: a Client wired to a Stack (newClientPair, client_test.go)
// whose Local DNS forwards to fakeDNS.

// fakeDNS is an upstream resolver on 127.0.0.1 (UDP and TCP, one port)
// with fixed records. Names under "big." answer UDP queries truncated.
type fakeDNS struct {
	addr        netip.AddrPort
	udpQueries  atomic.Int32
	tcpQueries  atomic.Int32
	dropAAAAUDP atomic.Int32 // drop this many AAAA queries over UDP
}

var dnsRecords = map[string][]netip.Addr{
	"echo.test.":   {remote, remoteV6},
	"v4only.test.": {remote},
	"big.test.": {
		netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("198.18.1.3"),
		netip.MustParseAddr("2001:db8::1:1"), netip.MustParseAddr("2001:db8::1:2"),
	},
}

var dnsCNAMEs = map[string]string{"alias.test.": "echo.test."}

func startFakeDNS(t testing.TB) *fakeDNS {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for range 20 {
		var err error
		pc, err = net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp4", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for both UDP and TCP")
	}
	f := &fakeDNS{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			f.udpQueries.Add(1)
			if resp := f.answer(buf[:n], true); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				f.tcpQueries.Add(1)
				resp := f.answer(q, false)
				c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...))
			}()
		}
	}()
	t.Cleanup(func() { pc.Close(); ln.Close(); wg.Wait() })
	return f
}

// answer builds the response to query q; nil to drop it.
func (f *fakeDNS) answer(q []byte, udp bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil
	}
	question, err := p.Question()
	if err != nil {
		return nil
	}
	if udp && question.Type == dnsmessage.TypeAAAA && f.dropAAAAUDP.Add(-1) >= 0 {
		return nil
	}
	name := strings.ToLower(question.Name.String())
	rh := dnsmessage.Header{ID: h.ID, Response: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	target := name
	if c, ok := dnsCNAMEs[name]; ok {
		target = c
	}
	addrs, ok := dnsRecords[target]
	switch {
	case !ok:
		rh.RCode = dnsmessage.RCodeNameError
	case udp && strings.HasPrefix(name, "big."):
		rh.Truncated = true
		addrs = nil
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.StartQuestions()
	b.Question(question)
	b.StartAnswers()
	res := dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: 60}
	if target != name && ok {
		b.CNAMEResource(res, dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(target)})
		res.Name = dnsmessage.MustNewName(target)
	}
	// An unrelated record that must not be taken as an answer.
	b.AResource(dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName("other.test."), Class: dnsmessage.ClassINET}, dnsmessage.AResource{A: [4]byte{6, 6, 6, 6}})
	for _, a := range addrs {
		switch {
		case a.Is4() && question.Type == dnsmessage.TypeA:
			b.AResource(res, dnsmessage.AResource{A: a.As4()})
		case a.Is6() && question.Type == dnsmessage.TypeAAAA:
			b.AAAAResource(res, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

func TestClientResolve(t *testing.T) {
	dns := startFakeDNS(t)
	c, _ := newClientPair(t, Config{Dialer: &fakeDialer{}, DNSUpstream: dns.addr}, ClientConfig{})
	for _, tc := range []struct {
		name     string
		host     string
		want     []netip.Addr
		notFound bool
		tcp      bool // answered over TCP
	}{
		{"a and aaaa", "echo.test", []netip.Addr{remoteV6, remote}, false, false},
		{"fqdn, case", "ECHO.test.", []netip.Addr{remoteV6, remote}, false, false},
		{"cname", "alias.test", []netip.Addr{remoteV6, remote}, false, false},
		{"v4 only", "v4only.test", []netip.Addr{remote}, false, false},
		{"truncated", "big.test", []netip.Addr{
			netip.MustParseAddr("2001:db8::1:1"), netip.MustParseAddr("2001:db8::1:2"),
			netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("198.18.1.3"),
		}, false, true},
		{"nxdomain", "nx.test", nil, true, false},
		{"invalid", "bad name!", nil, true, false},
		{"ip literal", "192.0.2.7", []netip.Addr{netip.MustParseAddr("192.0.2.7")}, false, false},
		{"ipv6 literal", "2001:db8::7", []netip.Addr{netip.MustParseAddr("2001:db8::7")}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tcpBefore := dns.tcpQueries.Load()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got, err := c.Resolve(ctx, tc.host)
			if tc.notFound {
				var de *net.DNSError
				if !errors.As(err, &de) || !de.IsNotFound {
					t.Fatalf("Resolve: got %v, %v, want a not-found *net.DNSError", got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Resolve: got %v, want %v", got, tc.want)
			}
			if usedTCP := dns.tcpQueries.Load() > tcpBefore; usedTCP != tc.tcp {
				t.Fatalf("TCP fallback used: got %v, want %v", usedTCP, tc.tcp)
			}
		})
	}
	t.Run("lost query resent", func(t *testing.T) {
		dns.dropAAAAUDP.Store(1)
		got, err := c.Resolve(context.Background(), "echo.test")
		if err != nil || !slices.Equal(got, []netip.Addr{remoteV6, remote}) {
			t.Fatalf("Resolve: got %v, %v, want %v", got, err, []netip.Addr{remoteV6, remote})
		}
	})
}

func TestClientResolveErrors(t *testing.T) {
	t.Run("no servers", func(t *testing.T) {
		c, _ := newClientPair(t, Config{Dialer: &fakeDialer{}}, ClientConfig{DNS: []netip.Addr{}})
		var de *net.DNSError
		if _, err := c.Resolve(context.Background(), "echo.test"); !errors.As(err, &de) || de.IsNotFound {
			t.Fatalf("Resolve: got %v, want a *net.DNSError that is not not-found", err)
		}
	})
	t.Run("server refuses", func(t *testing.T) {
		// No DNSUpstream: the node answers port unreachable.
		c, _ := newClientPair(t, Config{Dialer: &fakeDialer{}}, ClientConfig{})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var de *net.DNSError
		if _, err := c.Resolve(ctx, "echo.test"); !errors.As(err, &de) {
			t.Fatalf("Resolve: got %v, want a *net.DNSError", err)
		}
	})
	t.Run("second server", func(t *testing.T) {
		dns := startFakeDNS(t)
		// 100.96.0.9 is not the node: nothing answers it (the fake
		// dialer refuses), then the node's resolver does.
		c, _ := newClientPair(t, Config{Dialer: &fakeDialer{refuse: true}, DNSUpstream: dns.addr},
			ClientConfig{DNS: []netip.Addr{netip.MustParseAddr("100.96.0.9"), serverV4}})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if got, err := c.Resolve(ctx, "v4only.test"); err != nil || !slices.Equal(got, []netip.Addr{remote}) {
			t.Fatalf("Resolve: got %v, %v, want [%v]", got, err, remote)
		}
	})
}

// TestDNSDial: with Config.DNSDial the clients' queries reach the upstream
// through it, over UDP and, for a truncated answer, TCP.
func TestDNSDial(t *testing.T) {
	dns := startFakeDNS(t)
	var mu sync.Mutex
	calls := map[string]netip.AddrPort{}
	dial := func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
		mu.Lock()
		calls[network] = dst
		mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, network, dst.String())
	}
	c, _ := newClientPair(t, Config{Dialer: &fakeDialer{}, DNSUpstream: dns.addr, DNSDial: dial}, ClientConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got, err := c.Resolve(ctx, "big.test"); err != nil || len(got) == 0 {
		t.Fatalf("Resolve through DNSDial: %v, %v", got, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls["udp"] != dns.addr || calls["tcp"] != dns.addr {
		t.Fatalf("DNSDial calls %v, want udp and tcp to %v", calls, dns.addr)
	}
}
