package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The JSON below is the contract between nodes and clients that are not
// built from the same commit (third-party apps, older wedge binaries):
// changing a key here is changing the API.

const regJSON = `{"id":"0123456789abcdef0123456789abcdef","client_id":"EjRW","reserved":[18,52,86],` +
	`"public_key":"Y2xpZW50LWtleS1jbGllbnQta2V5LWNsaWVudC1rZXk=",` +
	`"addresses":{"v4":"100.96.0.2/32","v6":"fd57:6564:6765::2/128"},` +
	`"server":{"public_key":"c2VydmVyLWtleS1zZXJ2ZXIta2V5LXNlcnZlci1rZXk=","endpoints":["192.0.2.1:51820","[2001:db8::1]:51820"]},` +
	`"mtu":1420,"dns":["100.96.0.1","fd57:6564:6765::1"],"tags":{"pool":"trusted","country":""},` +
	`"created":"2026-12-02T09:00:00Z","plus":true,"quota_bytes":1000000000,` +
	`"usage":{"rx_bytes":1234,"tx_bytes":5678,"since":"2026-12-02T10:00:00Z","over_quota":true},"token":"wedge.0123456789abcdef0123456789abcdef.c2VjcmV0"}`

func regValue() Registration {
	return Registration{
		ID:        "0123456789abcdef0123456789abcdef",
		ClientID:  "EjRW",
		Reserved:  [3]int{18, 52, 86},
		PublicKey: "Y2xpZW50LWtleS1jbGllbnQta2V5LWNsaWVudC1rZXk=",
		Addresses: Addresses{V4: "100.96.0.2/32", V6: "fd57:6564:6765::2/128"},
		Server: Server{PublicKey: "c2VydmVyLWtleS1zZXJ2ZXIta2V5LXNlcnZlci1rZXk=",
			Endpoints: []string{"192.0.2.1:51820", "[2001:db8::1]:51820"}},
		MTU:        1420,
		DNS:        []string{"100.96.0.1", "fd57:6564:6765::1"},
		Tags:       &Tags{Pool: "trusted"},
		Created:    time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC),
		Plus:       true,
		QuotaBytes: 1e9,
		Usage:      &Usage{RxBytes: 1234, TxBytes: 5678, Since: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC), OverQuota: true},
		Token:      "wedge.0123456789abcdef0123456789abcdef.c2VjcmV0",
	}
}

func TestRegistrationJSON(t *testing.T) {
	got, err := json.Marshal(regValue())
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != regJSON {
		t.Errorf("server side: got\n%s\nwant\n%s", got, regJSON)
	}
	// The client side reads exactly what the node writes, and refuses
	// nothing a node sends.
	var back Registration
	dec := json.NewDecoder(strings.NewReader(regJSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, regValue()) {
		t.Errorf("client side: got %+v, want %+v", back, regValue())
	}
	// A node that predates tags sends none: the client sees nil, not
	// "the default tags", and can tell the two apart.
	var old Registration
	if err := json.Unmarshal([]byte(strings.Replace(regJSON, `"tags":{"pool":"trusted","country":""},`, "", 1)), &old); err != nil {
		t.Fatal(err)
	}
	if old.Tags != nil {
		t.Errorf("answer without tags: got %+v, want nil", old.Tags)
	}
	// GET and PATCH answers carry no token (the node keeps only its
	// hash), and always carry plus and quota_bytes.
	r := regValue()
	r.Token, r.Plus, r.QuotaBytes, r.Usage = "", false, 0, nil
	got, _ = json.Marshal(r)
	if s := string(got); strings.Contains(s, `"token"`) || !strings.HasSuffix(s, `"plus":false,"quota_bytes":0}`) {
		t.Errorf("answer without a token: got %s", s)
	}
}

// TestRegListJSON pins the admin API's list of registrations (the
// billing export reads it).
func TestRegListJSON(t *testing.T) {
	want := `{"registrations":[` + strings.Replace(regJSON, `,"token":"wedge.0123456789abcdef0123456789abcdef.c2VjcmV0"`, "", 1) +
		`],"next":"0123456789abcdef0123456789abcdef"}`
	r := regValue()
	r.Token = ""
	l := RegList{Registrations: []Registration{r}, Next: r.ID}
	got, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	var back RegList
	dec := json.NewDecoder(strings.NewReader(want))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&back); err != nil || !reflect.DeepEqual(back, l) {
		t.Errorf("read back %+v, %v", back, err)
	}
	// The last page has no "next"; an empty registry lists [] (not null).
	got, _ = json.Marshal(RegList{Registrations: []Registration{}})
	if string(got) != `{"registrations":[]}` {
		t.Errorf("empty last page: %s", got)
	}
}

func TestRegRequestJSON(t *testing.T) {
	for _, c := range []struct {
		req  RegRequest
		want string
	}{
		{RegRequest{PublicKey: "k"}, `{"public_key":"k"}`},
		{RegRequest{PublicKey: "k", Pool: "trusted"}, `{"public_key":"k","pool":"trusted"}`},
		{RegRequest{PublicKey: "k", Pool: "p", Country: "NL"}, `{"public_key":"k","pool":"p","country":"NL"}`},
		{RegRequest{PublicKey: "k", EnrollToken: "e"}, `{"public_key":"k","enroll_token":"e"}`},
		{RegRequest{PublicKey: "k", Plus: new(false), QuotaBytes: new(uint64(0))}, `{"public_key":"k","plus":false,"quota_bytes":0}`},
	} {
		got, err := json.Marshal(c.req)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != c.want {
			t.Errorf("%+v: got %s, want %s", c.req, got, c.want)
		}
		var back RegRequest
		if err := json.Unmarshal(got, &back); err != nil || !reflect.DeepEqual(back, c.req) {
			t.Errorf("%s: got %+v, %v; want %+v", got, back, err, c.req)
		}
	}
}

const statusJSON = `{"name":"wedge0","public_key":"pk","listen_port":51820,"endpoints":["192.0.2.1:51820"],` +
	`"clients":3,"active":1,` +
	`"cluster":{"node":{"id":"node1","dc":"ams","underlay":"198.18.1.1","state":"draining","clients":1,"started":"2026-12-02T09:00:00Z","slot":2,"pinned":true,"pins":"AAAB"},` +
	`"etcd":{"endpoints":["http://198.18.11.1:2379"],"connected":true,"since":"2026-12-02T09:00:00Z","lease":"1f","revision":42,"members_revision":43},` +
	`"nodes":[{"id":"node1","dc":"ams","underlay":"198.18.1.1","state":"draining","clients":1,"started":"2026-12-02T09:00:00Z","slot":2,"pinned":true,"pins":"AAAB"}]},` +
	`"bind":{"stamped":10,"unstamped":2,"client_id_mismatches":1,"handshakes_started":4,"recoveries_refused":6,"sessions_inherited":8,"cookie_replies_sent":5,"initiations_sent":3,"responses_sent":9,` +
	`"socket":{"src_fallbacks":1,"endpoint_cache_resets":2,"gso_off":0,"gro_messages":7,"gro_datagrams":70}},` +
	`"peers":[{"id":"r1","public_key":"ck","client_id":"EjRW","endpoint":"203.0.113.5:4000","last_handshake":"2026-12-02T09:00:00Z","rx_bytes":100,"tx_bytes":200}]}`

func TestStatusJSON(t *testing.T) {
	at := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	m := Member{ID: "node1", DC: "ams", Underlay: netip.MustParseAddr("198.18.1.1"), State: Draining,
		Clients: 1, Started: at, Slot: 2, Pinned: true, Pins: []byte{0, 0, 1}}
	s := Status{Name: "wedge0", PublicKey: "pk", ListenPort: 51820, Endpoints: []string{"192.0.2.1:51820"},
		Clients: 3, Active: 1,
		Cluster: &ClusterStatus{Node: m, Nodes: []Member{m},
			Etcd: Health{Endpoints: []string{"http://198.18.11.1:2379"}, Connected: true, Since: at, Lease: "1f", Revision: 42, MembersRevision: 43}},
		Bind: BindStatus{Stamped: 10, Unstamped: 2, Mismatches: 1, HandshakesStarted: 4, RecoveriesRefused: 6, SessionsInherited: 8, CookieReplies: 5,
			InitiationsSent: 3, ResponsesSent: 9,
			Socket: &SocketStatus{SrcFallbacks: 1, CacheResets: 2, Coalesced: 7, GRODatagrams: 70}},
		Peers: []PeerStatus{{ID: "r1", PublicKey: "ck", ClientID: "EjRW", Endpoint: "203.0.113.5:4000",
			LastHandshake: at, RxBytes: 100, TxBytes: 200}},
	}
	got, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != statusJSON {
		t.Errorf("got\n%s\nwant\n%s", got, statusJSON)
	}
	var back Status
	dec := json.NewDecoder(bytes.NewReader([]byte(statusJSON)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, s) {
		t.Errorf("decoded: got %+v, want %+v", back, s)
	}
	if ids := back.Cluster.Node.PinnedClientIDs(); !reflect.DeepEqual(ids, []uint32{1}) {
		t.Errorf("PinnedClientIDs: got %v, want [1]", ids)
	}
}

func TestPinnedClientIDs(t *testing.T) {
	for _, c := range []struct {
		pins []byte
		want []uint32
	}{
		{nil, []uint32{}},
		{[]byte{0, 0, 1, 0xff, 0xff, 0xff}, []uint32{1, 0xffffff}},
		{[]byte{0, 0}, nil},       // not whole ClientIDs
		{[]byte{0, 0, 0}, nil},    // ClientID 0 is never assigned
		{[]byte{1, 2, 3, 4}, nil}, // trailing byte
	} {
		got := Member{Pins: c.pins}.PinnedClientIDs()
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%x: got %v, want %v", c.pins, got, c.want)
		}
	}
}

func TestTagsValidate(t *testing.T) {
	for _, c := range []struct {
		tags Tags
		ok   bool
	}{
		{Tags{}, true},
		{Tags{Pool: "trusted", Country: "NL"}, true},
		{Tags{Pool: "a"}, true},
		{Tags{Pool: "0-a-"}, true},
		{Tags{Pool: strings.Repeat("a", MaxPoolLen)}, true},
		{Tags{Pool: strings.Repeat("a", MaxPoolLen+1)}, false},
		{Tags{Pool: "-a"}, false},
		{Tags{Pool: "Trusted"}, false},
		{Tags{Pool: "a_b"}, false},
		{Tags{Pool: "a b"}, false},
		{Tags{Pool: "ü"}, false},
		{Tags{Country: "nl"}, false},
		{Tags{Country: "NLD"}, false},
		{Tags{Country: "N"}, false},
		{Tags{Country: "N1"}, false},
		{Tags{Pool: "ok", Country: "x"}, false},
	} {
		err := c.tags.Validate()
		if (err == nil) != c.ok {
			t.Errorf("%+v: got %v, want ok=%v", c.tags, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrBadTags) {
			t.Errorf("%+v: %v does not wrap ErrBadTags", c.tags, err)
		}
	}
}

func TestShown(t *testing.T) {
	if got := Shown("a\nb"); got != `"a\nb"` {
		t.Errorf("got %s", got)
	}
	long := strings.Repeat("x", 100)
	if got := Shown(long); !strings.HasSuffix(got, "… (100 bytes)") || len(got) > 60 {
		t.Errorf("got %s", got)
	}
}

func FuzzTagsValidate(f *testing.F) {
	f.Add("trusted", "NL")
	f.Add("-", "nl")
	f.Fuzz(func(t *testing.T, pool, country string) {
		err := Tags{Pool: pool, Country: country}.Validate()
		if err != nil {
			if !errors.Is(err, ErrBadTags) {
				t.Fatalf("%v does not wrap ErrBadTags", err)
			}
			return
		}
		// What passes is safe to put in a file, a key or a label.
		for _, s := range []string{pool, country} {
			for i := 0; i < len(s); i++ {
				if s[i] <= ' ' || s[i] > '~' || s[i] == '/' {
					t.Fatalf("accepted %q", s)
				}
			}
		}
	})
}
