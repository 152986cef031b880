package server

// This file holds the API's credentials: bearer tokens in the
// Authorization header, the per-registration tokens the public API hands
// out (stored only as a SHA-256 hash), and the admin token file.

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// MaxTokenLen bounds any bearer token the API reads.
const MaxTokenLen = 512

// ErrNoCredentials and ErrBadCredentials say why a request is not
// authenticated (both answer 401).
var (
	ErrNoCredentials  = errors.New("missing Authorization: Bearer token")
	ErrBadCredentials = errors.New("bad Authorization header: want \"Bearer TOKEN\"")
)

// ParseBearer returns the token of an Authorization header value
// "Bearer TOKEN" (RFC 6750: the scheme in any case, one or more spaces,
// then a token68 of at most MaxTokenLen bytes). An empty header is
// ErrNoCredentials, anything else that is not such a value
// ErrBadCredentials.
func ParseBearer(h string) (string, error) {
	if h == "" {
		return "", ErrNoCredentials
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", ErrBadCredentials
	}
	tok = strings.TrimLeft(tok, " ")
	if !validToken68(tok) {
		return "", ErrBadCredentials
	}
	return tok, nil
}

// validToken68 reports whether s is an RFC 7235 token68 of 1 to
// MaxTokenLen bytes: A-Z a-z 0-9 - . _ ~ + / then optional trailing '='.
func validToken68(s string) bool {
	if len(s) == 0 || len(s) > MaxTokenLen {
		return false
	}
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/') {
			return false
		}
	}
	return true
}

// tokenHash is what the registry keeps of a token.
func tokenHash(tok string) [32]byte { return sha256.Sum256([]byte(tok)) }

// sameHash compares two hashes in constant time.
func sameHash(a, b [32]byte) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }

// regTokenPrefix starts every registration token, so a token is
// recognisable in a leaked file or log (secret scanners) and cannot be
// mistaken for the admin token.
const regTokenPrefix = "wedge."

// regSecretBytes is the random part of a registration token: 256 bits
// from crypto/rand.
const regSecretBytes = 32

// NewRegToken makes the bearer token of registration id:
// "wedge.<id>.<secret>", the secret 32 random bytes in unpadded base64url.
// The registry keeps only its SHA-256 (RegTokenHash). The id inside lets
// the node tell a token of another registration (403) from a wrong one
// (401) and answer 404 when the registration it names is gone.
func NewRegToken(id string) (string, [32]byte) {
	var b [regSecretBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux ≥ 3.17
	}
	tok := regTokenPrefix + id + "." + base64.RawURLEncoding.EncodeToString(b[:])
	return tok, tokenHash(tok)
}

// ErrBadRegToken: a bearer token is not a registration token.
var ErrBadRegToken = errors.New("not a registration token")

// ParseRegToken returns the registration id a registration token names.
// It checks the form only; whether the token is that registration's is
// decided by comparing hashes.
func ParseRegToken(tok string) (id string, err error) {
	rest, ok := strings.CutPrefix(tok, regTokenPrefix)
	if !ok {
		return "", ErrBadRegToken
	}
	id, secret, ok := strings.Cut(rest, ".")
	if !ok || len(id) != 32 || len(secret) != base64.RawURLEncoding.EncodedLen(regSecretBytes) {
		return "", ErrBadRegToken
	}
	if _, err := hex.DecodeString(id); err != nil || strings.ToLower(id) != id {
		return "", ErrBadRegToken
	}
	if raw, err := base64.RawURLEncoding.Strict().DecodeString(secret); err != nil || len(raw) != regSecretBytes {
		return "", ErrBadRegToken
	}
	return id, nil
}

// AdminToken is the admin API's credential. The zero value accepts
// nothing.
type AdminToken struct {
	hash [32]byte
	set  bool
}

// NewAdminToken returns the credential for token tok; an empty or
// malformed token is an error.
func NewAdminToken(tok string) (AdminToken, error) {
	if len(tok) < minAdminTokenLen || !validToken68(tok) {
		return AdminToken{}, fmt.Errorf("admin token: want %d to %d characters of A-Z a-z 0-9 - . _ ~ + / (then optional '=')",
			minAdminTokenLen, MaxTokenLen)
	}
	return AdminToken{hash: tokenHash(tok), set: true}, nil
}

// minAdminTokenLen is the shortest admin token accepted from a file: 16
// characters is ~96 bits of base64; the generated ones are 43 (256 bits).
const minAdminTokenLen = 16

// Matches reports whether tok is the admin token, in constant time (the
// hashes are compared, so not even the length leaks).
func (a AdminToken) Matches(tok string) bool {
	return a.set && sameHash(a.hash, tokenHash(tok))
}

// LoadAdminToken reads the admin token from path: the file's content
// with surrounding whitespace removed. Like the service key, the file
// must not be readable by group or others.
func LoadAdminToken(path string) (AdminToken, error) {
	st, err := os.Stat(path)
	if err != nil {
		return AdminToken{}, fmt.Errorf("admin token: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return AdminToken{}, fmt.Errorf("admin token %s: mode %#o lets others read it: chmod 600 %s", path, st.Mode().Perm(), path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return AdminToken{}, fmt.Errorf("admin token: %w", err)
	}
	t, err := NewAdminToken(strings.TrimSpace(string(raw)))
	if err != nil {
		return AdminToken{}, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// LoadOrCreateAdminToken reads the admin token from path, first writing a
// new random one (256 bits, base64url, mode 0600, never overwriting) if
// there is no file; created says which.
func LoadOrCreateAdminToken(path string) (t AdminToken, created bool, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return AdminToken{}, false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, fs.ErrExist):
		t, err := LoadAdminToken(path)
		return t, false, err
	case err != nil:
		return AdminToken{}, false, fmt.Errorf("admin token: %w", err)
	}
	_, werr := f.WriteString(base64.RawURLEncoding.EncodeToString(b[:]) + "\n")
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		os.Remove(path)
		return AdminToken{}, false, fmt.Errorf("admin token: write %s: %w", path, err)
	}
	t, err = LoadAdminToken(path)
	return t, err == nil, err
}
