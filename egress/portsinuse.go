package egress

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Slice is an egress address and the range of source ports this node
// takes on it (both zero: the kernel's range).
type Slice struct {
	Addr           netip.Addr
	PortLo, PortHi uint16
}

// Slices are the configured sources (Config.Sources) with the node's
// slice. With Config.Route the addresses come from the Router's Slices.
func (d *Dialer) Slices() []Slice {
	var out []Slice
	for _, a := range []netip.Addr{d.src4, d.src6} {
		if a.IsValid() {
			out = append(out, Slice{Addr: a, PortLo: d.portLo, PortHi: d.portHi})
		}
	}
	return out
}

// Slices are the plan's IPv4 addresses of this node's data center, each
// with this node's slice. IPv6 sources are per client within the node's
// /64 and have no slice, so they are not listed.
func (r *Router) Slices() []Slice {
	p := r.plan.Load()
	lo, hi, err := p.Slice(r.slot)
	if err != nil {
		return nil
	}
	var out []Slice
	for _, a := range p.Addrs4(r.dc) {
		out = append(out, Slice{Addr: a, PortLo: lo, PortHi: hi})
	}
	return out
}

// PortsInUse counts, for each slice, the distinct local ports inside it
// that sockets bound to its address hold now (TCP and UDP, any state),
// as the kernel lists them in /proc/net for this network namespace. It is
// read when asked (a metrics scrape): the kernel's tables are the truth,
// with nothing counted twice.
func PortsInUse(slices []Slice) (map[netip.Addr]int, error) {
	want := make(map[netip.Addr]Slice, len(slices))
	for _, s := range slices {
		want[s.Addr.Unmap()] = s
	}
	used := make(map[netip.AddrPort]bool)
	// The tables of this thread's network namespace, the one sockets are
	// made in: /proc/net is the thread group leader's, which a test (or
	// a library) may have moved to another namespace.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, name := range []string{"tcp", "tcp6", "udp", "udp6"} {
		f, err := os.Open("/proc/thread-self/net/" + name)
		if os.IsNotExist(err) {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		err = scanProcNet(f, func(ap netip.AddrPort) {
			if s, ok := want[ap.Addr()]; ok && inSlice(s, ap.Port()) {
				used[ap] = true
			}
		})
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("egress: /proc/net/%s: %w", name, err)
		}
	}
	out := make(map[netip.Addr]int, len(slices))
	for _, s := range slices {
		out[s.Addr.Unmap()] = 0
	}
	for ap := range used {
		out[ap.Addr()]++
	}
	return out, nil
}

func inSlice(s Slice, port uint16) bool {
	if s.PortLo == 0 && s.PortHi == 0 {
		return port != 0
	}
	return port >= s.PortLo && port <= s.PortHi
}

// scanProcNet calls f with the local address of every socket of a
// /proc/net/{tcp,udp}[6] table.
func scanProcNet(r io.Reader, f func(netip.AddrPort)) error {
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		ap, err := parseProcAddr(fields[1])
		if err != nil {
			return err
		}
		f(ap)
	}
	return sc.Err()
}

// parseProcAddr parses a /proc/net address, "0100007F:1F90": the address
// as 32-bit words in host (little-endian) order, then the port.
func parseProcAddr(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port in %q", s)
	}
	raw, err := hex.DecodeString(h)
	if err != nil || len(raw) != 4 && len(raw) != 16 {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i < len(raw); i += 4 { // each word little-endian
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	a, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}
