package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RunTimeout bounds every command NS.Run starts.
const RunTimeout = 2 * time.Minute

// NS is one network namespace of a Lab.
type NS struct {
	// Name is the namespace's name in /var/run/netns ("wl-<id>-<short>").
	Name string
	// Short is the name given to NewNS ("client", "node", ...).
	Short string
	lab   *Lab
}

// NewNS makes a namespace named wl-<lab id>-short, with lo up and an empty
// /etc/netns/<name>/resolv.conf: `ip netns exec` mounts it over
// /etc/resolv.conf, so nothing in the lab ever uses the host's resolver, and
// wg-quick's DNS line has a per-namespace file to write (see WGQuickUp).
func (l *Lab) NewNS(short string) (*NS, error) {
	ns := &NS{Name: NSPrefix + l.ID + "-" + short, Short: short, lab: l}
	l.mu.Lock()
	if l.cleaning {
		l.mu.Unlock()
		return nil, errors.New("lab: NewNS after cleanup")
	}
	l.nss = append(l.nss, ns) // registered first: delete copes with half-made namespaces
	l.mu.Unlock()

	if err := os.MkdirAll(ns.etcDir(), 0o755); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if err := os.WriteFile(ns.ResolvConf(), []byte(emptyResolv), 0o644); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if _, err := l.host("ip", "netns", "add", ns.Name); err != nil {
		return nil, err
	}
	// No DAD, also for the link-local addresses veths get when they come
	// up: while those are tentative (1s) the kernel cannot send neighbour
	// solicitations for forwarded IPv6 packets, and the first connection
	// through a fresh lab waits for a SYN retransmit.
	for _, key := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
		if err := ns.Sysctl(key, "0"); err != nil {
			return nil, err
		}
	}
	if _, err := ns.Run("ip", "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return ns, nil
}

const emptyResolv = "# wedge lab namespace: no resolver unless wg-quick sets one\n"

func (ns *NS) etcDir() string { return filepath.Join("/etc/netns", ns.Name) }

// ResolvConf is the file processes in the namespace see as /etc/resolv.conf.
func (ns *NS) ResolvConf() string { return filepath.Join(ns.etcDir(), "resolv.conf") }

// Lab returns the lab the namespace belongs to.
func (ns *NS) Lab() *Lab { return ns.lab }

func (ns *NS) String() string { return ns.Name }

// delete kills whatever still runs in the namespace, deletes it and its
// /etc/netns directory. It is a no-op for a namespace that does not exist.
func (ns *NS) delete() error {
	var errs []error
	if _, err := os.Stat(filepath.Join("/var/run/netns", ns.Name)); err == nil {
		// A process keeps a deleted namespace alive (and its veths, and
		// wireguard-go's UAPI socket): kill them all first.
		deadline := time.Now().Add(5 * time.Second)
		for {
			pids := ns.pids()
			if len(pids) == 0 {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("lab: %s: processes %v survive SIGKILL", ns.Name, pids))
				break
			}
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if _, err := ns.lab.host("ip", "netns", "delete", ns.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(ns.etcDir()); err != nil {
		errs = append(errs, fmt.Errorf("lab: %w", err))
	}
	os.Remove("/etc/netns") // only when empty
	return errors.Join(errs...)
}

// pids lists the processes inside the namespace (ip netns pids).
func (ns *NS) pids() []int {
	out, err := exec.Command("ip", "netns", "pids", ns.Name).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for f := range strings.FieldsSeq(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pidOf returns the pid of the first process in ns whose command name is
// one of names, or 0.
func (ns *NS) pidOf(names ...string) int {
	for _, pid := range ns.pids() {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && slices.Contains(names, strings.TrimSpace(string(comm))) {
			return pid
		}
	}
	return 0
}

// Command returns a command that runs argv inside the namespace
// (ip netns exec). The caller sets its environment, output and so on.
func (ns *NS) Command(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	cmd.Env = ns.lab.env()
	// Daemons (wireguard-go under wg-quick) inherit stdout/stderr: do not
	// wait for them to close it.
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Run runs argv inside the namespace and returns its combined output. The
// error includes the output.
func (ns *NS) Run(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	return ns.RunContext(ctx, argv...)
}

// RunContext is Run with a context.
func (ns *NS) RunContext(ctx context.Context, argv ...string) (string, error) {
	return ns.lab.run(ns.Name, ns.Command(ctx, argv...))
}

// RunEnv is Run with extra environment variables ("K=V").
func (ns *NS) RunEnv(env []string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	cmd := ns.Command(ctx, argv...)
	cmd.Env = append(cmd.Env, env...)
	return ns.lab.run(ns.Name, cmd)
}

// RunStdin is Run with stdin fed from in.
func (ns *NS) RunStdin(in string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	cmd := ns.Command(ctx, argv...)
	cmd.Stdin = strings.NewReader(in)
	return ns.lab.run(ns.Name, cmd)
}

// labEnv is the environment of every lab process: the caller's, and for
// binaries built with -race (WEDGE_LAB_BUILDFLAGS) no 1s sleep at exit.
func labEnv() []string {
	env := os.Environ()
	if os.Getenv("GORACE") == "" {
		env = append(env, "GORACE=atexit_sleep_ms=0")
	}
	return env
}

// host runs a command in the caller's namespace.
func (l *Lab) host(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 5 * time.Second
	return l.run("host", cmd)
}

func (l *Lab) run(where string, cmd *exec.Cmd) (string, error) {
	start := time.Now()
	out, err := cmd.CombinedOutput()
	line := strings.Join(cmd.Args, " ")
	if where != "host" {
		line = strings.Join(cmd.Args[4:], " ") // drop "ip netns exec NAME"
	}
	l.record(where, line, time.Since(start), out, err)
	if err != nil {
		return string(out), fmt.Errorf("lab: [%s] %s: %w: %s", where, line, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Sysctl sets key (dotted, as sysctl(8) takes it) to value in the namespace.
func (ns *NS) Sysctl(key, value string) error {
	_, err := ns.Run("sysctl", "-qw", key+"="+value)
	return err
}

// SetForwarding turns IPv4 and IPv6 forwarding on or off.
func (ns *NS) SetForwarding(on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	if err := ns.Sysctl("net.ipv4.ip_forward", v); err != nil {
		return err
	}
	return ns.Sysctl("net.ipv6.conf.all.forwarding", v)
}

// AddrAdd adds prefix (an address with its prefix length) to dev. IPv6
// addresses are added with nodad: usable at once.
func (ns *NS) AddrAdd(dev string, prefix netip.Prefix) error {
	args := []string{"ip", "addr", "add", prefix.String(), "dev", dev}
	if prefix.Addr().Is6() {
		args = append(args, "nodad")
	}
	_, err := ns.Run(args...)
	return err
}

// RouteAdd adds a route to dst via gw ("ip route add dst via gw").
func (ns *NS) RouteAdd(dst netip.Prefix, gw netip.Addr) error {
	_, err := ns.Run("ip", "route", "add", dst.String(), "via", gw.String())
	return err
}

// TxOff turns TX checksum offload off on dev (ethtool -K dev tx off): a
// packet XDP moves to another node would otherwise keep a checksum nobody
// finishes (DESIGN.md, the lab).
func (ns *NS) TxOff(dev string) error {
	_, err := ns.Run("ethtool", "-K", dev, "tx", "off")
	return err
}

// Veth connects a (interface aName) and b (bName) with a veth pair, both
// ends up. Names are local to their namespaces.
func (l *Lab) Veth(a *NS, aName string, b *NS, bName string) error {
	if _, err := l.host("ip", "link", "add", aName, "netns", a.Name, "type", "veth",
		"peer", "name", bName, "netns", b.Name); err != nil {
		return err
	}
	if _, err := a.Run("ip", "link", "set", aName, "up"); err != nil {
		return err
	}
	_, err := b.Run("ip", "link", "set", bName, "up")
	return err
}

// Do calls f on a fresh OS thread that has entered the namespace; sockets f
// creates belong to the namespace and stay usable after Do returns. The
// thread is thrown away afterwards, never reused by other goroutines.
func (ns *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread exits with this goroutine.
		fd, err := unix.Open(filepath.Join("/var/run/netns", ns.Name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("lab: %s: %w", ns.Name, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("lab: setns %s: %w", ns.Name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// DialContext dials from inside the namespace.
func (ns *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// WaitTCP waits until a TCP connection to addr from inside the namespace
// succeeds, or timeout passes.
func (ns *NS) WaitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := ns.DialContext(ctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: [%s] %s not reachable after %v: %w", ns.Name, addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
