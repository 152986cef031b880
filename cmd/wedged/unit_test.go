package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSystemdUnit: dist/wedged.service passes `systemd-analyze verify`
// with nothing to say (it exits 0 on unknown keys and bad values, only
// printing them), and dist/wedged.conf, the config file it starts wedged
// with, is one wedged accepts. Without systemd-analyze it skips, except
// under CI=true, where .ci/run installs it and a skip would hide a broken
// unit.
func TestSystemdUnit(t *testing.T) {
	if _, err := flags([]string{"--config", "../../dist/wedged.conf"}); err != nil {
		t.Fatalf("dist/wedged.conf: %v", err)
	}
	unit, err := os.ReadFile("../../dist/wedged.service")
	if err != nil {
		t.Fatal(err)
	}
	const exec0 = "ExecStart=/usr/local/bin/wedged --config /etc/wedge/wedged.conf\n"
	if !strings.Contains(string(unit), exec0) {
		t.Fatalf("dist/wedged.service does not start wedged with %q (README and dist/wedged.conf say so)", exec0)
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("systemd-analyze: %v (.ci/run installs the systemd package)", err)
		}
		t.Skipf("systemd-analyze not installed (apt-get install systemd): %v", err)
	}
	// verify wants ExecStart's binary to exist: a stub stands in for the
	// installed wedged.
	dir := t.TempDir()
	stub := filepath.Join(dir, "wedged")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "wedged.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/wedged", stub)), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify dist/wedged.service: %v\n%s", err, out)
	}
	t.Logf("systemd-analyze verify: clean in %v", time.Since(start).Round(time.Millisecond))
}
