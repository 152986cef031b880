package netstack

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

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
	return s.b.String()
}

// TestRefusalsLogged: the first flow refused by a budget is logged, with
// its reason and client; the next ones within the minute only counted.
func TestRefusalsLogged(t *testing.T) {
	var buf syncBuffer
	d := &fakeDialer{tcpTarget: listenTCP(t, echoTCP)}
	h := newHarness(t, Config{Dialer: d, Logger: slog.New(slog.NewTextHandler(&buf, nil)), Limits: Limits{MaxFlowsPerClient: 1}}, clientA)
	defer h.close()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 3 {
		if c, err := h.dialTCP(t, 0, netip.AddrPortFrom(remote, 7), 5*time.Second); err == nil {
			conns = append(conns, c)
		}
	}
	if len(conns) != 1 || h.stack.Stats().TCP.Refused.ClientFlows != 2 {
		t.Fatalf("%d flows open, refused %+v; want 1 open and 2 refused by the client's cap", len(conns), h.stack.Stats().TCP.Refused)
	}
	var lines []string
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, "flow refused") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d lines about refused flows, want 1:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, want := range []string{"level=INFO", "reason=client_flows", "proto=tcp", "client=" + clientA[0].String(), "refused_since_last=1 "} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("line %q lacks %q", lines[0], want)
		}
	}
}
