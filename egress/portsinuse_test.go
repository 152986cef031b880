package egress

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"0A6433C6:C350":                         "198.51.100.10:50000",
		"00000000000000000000000001000000:0035": "[::1]:53",
		"0000000000000000FFFF00000A6433C6:0050": "198.51.100.10:80", // v4-mapped
		"B80D0120000000510000000010000000:1F90": "[2001:db8:5100::10]:8080",
	} {
		got, err := parseProcAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("parseProcAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0100007F", "0100007F:XYZ", "01007F:0050"} {
		if _, err := parseProcAddr(in); err == nil {
			t.Errorf("parseProcAddr(%q) accepted", in)
		}
	}
}

func TestScanProcNet(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0A6433C6:C350 0200A8C0:0050 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 20 4 30 10 -1
   1: 0A6433C6:C351 0200A8C0:0050 06 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
`
	var got []string
	if err := scanProcNet(strings.NewReader(table), func(ap netip.AddrPort) { got = append(got, ap.String()) }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "198.51.100.10:50000 198.51.100.10:50001" {
		t.Fatalf("got %v", got)
	}
}

// TestPortsInUse counts this process's own sockets on loopback.
func TestPortsInUse(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	var ports []uint16
	for range 3 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, uint16(l.Addr().(*net.TCPAddr).Port))
	}
	u, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	ports = append(ports, uint16(u.LocalAddr().(*net.UDPAddr).Port))
	// A slice of exactly the ports held (plus other tests' sockets in
	// range, which a slice of single ports rules out).
	total := 0
	for _, p := range ports {
		got, err := PortsInUse([]Slice{{Addr: lo, PortLo: p, PortHi: p}})
		if err != nil {
			t.Fatal(err)
		}
		total += got[lo]
	}
	if total != len(ports) {
		t.Fatalf("ports in use: %d, want %d", total, len(ports))
	}
	got, err := PortsInUse([]Slice{{Addr: netip.MustParseAddr("192.0.2.99"), PortLo: 1, PortHi: 65535}})
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := got[netip.MustParseAddr("192.0.2.99")]; !ok || n != 0 {
		t.Fatalf("unused address: %v", got)
	}
}
