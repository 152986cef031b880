package egress

import (
	"os/exec"
	"strings"
	"testing"
)

// egress re-originates flows and routes them by plain values (inner
// addresses, tag strings): it must not link the registry, the cluster, the
// XDP front, gVisor or wireguard-go, nor the storage they bring.
var forbiddenDeps = []string{
	"github.com/wedge-edge/wedge/server",
	"github.com/wedge-edge/wedge/lb",
	"github.com/wedge-edge/wedge/netstack",
	"github.com/wedge-edge/wedge/client",
	"github.com/cilium/ebpf",
	"go.etcd.io",
	"gvisor.dev",
	"golang.zx2c4.com/wireguard",
}

func TestDeps(t *testing.T) {
	checkDeps(t, ".", forbiddenDeps)
}

// checkDeps fails for every package pkg links (go list -deps) under one of
// the forbidden prefixes.
func checkDeps(t *testing.T, pkg string, forbidden []string) {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go tool is not in PATH; cannot run go list -deps:", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", pkg).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list -deps: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list -deps: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if p == f || strings.HasPrefix(p, f+"/") {
				t.Errorf("%s links %s (forbidden: %s)", pkg, p, f)
			}
		}
	}
}
