package server

// Enrollment tokens: what decides a self-registered client's pool, plus
// tier and quota. The operator hands a token to a customer or a device
// fleet; a client presents it in POST /v1/reg ("enroll_token") on the
// public API.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/wedge-edge/wedge/internal/api"
)

// Enrollment is what an enrollment token grants a registration.
type Enrollment struct {
	// Pool is the egress pool ("" the default pool).
	Pool string `json:"pool"`
	// Plus is the plus tier; QuotaBytes a traffic quota (0: none).
	Plus       bool   `json:"plus"`
	QuotaBytes uint64 `json:"quota_bytes"`
	// MaxRegistrations bounds the registrations that exist at once with
	// this token (0: no bound); deleting one frees its place.
	MaxRegistrations int `json:"max_registrations"`
}

// Limits of an enrollment file.
const (
	MaxEnrollFileBytes = 4 << 20
	MaxEnrollTokens    = 100_000
	minEnrollTokenLen  = 16
	maxEnrollTokenLen  = 256
)

// EnrollTokens is a parsed enrollment file: token → Enrollment.
type EnrollTokens struct {
	byHash map[[32]byte]Enrollment
}

// EnrollID is how a registration names the enrollment token it used: a
// short hash of the token (the token itself is never stored).
func EnrollID(tok string) string {
	h := sha256.Sum256([]byte("wedge enrollment\x00" + tok))
	return hex.EncodeToString(h[:8])
}

// Lookup returns the grant of token tok and its EnrollID.
func (e *EnrollTokens) Lookup(tok string) (Enrollment, string, bool) {
	if e == nil || tok == "" || len(tok) > maxEnrollTokenLen {
		return Enrollment{}, "", false
	}
	g, ok := e.byHash[sha256.Sum256([]byte(tok))]
	if !ok {
		return Enrollment{}, "", false
	}
	return g, EnrollID(tok), true
}

// Len is the number of tokens.
func (e *EnrollTokens) Len() int {
	if e == nil {
		return 0
	}
	return len(e.byHash)
}

// ParseEnrollTokens reads an enrollment file: one JSON object mapping
// each token to its grant,
//
//	{
//	  "k7Qe9v2XbLr4Tz8WmYp3": {"pool": "acme", "plus": true, "quota_bytes": 0, "max_registrations": 500},
//	  "free-trial-2026-Hn5Rz": {"max_registrations": 10000}
//	}
//
// Tokens are 16 to 256 characters of A-Z a-z 0-9 - . _ ~ + /; a pool
// follows api.ValidPool ("" or absent: the default pool); every field is
// optional, unknown fields, a token listed twice, negative numbers and
// data after the object are errors (a typo must not grant something
// silently).
func ParseEnrollTokens(r io.Reader) (*EnrollTokens, error) {
	raw, err := io.ReadAll(io.LimitReader(r, MaxEnrollFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > MaxEnrollFileBytes {
		return nil, fmt.Errorf("enrollment tokens: larger than %d bytes", MaxEnrollFileBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("enrollment tokens: want a JSON object mapping each token to its grant")
	}
	e := &EnrollTokens{byHash: map[[32]byte]Enrollment{}}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("enrollment tokens: %w", err)
		}
		tok, _ := t.(string)
		shown := api.Shown(tok)
		if len(tok) > 12 {
			shown = api.Shown(tok[:6] + "…") // do not print whole secrets
		}
		if len(tok) < minEnrollTokenLen || len(tok) > maxEnrollTokenLen || !validToken68(tok) {
			return nil, fmt.Errorf("enrollment tokens: token %s: want %d to %d characters of A-Z a-z 0-9 - . _ ~ + /",
				shown, minEnrollTokenLen, maxEnrollTokenLen)
		}
		h := sha256.Sum256([]byte(tok))
		if _, dup := e.byHash[h]; dup {
			return nil, fmt.Errorf("enrollment tokens: token %s is listed twice", shown)
		}
		var g Enrollment
		var obj json.RawMessage
		if err := dec.Decode(&obj); err != nil {
			return nil, fmt.Errorf("enrollment tokens: token %s: %w", shown, err)
		}
		gd := json.NewDecoder(bytes.NewReader(obj))
		gd.DisallowUnknownFields()
		if len(obj) == 0 || obj[0] != '{' {
			return nil, fmt.Errorf("enrollment tokens: token %s: want an object {\"pool\", \"plus\", \"quota_bytes\", \"max_registrations\"}", shown)
		}
		if err := gd.Decode(&g); err != nil {
			return nil, fmt.Errorf("enrollment tokens: token %s: %w", shown, err)
		}
		if g.Pool != "" && !api.ValidPool(g.Pool) {
			return nil, fmt.Errorf("enrollment tokens: token %s: pool %s: %w", shown, api.Shown(g.Pool), api.ErrBadTags)
		}
		if g.MaxRegistrations < 0 {
			return nil, fmt.Errorf("enrollment tokens: token %s: max_registrations %d: want 0 (no bound) or more", shown, g.MaxRegistrations)
		}
		if len(e.byHash) >= MaxEnrollTokens {
			return nil, fmt.Errorf("enrollment tokens: more than %d tokens", MaxEnrollTokens)
		}
		e.byHash[h] = g
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("enrollment tokens: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("enrollment tokens: data after the object")
	}
	return e, nil
}

// EnrollFile is an enrollment file that is read again when it changes:
// Tokens looks at the file's size and modification time at most once a
// second and reparses it when they moved. A file that no longer parses
// is logged and the previous tokens stay in force.
type EnrollFile struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	tokens  *EnrollTokens
	mod     time.Time
	size    int64
	checked time.Time
}

// OpenEnrollFile reads path; it must parse now.
func OpenEnrollFile(path string, log *slog.Logger) (*EnrollFile, error) {
	f := &EnrollFile{path: path, log: log}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	t, err := readEnrollFile(path)
	if err != nil {
		return nil, err
	}
	f.tokens, f.mod, f.size, f.checked = t, st.ModTime(), st.Size(), time.Now()
	return f, nil
}

func readEnrollFile(path string) (*EnrollTokens, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	t, err := ParseEnrollTokens(fh)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Tokens returns the tokens in force.
func (f *EnrollFile) Tokens() *EnrollTokens {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.checked) < time.Second {
		return f.tokens
	}
	f.checked = time.Now()
	st, err := os.Stat(f.path)
	if err != nil || (st.ModTime().Equal(f.mod) && st.Size() == f.size) {
		return f.tokens
	}
	f.mod, f.size = st.ModTime(), st.Size()
	t, err := readEnrollFile(f.path)
	if err != nil {
		f.log.Error("enrollment tokens not reloaded; the previous ones stay in force", "err", err)
		return f.tokens
	}
	f.tokens = t
	f.log.Info("enrollment tokens reloaded", "path", f.path, "tokens", t.Len())
	return t
}
