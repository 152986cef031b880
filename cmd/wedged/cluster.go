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
	return &clusterParts{cli: cli, store: store, member: m}, nil
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
