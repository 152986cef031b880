package lab

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// The baseline's tunnel addresses (inside the tunnel; documentation and
// benchmark ranges like everything else in the lab).
var (
	BaselineNet4    = netip.MustParsePrefix("198.19.64.1/24")
	BaselineNet6    = netip.MustParsePrefix("2001:db8:64::1/64")
	BaselineClient4 = netip.MustParsePrefix("198.19.64.2/32")
	BaselineClient6 = netip.MustParsePrefix("2001:db8:64::2/128")
)

// BaselinePort is the baseline server's UDP port; it differs from wedged's
// default (51820) so both can run in one node namespace.
const BaselinePort = 51821

// Baseline is a plain wireguard-go server with kernel forwarding and SNAT to
// the egress addresses: what DESIGN.md "Measuring" compares wedged with.
type Baseline struct {
	Proc  *Proc
	Iface string
	Key   Key
	// Client is the configuration of its one peer: wg-quick it in the
	// client namespace (Client.WGQuickUp(b.Client.String())).
	Client ClientConfig
}

// StartBaseline runs the baseline server in the node namespace: the
// userspace WireGuard (UserspaceWireGuard) in the foreground, configured
// with wg(8) for one peer, IPv4/IPv6 forwarding on and an nftables table
// that SNATs tunnel traffic leaving towards the origin to Egress4/Egress6.
// The client configuration's endpoint is the VIP and its DNS the origin's
// DNS server (reached through the tunnel).
func (s *SingleNode) StartBaseline() (*Baseline, error) {
	wgBin, err := UserspaceWireGuard()
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	l, node := s.Lab, s.Node
	srvKey, err := NewKey()
	if err != nil {
		return nil, err
	}
	cliKey, err := NewKey()
	if err != nil {
		return nil, err
	}
	b := &Baseline{Iface: l.IfName(), Key: srvKey}
	b.Client = ClientConfig{
		PrivateKey: cliKey.Private,
		Addresses:  []netip.Prefix{BaselineClient4, BaselineClient6},
		DNS:        []netip.Addr{Origin4.Addr(), Origin6.Addr()},
		PeerKey:    srvKey.Public,
		Endpoint:   netip.AddrPortFrom(VIP4, BaselinePort),
	}

	b.Proc, err = node.Start("baseline", []string{"WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error"},
		wgBin, "-f", b.Iface)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join("/var/run/wireguard", b.Iface+".sock")
	for deadline := time.Now().Add(10 * time.Second); ; {
		if b.Proc.Exited() {
			return nil, b.Proc.exitedError()
		}
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("lab: baseline: no %s after 10s", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}

	keyFile := filepath.Join(l.Dir, b.Iface+".key")
	if err := os.WriteFile(keyFile, []byte(srvKey.Private+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	nat := fmt.Sprintf(`table inet wedge_baseline {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname %q ip saddr %s snat ip to %s
		oifname %q ip6 saddr %s snat ip6 to %s
	}
}
`, NodeOriginIf, BaselineNet4.Masked(), Egress4, NodeOriginIf, BaselineNet6.Masked(), Egress6)
	natFile := filepath.Join(l.Dir, "baseline.nft")
	if err := os.WriteFile(natFile, []byte(nat), 0o644); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	for _, argv := range [][]string{
		{"wg", "set", b.Iface, "listen-port", fmt.Sprint(BaselinePort), "private-key", keyFile,
			"peer", cliKey.Public, "allowed-ips", BaselineClient4.String() + "," + BaselineClient6.String()},
		{"ip", "addr", "add", BaselineNet4.String(), "dev", b.Iface},
		{"ip", "addr", "add", BaselineNet6.String(), "dev", b.Iface, "nodad"},
		{"ip", "link", "set", b.Iface, "up"},
		{"nft", "-f", natFile},
	} {
		if _, err := node.Run(argv...); err != nil {
			return nil, err
		}
	}
	if err := node.SetForwarding(true); err != nil {
		return nil, err
	}
	return b, nil
}
