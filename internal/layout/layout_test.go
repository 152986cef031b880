package layout

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/wedge-edge/wedge"

// rule: packages matching from (a path under the module; "x/..." is x and
// everything below it) must not depend, directly or through others, on a
// package matching any of deny, unless it matches allow. Test files are
// not held to the rules: a client test may start a real node in memory.
type rule struct {
	from  string
	deny  []string
	allow []string
	why   string
}

// Patterns: "@/x/..." is a package of this module; anything else is a
// module path prefix.
var rules = []rule{
	{from: "@/server/...", deny: []string{"gvisor.dev/", "@/client/...", "@/netstack/...", "@/e2e/...", "@/cmd/..."},
		why: "server/ is the node's WireGuard side and control plane; gVisor stays in netstack/, the client in client/"},
	{from: "@/server/front", deny: []string{"golang.zx2c4.com/wireguard/device", "golang.zx2c4.com/wireguard/conn", "golang.zx2c4.com/wireguard/tun"},
		why: "the front's control runs beside the WireGuard device, not inside it"},
	{from: "@/client/...", deny: []string{"@/server/...", "@/lb/...", "@/e2e/...", "@/cmd/...", "github.com/cilium/ebpf", "go.etcd.io/", "google.golang.org/grpc", "github.com/prometheus/"},
		why: "the client links nothing of the node"},
	{from: "@/cmd/wedge", deny: []string{"@/server/...", "@/lb/...", "@/e2e/...", "github.com/cilium/ebpf", "go.etcd.io/", "google.golang.org/grpc", "github.com/prometheus/"},
		why: "the client binary links neither the server, the XDP front nor the lab"},
	{from: "@/netstack/...", deny: []string{"github.com/cilium/ebpf", "@/server/...", "@/client/...", "@/lb/...", "@/egress/...", "@/e2e/...", "@/cmd/...", "go.etcd.io/"},
		why: "netstack/ is gVisor behind a tun.Device; it meets egress only through the Dialer interface it defines"},
	{from: "@/egress/...", deny: []string{"gvisor.dev/", "golang.zx2c4.com/wireguard", "@/server/...", "@/client/...", "@/lb/...", "@/netstack/...", "@/e2e/...", "@/cmd/...", "github.com/cilium/ebpf", "go.etcd.io/"},
		why: "egress/ is plain sockets and the egress plan; it knows no tunnel, no stack, no front"},
	{from: "@/lb/...", deny: []string{"gvisor.dev/", "golang.zx2c4.com/wireguard", "@/server/...", "@/client/...", "@/netstack/...", "@/egress/...", "@/e2e/...", "@/cmd/...", "go.etcd.io/"},
		why: "lb/ loads and feeds the XDP program; membership reaches it as plain values from server/front"},
	{from: "@/internal/...", deny: []string{"@/server/...", "@/client/...", "@/netstack/...", "@/egress/...", "@/lb/...", "@/e2e/...", "@/cmd/..."},
		why: "internal/ holds helpers both sides share; they depend on no room of the tree"},
	{from: "@/internal/api", deny: []string{"@/...", "golang.", "github.com/", "go.", "google.", "gvisor.dev/"},
		why: "the API's wire types are standard library only, so either side imports them for free"},
	{from: "@/e2e/...", deny: []string{"@/server/...", "@/client/...", "@/netstack/...", "@/egress/...", "@/cmd/..."},
		allow: []string{"@/server/wgmsg", "@/egress/geoip/geoiptest"},
		why:   "e2e/ drives the binaries from outside; the lab's flood generator speaks WireGuard's handshake with wgmsg, and the lab writes GeoIP databases with geoiptest"},
}

func expand(p string) string { return strings.Replace(p, "@/", module+"/", 1) }

// matches reports whether pkg matches pattern (see rule).
func matches(pattern, pkg string) bool {
	pattern = expand(pattern)
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return pkg == base || strings.HasPrefix(pkg, base+"/")
	}
	if strings.HasPrefix(pattern, module+"/") || pattern == module {
		return pkg == pattern
	}
	return strings.HasPrefix(pkg, pattern)
}

// violations lists, for the package graph deps (package → its transitive
// dependencies), every dependency a rule forbids, as "pkg → dep (why)".
// It also reports a rule that matches no package at all: a rule a rename
// made toothless.
func violations(deps map[string][]string) []string {
	var out []string
	for _, r := range rules {
		used := false
		for pkg, ds := range deps {
			if !matches(r.from, pkg) {
				continue
			}
			used = true
			for _, d := range ds {
				if !strings.Contains(d, ".") && !strings.HasPrefix(d, module) {
					if slices.ContainsFunc(r.deny, func(p string) bool { return matches(p, d) }) {
						out = append(out, pkg+" → "+d+" (standard library; "+r.why+")")
					}
					continue
				}
				if matches(r.from, d) && !strings.HasPrefix(r.from, "@/internal/api") {
					continue // within the room itself
				}
				if !slices.ContainsFunc(r.deny, func(p string) bool { return matches(p, d) }) ||
					slices.ContainsFunc(r.allow, func(p string) bool { return matches(p, d) }) {
					continue
				}
				out = append(out, pkg+" → "+d+" ("+r.why+")")
			}
		}
		if !used {
			out = append(out, "rule for "+r.from+" matches no package")
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func TestImportRules(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go tool is not in PATH: cannot list the package graph")
	}
	root, err := exec.Command(goTool, "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goTool, "list", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", "./...")
	cmd.Dir = filepath.Dir(string(bytes.TrimSpace(root)))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := map[string][]string{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) > 0 {
			deps[f[0]] = f[1:]
		}
	}
	if len(deps) < 20 {
		t.Fatalf("go list found %d packages; want the whole module", len(deps))
	}
	for _, v := range violations(deps) {
		t.Error(v)
	}
}

// TestViolations shows the checker can fail: a graph with one breach of
// each kind.
func TestViolations(t *testing.T) {
	m := func(s string) string { return expand(s) }
	deps := map[string][]string{
		m("@/server"):                 {m("@/server/registry"), m("@/client"), "gvisor.dev/gvisor/pkg/tcpip", "fmt"},
		m("@/server/registry"):        {m("@/internal/api"), "go.etcd.io/bbolt"},
		m("@/client"):                 {m("@/internal/api"), m("@/netstack")},
		m("@/cmd/wedge"):              {m("@/client"), m("@/server/registry"), "go.etcd.io/bbolt"},
		m("@/netstack"):               {m("@/internal/happyeyeballs")},
		m("@/egress"):                 {m("@/egress/geoip")},
		m("@/egress/geoip"):           {},
		m("@/lb"):                     {"github.com/cilium/ebpf"},
		m("@/internal/api"):           {"fmt", "net/netip"},
		m("@/internal/udpbind"):       {"golang.zx2c4.com/wireguard/conn"},
		m("@/internal/happyeyeballs"): {},
		m("@/e2e/lab/originsrv"):      {m("@/server/wgmsg")},
		m("@/e2e"):                    {m("@/e2e/lab"), m("@/egress")},
		m("@/e2e/lab"):                {},
	}
	got := violations(deps)
	want := []string{
		m("@/cmd/wedge") + " → " + m("@/server/registry"),
		m("@/cmd/wedge") + " → go.etcd.io/bbolt",
		m("@/e2e") + " → " + m("@/egress"),
		m("@/server") + " → " + m("@/client"),
		m("@/server") + " → gvisor.dev/gvisor/pkg/tcpip",
	}
	var breaches []string
	for _, v := range got {
		if strings.HasPrefix(v, "rule for") {
			continue
		}
		breaches = append(breaches, v[:strings.Index(v, " (")])
	}
	if !slices.Equal(breaches, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(breaches, "\n"), strings.Join(want, "\n"))
	}
	// internal/api on anything of the module, even internal/, is a breach.
	got = violations(map[string][]string{m("@/internal/api"): {m("@/internal/clientid")}})
	if !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, m("@/internal/api")+" → ") }) {
		t.Errorf("internal/api importing internal/clientid: not reported: %q", got)
	}
	// A rule whose room is gone is reported.
	if !slices.Contains(violations(map[string][]string{}), "rule for @/server/... matches no package") {
		t.Error("a rule matching no package is not reported")
	}
}
