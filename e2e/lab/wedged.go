package lab

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultAPI is wedged's default --api address; inside the node namespace
// its loopback is the namespace's own.
const DefaultAPI = "127.0.0.1:8080"

// Wedged is a wedged process started by StartWedged.
type Wedged struct {
	Proc *Proc
	NS   *NS
	// API is the registration API's base URL, reachable from NS
	// ("http://127.0.0.1:8080").
	API string
	// Iface is the --name given to wedged (its UAPI socket's name).
	Iface string
	// State is the --state directory.
	State string

	token string // the admin token HTTPClient sends
}

// StartWedged runs wedged (the binary at bin) in ns with args, and waits
// until its registration API answers HTTP (any status). The API address is
// taken from an --api argument (default DefaultAPI). wedged is stopped with
// SIGTERM by the lab's cleanup, or by w.Proc.Stop().
func StartWedged(ns *NS, bin string, args ...string) (*Wedged, error) {
	w := &Wedged{NS: ns, API: "http://" + DefaultAPI, token: ns.lab.AdminToken}
	tokenGiven := false
	for i, a := range args {
		val := func(flag string) (string, bool) {
			if v, ok := strings.CutPrefix(a, flag+"="); ok {
				return v, true
			}
			if a == flag && i+1 < len(args) {
				return args[i+1], true
			}
			return "", false
		}
		for _, prefix := range []string{"--", "-"} {
			if v, ok := val(prefix + "api"); ok {
				w.API = "http://" + v
			}
			if v, ok := val(prefix + "name"); ok {
				w.Iface = v
			}
			if v, ok := val(prefix + "state"); ok {
				w.State = v
			}
			if v, ok := val(prefix + "admin-token-file"); ok {
				tokenGiven = true
				if b, err := os.ReadFile(v); err == nil {
					w.token = strings.TrimSpace(string(b))
				}
			}
		}
	}
	if !tokenGiven {
		// The lab's token: every wedged of a lab takes the same one, and
		// every command the lab runs has it (Lab.AdminToken).
		args = append(args, "--admin-token-file", ns.lab.AdminTokenFile())
	}
	p, err := ns.Start("wedged", nil, append([]string{bin}, args...)...)
	if err != nil {
		return nil, err
	}
	w.Proc = p
	if err := w.WaitAPI(30 * time.Second); err != nil {
		return nil, err
	}
	return w, nil
}

// WedgedArgs returns the arguments for a wedged in this lab's node
// namespace: state in the lab directory, UDP port 51820, API on
// DefaultAPI, the VIP as v4 and v6 endpoints, both egress addresses, a port
// slice, the origins allowed, the origin's DNS server as upstream (the node
// namespace has no resolv.conf nameserver), and a unique interface name. extra is appended
// (flags given twice: the later wins, or both for repeatable ones).
func (s *SingleNode) WedgedArgs(extra ...string) []string {
	args := []string{
		"--state", filepath.Join(s.Lab.Dir, "wedged-state"),
		"--listen", "51820",
		"--api", DefaultAPI,
		"--endpoint", netip.AddrPortFrom(VIP4, 51820).String(),
		"--endpoint", netip.AddrPortFrom(VIP6, 51820).String(),
		"--egress", Egress4.String(),
		"--egress", Egress6.String(),
		"--egress-ports", "40000-49999", // inside the kernel's default ip_local_port_range
		"--dns-upstream", netip.AddrPortFrom(Resolver4.Addr(), DNSPort).String(),
		"--allow", Origins4.String(),
		"--allow", Origins6.String(),
		"--name", s.Lab.IfName(),
	}
	return append(args, extra...)
}

// StartWedged runs wedged in the node namespace with WedgedArgs(extra...).
func (s *SingleNode) StartWedged(bin string, extra ...string) (*Wedged, error) {
	return StartWedged(s.Node, bin, s.WedgedArgs(extra...)...)
}

// WaitAPI waits until the API answers an HTTP request from inside the
// namespace, failing early when wedged exits.
func (w *Wedged) WaitAPI(timeout time.Duration) error {
	client := w.HTTPClient()
	deadline := time.Now().Add(timeout)
	for {
		if w.Proc.Exited() {
			return w.Proc.exitedError()
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, w.API+"/v1/reg/lab-probe", nil)
		resp, err := client.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: wedged API %s not answering after %v: %w", w.API, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Show returns `wg show <iface>` for wedged's device (its UAPI socket in
// /var/run/wireguard).
func (w *Wedged) Show() (string, error) {
	if w.Iface == "" {
		return "", fmt.Errorf("lab: wedged started without --name")
	}
	return w.NS.Run("wg", "show", w.Iface)
}

// HTTPClient returns a client whose connections are made inside the
// namespace wedged runs in, for calling the admin API directly; it sends
// the lab's admin token with every request.
func (w *Wedged) HTTPClient() *http.Client {
	return &http.Client{
		Transport: bearer{token: w.token, next: &http.Transport{
			DialContext:       w.NS.DialContext,
			DisableKeepAlives: true,
		}},
		Timeout: 10 * time.Second,
	}
}

// bearer adds "Authorization: Bearer token" to requests that carry none.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if b.token != "" && r.Header.Get("Authorization") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return b.next.RoundTrip(r)
}

// Register runs `wedge register --api <API> --out FILE` in the wedged
// namespace (the API stays on its loopback) and returns the wg-quick
// configuration it wrote, ready for Client.WGQuickUp.
func (w *Wedged) Register(wedgeBin string, extra ...string) (string, error) {
	out := filepath.Join(w.NS.lab.Dir, fmt.Sprintf("reg-%s.conf", w.NS.lab.IfName()))
	args := append([]string{wedgeBin, "register", "--api", w.API, "--out", out}, extra...)
	if _, err := w.NS.Run(args...); err != nil {
		return "", err
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return "", fmt.Errorf("lab: wedge register wrote no config: %w", err)
	}
	return string(b), nil
}

// ConfigValue returns the first value of key (case-insensitive) in a
// wg-quick configuration, "" if absent.
func ConfigValue(conf, key string) string {
	sc := bufio.NewScanner(strings.NewReader(conf))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), key) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
