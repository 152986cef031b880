package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/wedge-edge/wedge/client"
	"github.com/wedge-edge/wedge/client/socks5"
	"github.com/wedge-edge/wedge/internal/udpbind"
	"github.com/wedge-edge/wedge/netstack"
)

// connect runs a wedge client: a wireguard-go device whose Bind stamps the
// ClientID, races the server's IPv6 and IPv4 endpoints and reopens its
// socket on errors. TUN mode (root) routes like wg-quick; --socks serves a
// SOCKS5 proxy over an in-process netstack instead (no root).
func connect(args []string) error {
	fs := flag.NewFlagSet("wedge connect", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "client config `FILE` written by wedge register (required)")
	socksAddr := fs.String("socks", "", "serve a SOCKS5 proxy on `ADDR` (host:port) instead of creating a TUN; needs no root")
	name := fs.String("name", "wedge0", "TUN interface `NAME`")
	every := fs.Duration("status-interval", 10*time.Second, "print the state this often (and on every change); 0: only on change")
	setDNS := fs.Bool("dns", false, "TUN mode: point /etc/resolv.conf at the config's DNS servers while connected (restored on exit); off by default, leaving DNS alone")
	table := fs.Uint("table", client.DefaultTable, "TUN mode: routing table and fwmark for default routes (wg-quick's scheme)")
	verbose := fs.Bool("v", false, "log wireguard-go's verbose messages")
	reregister := fs.Bool("reregister", true, "at start, ask the config's public API (#@ API, #@ Token) whether the registration still exists; if the node says it is gone, register the same key again and rewrite --config")
	enroll := fs.String("enroll-token", "", "enrollment `TOKEN` to register again with (the config does not keep it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cfgPath == "" || fs.NArg() != 0 {
		fs.Usage()
		return errors.New("connect: --config FILE is required")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	f, err := os.Open(*cfgPath)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	cfg, err := client.Parse(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("connect: %s: %w", *cfgPath, err)
	}
	for _, ig := range cfg.Ignored {
		log.Warn("config key ignored (wedge connect runs no hooks)", "where", ig)
	}
	if *socksAddr == "" && os.Geteuid() != 0 {
		return errors.New("connect: TUN mode needs root (CAP_NET_ADMIN); run as root or use --socks ADDR")
	}
	if *reregister {
		if cfg, err = ensureRegistered(context.Background(), *cfgPath, cfg, *enroll, log); err != nil {
			return err
		}
	}

	// Every way out must run the cleanup below: a closed terminal (SIGHUP)
	// ends the client cleanly, and a closed stdout (wedge connect | head)
	// makes status writes fail instead of killing the process with SIGPIPE
	// while its routes are in place.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	signal.Ignore(syscall.SIGPIPE)

	eps, err := serverEndpoints(ctx, cfg)
	if err != nil {
		return err
	}
	var inner conn.Bind = conn.NewDefaultBind()
	if udpbind.Supported {
		inner = udpbind.New()
	}
	bind, err := client.NewBind(inner, client.Options{ClientID: cfg.ClientID, Endpoints: eps, Logger: log})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = 1420
	}

	var (
		tdev    tun.Device
		routing *client.Routing
		cleanup []func()
	)
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()
	if *socksAddr == "" {
		if tdev, err = tun.CreateTUN(*name, mtu); err != nil {
			return fmt.Errorf("connect: create TUN %s: %w", *name, err)
		}
		ifname, err := tdev.Name()
		if err != nil {
			tdev.Close()
			return fmt.Errorf("connect: TUN name: %w", err)
		}
		if cfg.FwMark != 0 {
			*table = uint(cfg.FwMark) // wg-quick: FwMark doubles as the table
		}
		routing = &client.Routing{Interface: ifname, Config: cfg, Table: uint32(*table), SetDNS: *setDNS, Logger: log}
		if m := routing.Mark(); m != 0 {
			cfg.FwMark = m
		}
	} else {
		nc, err := netstack.NewClient(netstack.ClientConfig{
			Addresses: prefixAddrs(cfg.Addresses), MTU: mtu, DNS: cfg.DNS, Logger: log,
		})
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		tdev = nc
	}

	dlog := &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf:   func(format string, a ...any) { log.Error(fmt.Sprintf(format, a...)) },
	}
	if *verbose {
		dlog.Verbosef = func(format string, a ...any) { log.Debug(fmt.Sprintf(format, a...)) }
	}
	dev := device.NewDevice(tdev, bind, dlog) // owns tdev from here
	cleanup = append(cleanup, dev.Close)
	endpoint := client.DualEndpoint
	if err := dev.IpcSet(cfg.UAPI(endpoint)); err != nil {
		return fmt.Errorf("connect: configure device: %w", err)
	}
	if err := dev.Up(); err != nil {
		return fmt.Errorf("connect: device up: %w", err)
	}

	mode := ""
	if routing != nil {
		// Close the device first (its TUN takes the routes with it), then
		// remove the rest. Down is idempotent and runs even when Up
		// failed halfway.
		cleanup = append(cleanup, func() {
			dev.Close()
			if err := routing.Down(); err != nil {
				log.Error("cleanup", "err", err)
			}
		})
		if err := routing.Up(ctx, mtu); err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		mode = "TUN " + routing.Interface
	} else {
		ln, err := net.Listen("tcp", *socksAddr)
		if err != nil {
			return fmt.Errorf("connect: SOCKS listener: %w", err)
		}
		srv, err := newSOCKSServer(tdev, cfg.DNS, log)
		if err != nil {
			ln.Close()
			return fmt.Errorf("connect: %w", err)
		}
		served := make(chan struct{})
		go func() {
			defer close(served)
			if err := srv.Serve(ln); err != nil {
				log.Error("SOCKS server stopped", "err", err)
				stop()
			}
		}()
		cleanup = append(cleanup, func() { ln.Close(); <-served })
		mode = "SOCKS5 on " + ln.Addr().String()
	}
	id := "none (standard client)"
	if cfg.ClientID != 0 {
		b := cfg.Reserved()
		id = fmt.Sprintf("%s (reserved = [%d, %d, %d])", cfg.ClientID, b[0], b[1], b[2])
	}
	fmt.Printf("wedge connect: %s; ClientID %s; server %v\n", mode, id, eps)

	printStatus(ctx, dev, bind, *every)
	fmt.Println("wedge connect: shutting down")
	return nil
}

// serverEndpoints returns the endpoints to race: the config's literal ones,
// or the [Peer] Endpoint's name resolved (first IPv6, first IPv4).
func serverEndpoints(ctx context.Context, cfg *client.Config) ([]netip.AddrPort, error) {
	if eps, ok := cfg.ServerEndpoints(); ok {
		return eps, nil
	}
	host, portStr, err := net.SplitHostPort(cfg.Peer.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("connect: endpoint %q: %w", cfg.Peer.Endpoint, err)
	}
	port, _ := strconv.ParseUint(portStr, 10, 16)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("connect: resolve endpoint %s: %w", host, err)
	}
	var v4, v6 netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if a.Is4() && !v4.IsValid() {
			v4 = a
		} else if a.Is6() && !v6.IsValid() {
			v6 = a
		}
	}
	var eps []netip.AddrPort
	for _, a := range []netip.Addr{v6, v4} {
		if a.IsValid() {
			eps = append(eps, netip.AddrPortFrom(a, uint16(port)))
		}
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("connect: endpoint %s resolved to no address", host)
	}
	return eps, nil
}

func prefixAddrs(ps []netip.Prefix) []netip.Addr {
	out := make([]netip.Addr, len(ps))
	for i, p := range ps {
		out[i] = p.Addr()
	}
	return out
}

// tunnelDialer is what SOCKS mode needs from the netstack client.
type tunnelDialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// newSOCKSServer builds the SOCKS5 server over the netstack client dev:
// connections are dialed inside the tunnel, and names are resolved by the
// config's DNS servers, also through the tunnel.
func newSOCKSServer(dev tun.Device, dns []netip.Addr, log *slog.Logger) (*socks5.Server, error) {
	d, ok := dev.(tunnelDialer)
	if !ok {
		return nil, fmt.Errorf("SOCKS mode: %T has no DialContext", dev)
	}
	s := &socks5.Server{Dial: d.DialContext, Logger: log}
	if r, ok := dev.(interface {
		Resolve(ctx context.Context, host string) ([]netip.Addr, error)
	}); ok {
		s.Resolve = r.Resolve
	} else if len(dns) > 0 {
		s.Resolve = tunnelResolver(d, dns)
	} else {
		log.Warn("the config has no DNS server: SOCKS requests by name will fail")
	}
	return s, nil
}

// tunnelResolver resolves with Go's DNS client, sending its queries to the
// DNS servers (in turn) through the tunnel.
func tunnelResolver(d tunnelDialer, servers []netip.Addr) func(context.Context, string) ([]netip.Addr, error) {
	var next atomic.Uint32
	r := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			srv := servers[int(next.Add(1)-1)%len(servers)]
			c, err := d.DialContext(ctx, network, netip.AddrPortFrom(srv, 53).String())
			if err != nil {
				return nil, err
			}
			if _, isPacket := c.(net.PacketConn); !isPacket && network != "tcp" {
				// Go's resolver frames queries as TCP unless the conn is a
				// PacketConn.
				return packetConn{c}, nil
			}
			return c, nil
		},
	}
	return func(ctx context.Context, host string) ([]netip.Addr, error) {
		return r.LookupNetIP(ctx, "ip", host)
	}
}

// packetConn makes a connected UDP conn a net.PacketConn.
type packetConn struct{ net.Conn }

func (c packetConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := c.Read(b)
	return n, c.RemoteAddr(), err
}
func (c packetConn) WriteTo(b []byte, _ net.Addr) (int, error) { return c.Write(b) }

// peerStats are the figures of the device's (only) peer.
type peerStats struct {
	handshake time.Time
	rx, tx    uint64
}

var (
	reHandshake = regexp.MustCompile(`(?m)^last_handshake_time_sec=(\d+)$`)
	reRx        = regexp.MustCompile(`(?m)^rx_bytes=(\d+)$`)
	reTx        = regexp.MustCompile(`(?m)^tx_bytes=(\d+)$`)
)

func readPeerStats(dev *device.Device) peerStats {
	var s peerStats
	cfg, err := dev.IpcGet()
	if err != nil {
		return s
	}
	num := func(re *regexp.Regexp) uint64 {
		if m := re.FindStringSubmatch(cfg); m != nil {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			return n
		}
		return 0
	}
	if sec := num(reHandshake); sec != 0 {
		s.handshake = time.Unix(int64(sec), 0)
	}
	s.rx, s.tx = num(reRx), num(reTx)
	return s
}

// printStatus prints a status line every interval and whenever the path or
// the handshake changes, until ctx is done.
func printStatus(ctx context.Context, dev *device.Device, b *client.Bind, every time.Duration) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var last client.State
	var lastHS time.Time
	var lastPrint time.Time
	for {
		st, ps := b.State(), readPeerStats(dev)
		changed := st.Family != last.Family || st.Endpoint != last.Endpoint || st.Reopens != last.Reopens ||
			(ps.handshake.IsZero() != lastHS.IsZero())
		if changed || (every > 0 && time.Since(lastPrint) >= every) {
			fmt.Println(statusLine(st, ps))
			last, lastHS, lastPrint = st, ps.handshake, time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-dev.Wait():
			return
		case <-tick.C:
		}
	}
}

func statusLine(st client.State, ps peerStats) string {
	path := "racing IPv6/IPv4"
	if st.Family != 0 {
		path = fmt.Sprintf("IPv%d %v", st.Family, st.Endpoint)
	}
	path += fmt.Sprintf(" for %v", time.Since(st.Since).Round(time.Second))
	hs := "no handshake yet"
	if !ps.handshake.IsZero() {
		hs = fmt.Sprintf("handshake %v ago", time.Since(ps.handshake).Round(time.Second))
	}
	line := fmt.Sprintf("%s  %s  %s  rx %s  tx %s  port %d", time.Now().Format(time.TimeOnly), path, hs, bytesStr(ps.rx), bytesStr(ps.tx), st.Port)
	if st.Races > 0 {
		line += fmt.Sprintf("  fallbacks %d (last: %s)", st.Races, st.Reason)
	}
	if st.Reopens > 0 {
		line += fmt.Sprintf("  socket reopens %d", st.Reopens)
	}
	if st.ReopenError != "" {
		line += "  reopen failing: " + st.ReopenError
	}
	return line
}

func bytesStr(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
