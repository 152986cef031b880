package lab

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// ToolsXray is what a lab with a third-party stamped client needs: Xray-core
// (`go install github.com/xtls/xray-core/main@VERSION`, renamed xray; .ci/run
// does it), whose WireGuard outbound stamps the `reserved` bytes as WARP
// clients do. It is written by other people from the WireGuard spec and
// WARP's conventions, so it checks wedge against a client we did not write.
var ToolsXray = []string{"xray"}

// XrayConfig is one Xray client: a SOCKS5 inbound on SOCKS (in the client's
// namespace) whose connections leave through a WireGuard outbound to
// Endpoint, with Reserved stamped into every message.
type XrayConfig struct {
	PrivateKey string // base64, the client's
	ServerKey  string // base64, the service's public key
	Endpoint   netip.AddrPort
	Addresses  []netip.Prefix // the client's inner addresses
	Reserved   [3]byte
	MTU        int    // 0: 1420
	SOCKS      string // host:port of the SOCKS5 inbound, e.g. 127.0.0.1:1080
}

// xrayJSON renders c as Xray's JSON configuration. noKernelTun keeps the
// tunnel inside Xray's process (gVisor), so the client needs no TUN device
// and several can share a namespace.
func (c XrayConfig) xrayJSON() ([]byte, error) {
	host, port, err := splitHostPort(c.SOCKS)
	if err != nil {
		return nil, fmt.Errorf("lab: xray socks %q: %w", c.SOCKS, err)
	}
	mtu := c.MTU
	if mtu == 0 {
		mtu = 1420
	}
	addrs := make([]string, len(c.Addresses))
	for i, a := range c.Addresses {
		addrs[i] = a.String()
	}
	conf := map[string]any{
		"log": map[string]any{"loglevel": "info"},
		"inbounds": []any{map[string]any{
			"listen": host, "port": port, "protocol": "socks",
			"settings": map[string]any{"auth": "noauth", "udp": true},
		}},
		"outbounds": []any{map[string]any{
			"protocol": "wireguard",
			"settings": map[string]any{
				"secretKey":   c.PrivateKey,
				"address":     addrs,
				"noKernelTun": true,
				"mtu":         mtu,
				"reserved":    []int{int(c.Reserved[0]), int(c.Reserved[1]), int(c.Reserved[2])},
				"peers": []any{map[string]any{
					"publicKey":  c.ServerKey,
					"endpoint":   c.Endpoint.String(),
					"allowedIPs": []string{"0.0.0.0/0", "::/0"},
				}},
			},
		}},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// StartXray starts an Xray client in ns and waits until its SOCKS5 inbound
// accepts connections. The lab's cleanup stops it.
func (ns *NS) StartXray(name string, c XrayConfig) (*Proc, error) {
	conf, err := c.xrayJSON()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(ns.lab.Dir, ns.Short+"-"+name+".json")
	if err := os.WriteFile(path, conf, 0o600); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	p, err := ns.Start(name, nil, "xray", "run", "-c", path)
	if err != nil {
		return nil, err
	}
	if err := ns.WaitTCP(c.SOCKS, 20*time.Second); err != nil {
		return nil, fmt.Errorf("lab: xray %s: %w; log:\n%s", name, err, p.Output())
	}
	return p, nil
}

func splitHostPort(s string) (string, int, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return "", 0, err
	}
	return ap.Addr().String(), int(ap.Port()), nil
}
