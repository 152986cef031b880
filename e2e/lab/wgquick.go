package lab

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// Key is a WireGuard key pair, base64 as wg(8) prints keys.
type Key struct {
	Private, Public string
}

// NewKey makes a WireGuard (X25519) key pair.
func NewKey() (Key, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, fmt.Errorf("lab: key: %w", err)
	}
	return Key{
		Private: base64.StdEncoding.EncodeToString(k.Bytes()),
		Public:  base64.StdEncoding.EncodeToString(k.PublicKey().Bytes()),
	}, nil
}

// ClientConfig is a minimal wg-quick configuration with one peer.
type ClientConfig struct {
	PrivateKey string
	Addresses  []netip.Prefix
	DNS        []netip.Addr
	MTU        int // 0: wg-quick's default
	PeerKey    string
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix // nil: 0.0.0.0/0, ::/0
}

// String renders the configuration as a wg-quick file.
func (c ClientConfig) String() string {
	var b strings.Builder
	join := func(xs []string) string { return strings.Join(xs, ", ") }
	var addrs, dns, allowed []string
	for _, a := range c.Addresses {
		addrs = append(addrs, a.String())
	}
	for _, a := range c.DNS {
		dns = append(dns, a.String())
	}
	for _, a := range c.AllowedIPs {
		allowed = append(allowed, a.String())
	}
	if allowed == nil {
		allowed = []string{"0.0.0.0/0", "::/0"}
	}
	fmt.Fprintf(&b, "[Interface]\nPrivateKey = %s\n", c.PrivateKey)
	fmt.Fprintf(&b, "Address = %s\n", join(addrs))
	if len(dns) > 0 {
		fmt.Fprintf(&b, "DNS = %s\n", join(dns))
	}
	if c.MTU > 0 {
		fmt.Fprintf(&b, "MTU = %d\n", c.MTU)
	}
	fmt.Fprintf(&b, "\n[Peer]\nPublicKey = %s\nEndpoint = %s\nAllowedIPs = %s\n", c.PeerKey, c.Endpoint, join(allowed))
	return b.String()
}

// WGQuick is a wg-quick interface brought up by WGQuickUp.
type WGQuick struct {
	NS    *NS
	Iface string
	// Conf is the path of the configuration file (<Iface>.conf).
	Conf string

	downOnce sync.Once
	downErr  error
}

var validIface = regexp.MustCompile(`^[a-zA-Z0-9_=+.-]{1,15}$`)

// WGQuickUp writes conf (a complete wg-quick file, as `wedge register`
// writes it) to <lab dir>/<iface>.conf with a fresh unique interface name and
// runs `wg-quick up` on it inside ns, with the userspace WireGuard
// (UserspaceWireGuard). The configuration is used as it is, DNS line
// included: a resolvconf shim first in wg-quick's PATH writes the servers to
// the namespace's own resolv.conf (NS.ResolvConf), never the host's.
// Cleanup runs `wg-quick down`.
func (ns *NS) WGQuickUp(conf string) (*WGQuick, error) {
	return ns.WGQuickUpIface(ns.lab.IfName(), conf)
}

// WGQuickUpIface is WGQuickUp with a chosen interface name; it must be
// unique on the machine (/var/run/wireguard is shared by all namespaces).
func (ns *NS) WGQuickUpIface(iface, conf string) (*WGQuick, error) {
	if !validIface.MatchString(iface) {
		return nil, fmt.Errorf("lab: bad interface name %q", iface)
	}
	l := ns.lab
	path := filepath.Join(l.Dir, iface+".conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	env, err := ns.wgQuickEnv()
	if err != nil {
		return nil, err
	}
	w := &WGQuick{NS: ns, Iface: iface, Conf: path}
	l.onCleanup(func() error {
		if _, err := os.Stat(filepath.Join("/var/run/wireguard", iface+".sock")); err != nil {
			return nil // never came up, or already down
		}
		return w.Down()
	})
	if _, err := ns.RunEnv(env, "wg-quick", "up", path); err != nil {
		return nil, err
	}
	return w, nil
}

// Down runs `wg-quick down`; the userspace WireGuard exits with its
// interface. Safe to call more than once.
func (w *WGQuick) Down() error {
	w.downOnce.Do(func() {
		env, err := w.NS.wgQuickEnv()
		if err != nil {
			w.downErr = err
			return
		}
		_, w.downErr = w.NS.RunEnv(env, "wg-quick", "down", w.Conf)
	})
	return w.downErr
}

// Show returns `wg show <iface>` run in the namespace.
func (w *WGQuick) Show() (string, error) {
	return w.NS.Run("wg", "show", w.Iface)
}

func (ns *NS) wgQuickEnv() ([]string, error) {
	wg, err := UserspaceWireGuard()
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	shimDir, err := ns.lab.resolvconfShim()
	if err != nil {
		return nil, err
	}
	return []string{
		"WG_QUICK_USERSPACE_IMPLEMENTATION=" + wg,
		"PATH=" + shimDir + string(os.PathListSeparator) + os.Getenv("PATH"),
		"WEDGE_LAB_RESOLV_CONF=" + ns.ResolvConf(),
	}, nil
}

// resolvconfShim is what wg-quick runs as `resolvconf -a IFACE -m 0 -x`
// (servers on stdin) and `resolvconf -d IFACE -f`. It writes only the file
// named by WEDGE_LAB_RESOLV_CONF: a real resolvconf would write the host's
// /etc/resolv.conf or keep state in the shared /run/resolvconf.
const resolvconfShim = `#!/bin/sh
# wedge lab: resolvconf for wg-quick inside a lab namespace (e2e/lab/wgquick.go)
set -eu
: "${WEDGE_LAB_RESOLV_CONF:?refusing to run outside a wedge lab}"
case "${1:-}" in
-a) { echo "# wedge lab: written by wg-quick for $2"; cat; } > "$WEDGE_LAB_RESOLV_CONF" ;;
-d) echo "# wedge lab: $2 is down" > "$WEDGE_LAB_RESOLV_CONF" ;;
-l) cat "$WEDGE_LAB_RESOLV_CONF" ;;
*) echo "resolvconf shim: unsupported: $*" >&2; exit 1 ;;
esac
`

func (l *Lab) resolvconfShim() (string, error) {
	dir := filepath.Join(l.Dir, "bin")
	path := filepath.Join(dir, "resolvconf")
	if _, err := os.Stat(path); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("lab: %w", err)
	}
	if err := os.WriteFile(path, []byte(resolvconfShim), 0o755); err != nil {
		return "", fmt.Errorf("lab: %w", err)
	}
	return dir, nil
}
