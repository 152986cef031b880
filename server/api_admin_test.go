package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wedge-edge/wedge/server/registry"
)

// testAdminAddr is the admin API's listen address in these tests.
const testAdminAddr = "127.0.0.1:8080"

// testAdminToken is the admin token of adminDoor.
const testAdminToken = "test-admin-token-0123456789"

// adminDoor is n's admin API as wedged serves it on testAdminAddr, with
// "wedge.example" as an extra --api-host.
func adminDoor(t testing.TB, n *Node) (http.Handler, string) {
	t.Helper()
	tok, err := NewAdminToken(testAdminToken)
	if err != nil {
		t.Fatal(err)
	}
	return n.AdminHandler(AdminConfig{Token: tok, Addr: testAdminAddr, Hosts: []string{"wedge.example"}}), testAdminToken
}

// call sends one request to h with the given Host and Authorization
// header (either may be "") and returns the code, the JSON body and the
// answer's headers.
func call(t testing.TB, h http.Handler, method, path, body, host, auth string) (int, map[string]any, http.Header) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if host != "" {
		req.Host = host
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	if rec.Body.Len() > 0 {
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("%s %s: body is not JSON: %q", method, path, rec.Body.String())
		}
	}
	return rec.Code, out, rec.Header()
}

// adminEndpoints is every request the admin API serves, with a body that
// would succeed.
func adminEndpoints(t testing.TB, id string) [][3]string {
	return [][3]string{
		{"POST", "/v1/reg", `{"public_key":"` + pubKey(t) + `"}`},
		{"GET", "/v1/reg/" + id, ""},
		{"HEAD", "/v1/reg/" + id, ""},
		{"PATCH", "/v1/reg/" + id, `{"plus":true}`},
		{"DELETE", "/v1/reg/" + id, ""},
		{"GET", "/v1/status", ""},
		{"GET", "/v1/nodes", ""},
		{"POST", "/v1/nodes/node1/drain", ""},
		{"DELETE", "/v1/nodes/node1/drain", ""},
		{"GET", "/v1/nosuch", ""},
	}
}

// TestAdminNeedsToken: every admin endpoint without the admin token, or
// with a wrong one, a registration's token or another scheme, is 401 and
// changes nothing; with the token it is served.
func TestAdminNeedsToken(t *testing.T) {
	n, st := newTestNode(t)
	h, tok := adminDoor(t, n)
	code, body, _ := call(t, h, "POST", "/v1/reg", `{"public_key":"`+pubKey(t)+`"}`, testAdminAddr, "Bearer "+tok)
	if code != 200 {
		t.Fatalf("POST with the admin token: %d %v", code, body)
	}
	id, regTok := body["id"].(string), body["token"].(string)
	before, _ := st.List(context.Background())
	for _, e := range adminEndpoints(t, id) {
		for _, auth := range []string{"", "Bearer wrong-token-0123456789", "Bearer " + tok + "x", "Bearer " + regTok,
			"Basic " + tok, "Bearer", tok, "Bearer " + tok + " " + tok} {
			code, body, hdr := call(t, h, e[0], e[1], e[2], testAdminAddr, auth)
			if code != http.StatusUnauthorized {
				t.Errorf("%s %s with Authorization %q: %d %v, want 401", e[0], e[1], auth, code, body)
				continue
			}
			if hdr.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s: 401 without WWW-Authenticate", e[0], e[1])
			}
			if e[0] != "HEAD" && body["error"] == "" {
				t.Errorf("%s %s: 401 without a JSON error", e[0], e[1])
			}
		}
	}
	if after, _ := st.List(context.Background()); len(after) != len(before) || after[0] != before[0] {
		t.Fatalf("refused requests changed the store: %+v → %+v", before, after)
	}
	// With the token each is served (404/409 are the routes' answers: a
	// single node has no cluster nodes, an unknown path none).
	for _, e := range adminEndpoints(t, id) {
		code, body, _ := call(t, h, e[0], e[1], e[2], testAdminAddr, "Bearer "+tok)
		if code == http.StatusUnauthorized || code == http.StatusMisdirectedRequest || code >= 500 {
			t.Errorf("%s %s with the admin token: %d %v", e[0], e[1], code, body)
		}
	}
}

// TestAdminHost: a request whose Host is not an expected name (DNS
// rebinding: a web page's own name resolving to 127.0.0.1) is 421 before
// its token is even looked at.
func TestAdminHost(t *testing.T) {
	n, st := newTestNode(t)
	h, tok := adminDoor(t, n)
	for _, host := range []string{"evil.example:8080", "evil.example", "127.0.0.1:8081", "localhost", "127.0.0.1",
		"wedge.example:9999", "localhost.evil.example:8080", "[::2]:8080", "0.0.0.0:8080", ""} {
		req := httptest.NewRequest("POST", "/v1/reg", strings.NewReader(`{"public_key":"`+pubKey(t)+`"}`))
		req.Host = host
		req.Header.Set("Authorization", "Bearer "+tok)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusMisdirectedRequest {
			t.Errorf("Host %q: %d, want 421", host, rec.Code)
		}
	}
	if all, _ := st.List(context.Background()); len(all) != 0 {
		t.Fatalf("a misdirected request registered %d clients", len(all))
	}
	for _, host := range []string{"127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080", "wedge.example", "wedge.example:8080", "Wedge.Example"} {
		if code, body, _ := call(t, h, "GET", "/v1/status", "", host, "Bearer "+tok); code != 200 {
			t.Errorf("Host %q: %d %v, want 200", host, code, body)
		}
	}
	// Without the token a foreign Host is still 421: the name is checked first.
	if code, _, _ := call(t, h, "GET", "/v1/status", "", "evil.example:8080", ""); code != http.StatusMisdirectedRequest {
		t.Errorf("foreign Host without a token: %d, want 421", code)
	}
}

func TestAllowedHosts(t *testing.T) {
	got := allowedHosts("[::1]:80", []string{"api.example:9000", " ", "[2001:db8::1]"})
	for _, h := range []string{"[::1]:80", "[::1]", "localhost", "localhost:80", "127.0.0.1", "api.example:9000", "[2001:db8::1]", "[2001:db8::1]:80"} {
		if !got[h] {
			t.Errorf("%q not allowed", h)
		}
	}
	for _, h := range []string{"api.example", "api.example:80", "", ":80"} {
		if got[h] {
			t.Errorf("%q allowed", h)
		}
	}
	if len(allowedHosts("not an address", nil)) != 0 {
		t.Error("a bad listen address allowed names")
	}
}

// TestAdminSetsGrants: the admin may set pool, country, plus and quota
// at registration and change them later; GET shows them.
func TestAdminSetsGrants(t *testing.T) {
	n, st := newTestNode(t)
	h, tok := adminDoor(t, n)
	auth := "Bearer " + tok
	code, body, _ := call(t, h, "POST", "/v1/reg",
		`{"public_key":"`+pubKey(t)+`","pool":"acme","country":"NL","plus":true,"quota_bytes":5000000000}`, testAdminAddr, auth)
	if code != 200 || body["plus"] != true || body["quota_bytes"].(float64) != 5e9 || tagsOf(t, body) != (registry.Tags{Pool: "acme", Country: "NL"}) {
		t.Fatalf("POST: %d %v", code, body)
	}
	id := body["id"].(string)
	if tok, _ := body["token"].(string); !strings.HasPrefix(tok, "wedge."+id+".") {
		t.Fatalf("POST answered token %q, want one naming the registration", body["token"])
	}
	c, _ := st.Get(context.Background(), id)
	if !c.Plus || c.QuotaBytes != 5e9 || !c.AwaitingHandshake || c.TokenHash == ([32]byte{}) {
		t.Fatalf("stored %+v", c)
	}
	code, body, _ = call(t, h, "PATCH", "/v1/reg/"+id, `{"plus":false,"quota_bytes":0,"pool":""}`, testAdminAddr, auth)
	if code != 200 || body["plus"] != false || body["quota_bytes"].(float64) != 0 || tagsOf(t, body) != (registry.Tags{Country: "NL"}) {
		t.Fatalf("PATCH: %d %v", code, body)
	}
	if code, body, _ = call(t, h, "GET", "/v1/reg/"+id, "", testAdminAddr, auth); code != 200 || body["token"] != nil || body["plus"] != false {
		t.Fatalf("GET: %d %v (GET never shows the token)", code, body)
	}
	for _, bad := range []string{`{"plus":"yes"}`, `{"plus":null}`, `{"quota_bytes":-1}`, `{"quota_bytes":1.5}`, `{"quota_bytes":"1"}`, `{"token":"x"}`} {
		if code, body, _ := call(t, h, "PATCH", "/v1/reg/"+id, bad, testAdminAddr, auth); code != 400 {
			t.Errorf("PATCH %s: %d %v, want 400", bad, code, body)
		}
	}
	if after, _ := st.Get(context.Background(), id); after.Plus || after.QuotaBytes != 0 {
		t.Fatalf("refused PATCHes changed the record: %+v", after)
	}
}
