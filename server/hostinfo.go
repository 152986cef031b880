package server

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
)

// HostEndpoints returns ip:port for the first global unicast IPv4 and IPv6
// address on the host's interfaces: the default endpoints advertised when
// none are configured.
func HostEndpoints(port uint16) []string {
	var v4, v6 netip.Addr
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := p.Addr().Unmap()
		if !ip.IsGlobalUnicast() {
			continue
		}
		switch {
		case ip.Is4() && !v4.IsValid():
			v4 = ip
		case ip.Is6() && !v6.IsValid():
			v6 = ip
		}
	}
	var out []string
	for _, ip := range []netip.Addr{v4, v6} {
		if ip.IsValid() {
			out = append(out, netip.AddrPortFrom(ip, port).String())
		}
	}
	return out
}

// SystemResolver returns the first nameserver of /etc/resolv.conf as
// ip:53, the default DNS upstream.
func SystemResolver() (netip.AddrPort, error) {
	f, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if ip, err := netip.ParseAddr(fields[1]); err == nil {
				return netip.AddrPortFrom(ip.WithZone(""), 53), nil
			}
		}
	}
	return netip.AddrPort{}, fmt.Errorf("server: no nameserver in /etc/resolv.conf")
}
