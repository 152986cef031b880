// Package cluster is wedge's control plane on etcd: connecting to it, the
// membership of nodes (held by leases, so a dead node drops out by itself),
// draining, the check that every node runs with the same service key, and
// each node's view of its etcd connection.
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

// Dial makes an etcd client. It does not wait for etcd to answer: a node
// starts (and keeps serving the clients it knows) while etcd is down.
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
	useTLS := c.CAFile != "" || c.CertFile != "" || c.KeyFile != ""
	for _, e := range c.Endpoints {
		useTLS = useTLS || strings.HasPrefix(e, "https://")
	}
	if useTLS {
		t, err := c.tlsConfig()
		if err != nil {
			return nil, err
		}
		cfg.TLS = t
	}
	if c.Username != "" {
		if c.PasswordFile == "" {
			return nil, errors.New("cluster: --etcd-user needs --etcd-password-file")
		}
		pw, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("cluster: etcd password: %w", err)
		}
		cfg.Username, cfg.Password = c.Username, strings.TrimRight(string(pw), "\r\n")
	} else if c.PasswordFile != "" {
		return nil, errors.New("cluster: --etcd-password-file needs --etcd-user")
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
			return nil, fmt.Errorf("cluster: etcd CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cluster: etcd CA %s: no PEM certificate in it", c.CAFile)
		}
		t.RootCAs = pool
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, errors.New("cluster: --etcd-cert and --etcd-key go together")
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cluster: etcd client certificate: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}
