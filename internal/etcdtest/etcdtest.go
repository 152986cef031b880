// Package etcdtest starts a throwaway single-member etcd on loopback for
// tests of the etcd backends. It runs the etcd binary .ci/run installs
// (Debian's etcd-server); without one the test is skipped, or fails when
// CI is set, so a CI machine cannot quietly skip the etcd contract tests.
//
// It is imported only by tests and must not import any room of the tree.
package etcdtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd is a running test etcd.
type Etcd struct {
	Endpoint string // host:port of the client URL
	URL      string // the client URL: http://Endpoint, or https://Endpoint with TLS
	cmd      *exec.Cmd
	done     chan struct{}
	out      *syncBuffer
	dir      string
	args     []string
	tls      *TLSFiles
}

// Options change how StartWith runs etcd. The zero Options is Start.
type Options struct {
	// TLS, when set, has etcd serve its clients over https only.
	TLS *TLSFiles
}

// TLSFiles are the PEM files of an https etcd.
type TLSFiles struct {
	CertFile string // etcd's server certificate, valid for 127.0.0.1
	KeyFile  string
	CAFile   string // the CA that signed CertFile (and, with ClientCertAuth, the client certificates)
	// ClientCertAuth has etcd require a client certificate signed by
	// CAFile (--client-cert-auth --trusted-ca-file).
	ClientCertAuth bool
	// ClientCertFile and ClientKeyFile are the certificate Client (and the
	// check that etcd serves) presents; needed with ClientCertAuth.
	ClientCertFile string
	ClientKeyFile  string
}

// Start runs etcd in a temporary directory and waits until it serves. It is
// stopped when the test ends.
func Start(t testing.TB) *Etcd {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, o Options) *Etcd {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("etcd binary not found (.ci/run installs etcd-server): %v", err)
		}
		t.Skip("etcd binary not found; install Debian's etcd-server to run the etcd tests")
	}
	client, peer := freePort(t), freePort(t)
	dir := t.TempDir()
	curl := "http://" + client
	if o.TLS != nil {
		curl = "https://" + client
	}
	purl := "http://" + peer
	e := &Etcd{Endpoint: client, URL: curl, dir: dir, tls: o.TLS, args: []string{
		"--name", "test", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", curl, "--advertise-client-urls", curl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
		"--initial-cluster", "test=" + purl,
		"--logger", "zap", "--log-level", "error",
	}}
	if f := o.TLS; f != nil {
		e.args = append(e.args, "--cert-file", f.CertFile, "--key-file", f.KeyFile)
		if f.ClientCertAuth {
			// A --trusted-ca-file alone already makes etcd demand client
			// certificates, so it is only passed with ClientCertAuth.
			e.args = append(e.args, "--client-cert-auth", "--trusted-ca-file", f.CAFile)
		}
	}
	e.start(t, bin)
	t.Cleanup(e.kill)
	return e
}

func (e *Etcd) start(t testing.TB, bin string) {
	t.Helper()
	e.out = &syncBuffer{}
	e.cmd = exec.Command(bin, e.args...)
	e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	e.done = make(chan struct{})
	go func() { e.cmd.Wait(); close(e.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-e.done:
			t.Fatalf("etcd exited: %s", e.out.String())
		default:
		}
		if c, err := net.DialTimeout("tcp", e.Endpoint, 200*time.Millisecond); err == nil {
			c.Close()
			cli := e.Client(t)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := cli.Get(ctx, "health")
			cancel()
			cli.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd not serving after 20 s: %s", e.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills etcd (SIGKILL: the harshest outage) and waits for it to exit.
func (e *Etcd) Stop() { e.kill() }

// Restart starts etcd again on the same ports and data.
func (e *Etcd) Restart(t testing.TB) {
	t.Helper()
	e.kill()
	e.start(t, e.cmd.Path)
}

func (e *Etcd) kill() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	select {
	case <-e.done:
		return
	default:
	}
	e.cmd.Process.Kill()
	<-e.done
}

// Client returns a new client of this etcd, closed when the test ends.
// With TLS it trusts CAFile and presents ClientCertFile, if set.
func (e *Etcd) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cfg := clientv3.Config{
		Endpoints:   []string{e.URL},
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	}
	if f := e.tls; f != nil {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			t.Fatalf("etcdtest: no certificate in %s", f.CAFile)
		}
		cfg.TLS = &tls.Config{RootCAs: roots}
		if f.ClientCertFile != "" {
			cert, err := tls.LoadX509KeyPair(f.ClientCertFile, f.ClientKeyFile)
			if err != nil {
				t.Fatal(err)
			}
			cfg.TLS.Certificates = []tls.Certificate{cert}
		}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("%.4000s", s.b.String())
}
