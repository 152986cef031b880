package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/wedge-edge/wedge/client"
)

// DefaultAdminTokenFile is where wedged keeps the admin token it makes
// with its default --state.
const DefaultAdminTokenFile = "/var/lib/wedge/admin.token"

// adminTokenFlag adds --admin-token-file to fs.
func adminTokenFlag(fs *flag.FlagSet) *string {
	return fs.String("admin-token-file", "", "`FILE` holding the node's admin token (default: $WEDGE_ADMIN_TOKEN, else "+DefaultAdminTokenFile+" if readable)")
}

// adminToken finds the admin token: the file given, else the
// WEDGE_ADMIN_TOKEN environment variable, else the default node's token
// file if this user can read it. "" when there is none (the node will
// answer 401).
func adminToken(file string) (string, error) {
	if file != "" {
		raw, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("--admin-token-file: %w", err)
		}
		return strings.TrimSpace(string(raw)), nil
	}
	if t := strings.TrimSpace(os.Getenv("WEDGE_ADMIN_TOKEN")); t != "" {
		return t, nil
	}
	raw, err := os.ReadFile(DefaultAdminTokenFile)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return "", nil
		}
		return "", err
	}
	return strings.TrimSpace(string(raw)), nil
}

// adminAPI is the admin API at url with the token adminToken finds.
func adminAPI(url, tokenFile string) (*client.API, error) {
	tok, err := adminToken(tokenFile)
	if err != nil {
		return nil, err
	}
	return &client.API{URL: url, Token: tok, HTTP: &http.Client{Timeout: 30 * time.Second}}, nil
}

// adminHint is added to a 401 from the admin API.
func adminHint(err error) error {
	if err != nil && strings.Contains(err.Error(), "401") {
		return fmt.Errorf("%w\nthe admin API needs the node's admin token: --admin-token-file FILE (wedged's --state DIR/admin.token) or WEDGE_ADMIN_TOKEN", err)
	}
	return err
}

// setBearer adds the admin token to req, if there is one.
func setBearer(req *http.Request, tok string) {
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
}
