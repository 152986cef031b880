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
	"time"

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
	// Slot is the node's slot in its data center (1..255), which every
	// session index it hands out carries (server/wgmsg); the node's index
	// in the program's maps is its slot, so that the program can route a
	// tagged index to it. 0: no slot (a standalone node): the node gets a
	// free index counted down from 255.
	Slot uint8
	// Draining: the node is draining (its cluster state, which every
	// front sees alike, unlike Active). A draining node is nobody's heir
	// (HeirOf).
	Draining bool
}

// FrontConfig is what a Front is started with.
type FrontConfig struct {
	VIP4, VIP6   netip.Addr
	WGPort       uint16
	GUEPort      uint16
	Self         string     // this node's member id
	SelfUnderlay netip.Addr // this node's IPv4 underlay
	// SelfSlot is this node's slot (0: none) until a membership lists
	// this node with its slot.
	SelfSlot uint8
	// IndexKey is the cluster's index key (wgmsg.IndexKey of the service
	// private key). Not 0: the program routes unstamped responses, cookie
	// replies and data messages by the slot of their tagged receiver index.
	IndexKey uint32
	// HeirWindow is how long the slot of a member that left keeps
	// sending what its tagged session indexes carry to its heir (HeirOf)
	// instead of treating it as gone: 0 is DefaultHeirWindow, negative
	// turns heirs off. See Update.
	HeirWindow time.Duration
	Log        *slog.Logger
}

// Front turns cluster membership into the XDP program's maps: a node
// index per member (its slot), node entries, the GUE peers accepted, and
// the Maglev table of the active members. Create it with NewFront, feed it
// with Update, attach it with Attach.
type Front struct {
	objs *Objects  // the program, for Attach
	maps frontMaps // what Update writes: objs, or a test's recorder
	cfg  FrontConfig
	log  *slog.Logger

	mu       sync.Mutex
	index    map[string]uint32 // member id → node index in the maps
	members  map[string]Member // the members the maps hold
	selfSlot uint8             // this node's slot, as last listed
	pins     map[uint32]uint32 // ClientID → node index, as in the pins map
	table    *Table
	link     link.Link
	egress   egressState // SetEgress
	selfIdx  uint32      // this node's index in the last config written

	heirWindow   time.Duration
	departed     map[uint32]*departure // departed members' slots in their heir window
	heirTimer    *time.Timer           // ends the next heir window
	heirTimerOff bool                  // tests: windows end only in refreshHeirs
	now          func() time.Time
	closed       bool
}

// frontMaps are the writes Update makes; *Objects has them.
type frontMaps interface {
	SetConfig(Config) error
	SetNode(uint32, Node) error
	SetPeer(netip.Addr, uint32) error
	DeletePeer(netip.Addr) error
	SetPin(cid, idx uint32) error
	DeletePin(cid uint32) error
	SetTable([]uint32) error
	ClearTable() error
	SetEgress4(netip.Addr, Egress4) error
	DeleteEgress4(netip.Addr) error
	SetDC(uint32, []netip.Addr) error
}

// NewFront configures objs for this node. Until the first Update the node
// owns every ClientID (everything is delivered locally).
func NewFront(objs *Objects, cfg FrontConfig) (*Front, error) {
	f, err := newFront(objs, cfg)
	if err != nil {
		return nil, err
	}
	f.objs = objs
	return f, nil
}

func newFront(maps frontMaps, cfg FrontConfig) (*Front, error) {
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
	f := &Front{maps: maps, cfg: cfg, log: cfg.Log, index: map[string]uint32{}, members: map[string]Member{},
		selfSlot: cfg.SelfSlot, pins: map[uint32]uint32{},
		heirWindow: cfg.HeirWindow, departed: map[uint32]*departure{}, now: time.Now}
	if f.heirWindow == 0 {
		f.heirWindow = DefaultHeirWindow
	}
	if err := f.Update([]Member{{ID: cfg.Self, Underlay: cfg.SelfUnderlay, Active: true, Slot: cfg.SelfSlot}}); err != nil {
		return nil, err
	}
	return f, nil
}

// Update makes the maps match members (every live member of this node's
// data center, draining ones included). This node is always kept, as a
// member of the table only if it is listed active, with the slot it was
// last listed with (FrontConfig.SelfSlot before that).
//
// A member's node index is its slot: the program sends a tagged session
// index to the node entry its slot names. A member without a slot gets an
// index counted down from 255 (and keeps it while no slot claims it). Two
// members claiming one slot: this node keeps it, else the member holding
// it, else the id that sorts first; the other is logged and treated as
// slotless.
//
// The order of changes keeps every packet's path valid: new nodes get
// their entries before the new table names them, and departed nodes lose
// theirs only after the table that no longer names them is in place. Pins
// follow the same rule: new ones are in place before the table that leaves
// their node out, and withdrawn ones go after it. A ClientID pinned by two
// members stays with the one whose id sorts first.
//
// So an index changes hands only once the table that named it for its
// old holder is gone: a member whose target index another member (one
// that departs, or moves itself) still holds keeps its old index for one
// more step (a new member waits outside the table, its pins too), and
// Update applies as many steps as that takes, each as above. Two members
// that swapped slots take a third, unused index for one step. This node's
// own entry is written just after the config that names its index: until
// then a table that names its new index finds no valid entry there, and
// its packets are delivered here (no_node) rather than sent out to this
// node's own underlay.
//
// Heirs: a member that leaves (its lease gone: dead, or shut down) while
// holding its own slot as its index leaves sessions whose tagged indexes
// name that slot. For HeirWindow its entry, once no member holds it,
// points to the slot's heir (HeirOf, among the members listed) with the
// Node.Heir flag: the program sends packets with such an index there, and
// treats the entry as not valid for everything else (pins, flows, the
// table, egress slices). The heir has no session for them yet (a later
// step replicates each node's client endpoints to its heir so that it can
// start their handshakes at once); until then it drops them as the node
// ECMP picked would, and the client handshakes again by itself. A member
// that claims the slot ends the heir's time at once (its own entry is
// written as for any member); so does the end of the window (the entry is
// cleared, and stamped packets go by their ClientID again), and an heir
// that leaves or drains is replaced. Heir entries are written after the
// departed member's pins are withdrawn and its index is out of the table,
// so nothing but a tagged index ever names them.
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
	if m, ok := want[f.cfg.Self]; ok {
		f.selfSlot = m.Slot
	} else {
		want[f.cfg.Self] = Member{ID: f.cfg.Self, Underlay: f.cfg.SelfUnderlay, Slot: f.selfSlot}
	}
	now := f.now()
	f.noteDepartures(want, now)
	target, err := f.targets(want)
	if err != nil {
		return err
	}
	// Each step moves a member, removes the departed ones or (swap) moves
	// a member aside, so 2 steps per index are more than enough.
	for step := 1; ; step++ {
		assign, done, err := f.nextStep(want, target)
		if err != nil {
			return err
		}
		if err := f.apply(want, assign, now); err != nil {
			return err
		}
		if done {
			break
		}
		if step > 2*XDPMaxNodes {
			return errors.New("lb: node indexes did not settle")
		}
	}
	if err := f.refreshHeirs(now); err != nil {
		return err
	}
	active := 0
	if f.table != nil {
		active = len(f.table.Backends())
	}
	f.log.Info("lb: membership applied", "members", len(want), "active", active, "pins", len(f.pins), "heirs", len(f.departed))
	return nil
}

// targets returns the node index each member of want is to have: its slot,
// or, without one (or when it loses its slot to another member), its
// current index if no slot claims it, else the highest index neither
// claimed nor held by anyone.
func (f *Front) targets(want map[string]Member) (map[string]uint32, error) {
	ids := sortedKeys(want)
	holds := func(id string, i uint32) bool { cur, ok := f.index[id]; return ok && cur == i }
	claim := map[uint32]string{} // slot → the member that gets it
	for _, id := range ids {
		s := uint32(want[id].Slot)
		if s == 0 {
			continue
		}
		prev, taken := claim[s]
		if !taken || prev != f.cfg.Self && (id == f.cfg.Self || holds(id, s) && !holds(prev, s)) {
			claim[s] = id
		}
	}
	target := make(map[string]uint32, len(want))
	taken := make([]bool, XDPMaxNodes)
	for s, id := range claim {
		target[id] = s
		taken[s] = true
	}
	var rest []string
	for _, id := range ids {
		if _, ok := target[id]; ok {
			continue
		}
		if s := want[id].Slot; s != 0 {
			f.log.Warn("lb: two members claim one slot; this one gets an index without it", "slot", s, "node", id, "holder", claim[uint32(s)])
		}
		if cur, ok := f.index[id]; ok && !taken[cur] {
			target[id] = cur
			taken[cur] = true
			continue
		}
		rest = append(rest, id)
	}
	held := make([]bool, XDPMaxNodes)
	for _, i := range f.index {
		held[i] = true
	}
	for i := range f.departed {
		held[i] = true // an heir's while it can be
	}
	for _, id := range rest {
		i, ok := topFree(taken, held)
		if !ok {
			return nil, fmt.Errorf("lb: more than %d nodes", XDPMaxNodes)
		}
		target[id] = i
		taken[i] = true
	}
	return target, nil
}

// topFree is the highest index neither taken nor held, else the highest
// not taken.
func topFree(taken, held []bool) (uint32, bool) {
	for _, avoid := range [][]bool{held, nil} {
		for i := len(taken) - 1; i >= 0; i-- {
			if !taken[i] && (avoid == nil || !avoid[i]) {
				return uint32(i), true
			}
		}
	}
	return 0, false
}

// nextStep is the next assignment on the way from f.index to target: a
// member moves to its target once no other member (a departed one
// included) holds it in the maps; until then it keeps its current index,
// or, new, is left out of this step. done: every member is at its target.
func (f *Front) nextStep(want map[string]Member, target map[string]uint32) (assign map[string]uint32, done bool, err error) {
	holder := make(map[uint32]string, len(f.index))
	for id, i := range f.index {
		holder[i] = id
	}
	assign = make(map[string]uint32, len(want))
	var blocked []string
	for _, id := range sortedKeys(want) {
		t := target[id]
		if h, ok := holder[t]; ok && h != id {
			blocked = append(blocked, id)
			if cur, ok := f.index[id]; ok {
				assign[id] = cur
			}
			continue
		}
		assign[id] = t
	}
	if len(blocked) == 0 {
		return assign, true, nil
	}
	// Progress: departed members leave (freeing their indexes), or some
	// member moves or arrives.
	for id := range f.index {
		if _, ok := want[id]; !ok {
			return assign, false, nil
		}
	}
	for id, i := range assign {
		if cur, ok := f.index[id]; !ok || cur != i {
			return assign, false, nil
		}
	}
	// Stuck: the members holding each other's targets form a cycle (two
	// nodes swapped slots). One of them goes to an index nobody holds or
	// is to have, which frees its own for the next step.
	taken := make([]bool, XDPMaxNodes)
	for i := range holder {
		taken[i] = true
	}
	for _, t := range target {
		taken[t] = true
	}
	for _, id := range blocked {
		if _, ok := f.index[id]; !ok {
			continue
		}
		for i := XDPMaxNodes - 1; i >= 0; i-- {
			if !taken[i] {
				assign[id] = uint32(i)
				return assign, false, nil
			}
		}
		return nil, false, fmt.Errorf("lb: no spare node index to move %s through", id)
	}
	return nil, false, errors.New("lb: node indexes stuck") // a blocked member always has an index
}

// apply makes the maps hold the members of want that assign gives an
// index, at those indexes, in the order Update describes. An index left
// by a departed member gets its heir's entry (vacated).
func (f *Front) apply(want map[string]Member, assign map[string]uint32, now time.Time) error {
	self := f.cfg.Self
	var ids []string
	for _, id := range sortedKeys(want) {
		if _, ok := assign[id]; ok {
			ids = append(ids, id)
		}
	}
	// Underlays and indexes in use after this step.
	peerOf := map[netip.Addr]bool{}
	inUse := make([]bool, XDPMaxNodes)
	for _, id := range ids {
		if id != self {
			peerOf[want[id].Underlay] = true
		}
		inUse[assign[id]] = true
	}
	// 1. Entries for new, moved and changed members (this node's after
	// the config, below).
	for _, id := range ids {
		m, idx := want[id], assign[id]
		if old, ok := f.members[id]; ok && old.Underlay != m.Underlay && !peerOf[old.Underlay] {
			if err := f.maps.DeletePeer(old.Underlay); err != nil {
				return err
			}
		}
		if id == self {
			continue
		}
		if err := f.maps.SetNode(idx, Node{Underlay4: m.Underlay, Valid: true}); err != nil {
			return err
		}
		if err := f.maps.SetPeer(m.Underlay, idx); err != nil {
			return err
		}
	}
	// 1b. Pins of live members, new or moved.
	pins := map[uint32]uint32{}
	for _, id := range ids {
		for _, cid := range want[id].Pins {
			if _, dup := pins[cid]; !dup && cid != 0 {
				pins[cid] = assign[id]
			}
		}
	}
	for cid, idx := range pins {
		if old, ok := f.pins[cid]; ok && old == idx {
			continue
		}
		if err := f.maps.SetPin(cid, idx); err != nil {
			return err
		}
		f.pins[cid] = idx
	}
	// 2. The table of the active members, the config, this node's entry.
	var active []string
	for _, id := range ids {
		if want[id].Active {
			active = append(active, id)
		}
	}
	if len(active) == 0 {
		// Nobody takes new clients (all draining): keep them where they
		// land rather than send them nowhere.
		if err := f.maps.ClearTable(); err != nil {
			return err
		}
		f.table = nil
	} else {
		t, err := NewTable(active, XDPTableSize)
		if err != nil {
			return err
		}
		slots := t.Slots()
		idx := make([]uint32, len(t.Backends())) // backend → node index
		for b, id := range t.Backends() {
			idx[b] = assign[id]
		}
		for i, b := range slots {
			slots[i] = idx[b]
		}
		if err := f.maps.SetTable(slots); err != nil {
			return err
		}
		f.table = t
	}
	f.selfIdx = assign[self]
	if err := f.writeConfig(); err != nil {
		return err
	}
	if err := f.maps.SetNode(assign[self], Node{Underlay4: want[self].Underlay, Valid: true}); err != nil {
		return err
	}
	// 3. Withdrawn pins go; departed members lose their entries (and
	// peers), moved ones their old entries, unless this step gives the
	// index (underlay) to a member.
	for cid := range f.pins {
		if _, ok := pins[cid]; ok {
			continue
		}
		if err := f.maps.DeletePin(cid); err != nil {
			return err
		}
		delete(f.pins, cid)
	}
	for _, id := range sortedKeys(f.members) {
		old, cur := f.members[id], f.index[id]
		if idx, ok := assign[id]; ok && idx == cur {
			continue
		}
		if !inUse[cur] {
			if err := f.maps.SetNode(cur, f.vacated(cur, want, now)); err != nil {
				return err
			}
		}
		if _, ok := assign[id]; !ok && !peerOf[old.Underlay] {
			if err := f.maps.DeletePeer(old.Underlay); err != nil {
				return err
			}
		}
	}
	f.index = assign
	f.members = make(map[string]Member, len(ids))
	for _, id := range ids {
		f.members[id] = want[id]
	}
	return nil
}

// writeConfig writes the program's config for this node's current index.
// f.mu is held.
func (f *Front) writeConfig() error {
	return f.maps.SetConfig(Config{
		VIP4: f.cfg.VIP4, VIP6: f.cfg.VIP6, WGPort: f.cfg.WGPort, GUEPort: f.cfg.GUEPort,
		Self: f.selfIdx, SelfUnderlay4: f.cfg.SelfUnderlay, Enabled: true, IndexKey: f.cfg.IndexKey,
		Egress: f.egress.on,
	})
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

// Route is where a front sends a ClientID's packets.
type Route struct {
	ID       string     // the member
	Index    uint32     // its node index in the maps
	Underlay netip.Addr // where it receives GUE
	Self     bool       // this node
}

// Route is the member the program sends cid's stamped packets to: its pin,
// else the table's choice (false with no table). Userspace uses it for what
// the program cannot see, such as the ClientID of a standard client's
// initiation.
func (f *Front) Route(cid uint32) (Route, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := ""
	if idx, ok := f.pins[cid]; ok {
		for m, i := range f.index {
			if i == idx {
				if _, live := f.members[m]; live {
					id = m
				}
				break
			}
		}
	}
	if id == "" {
		if f.table == nil {
			return Route{}, false
		}
		var ok bool
		if id, ok = f.table.Owner(cid); !ok {
			return Route{}, false
		}
	}
	m, ok := f.members[id]
	if !ok {
		return Route{}, false
	}
	return Route{ID: id, Index: f.index[id], Underlay: m.Underlay, Self: id == f.cfg.Self}, true
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

// Close detaches the program (if attached) and stops ending heir windows.
// The Objects stay open.
func (f *Front) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	if f.heirTimer != nil {
		f.heirTimer.Stop()
		f.heirTimer = nil
	}
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
