package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/server/cluster"
)

// TestEtcdExposure: a node reaching etcd without TLS or without a client
// credential warns with what an attacker could do there, and with
// --etcd-require-tls refuses to start without TLS.
func TestEtcdExposure(t *testing.T) {
	plain := []string{"http://198.18.11.1:2379"}
	bare := []string{"198.18.11.1:2379"}
	secure := []string{"https://198.18.11.1:2379"}
	for _, tc := range []struct {
		name       string
		cfg        cluster.Config
		requireTLS bool
		warn       []string // substrings of the warning; nil: none
		err        bool
	}{
		{"http, no auth", cluster.Config{Endpoints: plain}, false,
			[]string{"plain HTTP without authentication", "register clients", "ClientID", "announce a node", "--etcd-require-tls"}, false},
		{"host:port, no TLS files, no auth", cluster.Config{Endpoints: bare}, false, []string{"plain HTTP without authentication"}, false},
		{"http with a user", cluster.Config{Endpoints: plain, Username: "wedge", PasswordFile: "pw"}, false,
			[]string{"password", "in clear", "register clients"}, false},
		{"https without a credential", cluster.Config{Endpoints: secure, CAFile: "ca.pem"}, false,
			[]string{"without a client credential", "register clients"}, false},
		{"https with a client certificate", cluster.Config{Endpoints: secure, CAFile: "ca.pem", CertFile: "c.pem", KeyFile: "k.pem"}, false, nil, false},
		{"host:port with TLS files and a user", cluster.Config{Endpoints: bare, CAFile: "ca.pem", Username: "wedge"}, false, nil, false},
		{"https with a user, TLS required", cluster.Config{Endpoints: secure, Username: "wedge"}, true, nil, false},
		{"http, TLS required", cluster.Config{Endpoints: plain}, true, nil, true},
		{"http with a user, TLS required", cluster.Config{Endpoints: plain, Username: "wedge"}, true, nil, true},
		{"a mix of http and https, TLS required", cluster.Config{Endpoints: append(secure, plain...)}, true, nil, true},
		{"host:port without TLS files, TLS required", cluster.Config{Endpoints: bare, Username: "wedge"}, true, nil, true},
	} {
		warn, err := etcdExposure(tc.cfg, tc.requireTLS)
		if (err != nil) != tc.err {
			t.Errorf("%s: error %v, want error %v", tc.name, err, tc.err)
			continue
		}
		if err != nil {
			if warn != "" || !strings.Contains(err.Error(), "--etcd-require-tls") {
				t.Errorf("%s: error %q with warning %q; want the flag named and no warning", tc.name, err, warn)
			}
			continue
		}
		if tc.warn == nil && warn != "" {
			t.Errorf("%s: warning %q, want none", tc.name, warn)
		}
		if tc.warn != nil && warn == "" {
			t.Errorf("%s: no warning, want one", tc.name)
		}
		for _, w := range tc.warn {
			if !strings.Contains(warn, w) {
				t.Errorf("%s: warning %q lacks %q", tc.name, warn, w)
			}
		}
	}
}

// TestInfraACL: what the egress ACL is told of the cluster's
// infrastructure from the flags, and that members are added on each
// membership change and kept after they leave.
func TestInfraACL(t *testing.T) {
	ctx := context.Background()
	s := &settings{log: slog.New(slog.NewTextHandler(io.Discard, nil)), dnsUp: netip.MustParseAddrPort("198.51.100.53:53")}
	alone := infraStatic(ctx, &config{guePort: 6080}, s)
	if len(alone.Ports) != 0 || len(alone.Etcd) != 0 || !slices.Equal(alone.DNS, []netip.AddrPort{s.dnsUp}) {
		t.Errorf("a node alone without a front: %+v, want the DNS upstream only", alone)
	}
	static := infraStatic(ctx, &config{guePort: 6081, etcd: "http://198.18.11.1:2379, 198.18.12.1:2379"}, s)
	wantEtcd := []netip.Addr{netip.MustParseAddr("198.18.11.1"), netip.MustParseAddr("198.18.12.1")}
	if !slices.Equal(static.Ports, []uint16{6081}) || !slices.Equal(static.Etcd, wantEtcd) {
		t.Fatalf("a cluster node: %+v, want GUE port 6081 and etcd %v", static, wantEtcd)
	}

	acl, err := egress.NewACL([]netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	member := func(n byte) cluster.Member {
		return cluster.Member{ID: fmt.Sprintf("node%d", n), Underlay: netip.AddrFrom4([4]byte{198, 18, n, 1})}
	}
	seen := map[netip.Addr]bool{}
	denied := func(n byte) bool {
		return errors.Is(acl.CheckAddrPort(netip.AddrPortFrom(member(n).Underlay, 22)), egress.ErrDenied)
	}
	acl.SetInfra(withMembers(static, seen, []cluster.Member{member(1), member(2)}))
	if !denied(1) || !denied(2) || denied(3) {
		t.Fatalf("members 1 and 2: denied %v %v, non-member 3 denied %v", denied(1), denied(2), denied(3))
	}
	// node3 joins, node1 leaves.
	acl.SetInfra(withMembers(static, seen, []cluster.Member{member(2), member(3)}))
	if !denied(3) || !denied(1) {
		t.Fatalf("after node3 joined and node1 left: node3 denied %v, node1 denied %v; want both", denied(3), denied(1))
	}
	if err := acl.CheckAddrPort(netip.MustParseAddrPort("198.18.11.1:2380")); !errors.Is(err, egress.ErrDenied) {
		t.Errorf("etcd's peer port: %v, want denied", err)
	}
	if err := acl.CheckAddrPort(netip.MustParseAddrPort("198.18.99.1:6081")); !errors.Is(err, egress.ErrDenied) {
		t.Errorf("the GUE port elsewhere: %v, want denied", err)
	}
	if err := acl.CheckAddrPort(netip.MustParseAddrPort("198.18.99.1:443")); err != nil {
		t.Errorf("an opened address that is no infrastructure: %v", err)
	}
}
