// Package e2e holds wedge's black-box tests: network-namespace labs (built
// with e2e/lab) running the real binaries. Each test file starts with a
// picture of its topology.
//
// The tests need root. Without it, or without a tool the lab uses, they
// skip with the reason; with CI=true they fail instead, so CI never passes by
// skipping. .ci/run installs everything.
//
// The tests drive the binaries from outside: they must not import server/,
// client/, netstack/ or egress/. They may import lb/ (its Maglev table
// predicts a client's owner) and internal/clientid.
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/wedge-edge/wedge/e2e/lab"
)

// binDir holds the binaries lab.Build makes, once per test binary run.
var binDir string

func TestMain(m *testing.M) {
	// A test binary killed by its timeout left its labs: remove them.
	if os.Geteuid() == 0 {
		swept, err := lab.SweepStale()
		if len(swept) > 0 {
			fmt.Fprintf(os.Stderr, "e2e: removed labs of dead processes: %v\n", swept)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
		}
	}
	dir, err := os.MkdirTemp("", "wedge-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)

	// Every lab deletes its namespaces, even when its test fails: check.
	for _, ns := range lab.Leftovers() {
		fmt.Fprintf(os.Stderr, "e2e: namespace %s left behind\n", ns)
		code = 1
	}
	os.Exit(code)
}

// inCI reports whether missing prerequisites must fail rather than skip.
func inCI() bool { return os.Getenv("CI") == "true" }

// needLab skips the test (fails it under CI=true) unless the machine can run
// a lab using tools.
func needLab(t *testing.T, tools ...string) {
	t.Helper()
	if testing.Short() && !inCI() {
		t.Skip("e2e: skipped in -short mode")
	}
	if err := lab.Check(tools...); err != nil {
		if inCI() {
			t.Fatalf("e2e prerequisites missing (CI=true: failing, not skipping): %v", err)
		}
		t.Skipf("e2e: skipping: %v", err)
	}
}

// originsrv builds the lab's origin server and probe.
func originsrv(t *testing.T) string {
	t.Helper()
	p, err := lab.BuildPkg(binDir, lab.PkgOriginsrv)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// newSingleNode builds the single-node lab (see lab/topo.go) and starts the
// origin's servers.
func newSingleNode(t *testing.T) (*lab.SingleNode, lab.Probe) {
	t.Helper()
	srv := originsrv(t)
	l, err := lab.New(t)
	if err != nil {
		t.Fatal(err)
	}
	s, err := lab.NewSingleNode(l)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartOrigin(srv); err != nil {
		t.Fatal(err)
	}
	return s, lab.Probe{NS: s.Client, Bin: srv}
}
