package lb

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf/link"
)

// Member is a node as the front sees it.
type Member struct {
	ID       string
	Underlay netip.Addr // IPv4: where GUE packets for the node go
	// Active nodes own a share of the Maglev table. A draining node
	// (Active false) owns no slot but keeps its node entry, so its pinned
	// clients still reach it and its GUE packets are still accepted.
	Active bool
	// Pins are ClientIDs that stay with this node whatever the table
	// says: the clients a draining node keeps.
	Pins []uint32
}

// FrontConfig is what a Front is started with.
type FrontConfig struct {
	VIP4, VIP6   netip.Addr
	WGPort       uint16
	GUEPort      uint16
	Self         string     // this node's member id
	SelfUnderlay netip.Addr // this node's IPv4 underlay
	Log          *slog.Logger
}

// Front turns cluster membership into the XDP program's maps: a stable
// node index per member, node entries, the GUE peers accepted, and the
// Maglev table of the active members. Create it with NewFront, feed it
// with Update, attach it with Attach.
type Front struct {
	objs *Objects
	cfg  FrontConfig
	log  *slog.Logger

	mu      sync.Mutex
	index   map[string]uint32 // member id → node index, stable while it is a member
	members map[string]Member
	pins    map[uint32]uint32 // ClientID → node index, as in the pins map
	table   *Table
	link    link.Link
}

// NewFront configures objs for this node. Until the first Update the node
// owns every ClientID (everything is delivered locally).
func NewFront(objs *Objects, cfg FrontConfig) (*Front, error) {
	if cfg.Self == "" {
		return nil, errors.New("lb: front needs this node's id")
	}
	if !cfg.SelfUnderlay.Is4() {
		return nil, fmt.Errorf("lb: front needs this node's IPv4 underlay address, got %v", cfg.SelfUnderlay)
	}
	if !cfg.VIP4.IsValid() && !cfg.VIP6.IsValid() {
		return nil, errors.New("lb: front needs a VIP")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	f := &Front{objs: objs, cfg: cfg, log: cfg.Log, index: map[string]uint32{}, members: map[string]Member{}, pins: map[uint32]uint32{}}
	if err := f.Update([]Member{{ID: cfg.Self, Underlay: cfg.SelfUnderlay, Active: true}}); err != nil {
		return nil, err
	}
	return f, nil
}

// Update makes the maps match members (every live member of this node's
// data center, draining ones included). This node is always kept, as a
// member of the table only if it is listed active. The order of changes
// keeps every packet's path valid: new nodes get their entries before the
// new table names them, and departed nodes lose theirs only after the
// table that no longer names them is in place. Pins follow the same rule:
// new ones are in place before the table that leaves their node out, and
// withdrawn ones go after it. A ClientID pinned by two members stays with
// the one whose id sorts first.
func (f *Front) Update(members []Member) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	want := map[string]Member{}
	for _, m := range members {
		if !m.Underlay.Is4() {
			f.log.Warn("lb: member without an IPv4 underlay left out", "node", m.ID, "underlay", m.Underlay)
			continue
		}
		want[m.ID] = m
	}
	if _, ok := want[f.cfg.Self]; !ok {
		want[f.cfg.Self] = Member{ID: f.cfg.Self, Underlay: f.cfg.SelfUnderlay}
	}
	// 1. Entries for new and changed members.
	for _, id := range sortedKeys(want) {
		m := want[id]
		idx, ok := f.index[id]
		if !ok {
			var err error
			if idx, err = f.freeIndex(); err != nil {
				return err
			}
			f.index[id] = idx
		}
		if old, ok := f.members[id]; ok && old.Underlay != m.Underlay {
			if err := f.objs.DeletePeer(old.Underlay); err != nil {
				return err
			}
		}
		if err := f.objs.SetNode(idx, Node{Underlay4: m.Underlay, Valid: true}); err != nil {
			return err
		}
		if id != f.cfg.Self {
			if err := f.objs.SetPeer(m.Underlay, idx); err != nil {
				return err
			}
		}
	}
	// 1b. Pins of live members, new or moved.
	pins := map[uint32]uint32{}
	for _, id := range sortedKeys(want) {
		for _, cid := range want[id].Pins {
			if _, dup := pins[cid]; !dup && cid != 0 {
				pins[cid] = f.index[id]
			}
		}
	}
	for cid, idx := range pins {
		if old, ok := f.pins[cid]; ok && old == idx {
			continue
		}
		if err := f.objs.SetPin(cid, idx); err != nil {
			return err
		}
		f.pins[cid] = idx
	}
	// 2. The table of the active members.
	var active []string
	for id, m := range want {
		if m.Active {
			active = append(active, id)
		}
	}
	if len(active) == 0 {
		// Nobody takes new clients (all draining): keep them where they
		// land rather than send them nowhere.
		if err := f.objs.ClearTable(); err != nil {
			return err
		}
		f.table = nil
	} else {
		t, err := NewTable(active, XDPTableSize)
		if err != nil {
			return err
		}
		slots := t.Slots()
		backends := t.Backends()
		for i, b := range slots {
			slots[i] = f.index[backends[b]]
		}
		if err := f.objs.SetTable(slots); err != nil {
			return err
		}
		f.table = t
	}
	if err := f.objs.SetConfig(Config{
		VIP4: f.cfg.VIP4, VIP6: f.cfg.VIP6, WGPort: f.cfg.WGPort, GUEPort: f.cfg.GUEPort,
		Self: f.index[f.cfg.Self], SelfUnderlay4: f.cfg.SelfUnderlay, Enabled: true,
	}); err != nil {
		return err
	}
	// 3. Withdrawn pins go; departed members lose their entries and
	// their index.
	for cid := range f.pins {
		if _, ok := pins[cid]; ok {
			continue
		}
		if err := f.objs.DeletePin(cid); err != nil {
			return err
		}
		delete(f.pins, cid)
	}
	for id, old := range f.members {
		if _, ok := want[id]; ok {
			continue
		}
		idx := f.index[id]
		if err := f.objs.SetNode(idx, Node{}); err != nil {
			return err
		}
		reused := false
		for _, m := range want {
			reused = reused || m.Underlay == old.Underlay
		}
		if !reused {
			if err := f.objs.DeletePeer(old.Underlay); err != nil {
				return err
			}
		}
		delete(f.index, id)
	}
	f.members = want
	f.log.Info("lb: membership applied", "members", len(want), "active", len(active), "pins", len(pins))
	return nil
}

// freeIndex returns the lowest node index no member holds.
func (f *Front) freeIndex() (uint32, error) {
	used := make([]bool, XDPMaxNodes)
	for _, i := range f.index {
		used[i] = true
	}
	for i, u := range used {
		if !u {
			return uint32(i), nil
		}
	}
	return 0, fmt.Errorf("lb: more than %d nodes", XDPMaxNodes)
}

func sortedKeys(m map[string]Member) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Owner is the member the current table gives cid to ("" and false with
// no table).
func (f *Front) Owner(cid uint32) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.table == nil {
		return "", false
	}
	return f.table.Owner(cid)
}

// Pins returns how many ClientIDs are pinned.
func (f *Front) Pins() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pins)
}

// TableNodes returns how many members the current table holds.
func (f *Front) TableNodes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.table == nil {
		return 0
	}
	return len(f.table.Backends())
}

// Index is member id's node index in the program's maps.
func (f *Front) Index(id string) (uint32, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.index[id]
	return i, ok
}

// Attach puts the program on iface (native XDP where the driver has it).
func (f *Front) Attach(iface string) error {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("lb: --xdp %s: %w", iface, err)
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: f.objs.Program(), Interface: ifi.Index})
	if err != nil {
		return fmt.Errorf("lb: attach XDP to %s: %w", iface, err)
	}
	f.mu.Lock()
	f.link = l
	f.mu.Unlock()
	return nil
}

// Close detaches the program (if attached). The Objects stay open.
func (f *Front) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.link == nil {
		return nil
	}
	err := f.link.Close()
	f.link = nil
	if err != nil && !strings.Contains(err.Error(), "closed") {
		return fmt.Errorf("lb: detach XDP: %w", err)
	}
	return nil
}
