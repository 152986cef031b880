// Command wedged runs one wedge node: a userspace WireGuard server whose
// tunnel ends in a gVisor netstack that terminates every inner flow and
// re-originates it from the node's egress addresses.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/netstack"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/flagfile"
	"github.com/wedge-edge/wedge/lb"
	"github.com/wedge-edge/wedge/server"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/registry"
	"github.com/wedge-edge/wedge/server/wgmsg"
)

var _ netstack.Dialer = (*egress.Dialer)(nil)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

type config struct {
	configFile  string
	state       string
	listen      uint
	api         string
	endpoints   multi
	egress      multi
	egressPorts string
	allow       multi
	dnsUpstream string
	name        string
	mtu         int
	poolV4      string
	poolV6      string
	maxFlows    int
	maxPerCli   int
	logLevel    string
	pprof       string

	etcd         string
	etcdPrefix   string
	etcdCA       string
	etcdCert     string
	etcdKey      string
	etcdUser     string
	etcdPassFile string
	serviceKey   string
	nodeID       string
	dc           string
	underlay     string
	leaseTTL     time.Duration
	xdp          string
	vips         multi
	guePort      uint
	egressPlan   string
	geoip        string
	egressPool   string
}

func flags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("wedged", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: wedged [flags]
       wedged genkey FILE    write a new service private key (mode 0600)

Runs a wedge node: WireGuard on UDP --listen, the registration API on --api,
every inner flow terminated and re-originated from the --egress addresses.
With no flags it keeps its state in /var/lib/wedge and needs root.

Alone, a node keeps its registry in --state (embedded, nothing else to run).
In a cluster (--etcd), every node shares the registry and membership in
etcd and runs with the same --service-key file; see README "Running a
cluster".

Flags (a --config file may set the same keys, one "key = value" per line;
the command line wins):
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.configFile, "config", "", "read settings from `FILE` (key = value lines, keys are these flag names)")
	fs.StringVar(&c.state, "state", "/var/lib/wedge", "`DIR` for the embedded store and the service key")
	fs.UintVar(&c.listen, "listen", 51820, "WireGuard UDP `PORT`, on all addresses, IPv4 and IPv6")
	fs.StringVar(&c.api, "api", "127.0.0.1:8080", "registration and status HTTP API `ADDR`ess (keep it private: it registers anyone who reaches it)")
	fs.Var(&c.endpoints, "endpoint", "`HOST:PORT` advertised to clients (repeatable, v4 and v6; default: the host's first global IPv4 and IPv6 address with --listen)")
	fs.Var(&c.egress, "egress", "egress source `IP` for re-originated flows (repeatable, one per family is used; default: the host's own, chosen by route)")
	fs.StringVar(&c.egressPorts, "egress-ports", "", "this node's source-port slice `LO-HI` (default: the kernel's ephemeral range; must lie inside net.ipv4.ip_local_port_range)")
	fs.Var(&c.allow, "allow", "open destination `CIDR` the egress ACL denies by default (repeatable; loopback and the node's own addresses stay denied)")
	fs.StringVar(&c.dnsUpstream, "dns-upstream", "", "resolver `ADDR` (ip or ip:port) for DNS sent to the tunnel's DNS address (default: first nameserver in /etc/resolv.conf)")
	fs.StringVar(&c.name, "name", "wedge0", "device `NAME`: `wg show NAME` reads /var/run/wireguard/NAME.sock")
	fs.IntVar(&c.mtu, "mtu", 1420, "tunnel `MTU` advertised to clients (1280..1420 for an Internet path)")
	fs.StringVar(&c.poolV4, "pool-v4", registry.DefaultPools.V4.String(), "inner IPv4 `PREFIX` clients are numbered from (first host is the node's own)")
	fs.StringVar(&c.poolV6, "pool-v6", registry.DefaultPools.V6.String(), "inner IPv6 `PREFIX` clients are numbered from (first host is the node's own)")
	fs.IntVar(&c.maxFlows, "max-flows", 0, "cap on open TCP+UDP flows on this node (0: netstack default)")
	fs.IntVar(&c.maxPerCli, "max-flows-per-client", 0, "cap on open TCP+UDP flows per client (0: netstack default)")
	fs.StringVar(&c.logLevel, "log-level", "info", "`LEVEL`: debug, info, warn or error")
	fs.StringVar(&c.pprof, "pprof", "", "serve Go's /debug/pprof on `ADDR` for profiling (off by default; keep it private)")
	fs.StringVar(&c.etcd, "etcd", "", "cluster mode: etcd client `URL`s, comma-separated (http://host:2379 or https://...); the registry and membership live there")
	fs.StringVar(&c.etcdPrefix, "etcd-prefix", "/wedge/", "key `PREFIX` in etcd (one per cluster)")
	fs.StringVar(&c.etcdCA, "etcd-ca", "", "PEM CA `FILE` that signs etcd's server certificates (implies TLS)")
	fs.StringVar(&c.etcdCert, "etcd-cert", "", "client certificate `FILE` (PEM) for etcd, with --etcd-key")
	fs.StringVar(&c.etcdKey, "etcd-key", "", "client key `FILE` (PEM) for etcd")
	fs.StringVar(&c.etcdUser, "etcd-user", "", "etcd user `NAME` (with --etcd-password-file)")
	fs.StringVar(&c.etcdPassFile, "etcd-password-file", "", "`FILE` holding the etcd user's password")
	fs.StringVar(&c.serviceKey, "service-key", "", "service private key `FILE`, the same on every node of a cluster (required with --etcd; never stored in etcd); make one with: wedged genkey FILE. Default alone: DIR/private.key, created on first start")
	fs.StringVar(&c.nodeID, "node-id", "", "this node's `ID` in the cluster, unique (default: the host name)")
	fs.StringVar(&c.dc, "dc", "default", "this node's data center `NAME`")
	fs.StringVar(&c.underlay, "underlay", "", "`ADDR` other nodes reach this node on (default: the source address the kernel picks towards the first etcd endpoint)")
	fs.DurationVar(&c.leaseTTL, "lease-ttl", 5*time.Second, "how long after this node dies the others drop it (`DURATION`, at least 2s)")
	fs.StringVar(&c.xdp, "xdp", "", "attach the XDP front to `IFACE` (the uplink the VIP's packets arrive on): packets of clients another node owns go there in GUE (needs --vip)")
	fs.Var(&c.vips, "vip", "anycast VIP `ADDR` the XDP front steers (repeatable: one IPv4, one IPv6)")
	fs.UintVar(&c.guePort, "gue-port", defaultGUEPort, "UDP `PORT` nodes send each other GUE (IP in UDP) on")
	fs.StringVar(&c.egressPlan, "egress-plan", "", "egress plan `FILE` (JSON, the same on every node; re-read when it changes): each client's flows leave from an address of its country and pool owned by this node's --dc, in this node's port slice; replaces --egress and --egress-ports for TCP and UDP (README: Egress plan)")
	fs.StringVar(&c.geoip, "geoip", "", "MaxMind-format GeoIP `FILE` (.mmdb, country or city; re-read when it changes): a client's country is that of the address it handshakes from (with --egress-plan)")
	fs.StringVar(&c.egressPool, "egress-pool", "trusted", "the egress plan's `POOL` clients are in (with --egress-plan)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q (see --help)", fs.Args())
	}
	if c.configFile != "" {
		f, err := os.Open(c.configFile)
		if err != nil {
			return nil, err
		}
		settings, err := flagfile.Parse(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.configFile, err)
		}
		if err := flagfile.Apply(fs, settings, c.configFile); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "genkey" {
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: wedged genkey FILE")
			os.Exit(2)
		}
		k, err := server.CreateKey(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "wedged:", err)
			os.Exit(1)
		}
		fmt.Printf("wrote %s; service public key %s\ncopy the file (mode 0600) to every node and start each with --service-key %s\n",
			os.Args[2], k.PublicKey(), os.Args[2])
		return
	}
	c, err := flags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wedged:", err)
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "wedged:", err)
		os.Exit(1)
	}
}

func run(c *config) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if c.listen == 0 || c.listen > 65535 {
		return fmt.Errorf("--listen %d: want a port in 1..65535", c.listen)
	}
	if c.mtu < 1280 || c.mtu > 9000 {
		return fmt.Errorf("--mtu %d: want 1280..9000", c.mtu)
	}
	pools, err := parsePools(c.poolV4, c.poolV6)
	if err != nil {
		return err
	}
	endpoints, err := parseEndpoints(c.endpoints, uint16(c.listen))
	if err != nil {
		return err
	}
	if len(endpoints) == 0 {
		log.Warn("no --endpoint given and no global address found: clients will need an Endpoint line added by hand")
	}
	sources, err := parseAddrs("--egress", c.egress)
	if err != nil {
		return err
	}
	allow, err := egress.ParsePrefixes(c.allow...)
	if err != nil {
		return fmt.Errorf("--allow: %w", err)
	}
	var lo, hi uint16
	if c.egressPorts != "" {
		if lo, hi, err = egress.ParsePortRange(c.egressPorts); err != nil {
			return fmt.Errorf("--egress-ports: %w", err)
		}
	}
	dnsUp, err := parseDNS(c.dnsUpstream)
	if err != nil {
		return err
	}
	vips, err := parseAddrs("--vip", c.vips)
	if err != nil {
		return err
	}
	switch {
	case c.xdp != "" && len(vips) == 0:
		return errors.New("--xdp needs --vip: the anycast address(es) whose packets it steers")
	case c.xdp == "" && len(vips) > 0:
		return errors.New("--vip is for the XDP front: give --xdp IFACE too")
	case c.guePort == 0 || c.guePort > 65535 || c.guePort == c.listen:
		return fmt.Errorf("--gue-port %d: want a port in 1..65535 other than --listen", c.guePort)
	}
	if c.egressPlan == "" && c.geoip != "" {
		return errors.New("--geoip chooses egress addresses from an egress plan: give --egress-plan too")
	}
	apiAddr, err := netip.ParseAddrPort(c.api)
	if err != nil {
		return fmt.Errorf("--api %q: want ip:port: %w", c.api, err)
	}

	if err := os.MkdirAll(c.state, 0o700); err != nil {
		return fmt.Errorf("--state: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var key wgtypes.Key
	switch {
	case c.serviceKey != "":
		key, err = server.LoadKey(c.serviceKey)
	case c.etcd != "":
		err = errors.New("--etcd needs --service-key FILE, the same file on every node: create it once with `wedged genkey FILE` and copy it to each node")
	default:
		key, err = server.LoadOrCreateKey(filepath.Join(c.state, "private.key"))
	}
	if err != nil {
		return err
	}
	var store registry.Store
	var member *cluster.Membership
	if c.etcd != "" {
		cl, err := joinCluster(ctx, c, key, pools, log)
		if err != nil {
			return err
		}
		defer cl.close()
		store, member = cl.store, cl.member
	} else {
		bolt, err := registry.OpenBolt(filepath.Join(c.state, "registry.db"), pools)
		if err != nil {
			return err
		}
		defer bolt.Close()
		store = bolt
	}

	// The node's own addresses the ACL must deny even if they are on no
	// interface: the advertised endpoints and the API.
	own := []netip.Addr{apiAddr.Addr()}
	for _, e := range endpoints {
		if ap, err := netip.ParseAddrPort(e); err == nil {
			own = append(own, ap.Addr())
		}
	}
	var plan *egressPlan
	var route func(netip.Addr, netip.AddrPort) (egress.Source, error)
	if c.egressPlan != "" {
		// Slots come with the cluster's membership; a node alone is slot 1.
		slot := uint8(1)
		if member != nil {
			slot = member.Self().Slot
		}
		if plan, err = newEgressPlan(c.egressPlan, c.geoip, c.dc, slot, c.egressPool, log.With("component", "egress-plan")); err != nil {
			return err
		}
		go plan.run(ctx)
		own = append(own, plan.ownAddrs()...)
		route = plan.route
	}
	dialer, err := egress.New(egress.Config{
		Sources: sources, PortLo: lo, PortHi: hi, Allow: allow, Own: own, Route: route, Logger: log.With("component", "egress"),
	})
	if err != nil {
		return err
	}
	gw4, gw6 := pools.Gateways()
	var dns []netip.Addr
	if dnsUp.IsValid() {
		dns = []netip.Addr{gw4, gw6}
	}
	stack, err := netstack.New(netstack.Config{
		MTU:         c.mtu,
		Dialer:      dialer,
		Logger:      log.With("component", "netstack"),
		Local:       []netip.Addr{gw4, gw6},
		DNSUpstream: dnsUp,
		DNSDial: func() func(context.Context, string, netip.AddrPort) (net.Conn, error) {
			if plan == nil {
				return nil
			}
			return func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
				src, err := plan.dnsSource(dst)
				if err != nil {
					return nil, err
				}
				return dialer.DialNode(ctx, network, src, dst)
			}
		}(),
		Limits:   netstack.Limits{MaxFlows: c.maxFlows, MaxFlowsPerClient: c.maxPerCli},
		IsDenied: func(err error) bool { return errors.Is(err, egress.ErrDenied) },
	})
	if err != nil {
		return err
	}
	node, err := server.New(ctx, server.Config{
		Name:       c.name,
		ListenPort: uint16(c.listen),
		PrivateKey: key,
		Endpoints:  endpoints,
		MTU:        c.mtu,
		DNS:        dns,
		Store:      store,
		TUN:        stack,
		Logger:     log,
		UAPI:       true,
		Cluster:    member,
		Owners:     tableOwners,
		OnHandshake: func() func(registry.Client, netip.AddrPort) {
			if plan == nil {
				return nil
			}
			return plan.onHandshake
		}(),
		OnTags: func() func(registry.Client) {
			if plan == nil {
				return nil
			}
			return plan.onTags
		}(),
		ValidTags: func() func(registry.Tags) error {
			if plan == nil {
				return nil
			}
			return plan.validTags
		}(),
		Stats: map[string]func() any{
			"netstack": func() any { return stack.Stats() },
			"egress":   func() any { return dialer.Stats() },
		},
	})
	if err != nil {
		stack.Close()
		return err
	}
	defer node.Close()

	if c.xdp != "" {
		var id, dc string
		var underlay netip.Addr
		if member != nil {
			self := member.Self()
			id, dc, underlay = self.ID, self.DC, self.Underlay
		} else {
			id, dc = "self", c.dc
			if underlay, err = netip.ParseAddr(c.underlay); err != nil {
				return fmt.Errorf("--xdp without --etcd needs --underlay (this node's IPv4 address): %v", err)
			}
		}
		x, err := startFront(c, id, dc, underlay, vips, member, wgmsg.IndexKey(key), plan, log)
		if err != nil {
			return err
		}
		defer x.close()
		var fwd *initForwarder
		if member != nil && member.Self().Slot != 0 {
			// Tagged indexes: standard clients' packets find this node by
			// the slot in their session index, and their initiations are
			// forwarded to their owner (README: Standard clients roam).
			gue, err := lb.NewGUESender(underlay, uint16(c.guePort))
			if err != nil {
				return err
			}
			defer gue.Close()
			fwd = &initForwarder{front: x.front, objs: x.objs, gue: gue, wgPort: uint16(c.listen), log: log}
			for _, v := range vips {
				if v.Is4() {
					fwd.vip4 = v
				} else {
					fwd.vip6 = v
				}
			}
			if err := node.EnableIndexes(server.IndexConfig{Slot: member.Self().Slot, Forward: fwd.forward}); err != nil {
				return err
			}
		}
		node.AddStats("xdp", func() any {
			m, err := x.objs.Counters()
			if err != nil {
				return map[string]string{"error": err.Error()}
			}
			m["table_nodes"] = uint64(x.front.TableNodes())
			m["pins"] = uint64(x.front.Pins())
			m["egress_addresses"] = uint64(x.front.EgressEntries())
			if fwd != nil {
				fwd.stats(m)
			}
			return m
		})
	}

	if plan != nil {
		node.AddStats("egress_plan", func() any { return plan.stats() })
	}

	if c.pprof != "" {
		pl, err := net.Listen("tcp", c.pprof)
		if err != nil {
			return fmt.Errorf("--pprof: %w", err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		go http.Serve(pl, mux)
	}

	ln, err := net.Listen("tcp", c.api)
	if err != nil {
		return fmt.Errorf("--api: %w", err)
	}
	srv := &http.Server{Handler: node.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("node up", "api", "http://"+c.api, "listen", c.listen, "endpoints", endpoints, "egress", c.egress, "egress_ports", c.egressPorts, "state", c.state)
	fmt.Fprintf(os.Stderr, `
wedge node %s is up. Register a client with:

    wedge register --api http://%s --out wedge.conf
    wg-quick up ./wedge.conf

`, c.name, c.api)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case <-node.Wait():
		runErr = errors.New("wireguard device stopped")
	case err := <-serveErr:
		runErr = fmt.Errorf("api: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return runErr
}

func parsePools(v4, v6 string) (registry.Pools, error) {
	p4, err := netip.ParsePrefix(v4)
	if err != nil {
		return registry.Pools{}, fmt.Errorf("--pool-v4: %w", err)
	}
	p6, err := netip.ParsePrefix(v6)
	if err != nil {
		return registry.Pools{}, fmt.Errorf("--pool-v6: %w", err)
	}
	p := registry.Pools{V4: p4, V6: p6}
	return p, p.Validate()
}

func parseEndpoints(vals []string, port uint16) ([]string, error) {
	if len(vals) == 0 {
		return server.HostEndpoints(port), nil
	}
	var out []string
	for _, v := range vals {
		host, p, err := net.SplitHostPort(v)
		if err != nil {
			return nil, fmt.Errorf("--endpoint %q: want HOST:PORT ([v6]:port for IPv6): %w", v, err)
		}
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 || host == "" {
			return nil, fmt.Errorf("--endpoint %q: want HOST:PORT with a port in 1..65535", v)
		}
		out = append(out, v)
	}
	return out, nil
}

func parseAddrs(flagName string, vals []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, v := range vals {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", flagName, v, err)
		}
		out = append(out, a)
	}
	return out, nil
}

func parseDNS(s string) (netip.AddrPort, error) {
	if s == "" {
		ap, err := server.SystemResolver()
		if err != nil {
			return netip.AddrPort{}, nil // no resolver: clients get no DNS line
		}
		return ap, nil
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--dns-upstream %q: want ip or ip:port", s)
	}
	return netip.AddrPortFrom(a, 53), nil
}
