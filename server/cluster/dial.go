// Package cluster is wedge's control plane on etcd: connecting to it, the
// membership of nodes (held by leases, so a dead node drops out by itself),
// draining, the check that every node runs with the same service key, and
// each node's view of its etcd connection.
//
// As all of server/, it must not import gVisor, client/, netstack/ or e2e/.
package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Config says how to reach etcd. TLS is used when an endpoint is https or
// any of the TLS files is set; auth when Username is set.
type Config struct {
	Endpoints    []string // "http://host:port", "https://host:port" or "host:port"
	CAFile       string   // PEM CA bundle that signs the etcd servers (default: system roots)
	CertFile     string   // client certificate (PEM), with KeyFile
	KeyFile      string
	Username     string
	PasswordFile string // the password, read from a file so it is not on argv
	DialTimeout  time.Duration
}

// ErrConfig marks a configuration mistake (files, flags) that waiting for
// etcd will not cure.
var ErrConfig = errors.New("cluster: bad etcd settings")

// ParseEndpoints splits a comma-separated --etcd value and checks each URL.
func ParseEndpoints(s string) ([]string, error) {
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		hostport := e
		if strings.Contains(e, "://") {
			u, err := url.Parse(e)
			if err != nil {
				return nil, fmt.Errorf("cluster: etcd endpoint %q: %v", e, err)
			}
			if u.Scheme != "http" && u.Scheme != "https" {
				return nil, fmt.Errorf("cluster: etcd endpoint %q: scheme must be http or https", e)
			}
			if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
				return nil, fmt.Errorf("cluster: etcd endpoint %q: want scheme://host:port and nothing else", e)
			}
			hostport = u.Host
		}
		if _, port, err := net.SplitHostPort(hostport); err != nil || port == "" {
			return nil, fmt.Errorf("cluster: etcd endpoint %q: want host:port (etcd's client port is usually 2379)", e)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, errors.New("cluster: no etcd endpoint given")
	}
	return out, nil
}

// Dial makes an etcd client. Without a user it does not wait for etcd;
// with one, etcd's client logs in here and waits up to DialTimeout.
func (c Config) Dial() (*clientv3.Client, error) {
	if len(c.Endpoints) == 0 {
		return nil, errors.New("cluster: no etcd endpoint given")
	}
	cfg := clientv3.Config{
		Endpoints:   c.Endpoints,
		DialTimeout: c.DialTimeout,
		// etcd's client logs every retry; the node reports the
		// connection's state itself (wedge status, and one log line per
		// change).
		Logger: zap.NewNop(),
		// Find a dead connection in seconds, not at the next request.
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
	}
	// etcd's client takes the scheme of the first endpoint for all of
	// them and drops TLS for http:// ones, so a mix, or http:// with TLS
	// files, would silently not do what was asked.
	tlsFiles := c.CAFile != "" || c.CertFile != "" || c.KeyFile != ""
	var plain, secure int
	for _, e := range c.Endpoints {
		switch {
		case strings.HasPrefix(e, "http://"):
			plain++
		case strings.HasPrefix(e, "https://"):
			secure++
		}
	}
	if plain > 0 && (secure > 0 || tlsFiles) {
		return nil, fmt.Errorf("%w: an http:// etcd endpoint cannot use TLS: give https:// (or host:port) endpoints with --etcd-ca/--etcd-cert/--etcd-key, and do not mix http:// and https://", ErrConfig)
	}
	useTLS := tlsFiles || secure > 0
	if useTLS {
		t, err := c.tlsConfig()
		if err != nil {
			return nil, err
		}
		cfg.TLS = t
	}
	if c.Username != "" {
		if c.PasswordFile == "" {
			return nil, fmt.Errorf("%w: --etcd-user needs --etcd-password-file", ErrConfig)
		}
		pw, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("%w: etcd password: %v", ErrConfig, err)
		}
		cfg.Username, cfg.Password = c.Username, strings.TrimRight(string(pw), "\r\n")
	} else if c.PasswordFile != "" {
		return nil, fmt.Errorf("%w: --etcd-password-file needs --etcd-user", ErrConfig)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster: etcd client: %w", err)
	}
	return cli, nil
}

func (c Config) tlsConfig() (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: etcd CA: %v", ErrConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: etcd CA %s: no PEM certificate in it", ErrConfig, c.CAFile)
		}
		t.RootCAs = pool
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, fmt.Errorf("%w: --etcd-cert and --etcd-key go together", ErrConfig)
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: etcd client certificate: %v", ErrConfig, err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// Diagnose tries a TLS handshake with endpoint using c's TLS settings and
// returns what went wrong ("" if nothing, or if c uses no TLS): etcd's
// client reports every TLS failure as a timeout.
func Diagnose(endpoint string, c Config) string {
	tlsFiles := c.CAFile != "" || c.CertFile != "" || c.KeyFile != ""
	if !tlsFiles && !strings.HasPrefix(endpoint, "https://") {
		return ""
	}
	t, err := c.tlsConfig()
	if err != nil {
		return err.Error()
	}
	hostport := endpoint
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		hostport = u.Host
	}
	host, _, _ := net.SplitHostPort(hostport)
	t.ServerName = host
	d := &net.Dialer{Timeout: 3 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", hostport, t)
	if err != nil {
		return "TLS handshake with " + hostport + ": " + err.Error()
	}
	defer conn.Close()
	// A server that wants a client certificate may refuse it only after
	// the handshake: read once to see the alert.
	conn.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ""
		}
		return "TLS with " + hostport + ": " + err.Error()
	}
	return ""
}
