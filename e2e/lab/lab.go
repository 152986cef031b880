// Package lab builds network-namespace labs for wedge's end-to-end tests and
// for `wedge-lab bench`: namespaces, veth pairs, addresses and routes,
// long-lived processes with their output in log files, wg-quick clients, a
// plain wireguard-go baseline, and iperf3 / connections-per-second
// measurements.
//
// Everything a Lab makes is undone by the cleanup it registers with its owner
// (a *testing.T, or a Cleanups the bench command runs itself): processes are
// stopped, wg-quick interfaces taken down, every process still inside a lab
// namespace killed, the namespaces deleted and the temporary directory removed.
// When the owner reports failure (a Failed() bool method), the tail of every
// log is printed (Logf) and the directory is kept.
//
// Lab traffic stays between the lab's namespaces: only documentation and
// benchmark ranges are used (see topo.go), and no namespace has a route out.
//
// A Lab needs root, iproute2 and the tools Check lists. Typical use, with
// the single-node topology of topo.go:
//
//	bins, _ := lab.Build(dir)                  // wedged, wedge, originsrv
//	l, _ := lab.New(t)                         // or a *lab.Cleanups
//	s, _ := lab.NewSingleNode(l)               // client ↔ node ↔ origin
//	s.StartOrigin(bins.Originsrv)              // HTTP, DNS, iperf3 -s
//	w, _ := s.StartWedged(bins.Wedged)         // waits for its API
//	conf, _ := w.Register(bins.Wedge)          // wedge register, in the node
//	s.Client.WGQuickUp(conf)                   // wg-quick up, in the client
//	lab.Probe{NS: s.Client, Bin: bins.Originsrv}.RemoteAddr(lab.Origin4.Addr())
//	s.Client.Iperf3(lab.Origin4.Addr(), lab.IperfOpts{Reverse: true})
//
// The baseline (StartBaseline) is a plain wireguard-go server with kernel
// forwarding and NAT in the same shape, for ratios measured in one run.
//
// It drives wedge from outside, through its binaries: it must not import
// server/, client/, netstack/ or egress/ (the flood generator in originsrv
// uses server/wgmsg to speak WireGuard's handshake).
package lab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// NSPrefix starts the name of every namespace a Lab makes ("wl-<id>-<name>"),
// so leftovers are easy to find: ip netns list | grep ^wl-.
const NSPrefix = "wl-"

// Cleaner is what a Lab needs from its owner. *testing.T satisfies it, and so
// does *Cleanups. Optional methods, found by type assertion: Logf(format,
// args...) for diagnostics, Failed() bool to keep logs of a failed run, and
// Errorf(format, args...) to report a cleanup that did not complete.
type Cleaner interface {
	Cleanup(func())
}

type logfer interface {
	Logf(format string, args ...any)
}
type failer interface{ Failed() bool }
type errorfer interface {
	Errorf(format string, args ...any)
}

// Cleanups is a Cleaner for code outside tests: Run calls the registered
// functions in reverse order, once.
type Cleanups struct {
	mu  sync.Mutex
	fns []func()
}

// Cleanup registers fn to be called by Run.
func (c *Cleanups) Cleanup(fn func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fns = append(c.fns, fn)
}

// Run calls the registered functions, last registered first. Functions
// registered while Run runs are run too.
func (c *Cleanups) Run() {
	for {
		c.mu.Lock()
		if len(c.fns) == 0 {
			c.mu.Unlock()
			return
		}
		fn := c.fns[len(c.fns)-1]
		c.fns = c.fns[:len(c.fns)-1]
		c.mu.Unlock()
		fn()
	}
}

// Lab owns the namespaces, processes and files of one lab.
type Lab struct {
	// ID is random per Lab; it makes namespace, interface and socket names
	// unique, since /var/run/netns and /var/run/wireguard are shared by
	// every namespace and by concurrent runs.
	ID string
	// Dir holds the lab's logs, configs and state directories.
	Dir string
	// AdminToken is the admin token of every wedged the lab starts
	// (AdminTokenFile); every command the lab runs has it in
	// WEDGE_ADMIN_TOKEN, so `wedge status`, `drain` and `register` on a
	// node's admin API work as before the API took a token.
	AdminToken string

	owner Cleaner

	mu       sync.Mutex // guards the fields below
	nss      []*NS
	procs    []*Proc
	undo     []func() error // wg-quick down and the like, before processes are killed
	ifaces   int
	cmdlog   *os.File
	cleaning bool
}

// New makes an empty Lab whose cleanup is registered with owner.
func New(owner Cleaner) (*Lab, error) {
	if owner == nil {
		return nil, errors.New("lab: nil owner")
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("lab: id: %w", err)
	}
	id := hex.EncodeToString(b[:])
	dir, err := os.MkdirTemp("", "wedge-lab-"+id+"-")
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	cmdlog, err := os.Create(filepath.Join(dir, "commands.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("lab: %w", err)
	}
	var tok [32]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, fmt.Errorf("lab: admin token: %w", err)
	}
	l := &Lab{ID: id, Dir: dir, owner: owner, cmdlog: cmdlog, AdminToken: hex.EncodeToString(tok[:])}
	if err := os.WriteFile(l.AdminTokenFile(), []byte(l.AdminToken+"\n"), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("lab: %w", err)
	}
	// Claim the id for this process, so that SweepStale can tell a lab
	// whose process died (a test timeout, a kill) from a live one.
	if err := os.MkdirAll(claimDir, 0o755); err == nil {
		os.WriteFile(filepath.Join(claimDir, id), []byte(strconv.Itoa(os.Getpid())), 0o644)
	}
	madeIDs.Store(id, true)
	owner.Cleanup(l.cleanup)
	return l, nil
}

// AdminTokenFile is the file holding AdminToken (mode 0600), which
// StartWedged gives wedged as --admin-token-file.
func (l *Lab) AdminTokenFile() string { return filepath.Join(l.Dir, "admin.token") }

// env is the environment of the lab's processes: labEnv and the admin
// token.
func (l *Lab) env() []string {
	env := labEnv()
	if l.AdminToken != "" {
		env = append(env, "WEDGE_ADMIN_TOKEN="+l.AdminToken)
	}
	return env
}

// madeIDs holds the id of every Lab this process made.
var madeIDs sync.Map

// Leftovers lists the namespaces of labs made by this process that still
// exist: none once every owner ran its cleanups.
func Leftovers() []string {
	var left []string
	madeIDs.Range(func(id, _ any) bool {
		names, _ := ListNamespaces(NSPrefix + id.(string) + "-")
		left = append(left, names...)
		return true
	})
	return left
}

// claimDir holds one file per live lab: its id, holding the owner's pid.
const claimDir = "/run/wedge-lab"

// SweepStale deletes what labs of dead processes left behind (their
// processes, namespaces and /etc/netns entries): a test binary killed by
// its timeout runs no cleanup. It returns the ids it swept.
func SweepStale() ([]string, error) {
	ents, err := os.ReadDir(claimDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var swept []string
	var errs []error
	for _, e := range ents {
		id := e.Name()
		b, err := os.ReadFile(filepath.Join(claimDir, id))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && alive(pid) {
			continue
		}
		names, _ := ListNamespaces(NSPrefix + id + "-")
		l := &Lab{ID: id}
		for _, name := range names {
			ns := &NS{Name: name, lab: l}
			if err := ns.delete(); err != nil {
				errs = append(errs, err)
			}
		}
		removeSockets(id)
		etc, _ := filepath.Glob(filepath.Join("/etc/netns", NSPrefix+id+"-*"))
		for _, d := range etc {
			os.RemoveAll(d)
		}
		os.Remove("/etc/netns") // only when empty
		os.Remove(filepath.Join(claimDir, id))
		swept = append(swept, id)
	}
	return swept, errors.Join(errs...)
}

// IfName returns an interface name unique across concurrent labs and at
// most 15 bytes long, for interfaces whose names are global (wg-quick
// configs are named after their interface, and UAPI sockets live in the
// shared /var/run/wireguard).
func (l *Lab) IfName() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ifaces++
	return fmt.Sprintf("wl%s%d", l.ID, l.ifaces) // "wl" + 6 + digits
}

// Logf logs through the owner when it can log.
func (l *Lab) Logf(format string, args ...any) {
	if lg, ok := l.owner.(logfer); ok {
		lg.Logf(format, args...)
	}
}

func (l *Lab) errorf(format string, args ...any) {
	if e, ok := l.owner.(errorfer); ok {
		e.Errorf(format, args...)
		return
	}
	l.Logf(format, args...)
}

// record appends one finished command to commands.log.
func (l *Lab) record(ns, cmd string, took time.Duration, out []byte, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cmdlog == nil {
		return
	}
	status := "ok"
	if err != nil {
		status = err.Error()
	}
	fmt.Fprintf(l.cmdlog, "[%s] %s (%v, %s)\n", ns, cmd, took.Round(time.Millisecond), status)
	if len(out) > 0 {
		for line := range strings.SplitSeq(strings.TrimRight(string(out), "\n"), "\n") {
			fmt.Fprintf(l.cmdlog, "    %s\n", line)
		}
	}
}

// onCleanup registers fn to run before processes are stopped and namespaces
// deleted (last registered first).
func (l *Lab) onCleanup(fn func() error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.undo = append(l.undo, fn)
}

func (l *Lab) cleanup() {
	l.mu.Lock()
	l.cleaning = true
	undo := slices.Clone(l.undo)
	procs := slices.Clone(l.procs)
	nss := slices.Clone(l.nss)
	l.mu.Unlock()

	for _, fn := range slices.Backward(undo) {
		if err := fn(); err != nil {
			l.Logf("lab cleanup: %v", err)
		}
	}
	for _, p := range slices.Backward(procs) {
		p.Stop()
	}
	// Binaries built with -race report at exit too: look once all stopped.
	if raced := l.raceReports(); len(raced) > 0 {
		l.errorf("lab: data race reported in %v", raced)
	}
	failed := false
	if f, ok := l.owner.(failer); ok {
		failed = f.Failed()
	}
	if failed {
		l.dumpLogs()
	}

	for _, ns := range slices.Backward(nss) {
		if err := ns.delete(); err != nil {
			l.errorf("lab cleanup: %v", err)
		}
	}
	removeSockets(l.ID)
	if left := l.leftNamespaces(); len(left) > 0 {
		l.errorf("lab cleanup: namespaces left behind: %v", left)
	} else {
		os.Remove(filepath.Join(claimDir, l.ID))
	}

	l.mu.Lock()
	l.cmdlog.Close()
	l.cmdlog = nil
	l.mu.Unlock()
	if failed || os.Getenv("WEDGE_LAB_KEEP") != "" {
		l.Logf("lab %s: logs kept in %s", l.ID, l.Dir)
		return
	}
	if err := os.RemoveAll(l.Dir); err != nil {
		l.errorf("lab cleanup: %v", err)
	}
}

// alive reports whether pid runs and is not a zombie (a killed test binary
// stays one until whoever adopted it reaps it).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) state ...": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

// removeSockets removes the UAPI sockets of a lab's interfaces (IfName)
// from the shared /var/run/wireguard: a userspace WireGuard killed with
// SIGKILL leaves its socket behind.
func removeSockets(id string) {
	socks, _ := filepath.Glob(filepath.Join("/var/run/wireguard", "wl"+id+"*.sock"))
	for _, s := range socks {
		os.Remove(s)
	}
}

// leftNamespaces lists this lab's namespaces still in /var/run/netns.
func (l *Lab) leftNamespaces() []string {
	names, _ := ListNamespaces(NSPrefix + l.ID + "-")
	return names
}

// ListNamespaces returns the names in /var/run/netns that start with prefix
// (what `ip netns list` shows).
func ListNamespaces(prefix string) ([]string, error) {
	ents, err := os.ReadDir("/var/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// raceReports lists the logs in Dir holding a race detector report.
func (l *Lab) raceReports() []string {
	var raced []string
	logs, _ := filepath.Glob(filepath.Join(l.Dir, "*.log"))
	for _, path := range logs {
		if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			raced = append(raced, filepath.Base(path))
		}
	}
	return raced
}

// dumpLogs prints the tail of every log in Dir through the owner.
func (l *Lab) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(l.Dir, "*.log"))
	for _, path := range logs {
		b, err := os.ReadFile(path)
		if err != nil || len(b) == 0 {
			continue
		}
		l.Logf("--- %s (last 60 lines) ---\n%s", filepath.Base(path), tail(b, 60))
	}
}

func tail(b []byte, n int) string {
	b = bytes.TrimRight(b, "\n")
	i := len(b)
	for ; n > 0 && i > 0; n-- {
		i = bytes.LastIndexByte(b[:i], '\n')
		if i < 0 {
			i = 0
			break
		}
	}
	if i > 0 {
		i++
	}
	return string(b[i:])
}
