package relay

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"net/netip"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/internal/api"
)

func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestParseRequest(t *testing.T) {
	good := []string{HeaderApplication, "warp", HeaderKeepalive, "15", HeaderHops, "1"}
	r, err := ParseRequest("8.54.232.11:5564", header(append(good, HeaderCountry, "NL", HeaderPool, "gold")...))
	want := Request{Dst: netip.MustParseAddrPort("8.54.232.11:5564"), Keepalive: 15 * time.Second, Hops: 1, Tags: Tags{Country: "NL", Pool: "gold"}}
	if err != nil || r != want {
		t.Fatalf("got %+v, %v; want %+v", r, err, want)
	}
	if r, err := ParseRequest("[2001:db8::1]:443", header(good...)); err != nil || r.Dst != netip.MustParseAddrPort("[2001:db8::1]:443") {
		t.Errorf("IPv6: %+v, %v", r, err)
	}
	if r, err := ParseRequest("[::ffff:10.0.0.1]:80", header(good...)); err != nil || r.Dst != netip.MustParseAddrPort("10.0.0.1:80") {
		t.Errorf("v4-mapped: %+v, %v", r, err)
	}
	for _, tc := range []struct {
		authority string
		h         http.Header
	}{
		{"example.com:80", header(good...)},
		{"10.0.0.1", header(good...)},
		{"10.0.0.1:0", header(good...)},
		{"[fe80::1%eth0]:80", header(good...)},
		{"10.0.0.1:80", header(HeaderApplication, "warp", HeaderKeepalive, "15")},
		{"10.0.0.1:80", header(HeaderApplication, "warp", HeaderHops, "1")},
		{"10.0.0.1:80", header(HeaderKeepalive, "15", HeaderHops, "1")},
		{"10.0.0.1:80", header(HeaderApplication, "WARP", HeaderKeepalive, "15", HeaderHops, "1")},
		{"10.0.0.1:80", header(HeaderApplication, "warp", HeaderKeepalive, "+15", HeaderHops, "1")},
		{"10.0.0.1:80", header(HeaderApplication, "warp", HeaderKeepalive, "15s", HeaderHops, "1")},
		{"10.0.0.1:80", header(HeaderApplication, "warp", HeaderKeepalive, "86401", HeaderHops, "1")},
		{"10.0.0.1:80", header(HeaderApplication, "warp", HeaderKeepalive, "15", HeaderHops, "0")},
		{"10.0.0.1:80", header(HeaderApplication, "warp", HeaderKeepalive, "15", HeaderHops, "256")},
		{"10.0.0.1:80", header(HeaderApplication, "warp", HeaderKeepalive, "15", HeaderHops, "-1")},
		{"10.0.0.1:80", header(HeaderApplication, "warp", HeaderKeepalive, "15", HeaderHops, "99999999999999999999")},
		{"10.0.0.1:80", header(append(good, HeaderHops, "1")...)},
		{"10.0.0.1:80", header(append(good, HeaderCountry, "N")...)},
		{"10.0.0.1:80", header(append(good, HeaderCountry, "NL", HeaderCountry, "DE")...)},
		{"10.0.0.1:80", header(append(good, HeaderPool, "Gold")...)},
	} {
		if r, err := ParseRequest(tc.authority, tc.h); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s %v: %+v, %v; want ErrBadRequest", tc.authority, tc.h, r, err)
		}
	}
}

// FuzzParseRequest feeds ParseRequest an authority line and a header
// block as a peer could send them: it must not panic, what it accepts
// must be within the limits, and the header the client makes of an
// accepted request must parse back to the same request.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("8.54.232.11:5564\nExit-Tcp-Keepalive-Duration: 15\nApplication: warp\nWedge-Hops: 1\nWedge-Egress-Country: NL\nWedge-Egress-Pool: gold\n\n"))
	f.Add([]byte("[2001:db8::1]:443\nexit-tcp-keepalive-duration: 0\napplication: warp\nwedge-hops: 2\n\n"))
	f.Add([]byte("10.0.0.1:80\nApplication: warp\nApplication: warp\nWedge-Hops: 1\n\n"))
	f.Add([]byte("10.0.0.1:80\nExit-Tcp-Keepalive-Duration: 99999999999\nApplication: warp\nWedge-Hops: 300\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		authority, rest, _ := bytes.Cut(data, []byte("\n"))
		mh, _ := textproto.NewReader(bufio.NewReader(bytes.NewReader(rest))).ReadMIMEHeader()
		h := http.Header(mh)
		r, err := ParseRequest(string(authority), h)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not wrap ErrBadRequest", err)
			}
			return
		}
		if !r.Dst.IsValid() || r.Dst.Port() == 0 || r.Dst.Addr().Zone() != "" || r.Dst.Addr().Is4In6() {
			t.Fatalf("accepted destination %v", r.Dst)
		}
		if r.Hops < 1 || r.Hops > hopsCeiling || r.Keepalive < 0 || r.Keepalive > MaxKeepalive || r.Keepalive%time.Second != 0 {
			t.Fatalf("accepted %+v", r)
		}
		if r.Tags.Validate() != nil || (r.Tags.Country != "" && !api.ValidCountry(r.Tags.Country)) {
			t.Fatalf("accepted tags %+v", r.Tags)
		}
		if strings.ContainsAny(r.Tags.Pool+r.Tags.Country, "\r\n\x00 ") {
			t.Fatalf("accepted tags %q", r.Tags)
		}
		back, err := ParseRequest(r.Dst.String(), r.Header())
		if err != nil || back != r {
			t.Fatalf("round trip of %+v: %+v, %v", r, back, err)
		}
	})
}
