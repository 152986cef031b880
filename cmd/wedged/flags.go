package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/internal/flagfile"
	"github.com/wedge-edge/wedge/server"
	"github.com/wedge-edge/wedge/server/front"
	"github.com/wedge-edge/wedge/server/registry"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

// config is the flags as given (on the command line or in --config).
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
	logFormat   string
	pprof       string
	metrics     string

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
	relay        string

	budget budgetFlags
	apis   apiFlags

	etcdRequireTLS bool

	args   []string          // the command line, which a SIGHUP parses again with the file
	values map[string]string // every flag's value as parsed, by name
}

func flags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("wedged", flag.ContinueOnError)
	fs.Usage = func() { usage(fs) }
	c.nodeFlags(fs)
	c.budget.register(fs)
	c.apis.register(fs)
	c.clusterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q (see --help)", fs.Args())
	}
	if c.configFile != "" {
		if err := applyConfigFile(fs, c.configFile); err != nil {
			return nil, err
		}
	}
	c.args = args
	c.values = make(map[string]string)
	fs.VisitAll(func(f *flag.Flag) { c.values[f.Name] = f.Value.String() })
	return c, nil
}

func usage(fs *flag.FlagSet) {
	fmt.Fprintf(fs.Output(), `Usage: wedged [flags]
       wedged genkey FILE    write a new service private key (mode 0600)
       wedged fingerprint [STATE-DIR | CERT-FILE]
                             print the public API certificate's SHA-256 (what clients pin)

Runs a wedge node: WireGuard on UDP --listen, the admin API on --api (and
the public client API on --api-public),
every inner flow terminated and re-originated from the --egress addresses.
With no flags it keeps its state in /var/lib/wedge and needs root.

Alone, a node keeps its registry in --state (embedded, nothing else to run).
In a cluster (--etcd), every node shares the registry and membership in
etcd and runs with the same --service-key file; see README "Running a
cluster".

Signals: SIGTERM or SIGINT stop the node; SIGHUP re-reads the --config
file (applying --log-level, naming other changes that need a restart),
the --egress-plan and the --geoip database, without dropping sessions.
dist/wedged.service runs it under systemd (README "Operating wedge").

Flags (a --config file may set the same keys, one "key = value" per line;
the command line wins):
`)
	fs.PrintDefaults()
}

// nodeFlags are a node's own flags: its device, API, egress and limits.
func (c *config) nodeFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.configFile, "config", "", "read settings from `FILE` (key = value lines, keys are these flag names)")
	fs.StringVar(&c.state, "state", "/var/lib/wedge", "`DIR` for the embedded store and the service key")
	fs.UintVar(&c.listen, "listen", 51820, "WireGuard UDP `PORT`, on all addresses, IPv4 and IPv6")
	fs.StringVar(&c.api, "api", "127.0.0.1:8080", "admin HTTP API `ADDR`ess (status, nodes, any registration; needs the admin token, see --admin-token-file; keep it private)")
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
	fs.StringVar(&c.logLevel, "log-level", "info", "`LEVEL`: debug, info, warn or error (a SIGHUP applies a new one from --config)")
	fs.StringVar(&c.logFormat, "log-format", "text", "`FORMAT` of the log on stderr, one line per event: text (key=value) or json (one object a line: time, level, msg, then the event's keys)")
	fs.StringVar(&c.pprof, "pprof", "", "serve Go's /debug/pprof on `ADDR` for profiling (off by default; keep it private)")
	fs.StringVar(&c.metrics, "metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics (off by default; no authentication: keep it private)")
}

// clusterFlags are the flags of a node in a cluster: etcd, its place in
// the cluster, the XDP front and the egress plan.
func (c *config) clusterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.etcd, "etcd", "", "cluster mode: etcd client `URL`s, comma-separated (http://host:2379 or https://...); the registry and membership live there")
	fs.StringVar(&c.etcdPrefix, "etcd-prefix", "/wedge/", "key `PREFIX` in etcd (one per cluster)")
	fs.StringVar(&c.etcdCA, "etcd-ca", "", "PEM CA `FILE` that signs etcd's server certificates (implies TLS)")
	fs.StringVar(&c.etcdCert, "etcd-cert", "", "client certificate `FILE` (PEM) for etcd, with --etcd-key")
	fs.StringVar(&c.etcdKey, "etcd-key", "", "client key `FILE` (PEM) for etcd")
	fs.StringVar(&c.etcdUser, "etcd-user", "", "etcd user `NAME` (with --etcd-password-file)")
	fs.StringVar(&c.etcdPassFile, "etcd-password-file", "", "`FILE` holding the etcd user's password")
	fs.BoolVar(&c.etcdRequireTLS, "etcd-require-tls", false, "refuse to start when etcd is reached without TLS (without it, a node logs a warning of what anyone with access to etcd could do)")
	fs.StringVar(&c.serviceKey, "service-key", "", "service private key `FILE`, the same on every node of a cluster (required with --etcd; never stored in etcd); make one with: wedged genkey FILE. Default alone: DIR/private.key, created on first start")
	fs.StringVar(&c.nodeID, "node-id", "", "this node's `ID` in the cluster, unique (default: the host name)")
	fs.StringVar(&c.dc, "dc", "default", "this node's data center `NAME`")
	fs.StringVar(&c.underlay, "underlay", "", "`ADDR` other nodes reach this node on (default: the source address the kernel picks towards the first etcd endpoint)")
	fs.DurationVar(&c.leaseTTL, "lease-ttl", 5*time.Second, "how long after this node dies the others drop it (`DURATION`, at least 2s)")
	fs.StringVar(&c.xdp, "xdp", "", "attach the XDP front to `IFACE` (the uplink the VIP's packets arrive on): packets of clients another node owns go there in GUE (needs --vip)")
	fs.Var(&c.vips, "vip", "anycast VIP `ADDR` the XDP front steers (repeatable: one IPv4, one IPv6)")
	fs.UintVar(&c.guePort, "gue-port", front.DefaultGUEPort, "UDP `PORT` nodes send each other GUE (IP in UDP) on")
	fs.StringVar(&c.egressPlan, "egress-plan", "", "egress plan `FILE` (JSON, the same on every node; re-read when it changes): each client's flows leave from an address of its country and pool owned by this node's --dc, in this node's port slice; replaces --egress and --egress-ports for TCP and UDP (README: Egress plan)")
	fs.StringVar(&c.geoip, "geoip", "", "MaxMind-format GeoIP `FILE` (.mmdb, country or city; re-read when it changes): a client's country is that of the address it handshakes from (with --egress-plan)")
	fs.StringVar(&c.egressPool, "egress-pool", "trusted", "the egress plan's `POOL` clients are in (with --egress-plan)")
	fs.StringVar(&c.relay, "relay", "", "WARP+ relay (cluster only): listen on `ADDR` (ip:port, mutual TLS from --service-key; 0.0.0.0:PORT publishes --underlay's address) for TCP flows other data centers' nodes relay here, and relay this node's plus clients' TCP flows through another data center when the path table finds it faster; keep the port open to the nodes only (README: WARP+)")
}

// applyConfigFile sets the flags the --config file sets and the command
// line did not.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	settings, err := flagfile.Parse(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return flagfile.Apply(fs, settings, path)
}

// settings are the flags parsed and checked, with the logger --log-level
// and --log-format ask for.
type settings struct {
	log            *slog.Logger
	level          *slog.LevelVar // the log's level, which a SIGHUP may change
	pools          registry.Pools
	endpoints      []string
	sources        []netip.Addr
	allow          []netip.Prefix
	portLo, portHi uint16
	dnsUp          netip.AddrPort
	vips           []netip.Addr
	apiAddr        netip.AddrPort
}

// check parses and checks the flags a node needs before it starts
// anything, in the order their errors are reported.
func (c *config) check() (*settings, error) {
	lg, level, err := newLogger(os.Stderr, c.logFormat, c.logLevel)
	if err != nil {
		return nil, err
	}
	s := &settings{log: lg, level: level}
	if err := s.checkTunnel(c); err != nil {
		return nil, err
	}
	if err := s.checkEgress(c); err != nil {
		return nil, err
	}
	if err := s.checkFront(c); err != nil {
		return nil, err
	}
	return s, nil
}

// newLogger is the node's logger: every component logs through it (with
// a "component" key where it is not the node itself), one line per event
// on w, as text (key=value) or JSON; its level can be changed later.
func newLogger(w io.Writer, format, level string) (*slog.Logger, *slog.LevelVar, error) {
	lv := new(slog.LevelVar)
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), lv, nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), lv, nil
	}
	return nil, nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// checkTunnel checks what clients are told: port, MTU, pools, endpoints.
func (s *settings) checkTunnel(c *config) error {
	if c.listen == 0 || c.listen > 65535 {
		return fmt.Errorf("--listen %d: want a port in 1..65535", c.listen)
	}
	if c.mtu < 1280 || c.mtu > 9000 {
		return fmt.Errorf("--mtu %d: want 1280..9000", c.mtu)
	}
	var err error
	if s.pools, err = parsePools(c.poolV4, c.poolV6); err != nil {
		return err
	}
	if s.endpoints, err = parseEndpoints(c.endpoints, uint16(c.listen)); err != nil {
		return err
	}
	if len(s.endpoints) == 0 {
		s.log.Warn("no --endpoint given and no global address found: clients will need an Endpoint line added by hand")
	}
	return nil
}

// checkEgress checks where flows and DNS leave from.
func (s *settings) checkEgress(c *config) error {
	var err error
	if s.sources, err = parseAddrs("--egress", c.egress); err != nil {
		return err
	}
	if s.allow, err = egress.ParsePrefixes(c.allow...); err != nil {
		return fmt.Errorf("--allow: %w", err)
	}
	if c.egressPorts != "" {
		if s.portLo, s.portHi, err = egress.ParsePortRange(c.egressPorts); err != nil {
			return fmt.Errorf("--egress-ports: %w", err)
		}
	}
	s.dnsUp, err = parseDNS(c.dnsUpstream)
	return err
}

// checkFront checks the XDP front's flags, the egress plan's and the API's
// address.
func (s *settings) checkFront(c *config) error {
	var err error
	if s.vips, err = parseAddrs("--vip", c.vips); err != nil {
		return err
	}
	switch {
	case c.xdp != "" && len(s.vips) == 0:
		return errors.New("--xdp needs --vip: the anycast address(es) whose packets it steers")
	case c.xdp == "" && len(s.vips) > 0:
		return errors.New("--vip is for the XDP front: give --xdp IFACE too")
	case c.guePort == 0 || c.guePort > 65535 || c.guePort == c.listen:
		return fmt.Errorf("--gue-port %d: want a port in 1..65535 other than --listen", c.guePort)
	}
	if c.egressPlan == "" && c.geoip != "" {
		return errors.New("--geoip chooses egress addresses from an egress plan: give --egress-plan too")
	}
	if s.apiAddr, err = netip.ParseAddrPort(c.api); err != nil {
		return fmt.Errorf("--api %q: want ip:port: %w", c.api, err)
	}
	return nil
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
