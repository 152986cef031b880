package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"rsc.io/qr"

	"github.com/wedge-edge/wedge/client"
	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/internal/atomicfile"
)

func register(args []string) error {
	fs := flag.NewFlagSet("wedge register", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: wedge register --api URL [flags]

Makes a key pair, registers its public key with a node and writes a wg-quick
configuration. An https:// URL is a node's public API: the client registers
itself (--fingerprint pins a self-signed certificate; --enroll-token gives
the pool, tier and quota the operator granted). An http:// URL is the
node's admin API on the node itself, which takes the admin token.

`)
		fs.PrintDefaults()
	}
	apiURL := fs.String("api", "http://127.0.0.1:8080", "API base `URL`: https://HOST:PORT (public API) or http://127.0.0.1:8080 (admin API, on the node)")
	out := fs.String("out", "", "write the wg-quick config to `FILE` (mode 0600; default: standard output)")
	family := fs.Int("family", 0, "endpoint family wg-quick uses: 4, 6, or 0 for the server's first")
	keepalive := fs.Int("keepalive", 25, "PersistentKeepalive `SECONDS` (0: off); keeps NAT mappings alive")
	reserved := fs.Bool("reserved", false, "also print `reserved = [b1, b2, b3]` for third-party clients")
	noQR := fs.Bool("no-qr", false, "do not show the config as a QR code on a terminal")
	pool := fs.String("pool", "", "egress pool `NAME` (a-z, 0-9, '-'; admin API, or the enrollment token's own pool)")
	country := fs.String("country", "", "egress country `CC` (ISO 3166-1 alpha-2 such as NL; default: GeoIP of the client's address)")
	fingerprint := fs.String("fingerprint", "", "pin the public API's TLS certificate by its `SHA256` (64 hex digits, as wedged prints it); needed for a self-signed certificate")
	enroll := fs.String("enroll-token", "", "enrollment `TOKEN` the node's operator gave you (public API)")
	plus := fs.Bool("plus", false, "the plus tier (WARP+: TCP flows relayed through the fastest data center; admin API only, or an enrollment token that grants it)")
	tokenFile := adminTokenFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("register: unexpected arguments %q", fs.Args())
	}
	if *family != 0 && *family != 4 && *family != 6 {
		return fmt.Errorf("register: --family %d: want 4, 6 or 0", *family)
	}
	tags := api.Tags{Pool: *pool, Country: *country}
	if err := tags.Validate(); err != nil {
		return usageError{fmt.Errorf("register: %w", err)}
	}
	a, err := registrationAPI(*apiURL, *fingerprint, *tokenFile, *enroll)
	if err != nil {
		return err
	}
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := api.RegRequest{PublicKey: priv.PublicKey().String(), Pool: tags.Pool, Country: tags.Country, EnrollToken: *enroll}
	if *plus {
		req.Plus = plus
	}
	reg, err := postRegistration(ctx, a, req)
	if err != nil {
		return adminHint(err)
	}
	var conf bytes.Buffer
	fp, _ := pinned(*fingerprint)
	err = client.WriteConfig(&conf, priv, reg, client.WriteOptions{Family: *family, API: *apiURL, Keepalive: *keepalive, Fingerprint: fp})
	if err == nil && *out != "" {
		err = atomicfile.WriteFile(*out, conf.Bytes(), 0o600)
	}
	if err != nil {
		// The private key exists only here: without a config it is lost,
		// so take the registration back rather than leave an orphan.
		if derr := undo(ctx, a, reg); derr != nil {
			fmt.Fprintf(os.Stderr, "wedge: could not undo registration %s: %v\n", reg.ID, derr)
		}
		return fmt.Errorf("register: %w", err)
	}
	if *out == "" {
		os.Stdout.Write(conf.Bytes())
	} else {
		fmt.Fprintf(os.Stderr, "registered %s (ClientID %s%s); config written to %s\n", reg.ID, reg.ClientID, describeTags(tags), *out)
	}
	if *reserved {
		// On stderr when the config goes to stdout, so it stays a clean file.
		w := os.Stdout
		if *out == "" {
			w = os.Stderr
		}
		fmt.Fprintf(w, "reserved = [%d, %d, %d]\n", reg.Reserved[0], reg.Reserved[1], reg.Reserved[2])
	}
	if !*noQR && *out != "" && isTerminal(os.Stdout) {
		if err := printQR(conf.String()); err != nil {
			fmt.Fprintln(os.Stderr, "wedge: no QR code:", err)
		}
	}
	return nil
}

// pinned checks a --fingerprint ("" is none).
func pinned(fp string) (string, error) {
	if fp == "" {
		return "", nil
	}
	return client.ParseFingerprint(fp)
}

// registrationAPI is the API a registration goes to: the public API for
// an https:// URL (no admin token is ever sent there), the admin API with
// the admin token for an http:// one.
func registrationAPI(url, fingerprint, tokenFile, enroll string) (*client.API, error) {
	fp, err := pinned(fingerprint)
	if err != nil {
		return nil, usageError{fmt.Errorf("register: --fingerprint: %w", err)}
	}
	switch {
	case strings.HasPrefix(url, "https://"):
		return &client.API{URL: url, HTTP: client.HTTPClient(fp)}, nil
	case strings.HasPrefix(url, "http://"):
		if fp != "" || enroll != "" {
			return nil, usageError{errors.New("register: --fingerprint and --enroll-token are for the public API, an https:// URL")}
		}
		return adminAPI(url, tokenFile)
	}
	return nil, usageError{fmt.Errorf("register: --api %q: want an https:// (public API) or http:// (admin API) URL", url)}
}

// undo takes a registration back: with its own token on the public API,
// with the admin token on the admin API.
func undo(ctx context.Context, a *client.API, reg api.Registration) error {
	u := *a
	if strings.HasPrefix(a.URL, "https://") {
		u.Token = reg.Token
	}
	return u.Delete(ctx, reg.ID)
}

// postRegistration registers with req. A node older than tags ignores
// them and answers without; then, if tags were asked for, the
// registration is taken back and an error says why, rather than leave a
// client on an egress it did not ask for. Tags the client did not ask
// for (an enrollment token's pool) are the node's to give.
func postRegistration(ctx context.Context, a *client.API, req api.RegRequest) (api.Registration, error) {
	r, err := a.Register(ctx, req)
	if err != nil || (req.Pool == "" && req.Country == "") {
		return r, err
	}
	if r.Tags != nil && (req.Pool == "" || r.Tags.Pool == req.Pool) && (req.Country == "" || r.Tags.Country == req.Country) {
		return r, nil
	}
	err = fmt.Errorf("register: the node at %s ignored the tags (it predates egress tags); registration undone", a.URL)
	if r.Tags != nil {
		err = fmt.Errorf("register: the node at %s stored pool %q, country %q, not the tags asked for; registration undone", a.URL, r.Tags.Pool, r.Tags.Country)
	}
	if derr := undo(ctx, a, r); derr != nil {
		err = errors.Join(err, fmt.Errorf("could not undo registration %s: %w", r.ID, derr))
	}
	return api.Registration{}, err
}

// describeTags is ", pool P, country C" for the tags that are set.
func describeTags(t api.Tags) string {
	var s string
	if t.Pool != "" {
		s += ", pool " + t.Pool
	}
	if t.Country != "" {
		s += ", country " + t.Country
	}
	return s
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// printQR draws the code with half blocks, two modules per character cell,
// dark on light with the 4-module quiet zone scanners need.
func printQR(text string) error {
	c, err := qr.Encode(text, qr.L)
	if err != nil {
		return err
	}
	const quiet = 4
	black := func(x, y int) bool {
		x, y = x-quiet, y-quiet
		return x >= 0 && y >= 0 && x < c.Size && y < c.Size && c.Black(x, y)
	}
	var b bytes.Buffer
	n := c.Size + 2*quiet
	for y := 0; y < n; y += 2 {
		for x := 0; x < n; x++ {
			top, bot := black(x, y), black(x, y+1)
			switch {
			case top && bot:
				b.WriteString(" ")
			case top:
				b.WriteString("▄")
			case bot:
				b.WriteString("▀")
			default:
				b.WriteString("█")
			}
		}
		b.WriteString("\n")
	}
	_, err = os.Stdout.Write(b.Bytes())
	return err
}
