package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultTable is the routing table and fwmark used for default routes when
// Routing.Table is 0 (wg-quick uses the listen port, 51820 by default).
const DefaultTable = 51820

// Routing configures a TUN interface's addresses and routes as wg-quick
// does, with the ip command from iproute2, and undoes them.
//
// Addresses come from the config's Address. For each AllowedIPs prefix a
// route via the interface is added to the main table, except for /0
// prefixes, which get wg-quick's fwmark scheme so the tunnel's own UDP
// packets still reach the server:
//
//	ip -F rule add not fwmark T table T
//	ip -F rule add table main suppress_prefixlength 0
//	ip -F route add 0.0.0.0/0|::/0 dev IFACE table T
//
// with the Bind's sockets marked T (the caller sets fwmark=T on the
// device: Mark reports T, or 0 when no default route was asked for). For
// IPv4 it also sets net.ipv4.conf.all.src_valid_mark=1, as wg-quick does.
// wg-quick's nftables rules against spoofed packets to the tunnel address
// are not installed.
//
// DNS: /etc/resolv.conf is left alone unless SetDNS is true; then its
// content is saved, replaced by the config's DNS servers and search
// domains, and restored by Down (written through a symlink, if it is one).
type Routing struct {
	Interface string
	Config    *Config
	Table     uint32 // 0: DefaultTable
	SetDNS    bool
	Logger    *slog.Logger
	// ResolvConf is the file SetDNS rewrites ("" = /etc/resolv.conf).
	ResolvConf string

	mu        sync.Mutex
	undo      [][]string // ip commands that undo what Up did, in order
	resolv    []byte     // saved resolv.conf, nil when not replaced
	resolvSet bool
}

// Mark returns the fwmark the device's Bind must use, 0 when Up adds no
// default route.
func (r *Routing) Mark() uint32 {
	if !r.hasDefault(4) && !r.hasDefault(6) {
		return 0
	}
	if r.Table != 0 {
		return r.Table
	}
	return DefaultTable
}

func (r *Routing) hasDefault(fam int) bool {
	for _, p := range r.Config.Peer.AllowedIPs {
		if p.Bits() == 0 && (fam == 4) == p.Addr().Is4() {
			return true
		}
	}
	return false
}

func (r *Routing) log() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// Up sets the interface's MTU and addresses, brings it up and adds the
// routes. On error it undoes what it did. Call Down when done, also after
// an error (it is idempotent).
func (r *Routing) Up(ctx context.Context, mtu int) (err error) {
	if r.Config == nil || r.Interface == "" {
		return errors.New("client: routing: no config or interface")
	}
	defer func() {
		if err != nil {
			r.Down()
		}
	}()
	ifc := r.Interface
	if err := ip(ctx, "link", "set", "dev", ifc, "mtu", strconv.Itoa(mtu), "up"); err != nil {
		return err
	}
	r.push("link", "del", "dev", ifc)
	for _, a := range r.Config.Addresses {
		if err := ip(ctx, famFlag(a.Addr()), "address", "add", a.String(), "dev", ifc); err != nil {
			return err
		}
	}
	table := strconv.FormatUint(uint64(r.Mark()), 10)
	// Longest prefixes first, as wg-quick (sort -nr -k 2 -t /).
	allowed := slices.Clone(r.Config.Peer.AllowedIPs)
	slices.SortStableFunc(allowed, func(a, b netip.Prefix) int { return b.Bits() - a.Bits() })
	for _, p := range allowed {
		f := famFlag(p.Addr())
		if p.Bits() == 0 {
			continue
		}
		if err := ip(ctx, f, "route", "add", p.String(), "dev", ifc); err != nil {
			if strings.Contains(err.Error(), "File exists") {
				r.log().Warn("route already present, left as it is", "route", p)
				continue
			}
			return err
		}
		r.push(f, "route", "del", p.String(), "dev", ifc)
	}
	for _, fam := range []int{4, 6} {
		if !r.hasDefault(fam) {
			continue
		}
		f, all := "-4", "0.0.0.0/0"
		if fam == 6 {
			f, all = "-6", "::/0"
		}
		if err := ip(ctx, f, "route", "add", all, "dev", ifc, "table", table); err != nil {
			return err
		}
		r.push(f, "route", "del", all, "dev", ifc, "table", table)
		if err := ip(ctx, f, "rule", "add", "not", "fwmark", table, "table", table); err != nil {
			return err
		}
		r.push(f, "rule", "del", "not", "fwmark", table, "table", table)
		if err := ip(ctx, f, "rule", "add", "table", "main", "suppress_prefixlength", "0"); err != nil {
			return err
		}
		r.push(f, "rule", "del", "table", "main", "suppress_prefixlength", "0")
		if fam == 4 {
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/src_valid_mark", []byte("1\n"), 0o644); err != nil {
				r.log().Warn("could not set src_valid_mark", "err", err)
			}
		}
	}
	if r.SetDNS {
		if err := r.setDNS(); err != nil {
			return err
		}
	}
	return nil
}

// push records an ip command that undoes a step of Up.
func (r *Routing) push(args ...string) {
	r.mu.Lock()
	r.undo = append(r.undo, args)
	r.mu.Unlock()
}

// Down undoes Up: restores resolv.conf, deletes the rules and routes it
// added, and deletes the interface (a TUN goes away with its device
// anyway). Steps that find nothing to undo are skipped silently; it may be
// called any number of times.
func (r *Routing) Down() error {
	r.mu.Lock()
	undo := r.undo
	r.undo = nil
	resolv, set := r.resolv, r.resolvSet
	r.resolv, r.resolvSet = nil, false
	r.mu.Unlock()

	var errs []error
	if set {
		if err := os.WriteFile(r.resolvPath(), resolv, 0o644); err != nil {
			errs = append(errs, fmt.Errorf("client: restore %s: %w", r.resolvPath(), err))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := len(undo) - 1; i >= 0; i-- {
		err := ip(ctx, undo[i]...)
		if err != nil && !gone(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *Routing) resolvPath() string {
	if r.ResolvConf != "" {
		return r.ResolvConf
	}
	return "/etc/resolv.conf"
}

func (r *Routing) setDNS() error {
	if len(r.Config.DNS) == 0 {
		return nil
	}
	path := r.resolvPath()
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("client: DNS: %w", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# written by wedge connect (%s); restored on exit\n", r.Interface)
	for _, d := range r.Config.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	if len(r.Config.DNSSearch) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(r.Config.DNSSearch, " "))
	}
	r.mu.Lock()
	r.resolv, r.resolvSet = old, true
	r.mu.Unlock()
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("client: DNS: %w", err)
	}
	return nil
}

func famFlag(a netip.Addr) string {
	if a.Is4() {
		return "-4"
	}
	return "-6"
}

// ip runs the ip command.
func ip(ctx context.Context, args ...string) error {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("client: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// gone reports whether an undo step failed because there was nothing to
// undo.
func gone(err error) bool {
	s := err.Error()
	return strings.Contains(s, "No such file or directory") || strings.Contains(s, "Cannot find device") ||
		strings.Contains(s, "No such process") || strings.Contains(s, "does not exist")
}
