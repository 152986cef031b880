package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/netstack"
	"github.com/wedge-edge/wedge/server"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/front"
	"github.com/wedge-edge/wedge/server/paths"
	"github.com/wedge-edge/wedge/server/registry"
	"github.com/wedge-edge/wedge/server/wgmsg"
)

// serviceKey is the service private key: --service-key, or alone the one
// in --state (created on first start).
func serviceKey(c *config) (wgtypes.Key, error) {
	switch {
	case c.serviceKey != "":
		return server.LoadKey(c.serviceKey)
	case c.etcd != "":
		return wgtypes.Key{}, errors.New("--etcd needs --service-key FILE, the same file on every node: create it once with `wedged genkey FILE` and copy it to each node")
	default:
		return server.LoadOrCreateKey(filepath.Join(c.state, "private.key"))
	}
}

// nodeStore is where the registry lives: etcd with the cluster's
// membership, or alone the embedded store in --state.
type nodeStore struct {
	store  registry.Store
	member *cluster.Membership // nil alone
	cli    *clientv3.Client    // etcd's client, nil alone
	prefix string              // the cluster's etcd prefix, with its "/"
	close  func()
}

// pathsShown is how many routes of the path table the status report
// lists (the relayed ones first).
const pathsShown = 100

func openStore(ctx context.Context, c *config, key wgtypes.Key, s *settings) (*nodeStore, error) {
	if c.etcd != "" {
		cl, err := joinCluster(ctx, c, key, s.pools, s.log)
		if err != nil {
			return nil, err
		}
		return &nodeStore{store: cl.store, member: cl.member, cli: cl.cli, prefix: cl.prefix, close: cl.close}, nil
	}
	bolt, err := registry.OpenBolt(filepath.Join(c.state, "registry.db"), s.pools)
	if err != nil {
		return nil, err
	}
	return &nodeStore{store: bolt, close: func() { bolt.Close() }}, nil
}

// startNode builds the netstack the tunnel ends in and the WireGuard
// device around it; the device closes the stack.
func startNode(ctx context.Context, c *config, s *settings, key wgtypes.Key, st *nodeStore, eg *egressParts, pt *paths.Table, dialer netstack.Dialer) (*server.Node, *netstack.Stack, error) {
	gw4, gw6 := s.pools.Gateways()
	var dns []netip.Addr
	if s.dnsUp.IsValid() {
		dns = []netip.Addr{gw4, gw6}
	}
	stack, err := netstack.New(netstack.Config{
		MTU:         c.mtu,
		Dialer:      dialer,
		Logger:      s.log.With("component", "netstack"),
		Local:       []netip.Addr{gw4, gw6},
		DNSUpstream: s.dnsUp,
		DNSDial:     eg.dnsDial(),
		Limits:      c.budget.limits(c.maxFlows, c.maxPerCli),
		ClientOf:    eg.clients.of,
		OverQuota:   eg.clients.overQuota,
		IsDenied:    func(err error) bool { return errors.Is(err, egress.ErrDenied) },

		TCPSilentTimeout: c.budget.silent,
	})
	if err != nil {
		return nil, nil, err
	}
	cfg := server.Config{
		Name:       c.name,
		ListenPort: uint16(c.listen),
		PrivateKey: key,
		Endpoints:  s.endpoints,
		MTU:        c.mtu,
		DNS:        dns,
		Store:      st.store,
		TUN:        stack,
		Logger:     s.log,
		UAPI:       true,
		Cluster:    st.member,
		Owners:     front.Owners,

		UsageInterval: c.budget.usageInterval,
		MaxPeers:      c.budget.maxPeers,
		PeerIdle:      c.budget.peerIdle,
		Stats: map[string]func() any{
			"netstack": func() any { return stack.Stats() },
			"egress":   func() any { return eg.dialer.Stats() },
		},
	}
	if pt != nil {
		cfg.Paths = func() api.PathsStatus { return pt.Snapshot(pathsShown) }
	}
	eg.hook(&cfg)
	node, err := server.New(ctx, cfg)
	if err != nil {
		stack.Close()
		return nil, nil, err
	}
	eg.clients.node.Store(node)
	return node, stack, nil
}

// startFront attaches the XDP front to --xdp and, in a cluster where this
// node has a slot, forwards the initiations of clients another node owns
// there. On an error it leaves nothing behind.
func startFront(c *config, s *settings, key wgtypes.Key, member *cluster.Membership, node *server.Node, router *egress.Router) (*front.Front, error) {
	fc := front.Config{WGPort: uint16(c.listen), GUEPort: uint16(c.guePort), VIPs: s.vips,
		IndexKey: wgmsg.IndexKey(key), Member: member, Egress: router, Log: s.log.With("component", "front")}
	if member != nil {
		self := member.Self()
		fc.ID, fc.DC, fc.Underlay = self.ID, self.DC, self.Underlay
	} else {
		fc.ID, fc.DC = "self", c.dc
		var err error
		if fc.Underlay, err = netip.ParseAddr(c.underlay); err != nil {
			return nil, fmt.Errorf("--xdp without --etcd needs --underlay (this node's IPv4 address): %v", err)
		}
	}
	x, err := front.New(fc)
	if err != nil {
		return nil, fmt.Errorf("--xdp: %w", err)
	}
	if err := x.Attach(c.xdp); err != nil {
		x.Close()
		return nil, err
	}
	if member != nil && member.Self().Slot != 0 {
		// Tagged indexes: standard clients' packets find this node by
		// the slot in their session index, and their initiations are
		// forwarded to their owner (README: Standard clients roam).
		fwd, err := x.StartForwarding()
		if err == nil {
			self := member.Self()
			err = node.EnableIndexes(server.IndexConfig{Slot: self.Slot, Forward: fwd.Forward,
				VIPs: s.vips, Heir: front.Heir(self.DC)})
		}
		if err != nil {
			x.Close()
			return nil, err
		}
	}
	node.AddStats("xdp", x.Stats)
	return x, nil
}
