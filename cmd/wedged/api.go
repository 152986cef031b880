package main

// The node's HTTP listeners: the admin API (--api, the admin token), the
// public client API (--api-public, TLS), pprof; and the expiry of
// registrations that never handshake.

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/wedge-edge/wedge/server"
)

// apiFlags are the flags of the node's two APIs.
type apiFlags struct {
	public         string
	tlsCert        string
	tlsKey         string
	adminTokenFile string
	hosts          multi
	enrollTokens   string
	open           bool
	limitAddr      string
	limitToken     string
	expiry         time.Duration
}

func (a *apiFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.public, "api-public", "", "serve the public client API (self-registration over TLS) on `ADDR` (host:port, such as :443); off by default")
	fs.StringVar(&a.tlsCert, "tls-cert", "", "PEM certificate (chain) `FILE` of the public API (default: a self-signed one made on first start in --state, its fingerprint logged)")
	fs.StringVar(&a.tlsKey, "tls-key", "", "PEM private key `FILE` of --tls-cert")
	fs.StringVar(&a.adminTokenFile, "admin-token-file", "", "`FILE` holding the admin API's bearer token (mode 0600; default: DIR/admin.token, made on first start)")
	fs.Var(&a.hosts, "api-host", "a Host `NAME` the admin API also answers to besides its address and localhost (repeatable; NAME or NAME:PORT)")
	fs.StringVar(&a.enrollTokens, "enroll-tokens", "", "enrollment tokens `FILE` (JSON: token → {pool, plus, quota_bytes, max_registrations}; re-read on change) for the public API")
	fs.BoolVar(&a.open, "open-registration", true, "the public API registers clients without an enrollment token (default pool, free tier); false: only with one")
	fs.StringVar(&a.limitAddr, "reg-limit-addr", "20/1h", "public registrations per source address (IPv6: per /64) as `N/DURATION`: bursts of N, N per DURATION; 0: no limit")
	fs.StringVar(&a.limitToken, "reg-limit-token", "1000/1h", "public registrations per enrollment token as `N/DURATION`; 0: no limit")
	fs.DurationVar(&a.expiry, "reg-expiry", 24*time.Hour, "remove registrations that have not handshaken this long after they were made (`DURATION`; 0: never)")
}

// publicAPI is the public API's checked settings.
type publicAPI struct {
	cfg         server.PublicConfig
	cert        tls.Certificate
	fingerprint string
	certPath    string // the self-signed certificate's file, "" for --tls-cert's
}

// adminSettings loads (or on first start makes) the admin token.
func adminSettings(c *config, s *settings) (server.AdminConfig, string, error) {
	path := c.apis.adminTokenFile
	var tok server.AdminToken
	var err error
	if path == "" {
		path = filepath.Join(c.state, "admin.token")
		var created bool
		tok, created, err = server.LoadOrCreateAdminToken(path)
		if created {
			s.log.Info("admin token made", "path", path)
		}
	} else {
		tok, err = server.LoadAdminToken(path)
	}
	if err != nil {
		return server.AdminConfig{}, "", fmt.Errorf("--admin-token-file: %w", err)
	}
	return server.AdminConfig{Token: tok, Addr: c.api, Hosts: c.apis.hosts}, path, nil
}

// publicSettings checks the public API's flags and loads its certificate
// and enrollment tokens; nil without --api-public.
func publicSettings(c *config, s *settings) (*publicAPI, error) {
	a := &c.apis
	switch {
	case a.public == "" && (a.tlsCert != "" || a.tlsKey != "" || a.enrollTokens != ""):
		return nil, errors.New("--tls-cert, --tls-key and --enroll-tokens are for the public API: give --api-public ADDR too")
	case a.public == "":
		return nil, nil
	case (a.tlsCert == "") != (a.tlsKey == ""):
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	host, _, err := net.SplitHostPort(a.public)
	if err != nil {
		return nil, fmt.Errorf("--api-public %q: want host:port: %w", a.public, err)
	}
	p := &publicAPI{cfg: server.PublicConfig{Open: a.open}}
	if p.cfg.PerSource, err = server.ParseRate(a.limitAddr); err != nil {
		return nil, fmt.Errorf("--reg-limit-addr: %w", err)
	}
	if p.cfg.PerToken, err = server.ParseRate(a.limitToken); err != nil {
		return nil, fmt.Errorf("--reg-limit-token: %w", err)
	}
	if a.tlsCert != "" {
		if p.cert, p.fingerprint, err = server.LoadCert(a.tlsCert, a.tlsKey); err != nil {
			return nil, err
		}
	} else {
		// Names for the self-signed certificate: the listen address and the
		// advertised endpoints' hosts (clients pin it by fingerprint).
		var names []string
		if ip, err := netip.ParseAddr(host); err == nil && !ip.IsUnspecified() {
			names = append(names, host)
		}
		for _, e := range s.endpoints {
			if h, _, err := net.SplitHostPort(e); err == nil {
				names = append(names, h)
			}
		}
		p.certPath = filepath.Join(c.state, "api-public.crt")
		var created bool
		p.cert, p.fingerprint, created, err = server.LoadOrCreateCert(p.certPath, filepath.Join(c.state, "api-public.key"), names)
		if err != nil {
			return nil, err
		}
		if created {
			s.log.Info("self-signed certificate made for the public API", "path", p.certPath)
		}
	}
	if a.enrollTokens != "" {
		f, err := server.OpenEnrollFile(a.enrollTokens, s.log)
		if err != nil {
			return nil, fmt.Errorf("--enroll-tokens: %w", err)
		}
		p.cfg.Enroll = f.Tokens
		s.log.Info("enrollment tokens loaded", "path", a.enrollTokens, "tokens", f.Tokens().Len())
	} else if !a.open {
		s.log.Warn("--open-registration=false without --enroll-tokens: the public API registers nobody")
	}
	return p, nil
}

// servePprof serves Go's /debug/pprof on addr, if set, with the node's
// HTTP limits (a long write timeout: a CPU profile takes 30 s).
func servePprof(addr string) error {
	if addr == "" {
		return nil
	}
	pl, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	go server.NewHTTPServer(mux, 2*time.Minute).Serve(pl)
	return nil
}

// serve serves the admin API on --api and the public API on --api-public
// until ctx ends (a signal), the device stops or an API fails, then shuts
// them down. It also starts the expiry of registrations.
func serve(ctx context.Context, c *config, s *settings, node *server.Node) error {
	admin, tokenPath, err := adminSettings(c, s)
	if err != nil {
		return err
	}
	pub, err := publicSettings(c, s)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.api)
	if err != nil {
		return fmt.Errorf("--api: %w", err)
	}
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelDebug) // per-connection errors: not at info
	asrv := server.NewHTTPServer(node.AdminHandler(admin), 0)
	asrv.ErrorLog = errLog
	srvs := []*http.Server{asrv}
	serveErr := make(chan error, 2)
	// The goroutine has its own variable: srvs grows below.
	go func() { serveErr <- fmt.Errorf("admin api: %w", asrv.Serve(ln)) }()
	if pub != nil {
		pln, err := net.Listen("tcp", c.apis.public)
		if err != nil {
			asrv.Close()
			return fmt.Errorf("--api-public: %w", err)
		}
		psrv := server.NewHTTPServer(node.PublicHandler(pub.cfg), 0)
		psrv.TLSConfig = server.TLSConfig(pub.cert)
		psrv.ErrorLog = errLog
		srvs = append(srvs, psrv)
		go func() { serveErr <- fmt.Errorf("public api: %w", psrv.ServeTLS(pln, "", "")) }()
		s.log.Info("public API up", "addr", pln.Addr().String(), "fingerprint", pub.fingerprint,
			"open_registration", c.apis.open, "limit_addr", pub.cfg.PerSource, "limit_token", pub.cfg.PerToken)
	}
	node.StartExpiry(server.ExpiryConfig{After: c.apis.expiry})
	s.log.Info("node up", "api", "http://"+c.api, "admin_token", tokenPath, "listen", c.listen, "endpoints", s.endpoints,
		"egress", c.egress, "egress_ports", c.egressPorts, "state", c.state, "reg_expiry", c.apis.expiry)
	banner(c, tokenPath, pub)

	var runErr error
	select {
	case <-ctx.Done():
		s.log.Info("shutting down")
	case <-node.Wait():
		runErr = errors.New("wireguard device stopped")
	case err := <-serveErr:
		runErr = err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range srvs {
		srv.Shutdown(sctx)
	}
	return runErr
}

// banner tells a newcomer how to register a client. A JSON log gets none:
// it is read by programs, which want one object a line.
func banner(c *config, tokenPath string, pub *publicAPI) {
	if c.logFormat == "json" {
		return
	}
	fmt.Fprintf(os.Stderr, `
wedge node %s is up. Register a client through the admin API (this host only) with:

    wedge register --api http://%s --admin-token-file %s --out wedge.conf
    wg-quick up ./wedge.conf
`, c.name, c.api, tokenPath)
	if pub != nil {
		fp := ""
		if pub.certPath != "" {
			fp = " --fingerprint " + pub.fingerprint
		}
		fmt.Fprintf(os.Stderr, `
or let clients register themselves on the public API (certificate SHA-256 %s):

    wedge register --api https://%s%s --out wedge.conf
`, pub.fingerprint, c.apis.public, fp)
	}
	fmt.Fprintln(os.Stderr)
}

// fingerprint is `wedged fingerprint [DIR|CERTFILE]`: the SHA-256 of the
// public API's certificate, as clients pin it.
func fingerprint(args []string) {
	path := "/var/lib/wedge"
	switch len(args) {
	case 0:
	case 1:
		path = args[0]
	default:
		fmt.Fprintln(os.Stderr, "usage: wedged fingerprint [STATE-DIR | CERT-FILE]")
		os.Exit(2)
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, "api-public.crt")
	}
	fp, err := server.CertFingerprint(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wedged:", err)
		os.Exit(1)
	}
	fmt.Println(fp)
}
