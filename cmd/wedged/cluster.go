package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/registry"
)

// clusterParts is what a node in cluster mode runs on.
type clusterParts struct {
	cli    *clientv3.Client
	prefix string
	store  *registry.Etcd
	member *cluster.Membership
}

func (p *clusterParts) close() {
	p.member.Close() // revokes the lease: the others see this node leave at once
	p.cli.Close()
}

// startupWait bounds how long a node waits for etcd at start: it needs etcd
// once, to check the service key and announce itself.
const startupWait = 60 * time.Second

func joinCluster(ctx context.Context, c *config, key wgtypes.Key, pools registry.Pools, log *slog.Logger) (*clusterParts, error) {
	endpoints, err := cluster.ParseEndpoints(c.etcd)
	if err != nil {
		return nil, fmt.Errorf("--etcd: %w", err)
	}
	if c.leaseTTL < 2*time.Second {
		return nil, fmt.Errorf("--lease-ttl %v: want at least 2s", c.leaseTTL)
	}
	id, underlay, err := clusterSelf(c, endpoints[0])
	if err != nil {
		return nil, err
	}
	cfg := cluster.Config{
		Endpoints: endpoints, CAFile: c.etcdCA, CertFile: c.etcdCert, KeyFile: c.etcdKey,
		Username: c.etcdUser, PasswordFile: c.etcdPassFile, DialTimeout: 5 * time.Second,
	}
	warn, err := etcdExposure(cfg, c.etcdRequireTLS)
	if err != nil {
		return nil, err
	}
	if warn != "" {
		log.Warn(warn)
	}
	prefix := c.etcdPrefix
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	wctx, cancel := context.WithTimeout(ctx, startupWait)
	defer cancel()
	log.Info("joining the cluster", "etcd", endpoints, "node", id, "dc", c.dc, "underlay", underlay)
	cli, err := dialEtcd(wctx, cfg, prefix, key, log)
	if err != nil {
		if diag := cluster.Diagnose(endpoints[0], cfg); diag != "" {
			err = fmt.Errorf("%w (%s)", err, diag)
		}
		return nil, fmt.Errorf("etcd at %s: %w", c.etcd, err)
	}
	store, err := registry.NewEtcd(cli, prefix, pools)
	if err != nil {
		cli.Close()
		return nil, err
	}
	m, err := cluster.Join(wctx, cli, prefix, cluster.Member{ID: id, DC: c.dc, Underlay: underlay},
		cluster.Options{TTL: c.leaseTTL, Log: log.With("component", "cluster")})
	if err != nil {
		cli.Close()
		return nil, err
	}
	return &clusterParts{cli: cli, prefix: prefix, store: store, member: m}, nil
}

// etcdExposure says what the way a node reaches etcd exposes: a warning to
// log (empty: TLS and a client credential), or, with requireTLS, an error
// instead of starting over a connection without TLS. etcd holds every
// registration and the membership the XDP fronts are built from, so
// whoever can write it controls the service; the warning names what such
// an attacker could do.
func etcdExposure(cfg cluster.Config, requireTLS bool) (string, error) {
	tls := cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != ""
	for _, e := range cfg.Endpoints {
		if strings.HasPrefix(e, "https://") {
			tls = true
		}
	}
	for _, e := range cfg.Endpoints {
		if strings.HasPrefix(e, "http://") {
			tls = false // Dial refuses a mix; an http:// endpoint is plain
		}
	}
	auth := cfg.Username != "" || cfg.CertFile != ""
	const what = "register clients of their own that every node then serves; change or delete any registration " +
		"(move a client to another pool or country, take over its inner addresses, cut it off); " +
		"read every client's public key, ClientID and inner addresses (the ClientIDs are what forged packets name); " +
		"drain or pin any node; and announce a node of their own, which every XDP front then puts in its table " +
		"(clients' packets are sent to it in GUE) and accepts GUE from (packets injected as if from any client)"
	switch {
	case !tls && requireTLS:
		return "", fmt.Errorf("--etcd-require-tls: etcd at %s is reached without TLS; give https:// endpoints (with --etcd-ca, and --etcd-cert/--etcd-key or --etcd-user)", strings.Join(cfg.Endpoints, ","))
	case !tls && !auth:
		return "etcd is reached over plain HTTP without authentication: anyone who can reach it or sits on the path to it can " + what +
			". Use https:// endpoints with a client certificate (--etcd-ca, --etcd-cert, --etcd-key) or --etcd-user, and --etcd-require-tls to refuse to start without TLS", nil
	case !tls:
		return "etcd is reached over plain HTTP: its password and every registration cross the network in clear, and anyone on the path can " + what +
			". Use https:// endpoints (--etcd-ca), and --etcd-require-tls to refuse to start without TLS", nil
	case !auth:
		return "etcd is reached over TLS without a client credential (no --etcd-cert, no --etcd-user): if it answers, anyone who can reach it can " + what +
			". Give etcd users (--etcd-user) or client certificates (--etcd-cert, --etcd-key)", nil
	}
	return "", nil
}

// clusterSelf is this node's ID (--node-id, else the host name) and
// underlay address (--underlay, else the source towards endpoint, the
// first etcd endpoint), checked with --dc.
func clusterSelf(c *config, endpoint string) (string, netip.Addr, error) {
	id := c.nodeID
	var err error
	if id == "" {
		if id, err = os.Hostname(); err != nil || id == "" {
			return "", netip.Addr{}, fmt.Errorf("--node-id not given and no host name: %v", err)
		}
	}
	if strings.ContainsAny(id, "/ \t\n") {
		return "", netip.Addr{}, fmt.Errorf("--node-id %q: no '/' or spaces", id)
	}
	if c.dc == "" || strings.ContainsAny(c.dc, "/ \t\n") {
		return "", netip.Addr{}, fmt.Errorf("--dc %q: want a name without '/' or spaces", c.dc)
	}
	var underlay netip.Addr
	if c.underlay != "" {
		if underlay, err = netip.ParseAddr(c.underlay); err != nil {
			return "", netip.Addr{}, fmt.Errorf("--underlay %q: %w", c.underlay, err)
		}
	} else if underlay, err = routeSource(endpoint); err != nil {
		return "", netip.Addr{}, fmt.Errorf("--underlay not given and none found towards %s: %w", endpoint, err)
	}
	return id, underlay, nil
}

// dialEtcd connects to etcd and checks the service key, retrying every
// second until wctx ends or an error waiting will not cure.
func dialEtcd(wctx context.Context, cfg cluster.Config, prefix string, key wgtypes.Key, log *slog.Logger) (*clientv3.Client, error) {
	var cli *clientv3.Client
	var err error
	for {
		if cli == nil {
			// With --etcd-user the client logs in while dialing, so
			// dialing too waits for etcd.
			cli, err = cfg.Dial()
		}
		if cli != nil {
			err = cluster.CheckServiceKey(wctx, cli, prefix, key.PublicKey())
		}
		if err == nil || wctx.Err() != nil || fatalJoinError(err) {
			break
		}
		log.Warn("etcd not answering yet", "err", err)
		select {
		case <-wctx.Done():
		case <-time.After(time.Second):
		}
	}
	if err != nil {
		if cli != nil {
			cli.Close()
		}
		return nil, err
	}
	return cli, nil
}

// routeSource returns the address the kernel would send from towards an
// etcd endpoint: the node's address on the network the cluster shares.
func routeSource(endpoint string) (netip.Addr, error) {
	hostport := endpoint
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		hostport = u.Host
	}
	c, err := net.Dial("udp", hostport) // no packet is sent
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	ap, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return netip.Addr{}, err
	}
	return ap.Addr().Unmap(), nil
}

// fatalJoinError: errors waiting will not cure.
func fatalJoinError(err error) bool {
	return errors.Is(err, cluster.ErrConfig) || errors.Is(err, cluster.ErrServiceKey) ||
		errors.Is(err, rpctypes.ErrAuthFailed) || errors.Is(err, rpctypes.ErrPermissionDenied)
}
