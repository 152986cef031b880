package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/server/paths"
	"github.com/wedge-edge/wedge/server/relay"
)

// directDialer is the egress stand-in: it dials dst itself and counts.
type directDialer struct{ n atomic.Int64 }

func (d *directDialer) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	d.n.Add(1)
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", dst.String())
}
func (d *directDialer) DialUDP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	return nil, errors.New("no UDP here")
}
func (d *directDialer) Ping(context.Context, netip.Addr, []byte) error { return errors.New("no ping") }

// TestPlusDialer: with the path table finding another data center faster
// for a destination, a plus client's TCP flow goes through that data
// center's relay (carrying its egress tags, and feeding the table the RTT
// to it), a free client's goes direct, and a plus client's flow falls
// back to direct within a second once the relay is gone.
func TestPlusDialer(t *testing.T) {
	origin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer origin.Close()
	go func() {
		for {
			c, err := origin.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello from the origin")
			c.Close()
		}
	}()
	dst := netip.MustParseAddrPort(origin.Addr().String())

	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	// The exit, in data center fra: it dials the origin and records the
	// tags the flow came with.
	exitCreds, err := relay.NewCredentials(key, "f1")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var gotTags []relay.Tags
	exit, err := relay.NewServer(relay.ServerConfig{Credentials: exitCreds,
		Dial: func(ctx context.Context, dst netip.AddrPort, tags relay.Tags, keepalive time.Duration) (net.Conn, error) {
			mu.Lock()
			gotTags = append(gotTags, tags)
			mu.Unlock()
			var nd net.Dialer
			return nd.DialContext(ctx, "tcp", dst.String())
		}})
	if err != nil {
		t.Fatal(err)
	}
	exitLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go exit.Serve(exitLn)
	defer exit.Close()

	// This node, in ams: 80 ms to the origin direct, fra 2 ms away and
	// 2 ms from the origin.
	ob := paths.NewObserver(paths.ObserverOptions{})
	table := paths.NewTable(paths.Options{DC: "ams", Node: "a1", Observer: ob})
	ob.Observe(dst, 80*time.Millisecond)
	now := time.Now()
	table.SetSummary("fra", "f1", paths.Summary{At: now, Relay: exitLn.Addr().String(),
		DCs: map[string]paths.Measure{"ams": {RTT: 2 * time.Millisecond, Samples: 10, Updated: now}},
		Prefixes: []paths.Entry{{Prefix: paths.PrefixOf(dst.Addr()), Dst: dst,
			Measure: paths.Measure{RTT: 2 * time.Millisecond, Samples: 10, Updated: now}}}})
	if r := table.Route(dst.Addr()); r.Exit != "fra" || r.Relay != exitLn.Addr().String() {
		t.Fatalf("route to %v: %+v, want fra's relay", dst, r)
	}

	entryCreds, err := relay.NewCredentials(key, "a1")
	if err != nil {
		t.Fatal(err)
	}
	r := &relayParts{done: make(chan struct{})}
	r.client, err = relay.NewClient(relay.ClientConfig{Credentials: entryCreds,
		OnRTT: func(exit string, rtt time.Duration) {
			if dc, ok := r.exits.Load(exit); ok {
				ob.ObserveDC(dc.(string), rtt)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.client.Close()
	plusAddr, freeAddr := netip.MustParseAddr("100.96.0.2"), netip.MustParseAddr("100.96.0.3")
	direct := &directDialer{}
	d := &plusDialer{Dialer: direct, table: table, relay: r,
		plus: func(a netip.Addr) bool { return a == plusAddr },
		tags: func(netip.Addr) relay.Tags { return relay.Tags{Country: "DE", Pool: "gold"} }}

	read := func(src netip.Addr) string {
		t.Helper()
		c, err := d.DialTCP(context.Background(), netip.AddrPortFrom(src, 40000), dst)
		if err != nil {
			t.Fatalf("dial from %v: %v", src, err)
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read from %v's flow: %v", src, err)
		}
		return string(b)
	}
	if got := read(plusAddr); got != "hello from the origin" || direct.n.Load() != 0 {
		t.Fatalf("plus client: read %q, %d direct dials; want the origin's greeting through the relay", got, direct.n.Load())
	}
	mu.Lock()
	if len(gotTags) != 1 || gotTags[0] != (relay.Tags{Country: "DE", Pool: "gold"}) {
		t.Errorf("the exit saw tags %+v, want the client's DE/gold", gotTags)
	}
	mu.Unlock()
	if st := r.client.Stats(); st.Relayed != 1 {
		t.Errorf("relay stats %+v, want 1 relayed", st)
	}
	if _, _, ok := ob.DC("fra"); !ok {
		t.Error("the relay connection's RTT did not reach the path table")
	}
	if got := read(freeAddr); got != "hello from the origin" || direct.n.Load() != 1 {
		t.Fatalf("free client: read %q, %d direct dials; want direct", got, direct.n.Load())
	}

	// The exit goes away: the plus client's next flow goes direct, soon.
	exit.Close()
	exitLn.Close()
	start := time.Now()
	if got := read(plusAddr); got != "hello from the origin" {
		t.Fatalf("plus client with the relay down: read %q", got)
	}
	if el := time.Since(start); el > time.Second || direct.n.Load() != 2 {
		t.Fatalf("fallback took %v with %d direct dials; want direct within 1 s", el, direct.n.Load())
	}
}

// TestExitDialDenied: the exit's egress ACL refuses as relay.ErrDenied
// (the relay answers 403 denied, and the entry does not back off).
func TestExitDialDenied(t *testing.T) {
	d, err := egress.New(egress.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = exitDial(&egressParts{dialer: d})(context.Background(), netip.MustParseAddrPort("10.0.0.1:80"), relay.Tags{}, relayKeepalive)
	if !errors.Is(err, relay.ErrDenied) || !errors.Is(err, egress.ErrDenied) {
		t.Fatalf("a private destination at the exit: %v, want relay.ErrDenied wrapping egress.ErrDenied", err)
	}
}
