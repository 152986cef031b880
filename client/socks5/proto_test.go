package socks5

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"
)

func TestReadRequest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []byte
		want    request
		wantErr error
	}{
		{"ipv4", []byte{5, 1, 0, 1, 10, 0, 0, 1, 0, 80}, request{cmdConnect, addr{ip: netip.MustParseAddr("10.0.0.1"), port: 80}}, nil},
		{"ipv6", append(append([]byte{5, 3, 0, 4}, netip.MustParseAddr("2001:db8::1").AsSlice()...), 1, 187),
			request{cmdUDPAssociate, addr{ip: netip.MustParseAddr("2001:db8::1"), port: 443}}, nil},
		{"domain", []byte{5, 1, 0, 3, 4, 'a', '.', 'b', 'c', 0x1f, 0x90}, request{cmdConnect, addr{name: "a.bc", port: 8080}}, nil},
		{"rsv ignored", []byte{5, 1, 0xff, 1, 1, 2, 3, 4, 0, 1}, request{cmdConnect, addr{ip: netip.MustParseAddr("1.2.3.4"), port: 1}}, nil},
		{"bad atyp", []byte{5, 1, 0, 2, 1, 2, 3, 4, 0, 1}, request{cmd: cmdConnect}, errAddrType},
		{"empty domain", []byte{5, 1, 0, 3, 0, 0, 80}, request{cmd: cmdConnect}, errDomain},
		{"version", []byte{4, 1, 0, 1, 1, 2, 3, 4, 0, 1}, request{cmd: cmdConnect}, errVersion},
		{"short", []byte{5, 1, 0, 1, 1, 2}, request{cmd: cmdConnect}, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readRequest(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err: got %v, want %v", err, tc.wantErr)
			}
			if err == nil && got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestUDPHeader(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       []byte
		wantFrag byte
		wantDst  addr
		wantData string
		wantErr  error
	}{
		{"ipv4", []byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 53, 'q'}, 0, addr{ip: netip.MustParseAddr("127.0.0.1"), port: 53}, "q", nil},
		{"domain", []byte{0, 0, 0, 3, 1, 'x', 0, 53}, 0, addr{name: "x", port: 53}, "", nil},
		{"frag", []byte{0, 0, 2, 1, 127, 0, 0, 1, 0, 53, 'q'}, 2, addr{ip: netip.MustParseAddr("127.0.0.1"), port: 53}, "q", nil},
		{"short", []byte{0, 0, 0}, 0, addr{}, "", errShort},
		{"short ipv6", []byte{0, 0, 0, 4, 1, 2, 3}, 0, addr{}, "", errShort},
		{"short domain", []byte{0, 0, 0, 3, 5, 'a'}, 0, addr{}, "", errShort},
		{"empty domain", []byte{0, 0, 0, 3, 0, 0, 53}, 0, addr{}, "", errDomain},
		{"bad atyp", []byte{0, 0, 0, 9, 0, 0}, 0, addr{}, "", errAddrType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frag, dst, data, err := parseUDPHeader(tc.in)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err: got %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if frag != tc.wantFrag || dst != tc.wantDst || string(data) != tc.wantData {
				t.Fatalf("got frag %d dst %v data %q, want %d %v %q", frag, dst, data, tc.wantFrag, tc.wantDst, tc.wantData)
			}
		})
	}
}

// FuzzHandshake feeds untrusted bytes to the greeting and request parsers:
// they must not panic, must not read past the request, and a request
// they accept must encode back to the bytes it came from.
func FuzzHandshake(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80})
	f.Add([]byte{5, 2, 0, 2, 5, 3, 0, 3, 7, 'e', 'x', '.', 't', 'e', 's', 't', 1, 187})
	f.Add(append(append([]byte{5, 1, 0, 5, 1, 0, 4}, make([]byte, 16)...), 0, 1))
	f.Add([]byte{5, 0, 5, 2, 0, 9})
	f.Add([]byte{4, 1, 0, 80})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		methods, err := readGreeting(r)
		if err != nil {
			return
		}
		if len(methods) != int(data[1]) {
			t.Fatalf("methods: got %d, want NMETHODS %d", len(methods), data[1])
		}
		start := len(data) - r.Len()
		req, err := readRequest(r)
		if err != nil {
			return
		}
		end := len(data) - r.Len()
		raw := data[start:end]
		enc := req.dst.appendTo([]byte{raw[0], req.cmd, raw[2]})
		if !bytes.Equal(enc, raw) {
			t.Fatalf("re-encoded request %x, want %x", enc, raw)
		}
		_ = appendReply(nil, repSucceeded, req.dst)
		_ = req.dst.hostPort()
	})
}

// FuzzUDPHeader feeds untrusted datagrams to the UDP header parser: no
// panic, and an accepted header encodes back to the bytes it came from.
func FuzzUDPHeader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 127, 0, 0, 1, 0, 53, 'q'})
	f.Add([]byte{0, 0, 0, 3, 4, 'a', '.', 'b', 'c', 0, 53, 1, 2, 3})
	f.Add(append(append([]byte{0, 0, 1, 4}, make([]byte, 16)...), 0, 53))
	f.Add([]byte{0, 0, 0, 3, 255})
	f.Fuzz(func(t *testing.T, data []byte) {
		frag, dst, payload, err := parseUDPHeader(data)
		if err != nil {
			return
		}
		hdr := appendUDPHeader(nil, dst)
		hdr[2] = frag
		copy(hdr[:2], data[:2]) // RSV is ignored on input
		if got := append(hdr, payload...); !bytes.Equal(got, data) {
			t.Fatalf("re-encoded %x, want %x", got, data)
		}
	})
}
