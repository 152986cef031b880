package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// Tools every lab uses; Check always looks for them.
var BaseTools = []string{"ip", "sysctl"}

// Tools the single-node labs use besides BaseTools.
var (
	ToolsOrigin   = []string{"iperf3", "ss"}
	ToolsClient   = []string{"wg", "wg-quick", "ping", "iperf3"}
	ToolsBaseline = []string{"wg", "nft"}
	ToolsXDP      = []string{"ethtool"}
)

// ErrNotRoot is returned by Check when the process is not root.
var ErrNotRoot = errors.New("lab: needs root (network namespaces)")

// Check reports what a lab using tools lacks: root, a tool in PATH, or (when
// tools holds "wg-quick") a userspace WireGuard for it. The error lists
// everything missing at once.
func Check(tools ...string) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	var missing []string
	for _, t := range append(append([]string{}, BaseTools...), tools...) {
		if slices.Contains(missing, t) {
			continue
		}
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	for _, t := range tools {
		if t == "wg-quick" {
			if _, err := UserspaceWireGuard(); err != nil {
				missing = append(missing, err.Error())
			}
			break
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("lab: missing %s (.ci/run installs them)", strings.Join(missing, ", "))
	}
	return nil
}

var uwg struct {
	once sync.Once
	path string
	err  error
}

// UserspaceWireGuard returns the absolute path of the userspace WireGuard
// the lab gives wg-quick (WG_QUICK_USERSPACE_IMPLEMENTATION) and runs as the
// baseline server: $WG_QUICK_USERSPACE_IMPLEMENTATION if set, else
// `wireguard` (go install golang.zx2c4.com/wireguard@latest) in PATH, GOBIN or
// GOPATH/bin, else `wireguard-go` in PATH.
func UserspaceWireGuard() (string, error) {
	uwg.once.Do(func() {
		if p := os.Getenv("WG_QUICK_USERSPACE_IMPLEMENTATION"); p != "" {
			uwg.path, uwg.err = exec.LookPath(p)
		} else {
			uwg.path, uwg.err = findUserspaceWireGuard()
		}
		if uwg.err == nil {
			uwg.path, uwg.err = filepath.Abs(uwg.path)
		}
	})
	return uwg.path, uwg.err
}

func findUserspaceWireGuard() (string, error) {
	if p, err := exec.LookPath("wireguard"); err == nil {
		return p, nil
	}
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		var dirs []string
		if len(lines) > 0 && lines[0] != "" {
			dirs = append(dirs, lines[0])
		}
		if len(lines) > 1 {
			for gp := range strings.SplitSeq(lines[1], string(os.PathListSeparator)) {
				dirs = append(dirs, filepath.Join(gp, "bin"))
			}
		}
		for _, d := range dirs {
			p := filepath.Join(d, "wireguard")
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
				return p, nil
			}
		}
	}
	if p, err := exec.LookPath("wireguard-go"); err == nil {
		return p, nil
	}
	return "", errors.New("userspace wireguard (go install golang.zx2c4.com/wireguard@latest)")
}
