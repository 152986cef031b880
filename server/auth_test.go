package server

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/internal/api"
)

func TestParseBearer(t *testing.T) {
	for _, c := range []struct {
		h, tok string
		err    error
	}{
		{"", "", ErrNoCredentials},
		{"Bearer abc", "abc", nil},
		{"bearer abc", "abc", nil},
		{"BEARER   a.b-c_d~e+f/g==", "a.b-c_d~e+f/g==", nil},
		{"Bearer", "", ErrBadCredentials},
		{"Bearer ", "", ErrBadCredentials},
		{"Basic dXNlcjpwYXNz", "", ErrBadCredentials},
		{"Bearer a b", "", ErrBadCredentials},
		{"Bearer ===", "", ErrBadCredentials},
		{"Bearer a=b", "", ErrBadCredentials},
		{"Bearer a\x00", "", ErrBadCredentials},
		{"Bearer ü", "", ErrBadCredentials},
		{"Bearer " + strings.Repeat("a", MaxTokenLen), strings.Repeat("a", MaxTokenLen), nil},
		{"Bearer " + strings.Repeat("a", MaxTokenLen+1), "", ErrBadCredentials},
		{"Bearerabc", "", ErrBadCredentials},
	} {
		tok, err := ParseBearer(c.h)
		if tok != c.tok || !errors.Is(err, c.err) || (c.err == nil) != (err == nil) {
			t.Errorf("ParseBearer(%q) = %q, %v; want %q, %v", c.h, tok, err, c.tok, c.err)
		}
	}
}

// FuzzParseBearer: any header is a token or an error, never a panic; a
// token is plain token68 that goes back into a header unchanged.
func FuzzParseBearer(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer  x==", "Basic x", "", "Bearer a b", "Bearer wedge.0123456789abcdef0123456789abcdef.x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		tok, err := ParseBearer(h)
		if err != nil {
			if tok != "" || !errors.Is(err, ErrNoCredentials) && !errors.Is(err, ErrBadCredentials) {
				t.Fatalf("%q: %q, %v", h, tok, err)
			}
			return
		}
		if !validToken68(tok) || len(tok) > MaxTokenLen {
			t.Fatalf("%q: accepted %q", h, tok)
		}
		if again, err := ParseBearer("Bearer " + tok); err != nil || again != tok {
			t.Fatalf("round trip of %q: %q, %v", tok, again, err)
		}
	})
}

func TestRegToken(t *testing.T) {
	id := strings.Repeat("ab", 16)
	tok, hash := NewRegToken(id)
	tok2, hash2 := NewRegToken(id)
	if tok == tok2 || hash == hash2 {
		t.Fatal("two tokens for one id are equal")
	}
	if hash != tokenHash(tok) {
		t.Fatal("the hash is not the token's SHA-256")
	}
	// At least 128 random bits: the secret is 32 bytes.
	secret := tok[strings.LastIndexByte(tok, '.')+1:]
	if len(secret) < 22 {
		t.Fatalf("secret %q too short", secret)
	}
	if got, err := ParseRegToken(tok); err != nil || got != id {
		t.Fatalf("ParseRegToken(%q) = %q, %v", tok, got, err)
	}
	if _, err := ParseBearer("Bearer " + tok); err != nil {
		t.Fatalf("a registration token is not a valid bearer token: %v", err)
	}
	for _, bad := range []string{
		"", "wedge.", strings.Replace(tok, "wedge.", "wedgf.", 1), tok + "x", tok[:len(tok)-1],
		"wedge." + strings.ToUpper(id) + "." + secret, "wedge." + id[:31] + "g." + secret,
		"wedge." + id + "." + secret[:len(secret)-1] + "=", "wedge." + id + "." + strings.Repeat("+", len(secret)),
		"wedge." + id + ".." + secret[1:],
	} {
		if _, err := ParseRegToken(bad); err == nil {
			t.Errorf("ParseRegToken(%q) accepted", bad)
		}
	}
}

func FuzzParseRegToken(f *testing.F) {
	tok, _ := NewRegToken(strings.Repeat("0", 32))
	f.Add(tok)
	f.Add("wedge.x.y")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseRegToken(s)
		if err != nil {
			return
		}
		if len(id) != 32 || !strings.HasPrefix(s, regTokenPrefix+id+".") || !validToken68(s) {
			t.Fatalf("%q: id %q", s, id)
		}
	})
}

func TestAdminTokenFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.token")
	a, created, err := LoadOrCreateAdminToken(path)
	if err != nil || !created {
		t.Fatalf("create: %v, created %v", err, created)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	tok := strings.TrimSpace(string(raw))
	if len(tok) < 43 || !a.Matches(tok) || a.Matches(tok+"x") || a.Matches("") {
		t.Fatalf("token %q: Matches wrong", tok)
	}
	b, created, err := LoadOrCreateAdminToken(path)
	if err != nil || created || !b.Matches(tok) {
		t.Fatalf("second start: %v, created %v; want the same token loaded", err, created)
	}
	if (AdminToken{}).Matches("") || (AdminToken{}).Matches(tok) {
		t.Fatal("the zero AdminToken accepted something")
	}
	os.Chmod(path, 0o644)
	if _, err := LoadAdminToken(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable token file: %v, want a refusal saying chmod 600", err)
	}
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("secret\n"), 0o600)
	if _, err := LoadAdminToken(short); err == nil {
		t.Fatal("a 6-character admin token was accepted")
	}
	if _, err := LoadAdminToken(filepath.Join(dir, "none")); err == nil {
		t.Fatal("a missing file was accepted")
	}
}

const enrollGood = `{
  "acme-0123456789abcdef": {"pool": "acme", "plus": true, "quota_bytes": 1000, "max_registrations": 2},
  "free-trial-0123456789": {}
}`

func TestParseEnrollTokens(t *testing.T) {
	e, err := ParseEnrollTokens(strings.NewReader(enrollGood))
	if err != nil {
		t.Fatal(err)
	}
	g, id, ok := e.Lookup("acme-0123456789abcdef")
	if !ok || g != (Enrollment{Pool: "acme", Plus: true, QuotaBytes: 1000, MaxRegistrations: 2}) || id != EnrollID("acme-0123456789abcdef") {
		t.Fatalf("Lookup = %+v, %q, %v", g, id, ok)
	}
	if strings.Contains(id, "acme") || len(id) != 16 {
		t.Fatalf("EnrollID %q shows the token or has the wrong length", id)
	}
	if g, _, ok := e.Lookup("free-trial-0123456789"); !ok || g != (Enrollment{}) {
		t.Fatalf("empty grant: %+v, %v", g, ok)
	}
	for _, tok := range []string{"", "acme-0123456789abcde", "ACME-0123456789ABCDEF", strings.Repeat("a", 1000)} {
		if _, _, ok := e.Lookup(tok); ok {
			t.Errorf("Lookup(%q) found a grant", tok)
		}
	}
	var none *EnrollTokens
	if _, _, ok := none.Lookup("acme-0123456789abcdef"); ok || none.Len() != 0 {
		t.Error("nil tokens granted something")
	}
	for name, bad := range map[string]string{
		"empty":          ``,
		"array":          `[]`,
		"short token":    `{"short": {}}`,
		"space in token": `{"acme 0123456789abcdef": {}}`,
		"bad pool":       `{"acme-0123456789abcdef": {"pool": "Acme"}}`,
		"unknown field":  `{"acme-0123456789abcdef": {"pool": "acme", "pol": "x"}}`,
		"negative quota": `{"acme-0123456789abcdef": {"quota_bytes": -1}}`,
		"negative max":   `{"acme-0123456789abcdef": {"max_registrations": -1}}`,
		"twice":          `{"acme-0123456789abcdef": {}, "acme-0123456789abcdef": {"plus": true}}`,
		"not an object":  `{"acme-0123456789abcdef": true}`,
		"null grant":     `{"acme-0123456789abcdef": null}`,
		"trailing":       `{} {}`,
		"truncated":      `{"acme-0123456789abcdef": {}`,
	} {
		if _, err := ParseEnrollTokens(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: %q accepted", name, bad)
		} else if strings.Contains(err.Error(), "0123456789abcdef") {
			t.Errorf("%s: the error shows the whole token: %v", name, err)
		}
	}
}

// FuzzParseEnrollTokens: an enrollment file is an operator's, but a
// broken one must be an error, never a panic, and whatever parses grants
// only valid pools.
func FuzzParseEnrollTokens(f *testing.F) {
	f.Add([]byte(enrollGood))
	f.Add([]byte(`{"x": {}}`))
	f.Add([]byte(`{"acme-0123456789abcdef": {"pool": "-"}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := ParseEnrollTokens(strings.NewReader(string(raw)))
		if err != nil {
			return
		}
		for _, g := range e.byHash {
			if g.Pool != "" && !api.ValidPool(g.Pool) || g.MaxRegistrations < 0 {
				t.Fatalf("accepted grant %+v", g)
			}
		}
	})
}

func TestEnrollFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "enroll.json")
	os.WriteFile(path, []byte(`{"first-token-0123456789": {"pool": "a"}}`), 0o600)
	f, err := OpenEnrollFile(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok := f.Tokens().Lookup("first-token-0123456789"); !ok {
		t.Fatal("first token missing")
	}
	// A change is seen (the file's size and time move); a broken file
	// keeps the tokens in force.
	os.WriteFile(path, []byte(`{"second-token-0123456789": {"pool": "b"}}`), 0o600)
	var ok bool
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !ok; time.Sleep(50 * time.Millisecond) {
		_, _, ok = f.Tokens().Lookup("second-token-0123456789")
	}
	if !ok {
		t.Fatal("the changed file was not reloaded")
	}
	os.WriteFile(path, []byte(`{"broken`), 0o600)
	time.Sleep(1100 * time.Millisecond)
	if _, _, ok := f.Tokens().Lookup("second-token-0123456789"); !ok {
		t.Fatal("a broken file replaced the tokens in force")
	}
	if _, err := OpenEnrollFile(path, slog.Default()); err == nil {
		t.Fatal("a broken file opened")
	}
}

func TestParseRate(t *testing.T) {
	for s, want := range map[string]Rate{"0": {}, "20/1h": {20, time.Hour}, "1/1s": {1, time.Second}} {
		if got, err := ParseRate(s); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "20", "x/1h", "0/1h", "-1/1h", "20/", "20/1ms", "20/1000h", "20/h"} {
		if _, err := ParseRate(s); err == nil {
			t.Errorf("ParseRate(%q) accepted", s)
		}
	}
}

func TestKeyedLimiter(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := newKeyedLimiter(Rate{N: 3, Per: time.Minute})
	l.now = func() time.Time { return now }
	for i := range 3 {
		if ok, _ := l.take("a"); !ok {
			t.Fatalf("take %d refused within the burst", i)
		}
	}
	ok, wait := l.take("a")
	if ok || wait <= 0 || wait > 20*time.Second {
		t.Fatalf("4th take: %v, wait %v; want a refusal with a wait of at most 20 s", ok, wait)
	}
	if ok, _ := l.take("b"); !ok {
		t.Fatal("another key was refused")
	}
	now = now.Add(wait)
	if ok, _ := l.take("a"); !ok {
		t.Fatal("refused after the wait it named")
	}
	if ok, _ := l.peek("a"); ok {
		t.Fatal("peek found a token that was just taken")
	}
	// A full map drops refilled buckets rather than growing.
	now = now.Add(time.Hour)
	for i := range maxLimiterKeys + 10 {
		l.take(string(rune(i + 1000)))
	}
	if len(l.buckets) > maxLimiterKeys {
		t.Fatalf("%d buckets, want at most %d", len(l.buckets), maxLimiterKeys)
	}
	if ok, _ := (*keyedLimiter)(nil).take("x"); !ok {
		t.Fatal("a nil limiter refused")
	}
}

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:4000":                "192.0.2.7",
		"[::ffff:192.0.2.7]:1":          "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:443":    "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1%eth0]:1": "2001:db8:1:2::/64",
		"garbage":                       "garbage",
	} {
		if got := sourceKey(in); got != want {
			t.Errorf("sourceKey(%q) = %q, want %q", in, got, want)
		}
	}
}
