package main

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The client binary is what users install: it must not link the server's
// storage and cluster machinery, the XDP loader, or the test lab. gVisor is
// allowed (the SOCKS5 mode's userspace stack is built on it).
var forbiddenDeps = []string{
	"go.etcd.io/bbolt",
	"go.etcd.io/etcd",
	"google.golang.org/grpc",
	"github.com/cilium/ebpf",
	modulePath + "/server",
	modulePath + "/lb",
	modulePath + "/e2e",
}

const modulePath = "github.com/wedge-edge/wedge"

// TestClientDeps lists the packages cmd/wedge links (go list -deps) and
// fails once for each forbidden prefix it finds, with the packages under it
// and one import chain from cmd/wedge that brings it in.
func TestClientDeps(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go tool is not in PATH; cannot run go list -deps:", err)
	}
	cmd := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", ".")
	out, err := cmd.Output()
	if err != nil {
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			t.Fatalf("go list -deps: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list -deps: %v", err)
	}
	imports := map[string][]string{} // package -> its imports
	var pkgs []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		pkgs = append(pkgs, f[0])
		imports[f[0]] = f[1:]
	}
	if len(pkgs) == 0 {
		t.Fatal("go list -deps listed no packages")
	}
	root := pkgs[len(pkgs)-1] // -deps lists dependencies first, the package last
	for _, prefix := range forbiddenDeps {
		var found []string
		for _, p := range pkgs {
			if p == prefix || strings.HasPrefix(p, prefix+"/") {
				found = append(found, p)
			}
		}
		if len(found) == 0 {
			continue
		}
		slices.Sort(found)
		names := strings.Join(found, ", ")
		if len(found) > 4 {
			names = strings.Join(found[:4], ", ") + ", ..."
		}
		t.Errorf("%s links %s (%d package(s): %s)\n\tvia %s", root, prefix, len(found),
			names, strings.Join(importChain(imports, root, found), " -> "))
	}
}

// importChain is a shortest chain of imports from root to any of targets.
func importChain(imports map[string][]string, root string, targets []string) []string {
	prev := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if slices.Contains(targets, p) {
			var chain []string
			for ; p != ""; p = prev[p] {
				chain = append(chain, p)
			}
			slices.Reverse(chain)
			return chain
		}
		for _, q := range imports[p] {
			if _, seen := prev[q]; !seen {
				prev[q] = p
				queue = append(queue, q)
			}
		}
	}
	return nil
}
