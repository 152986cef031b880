package front

import (
	"os/exec"
	"strings"
	"testing"
)

// front is a server/ package (ARCHITECTURE.md) that runs beside the device,
// not inside it: it must not link gVisor, the client, the netstack, the e2e
// lab or wireguard-go's device.
var forbiddenDeps = []string{
	"github.com/wedge-edge/wedge/client",
	"github.com/wedge-edge/wedge/netstack",
	"github.com/wedge-edge/wedge/e2e",
	"gvisor.dev",
	"golang.zx2c4.com/wireguard/device",
	"golang.zx2c4.com/wireguard/conn",
	"golang.zx2c4.com/wireguard/tun",
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
