package main

import (
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

func query(t testing.TB, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x1234, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestAnswer(t *testing.T) {
	z := &zone{
		name: dnsName("origin.wedge.test"),
		a:    []netip.Addr{netip.MustParseAddr("198.18.0.2")},
		aaaa: []netip.Addr{netip.MustParseAddr("2001:db8:18::2")},
	}
	src4 := netip.MustParseAddrPort("198.51.100.10:20001")
	src6 := netip.MustParseAddrPort("[2001:db8:5100::10]:20002")
	for _, tc := range []struct {
		name      string
		qname     string
		typ       dnsmessage.Type
		src       netip.AddrPort
		wantRCode dnsmessage.RCode
		want      []string
	}{
		{"A", "origin.wedge.test.", dnsmessage.TypeA, src4, dnsmessage.RCodeSuccess, []string{"198.18.0.2"}},
		{"AAAA", "origin.wedge.test.", dnsmessage.TypeAAAA, src4, dnsmessage.RCodeSuccess, []string{"2001:db8:18::2"}},
		{"case", "Origin.Wedge.TEST.", dnsmessage.TypeA, src6, dnsmessage.RCodeSuccess, []string{"198.18.0.2"}},
		{"MX-empty", "origin.wedge.test.", dnsmessage.TypeMX, src4, dnsmessage.RCodeSuccess, nil},
		{"whoami4", "whoami.wedge.test.", dnsmessage.TypeA, src4, dnsmessage.RCodeSuccess, []string{"198.51.100.10"}},
		{"whoami4-mapped", "whoami.wedge.test.", dnsmessage.TypeA,
			netip.MustParseAddrPort("[::ffff:198.51.100.10]:1"), dnsmessage.RCodeSuccess, []string{"198.51.100.10"}},
		{"whoami6", "whoami.wedge.test.", dnsmessage.TypeAAAA, src6, dnsmessage.RCodeSuccess, []string{"2001:db8:5100::10"}},
		{"whoami6-asked-A", "whoami.wedge.test.", dnsmessage.TypeA, src6, dnsmessage.RCodeSuccess, nil},
		{"whoami-txt", "whoami.wedge.test.", dnsmessage.TypeTXT, src6, dnsmessage.RCodeSuccess, []string{"[2001:db8:5100::10]:20002"}},
		{"nxdomain", "other.wedge.test.", dnsmessage.TypeA, src4, dnsmessage.RCodeNameError, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := z.answer(query(t, tc.qname, tc.typ), tc.src, 512)
			if err != nil {
				t.Fatal(err)
			}
			var m dnsmessage.Message
			if err := m.Unpack(resp); err != nil {
				t.Fatal(err)
			}
			if m.ID != 0x1234 || !m.Response || m.RCode != tc.wantRCode {
				t.Errorf("header %+v, want id 0x1234, response, rcode %v", m.Header, tc.wantRCode)
			}
			var got []string
			for _, a := range m.Answers {
				switch r := a.Body.(type) {
				case *dnsmessage.AResource:
					got = append(got, netip.AddrFrom4(r.A).String())
				case *dnsmessage.AAAAResource:
					got = append(got, netip.AddrFrom16(r.AAAA).String())
				case *dnsmessage.TXTResource:
					got = append(got, r.TXT...)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("answers %v, want %v", got, tc.want)
			}
		})
	}
}

func FuzzAnswer(f *testing.F) {
	f.Add(query(f, "origin.wedge.test.", dnsmessage.TypeA))
	f.Add(query(f, "whoami.wedge.test.", dnsmessage.TypeTXT))
	f.Add([]byte{0, 1, 2})
	z := &zone{name: dnsName("origin.wedge.test."), a: []netip.Addr{netip.MustParseAddr("198.18.0.2")}}
	src := netip.MustParseAddrPort("198.51.100.10:1")
	f.Fuzz(func(t *testing.T, msg []byte) {
		resp, err := z.answer(msg, src, 512)
		if err != nil {
			return
		}
		var m dnsmessage.Message
		if err := m.Unpack(resp); err != nil {
			t.Fatalf("answer built an unparsable response: %v", err)
		}
	})
}

func TestServeBytes(t *testing.T) {
	for _, n := range []int64{0, 1, 250, 251, 252, int64(len(patternBlock)) + 3, 1 << 20} {
		rec := httptest.NewRecorder()
		serveBytes(rec, httptest.NewRequest("GET", "/bytes?n="+strconv.FormatInt(n, 10), nil))
		body := rec.Body.Bytes()
		if int64(len(body)) != n {
			t.Fatalf("n=%d: got %d bytes", n, len(body))
		}
		for i, b := range body {
			if b != Pattern(int64(i)) {
				t.Fatalf("n=%d: byte %d = %d, want %d", n, i, b, Pattern(int64(i)))
			}
		}
	}
	rec := httptest.NewRecorder()
	serveBytes(rec, httptest.NewRequest("GET", "/bytes?n=-1", nil))
	if rec.Code != 400 {
		t.Errorf("n=-1: status %d, want 400", rec.Code)
	}
}
