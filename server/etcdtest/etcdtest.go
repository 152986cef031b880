// Package etcdtest starts a throwaway single-member etcd on loopback for
// tests of the etcd backends. It runs the etcd binary .ci/run installs
// (Debian's etcd-server); without one the test is skipped, or fails when
// CI is set, so a CI machine cannot quietly skip the etcd contract tests.
package etcdtest

import (
	"bytes"
	"context"
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
	cmd      *exec.Cmd
	done     chan struct{}
	out      *syncBuffer
	dir      string
	args     []string
}

// Start runs etcd in a temporary directory and waits until it serves. It is
// stopped when the test ends.
func Start(t testing.TB) *Etcd {
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
	purl := "http://" + peer
	e := &Etcd{Endpoint: client, dir: dir, args: []string{
		"--name", "test", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", curl, "--advertise-client-urls", curl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
		"--initial-cluster", "test=" + purl,
		"--logger", "zap", "--log-level", "error",
	}}
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
func (e *Etcd) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{e.Endpoint},
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	})
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
