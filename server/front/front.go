// Package front is a node's control of its XDP front (package lb): it
// turns the cluster's membership of the node's data center into the
// front's tables and pins, the egress plan into its return-traffic
// steering, and forwards the handshake initiations of standard clients
// that reached this node though another node owns them to that owner.
//
// It owns the wiring between server/cluster, egress.Router and lb, not the
// program itself (lb) nor the device (server). Like every server/ package
// it must not import gVisor, client/, netstack/ or e2e/; nor wireguard-go's
// device: it runs beside the device, not inside it.
package front

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/lb"
	"github.com/wedge-edge/wedge/server/cluster"
)

// DefaultGUEPort is the UDP port nodes send each other GUE on. Any fixed
// port works; it must be the same on every node and open between them.
const DefaultGUEPort = 6080

// Owners is the ClientID → node function of the table every front builds
// from the active nodes ids (server.Config.Owners).
func Owners(active []string) (func(cid uint32) string, error) {
	t, err := lb.NewTable(active, lb.XDPTableSize)
	if err != nil {
		return nil, err
	}
	return func(cid uint32) string { id, _ := t.Owner(cid); return id }, nil
}

// Config is what New builds a Front from.
type Config struct {
	// WGPort is the node's WireGuard port, GUEPort the one nodes send
	// each other GUE on.
	WGPort, GUEPort uint16
	// ID, DC and Underlay are this node's: its cluster member ID, its
	// data center and the address other nodes reach it on.
	ID, DC   string
	Underlay netip.Addr
	// VIPs are the anycast addresses the front steers: one IPv4, one
	// IPv6 at most.
	VIPs []netip.Addr
	// IndexKey is the cluster's index key (wgmsg.IndexKey of the service
	// private key): the program routes a standard client's responses,
	// cookie replies and data messages by the slot their tagged receiver
	// index carries, which is the node index of the node holding that
	// slot (cluster.Member.Slot, 0 alone).
	IndexKey uint32
	// Member is the cluster's membership; nil for a node alone, which
	// owns every client.
	Member *cluster.Membership
	// HeirWindow is how long the slot of a node that left the data
	// center sends the packets its sessions' tagged indexes carry to its
	// heir (lb.HeirOf: the next node by slot that is not draining) rather
	// than treating them as gone. 0: lb.DefaultHeirWindow (30 s);
	// negative: off. See lb.Front.Update.
	HeirWindow time.Duration
	// Egress is the node's egress router; nil without an egress plan,
	// when the front steers no return traffic.
	Egress *egress.Router
	// Log receives the front's log lines. Required.
	Log *slog.Logger
}

// Front is the loaded XDP program and what feeds it.
type Front struct {
	cfg   Config
	slot  uint8
	objs  *lb.Objects
	front *lb.Front
	unsub func()
	fwd   atomic.Pointer[Forwarder]

	// mu guards timer, closed and last, and applies one membership at a
	// time.
	mu     sync.Mutex
	timer  *time.Timer // re-applies the membership when a joining node is due
	closed bool
	last   []cluster.Member // every data center's members, for egress steering
}

// New loads the XDP program and, in a cluster, keeps its tables in step
// with the membership of this node's data center and its egress steering
// with the plan and every data center's members. Alone, the node owns
// every client and the program only passes packets (and would decapsulate
// nothing: no peers). The program is not attached yet: see Attach.
func New(cfg Config) (*Front, error) {
	if cfg.Log == nil {
		return nil, errors.New("front: nil Log")
	}
	fc := lb.FrontConfig{WGPort: cfg.WGPort, GUEPort: cfg.GUEPort, Self: cfg.ID, SelfUnderlay: cfg.Underlay,
		IndexKey: cfg.IndexKey, HeirWindow: cfg.HeirWindow, Log: cfg.Log}
	if cfg.Member != nil {
		fc.SelfSlot = cfg.Member.Self().Slot
	}
	fc.VIP4, fc.VIP6 = vips(cfg.VIPs)
	objs, err := lb.Load()
	if err != nil {
		return nil, err
	}
	front, err := lb.NewFront(objs, fc)
	if err != nil {
		objs.Close()
		return nil, err
	}
	x := &Front{cfg: cfg, slot: fc.SelfSlot, objs: objs, front: front}
	if cfg.Egress != nil {
		x.setEgress()
		cfg.Egress.SetOnReload(func() {
			x.mu.Lock()
			defer x.mu.Unlock()
			if !x.closed {
				x.setEgress()
			}
		})
	}
	if cfg.Member != nil {
		x.follow()
	}
	return x, nil
}

func vips(list []netip.Addr) (v4, v6 netip.Addr) {
	for _, v := range list {
		if v.Is4() {
			v4 = v
		} else {
			v6 = v
		}
	}
	return v4, v6
}

// setEgress applies the egress steering of the plan and the last
// membership. Called with mu held, or before the front is shared.
func (x *Front) setEgress() {
	if x.cfg.Egress == nil {
		return
	}
	if err := x.front.SetEgress(egressTable(x.cfg.Egress.Plan(), x.cfg.DC, x.last)); err != nil {
		x.cfg.Log.Error("xdp: egress steering not applied", "err", err)
	}
}

// follow subscribes to the membership: each snapshot updates the table
// and pins, and the egress steering.
func (x *Front) follow() {
	view := &memberView{self: x.cfg.ID, dc: x.cfg.DC, first: map[string]time.Time{}}
	if x.cfg.Member != nil {
		view.joined = x.cfg.Member.Joined
	}
	var apply func()
	apply = func() {
		x.mu.Lock()
		defer x.mu.Unlock()
		if x.closed {
			return
		}
		lms, next := view.members(x.last, time.Now())
		if err := x.front.Update(lms); err != nil {
			x.cfg.Log.Error("xdp: membership not applied", "err", err)
		}
		x.setEgress()
		if next > 0 {
			if x.timer != nil {
				x.timer.Stop()
			}
			x.timer = time.AfterFunc(next, apply)
		}
	}
	x.unsub = x.cfg.Member.Subscribe(func(ms []cluster.Member) {
		x.mu.Lock()
		x.last = ms
		x.mu.Unlock()
		apply()
	})
}

// Attach attaches the program to iface, the uplink the VIPs' packets
// arrive on.
func (x *Front) Attach(iface string) error {
	if err := x.front.Attach(iface); err != nil {
		return err
	}
	x.cfg.Log.Info("xdp front attached", "iface", iface, "vip", x.cfg.VIPs, "gue_port", x.cfg.GUEPort, "node", x.cfg.ID, "slot", x.slot)
	return nil
}

// Close stops forwarding and following the membership, and unloads the
// program.
func (x *Front) Close() {
	if f := x.fwd.Load(); f != nil {
		f.gue.Close()
	}
	if x.unsub != nil {
		x.unsub()
	}
	x.mu.Lock()
	x.closed = true
	if x.timer != nil {
		x.timer.Stop()
	}
	x.mu.Unlock()
	x.front.Close()
	x.objs.Close()
}

// Stats is the status report's xdp section: the program's counters, the
// table's size, the pins, the departed nodes' slots sent to an heir, the
// egress addresses steered and, once forwarding, the forwarder's counters.
func (x *Front) Stats() any {
	m, err := x.objs.Counters()
	if err != nil {
		return map[string]string{"error": err.Error()}
	}
	m["table_nodes"] = uint64(x.front.TableNodes())
	m["pins"] = uint64(x.front.Pins())
	m["heirs"] = uint64(x.front.Heirs())
	m["egress_addresses"] = uint64(x.front.EgressEntries())
	if f := x.fwd.Load(); f != nil {
		f.stats(m)
	}
	return m
}

// Counters are the front's numbers for the metrics endpoint.
type Counters struct {
	// Verdicts are the XDP program's packet counters by name (a fixed
	// set: lb's counter names), summed over CPUs.
	Verdicts map[string]uint64
	// TableNodes, Pins, Heirs and EgressAddresses are the sizes of the
	// Maglev table's membership, the pins, the departed nodes' slots sent
	// to an heir and the egress addresses steered.
	TableNodes, Pins, Heirs, EgressAddresses int
	// ForwardErrors and FlowErrors are the forwarder's failures to send an
	// initiation to its owner and to write its flow entry (0 until
	// StartForwarding).
	ForwardErrors, FlowErrors uint64
}

// Counters reads the program's counters from its BPF map now.
func (x *Front) Counters() (Counters, error) {
	v, err := x.objs.Counters()
	if err != nil {
		return Counters{}, err
	}
	c := Counters{
		Verdicts: v, TableNodes: x.front.TableNodes(), Pins: x.front.Pins(),
		Heirs: x.front.Heirs(), EgressAddresses: x.front.EgressEntries(),
	}
	if f := x.fwd.Load(); f != nil {
		c.ForwardErrors, c.FlowErrors = f.sendErrs.Load(), f.flowErrs.Load()
	}
	return c, nil
}

// StartForwarding opens the GUE sender initiations are forwarded with and
// returns the Forwarder whose Forward is server.IndexConfig.Forward. Close
// closes the sender. Call it at most once.
func (x *Front) StartForwarding() (*Forwarder, error) {
	if x.fwd.Load() != nil {
		return nil, fmt.Errorf("front: already forwarding")
	}
	gue, err := lb.NewGUESender(x.cfg.Underlay, x.cfg.GUEPort)
	if err != nil {
		return nil, err
	}
	f := &Forwarder{front: x.front, objs: x.objs, gue: gue, wgPort: x.cfg.WGPort, log: x.cfg.Log}
	f.vip4, f.vip6 = vips(x.cfg.VIPs)
	x.fwd.Store(f)
	return f, nil
}
