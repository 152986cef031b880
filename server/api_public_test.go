package server

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wedge-edge/wedge/internal/etcdtest"
	"github.com/wedge-edge/wedge/server/registry"
)

// publicCall is call on the public API from source address src.
func publicCall(t testing.TB, h http.Handler, src, method, path, body, auth string) (int, map[string]any, http.Header) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.RemoteAddr = src
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	if rec.Body.Len() > 0 && json.Unmarshal(rec.Body.Bytes(), &out) != nil {
		t.Fatalf("%s %s: body is not JSON: %q", method, path, rec.Body.String())
	}
	if code := rec.Code; code >= 400 && method != "HEAD" {
		if msg, _ := out["error"].(string); msg == "" {
			t.Fatalf("%s %s: %d without a JSON error", method, path, code)
		}
	}
	return rec.Code, out, rec.Header()
}

const src1 = "203.0.113.5:40000"

func enrollTokens(t testing.TB, file string) func() *EnrollTokens {
	t.Helper()
	e, err := ParseEnrollTokens(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	return func() *EnrollTokens { return e }
}

// register is a public POST that must succeed; it returns the id and
// the token.
func register(t testing.TB, h http.Handler, src, body string) (string, string, map[string]any) {
	t.Helper()
	code, ans, _ := publicCall(t, h, src, "POST", "/v1/reg", body, "")
	if code != 200 {
		t.Fatalf("POST %s: %d %v", body, code, ans)
	}
	return ans["id"].(string), ans["token"].(string), ans
}

// TestPublicLifecycle: a client registers itself, reads, changes and
// deletes its registration with its token; nobody else can, and another
// registration's token is refused with 403.
func TestPublicLifecycle(t *testing.T) {
	n, st := newTestNode(t)
	h := n.PublicHandler(PublicConfig{Open: true})
	id, tok, ans := register(t, h, src1, `{"public_key":"`+pubKey(t)+`"}`)
	if !strings.HasPrefix(tok, "wedge."+id+".") || ans["plus"] != false || tagsOf(t, ans) != (registry.Tags{}) {
		t.Fatalf("POST answered %v", ans)
	}
	otherID, otherTok, _ := register(t, h, src1, `{"public_key":"`+pubKey(t)+`"}`)
	self := "Bearer " + tok
	path := "/v1/reg/" + id
	if code, got, _ := publicCall(t, h, src1, "GET", path, "", self); code != 200 || got["id"] != id || got["token"] != nil {
		t.Fatalf("GET with its token: %d %v", code, got)
	}
	forged := "wedge." + id + "." + strings.Repeat("A", 43)
	for _, c := range []struct {
		auth string
		want int
	}{
		{"", 401},
		{"Bearer " + otherTok, 403},
		{"Bearer " + forged, 401},
		{"Bearer " + tok[:len(tok)-1] + "B", 401},
		{"Bearer " + testAdminToken, 401},
		{"Basic " + tok, 401},
		// A well-formed token naming another registration, not valid for it.
		{"Bearer wedge." + otherID + "." + strings.Repeat("A", 43), 401},
	} {
		for _, m := range [][2]string{{"GET", ""}, {"PATCH", `{"country":"NL"}`}, {"DELETE", ""}} {
			if code, body, _ := publicCall(t, h, src1, m[0], path, m[1], c.auth); code != c.want {
				t.Errorf("%s with %q: %d %v, want %d", m[0], c.auth, code, body, c.want)
			}
		}
	}
	if c, _ := st.Get(context.Background(), id); c.Tags != (registry.Tags{}) {
		t.Fatalf("refused requests changed the registration: %+v", c)
	}
	// What a client may change of itself: its country, nothing else.
	if code, got, _ := publicCall(t, h, src1, "PATCH", path, `{"country":"NL"}`, self); code != 200 || tagsOf(t, got) != (registry.Tags{Country: "NL"}) {
		t.Fatalf("PATCH country: %d %v", code, got)
	}
	// It may read its own usage, not reset it or raise its quota.
	if code, got, _ := publicCall(t, h, src1, "GET", path, "", self); code != 200 || got["usage"] == nil {
		t.Fatalf("GET own usage: %d %v", code, got)
	}
	for body, want := range map[string]int{
		`{"pool":"acme"}`:                403,
		`{"plus":true}`:                  403,
		`{"quota_bytes":0}`:              403,
		`{"quota_bytes":null}`:           403,
		`{"usage_reset":true}`:           403,
		`{"country":"NL","pool":"acme"}`: 403,
		`{"colour":"red"}`:               400,
		`{}`:                             400,
		`{"country":"nl"}`:               400,
	} {
		if code, got, _ := publicCall(t, h, src1, "PATCH", path, body, self); code != want {
			t.Errorf("PATCH %s: %d %v, want %d", body, code, got, want)
		}
	}
	if c, _ := st.Get(context.Background(), id); c.Tags != (registry.Tags{Country: "NL"}) || c.Plus {
		t.Fatalf("refused PATCHes changed the registration: %+v", c)
	}
	if code, _, _ := publicCall(t, h, src1, "DELETE", path, "", self); code != 204 {
		t.Fatalf("DELETE: %d", code)
	}
	// Gone: its own token now gets 404, the answer that tells a client to
	// register again.
	if code, got, _ := publicCall(t, h, src1, "GET", path, "", self); code != 404 {
		t.Fatalf("GET after DELETE: %d %v, want 404", code, got)
	}
	if _, err := st.Get(context.Background(), otherID); err != nil {
		t.Fatalf("the other registration suffered: %v", err)
	}
}

// TestPublicServesOnlyRegistrations: nothing of the admin API is on the
// public one, whatever the credential.
func TestPublicServesOnlyRegistrations(t *testing.T) {
	n, _ := newTestNode(t)
	h := n.PublicHandler(PublicConfig{Open: true})
	_, tok, _ := register(t, h, src1, `{"public_key":"`+pubKey(t)+`"}`)
	for _, auth := range []string{"", "Bearer " + tok, "Bearer " + testAdminToken} {
		for _, e := range [][2]string{{"GET", "/v1/status"}, {"GET", "/v1/nodes"}, {"POST", "/v1/nodes/n1/drain"},
			{"DELETE", "/v1/nodes/n1/drain"}, {"GET", "/debug/pprof/"}, {"GET", "/"}, {"GET", "/v1/reg/a/b"}, {"GET", "/v1/reg/"}} {
			if code, _, _ := publicCall(t, h, src1, e[0], e[1], "", auth); code != 404 && code != 405 {
				t.Errorf("%s %s (%q): %d, want 404", e[0], e[1], auth, code)
			}
		}
	}
	if code, _, hdr := publicCall(t, h, src1, "GET", "/v1/reg", "", ""); code != 405 || hdr.Get("Allow") != "POST" {
		t.Errorf("GET /v1/reg: %d, Allow %q", code, hdr.Get("Allow"))
	}
}

const enrollFile = `{
  "acme-0123456789abcdef": {"pool": "acme", "plus": true, "quota_bytes": 7000, "max_registrations": 2},
  "free-0123456789abcdef": {}
}`

// TestPublicWhoChoosesWhat: without an enrollment token a client gets
// the default pool and the free tier and cannot ask for more; with one
// it gets what the token grants, up to its max_registrations.
func TestPublicWhoChoosesWhat(t *testing.T) {
	n, st := newTestNode(t)
	h := n.PublicHandler(PublicConfig{Open: true, Enroll: enrollTokens(t, enrollFile)})
	key := func() string { return `"public_key":"` + pubKey(t) + `"` }
	for body, want := range map[string]int{
		`{` + key() + `,"pool":"acme"}`:                                                403,
		`{` + key() + `,"pool":"trusted"}`:                                             403,
		`{` + key() + `,"plus":true}`:                                                  403,
		`{` + key() + `,"plus":false}`:                                                 403,
		`{` + key() + `,"quota_bytes":1}`:                                              403,
		`{` + key() + `,"enroll_token":"nope-0123456789abcdef"}`:                       403,
		`{` + key() + `,"enroll_token":"acme-0123456789abcdef","pool":"other"}`:        403,
		`{` + key() + `,"enroll_token":"acme-0123456789abcdef","plus":false}`:          403,
		`{` + key() + `,"enroll_token":"acme-0123456789abcdef","quota_bytes":9999999}`: 403,
		`{` + key() + `,"enroll_token":5}`:                                             400,
		`{"public_key":"x"}`:                                                           400,
		`{` + key() + `,"country":"nl"}`:                                               400,
	} {
		if code, got, _ := publicCall(t, h, src1, "POST", "/v1/reg", body, ""); code != want {
			t.Errorf("POST %s: %d %v, want %d", body, code, got, want)
		}
	}
	if all, _ := st.List(context.Background()); len(all) != 0 {
		t.Fatalf("refused registrations stored %d clients", len(all))
	}
	// No token: default pool, free tier; a country is the client's choice.
	id, _, ans := register(t, h, src1, `{`+key()+`,"country":"NL"}`)
	if tagsOf(t, ans) != (registry.Tags{Country: "NL"}) || ans["plus"] != false || ans["quota_bytes"].(float64) != 0 {
		t.Fatalf("open registration: %v", ans)
	}
	if c, _ := st.Get(context.Background(), id); c.Enrollment != "" {
		t.Fatalf("open registration stored enrollment %q", c.Enrollment)
	}
	// The token's grant, also when the client names the same pool.
	var ids []string
	for _, body := range []string{`{` + key() + `,"enroll_token":"acme-0123456789abcdef"}`, `{` + key() + `,"enroll_token":"acme-0123456789abcdef","pool":"acme"}`} {
		id, _, ans := register(t, h, src1, body)
		if tagsOf(t, ans) != (registry.Tags{Pool: "acme"}) || ans["plus"] != true || ans["quota_bytes"].(float64) != 7000 {
			t.Fatalf("enrolled registration: %v", ans)
		}
		c, _ := st.Get(context.Background(), id)
		if c.Enrollment != EnrollID("acme-0123456789abcdef") || !c.Plus || c.QuotaBytes != 7000 || c.Tags.Pool != "acme" {
			t.Fatalf("stored %+v", c)
		}
		ids = append(ids, id)
	}
	// max_registrations is 2: the third is refused, until one is deleted.
	third := `{` + key() + `,"enroll_token":"acme-0123456789abcdef"}`
	if code, got, _ := publicCall(t, h, src1, "POST", "/v1/reg", third, ""); code != 403 || !strings.Contains(got["error"].(string), "(2)") {
		t.Fatalf("third registration with a token allowing 2: %d %v, want 403", code, got)
	}
	if _, err := n.Unregister(context.Background(), ids[0]); err != nil {
		t.Fatal(err)
	}
	if code, got, _ := publicCall(t, h, src1, "POST", "/v1/reg", third, ""); code != 200 {
		t.Fatalf("after a delete freed a place: %d %v", code, got)
	}
	// An empty grant: default pool, free tier, no bound.
	if _, _, ans := register(t, h, src1, `{`+key()+`,"enroll_token":"free-0123456789abcdef"}`); ans["plus"] != false || tagsOf(t, ans) != (registry.Tags{}) {
		t.Fatalf("free token: %v", ans)
	}
	// Closed registration: only with a token.
	closed := n.PublicHandler(PublicConfig{Open: false, Enroll: enrollTokens(t, enrollFile)})
	if code, got, _ := publicCall(t, closed, src1, "POST", "/v1/reg", `{`+key()+`}`, ""); code != 403 || !strings.Contains(got["error"].(string), "enroll_token") {
		t.Fatalf("closed registration without a token: %d %v, want 403", code, got)
	}
	register(t, closed, src1, `{`+key()+`,"enroll_token":"free-0123456789abcdef"}`)
}

// TestPublicMaxRegistrationsConcurrent: many clients racing for the
// last places of a token get exactly max_registrations of them.
func TestPublicMaxRegistrationsConcurrent(t *testing.T) {
	n, st := newTestNode(t)
	h := n.PublicHandler(PublicConfig{Open: true, Enroll: enrollTokens(t, `{"race-0123456789abcdef": {"max_registrations": 5}}`)})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			publicCall(t, h, fmt.Sprintf("203.0.113.%d:1", i+1), "POST", "/v1/reg", `{"public_key":"`+pubKey(t)+`","enroll_token":"race-0123456789abcdef"}`, "")
		}()
	}
	wg.Wait()
	if all, _ := st.List(context.Background()); len(all) != 5 {
		t.Fatalf("%d registrations with a token allowing 5", len(all))
	}
}

// TestPublicRateLimit: a burst of registrations from one address gets
// 429 with Retry-After after the limit; other addresses are not
// affected; one enrollment token is limited across addresses.
func TestPublicRateLimit(t *testing.T) {
	n, st := newTestNode(t)
	h := n.PublicHandler(PublicConfig{Open: true, Enroll: enrollTokens(t, enrollFile),
		PerSource: Rate{N: 5, Per: time.Hour}, PerToken: Rate{N: 3, Per: time.Hour}})
	body := func() string { return `{"public_key":"` + pubKey(t) + `"}` }
	for i := range 5 {
		if code, got, _ := publicCall(t, h, "198.51.100.7:1000", "POST", "/v1/reg", body(), ""); code != 200 {
			t.Fatalf("registration %d within the limit: %d %v", i, code, got)
		}
	}
	code, got, hdr := publicCall(t, h, "198.51.100.7:2000", "POST", "/v1/reg", body(), "")
	secs, err := strconv.Atoi(hdr.Get("Retry-After"))
	if code != 429 || err != nil || secs < 1 || secs > 3600 {
		t.Fatalf("6th registration from one address: %d %v, Retry-After %q; want 429 with a wait", code, got, hdr.Get("Retry-After"))
	}
	// The same /64 is one source for IPv6.
	for i := range 5 {
		publicCall(t, h, fmt.Sprintf("[2001:db8:7:7::%d]:1", i+1), "POST", "/v1/reg", body(), "")
	}
	if code, _, _ := publicCall(t, h, "[2001:db8:7:7::99]:1", "POST", "/v1/reg", body(), ""); code != 429 {
		t.Errorf("6th registration from one IPv6 /64: %d, want 429", code)
	}
	// Other addresses are not affected.
	for _, src := range []string{"198.51.100.8:1000", "[2001:db8:7:8::1]:1"} {
		if code, got, _ := publicCall(t, h, src, "POST", "/v1/reg", body(), ""); code != 200 {
			t.Errorf("another address %s: %d %v", src, code, got)
		}
	}
	// One enrollment token: 3, whatever the address.
	for i := range 4 {
		src := fmt.Sprintf("192.0.2.%d:1", i+1)
		code, got, _ := publicCall(t, h, src, "POST", "/v1/reg", `{"public_key":"`+pubKey(t)+`","enroll_token":"free-0123456789abcdef"}`, "")
		if want := map[bool]int{true: 200, false: 429}[i < 3]; code != want {
			t.Errorf("registration %d with one token: %d %v, want %d", i, code, got, want)
		}
	}
	if all, _ := st.List(context.Background()); len(all) != 5+5+2+3 {
		t.Errorf("%d registrations stored, want %d", len(all), 5+5+2+3)
	}
}

// TestPublicAuthFailureLimit: a source guessing tokens is cut off (429)
// before the node looks its guesses up; a client with its token from
// elsewhere is served.
func TestPublicAuthFailureLimit(t *testing.T) {
	n, _ := newTestNode(t)
	h := n.PublicHandler(PublicConfig{Open: true, AuthFailures: Rate{N: 10, Per: time.Hour}})
	id, tok, _ := register(t, h, src1, `{"public_key":"`+pubKey(t)+`"}`)
	guess := "Bearer wedge." + id + "." + strings.Repeat("g", 43)
	for range 10 {
		if code, _, _ := publicCall(t, h, "192.0.2.66:1", "GET", "/v1/reg/"+id, "", guess); code != 401 {
			t.Fatalf("guess: %d, want 401", code)
		}
	}
	if code, _, hdr := publicCall(t, h, "192.0.2.66:1", "GET", "/v1/reg/"+id, "", "Bearer "+tok); code != 429 || hdr.Get("Retry-After") == "" {
		t.Fatalf("after 10 failures even the right token: %d, want 429", code)
	}
	if code, _, _ := publicCall(t, h, src1, "GET", "/v1/reg/"+id, "", "Bearer "+tok); code != 200 {
		t.Fatalf("the client from its own address: %d, want 200", code)
	}
}

// TestTokenStoredHashed: the token is in the POST answer and nowhere in
// the store: the registry file holds only its SHA-256.
func TestTokenStoredHashed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "reg.db")
	st, err := registry.OpenBolt(path, registry.DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := newTestNode(t, func(c *Config) { c.Store = st })
	h := n.PublicHandler(PublicConfig{Open: true})
	var toks []string
	for range 3 {
		_, tok, _ := register(t, h, src1, `{"public_key":"`+pubKey(t)+`"}`)
		toks = append(toks, tok)
	}
	n.Close()
	st.Close()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range toks {
		secret := tok[strings.LastIndexByte(tok, '.')+1:]
		h := tokenHash(tok)
		if bytes.Contains(raw, []byte(secret)) || bytes.Contains(raw, []byte(tok)) {
			t.Fatalf("the registry file contains token %q", tok)
		}
		if !bytes.Contains(raw, []byte(hex.EncodeToString(h[:]))) {
			t.Fatalf("the registry file lacks the hash of token %q: is the test looking at the right file?", tok)
		}
	}
}

// TestTokenStoredHashedEtcd: the same for a cluster's etcd: no key or
// value under the prefix holds a token.
func TestTokenStoredHashedEtcd(t *testing.T) {
	e := etcdtest.Start(t)
	sk, _ := wgtypes.GeneratePrivateKey()
	a := newClusterNode(t, e, "a", sk)
	// A node refuses registrations until it has seen etcd answer.
	for deadline := time.Now().Add(10 * time.Second); !a.cfg.Cluster.Connected(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the node never saw etcd")
		}
	}
	h := a.PublicHandler(PublicConfig{Open: true})
	var toks []string
	for range 2 {
		_, tok, _ := register(t, h, src1, `{"public_key":"`+pubKey(t)+`"}`)
		toks = append(toks, tok)
	}
	cli := e.Client(t)
	resp, err := cli.Get(context.Background(), "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var all bytes.Buffer
	for _, kv := range resp.Kvs {
		all.Write(kv.Key)
		all.Write(kv.Value)
	}
	for _, tok := range toks {
		secret := tok[strings.LastIndexByte(tok, '.')+1:]
		hh := tokenHash(tok)
		if bytes.Contains(all.Bytes(), []byte(secret)) {
			t.Fatalf("etcd holds token %q", tok)
		}
		if !bytes.Contains(all.Bytes(), []byte(hex.EncodeToString(hh[:]))) {
			t.Fatalf("etcd lacks the hash of token %q (%d keys read)", tok, len(resp.Kvs))
		}
	}
}

// FuzzPublicCreate: whatever the body, the public POST answers 200 or a
// 4xx with a JSON error, never stores a pool, plus tier or quota the
// client chose without a token.
func FuzzPublicCreate(f *testing.F) {
	for _, b := range []string{`{"public_key":"` + pubKey(f) + `"}`, `{"public_key":"` + pubKey(f) + `","pool":"acme"}`,
		`{"public_key":"` + pubKey(f) + `","plus":true}`, `{"enroll_token":"acme-0123456789abcdef"}`, `null`, `[]`} {
		f.Add([]byte(b))
	}
	n, st := newTestNode(f)
	h := n.PublicHandler(PublicConfig{Open: true, Enroll: enrollTokens(f, enrollFile)})
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/v1/reg", bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case rec.Code == 200:
			var ans map[string]any
			json.Unmarshal(rec.Body.Bytes(), &ans)
			c, err := st.Get(context.Background(), ans["id"].(string))
			if err != nil {
				t.Fatal(err)
			}
			if c.Enrollment == "" && (c.Tags.Pool != "" || c.Plus || c.QuotaBytes != 0) {
				t.Fatalf("a client without a token got %+v", c)
			}
			st.Delete(context.Background(), c.ID)
			n.Unregister(context.Background(), c.ID)
		case rec.Code >= 400 && rec.Code < 500:
			var e map[string]string
			if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e["error"] == "" {
				t.Fatalf("%d without a JSON error: %q", rec.Code, rec.Body.String())
			}
		default:
			t.Fatalf("status %d for body %q", rec.Code, body)
		}
	})
}
