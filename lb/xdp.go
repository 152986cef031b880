package lb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
)

// Limits fixed by the XDP program (bpf/wedge_lb.h).
const (
	// XDPTableSize is the number of slots of every Maglev table handed to
	// SetTable: the program looks up slot Hash(cid) % XDPTableSize.
	XDPTableSize = 65537
	// XDPMaxNodes bounds node indexes: 0 <= index < XDPMaxNodes.
	XDPMaxNodes = 256
	// xdpMaxPeers bounds the addresses GUE is accepted from (SetPeer).
	xdpMaxPeers = 1024
	// xdpCIDLimit bounds ClientIDs: they are 24 bits, and 0 is unstamped.
	xdpCIDLimit = 1 << 24
)

// Flag bits of the program's config and node entries.
const (
	configEnabled = 1 << 0
	configPins    = 1 << 1 // some bit of pin_bits is set; kept by SetPin and DeletePin
	configIndex   = 1 << 2 // route by tagged receiver indexes; set with a nonzero IndexKey
	configEgress  = 1 << 3 // steer return traffic to egress addresses
	nodeValid     = 1 << 0
	nodeHeir      = 1 << 1 // a departed node's slot: tagged indexes go to Underlay4
)

// Limits of egress steering (bpf/wedge_lb.h).
const (
	// XDPMaxEgress4 bounds the IPv4 egress addresses the program steers.
	XDPMaxEgress4 = 1 << 16
	// XDPMaxDCs bounds the other data centers (indexes 0..XDPMaxDCs-1).
	XDPMaxDCs = 64
	// XDPDCTargets is how many nodes of another data center the program
	// spreads that data center's return traffic over.
	XDPDCTargets = 8
	egressLocal  = 0xffffffff
)

// counterNames are the names Counters reports, in the order of enum counter
// in bpf/wedge_lb.h.
var counterNames = [...]string{
	"not_ours",
	"malformed",
	"local",
	"forwarded",
	"pin_hit",
	"flow_hit",
	"fallback",
	"no_node",
	"no_table",
	"encap_err",
	"decap",
	"decap_reject",
	"pin_stale",
	"index_hit",
	"index_bad",
	"egress",
	"egress_dc",
	"egress_unsliced",
	"retarget",
	"decap_refused",
	"index_heir",
}

// One name per counter of struct counters (compile error otherwise).
var _ = [1]struct{}{}[len(counterNames)-len(wedgeLBCounters{}.N)]

// Objects is the loaded XDP program and its maps. The program is not
// attached anywhere; attach Program() with link.AttachXDP. Until SetConfig
// enables it, the program passes every packet untouched.
//
// The setters may be called concurrently with the program running and with
// each other. Each one updates a single map entry (SetTable swaps a whole
// table at once), except SetPin and DeletePin, which also keep the pin's
// bit in pin_bits and the config's pins flag, in an order that never
// leaves a pin without them (see SetPin).
type Objects struct {
	objs      wedgeLBObjects
	innerSpec *ebpf.MapSpec // of the Maglev tables in maglev_outer

	// mu serializes SetConfig, SetPin and DeletePin: the config entry and
	// the words of pin_bits are read-modify-written.
	mu      sync.Mutex
	cfg     wedgeLBConfig // as last set by SetConfig, without configPins
	pinBits int           // bits set in pin_bits
}

// Load loads the XDP program and creates its maps. The caller must Close
// the result. It needs CAP_BPF and CAP_NET_ADMIN (root).
func Load() (*Objects, error) {
	// Only kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; this is
	// a no-op elsewhere.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("lb: remove memlock rlimit: %w", err)
	}
	spec, err := loadWedgeLB()
	if err != nil {
		return nil, fmt.Errorf("lb: %w", err)
	}
	outer, ok := spec.Maps[wedgeLBMapMaglevOuter]
	if !ok || outer.InnerMap == nil {
		return nil, errors.New("lb: program has no maglev_outer map of maps")
	}
	o := &Objects{innerSpec: outer.InnerMap.Copy()}
	if o.innerSpec.MaxEntries != XDPTableSize {
		return nil, fmt.Errorf("lb: program's Maglev table has %d slots, want %d", o.innerSpec.MaxEntries, XDPTableSize)
	}
	if err := spec.LoadAndAssign(&o.objs, nil); err != nil {
		// A *ebpf.VerifierError prints the verifier log with %+v.
		return nil, fmt.Errorf("lb: load xdp program: %w", err)
	}
	return o, nil
}

// Close releases the program and the maps. A program attached to an
// interface stays attached as long as its link is open.
func (o *Objects) Close() error {
	return o.objs.Close()
}

// Program is the XDP program, for link.AttachXDP and tests.
func (o *Objects) Program() *ebpf.Program {
	return o.objs.XdpLb
}

// Config is the program's fixed view of this node.
type Config struct {
	VIP4          netip.Addr // IPv4 anycast VIP; the zero Addr for none
	VIP6          netip.Addr // IPv6 anycast VIP; the zero Addr for none
	WGPort        uint16     // WireGuard UDP port on the VIPs
	GUEPort       uint16     // UDP port of the encapsulation between nodes
	Self          uint32     // this node's index in the node entries
	SelfUnderlay4 netip.Addr // this node's IPv4 underlay address
	Enabled       bool       // false: pass every packet untouched
	// IndexKey is the cluster's index key (wgmsg.IndexKey). Not 0: an
	// unstamped response, cookie reply or data message whose receiver
	// index is tagged (wgmsg.SlotOf with this key) goes to the node index
	// equal to its slot. 0: index routing is off.
	IndexKey uint32
	// Egress turns on the steering of TCP and UDP to the addresses set
	// with SetEgress4 (return traffic of re-originated flows).
	Egress bool
}

// SetConfig replaces the program's configuration.
func (o *Objects) SetConfig(c Config) error {
	var v wedgeLBConfig
	switch {
	case c.VIP4.IsValid() && !c.VIP4.Is4():
		return fmt.Errorf("lb: config: VIP4 %s is not an IPv4 address", c.VIP4)
	case c.VIP6.IsValid() && (!c.VIP6.Is6() || c.VIP6.Is4In6()):
		return fmt.Errorf("lb: config: VIP6 %s is not an IPv6 address", c.VIP6)
	case c.SelfUnderlay4.IsValid() && !c.SelfUnderlay4.Is4():
		return fmt.Errorf("lb: config: underlay %s is not an IPv4 address", c.SelfUnderlay4)
	case c.Self >= XDPMaxNodes:
		return fmt.Errorf("lb: config: node index %d out of range [0, %d)", c.Self, XDPMaxNodes)
	case c.Enabled && (c.WGPort == 0 || c.GUEPort == 0 || !c.SelfUnderlay4.IsValid()):
		return errors.New("lb: config: enabled without WireGuard port, GUE port or underlay")
	}
	if c.VIP4.IsValid() {
		v.Vip4 = be32(c.VIP4)
	}
	if c.VIP6.IsValid() {
		v.Vip6 = c.VIP6.As16()
	}
	if c.SelfUnderlay4.IsValid() {
		v.SelfUnderlay4 = be32(c.SelfUnderlay4)
	}
	v.WgPort = htons(c.WGPort)
	v.GuePort = htons(c.GUEPort)
	v.Self = c.Self
	if c.Enabled {
		v.Flags |= configEnabled
	}
	if c.IndexKey != 0 {
		v.Flags |= configIndex
		v.IndexKey = c.IndexKey
	}
	if c.Egress {
		v.Flags |= configEgress
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.writeConfig(v, o.pinBits > 0); err != nil {
		return err
	}
	o.cfg = v
	return nil
}

// writeConfig stores v, with the pins flag if pins is set. The caller
// holds o.mu.
func (o *Objects) writeConfig(v wedgeLBConfig, pins bool) error {
	if pins {
		v.Flags |= configPins
	}
	if err := o.objs.Config.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb: set config: %w", err)
	}
	return nil
}

// Node is the program's entry for one node index.
type Node struct {
	Underlay4 netip.Addr // where GUE packets for the node are sent
	Valid     bool       // false: packets the node owns are delivered locally
	// Heir (not Valid): the index is a departed node's slot, and
	// Underlay4 is its heir's address. Packets whose tagged receiver
	// index names the slot go to the heir (delivered here when Underlay4
	// is this node's own underlay), counted as index_heir; everything
	// else (pins, flows, the table, egress slices) treats the entry as
	// not valid.
	Heir bool
}

// SetNode sets the entry of node index idx. Entries never set are invalid.
func (o *Objects) SetNode(idx uint32, n Node) error {
	if idx >= XDPMaxNodes {
		return fmt.Errorf("lb: node index %d out of range [0, %d)", idx, XDPMaxNodes)
	}
	if n.Valid && n.Heir {
		return fmt.Errorf("lb: node %d: an entry is valid or an heir's, not both", idx)
	}
	var v wedgeLBNode
	if n.Valid || n.Heir {
		if !n.Underlay4.Is4() {
			return fmt.Errorf("lb: node %d: underlay %s is not an IPv4 address", idx, n.Underlay4)
		}
		v.Underlay4 = be32(n.Underlay4)
		v.Flags = nodeValid
		if n.Heir {
			v.Flags = nodeHeir
		}
	}
	if err := o.objs.Nodes.Update(idx, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb: set node %d: %w", idx, err)
	}
	return nil
}

// Egress4 is how return traffic to one IPv4 egress address is steered.
type Egress4 struct {
	// Local: this data center owns the address, and its nodes share it by
	// port slices: port p belongs to node index (p-PortLo)/Slice + 1 for
	// p-PortLo < Slices*Slice; other ports stay on the node that got them.
	Local         bool
	PortLo        uint16
	Slice, Slices uint16
	// DC (not Local): the other data center that owns the address, an
	// index set with SetDC.
	DC uint32
}

// SetEgress4 sets the steering of return traffic to addr.
func (o *Objects) SetEgress4(addr netip.Addr, e Egress4) error {
	if !addr.Is4() {
		return fmt.Errorf("lb: egress %s is not an IPv4 address", addr)
	}
	v := wedgeLBEgress4{Dc: e.DC, PortLo: e.PortLo, Slice: e.Slice, Slices: e.Slices}
	switch {
	case e.Local && (e.Slice == 0 || e.Slices == 0 || int(e.PortLo)+int(e.Slice)*int(e.Slices) > 1<<16):
		return fmt.Errorf("lb: egress %s: %d slices of %d ports from %d do not fit the port space", addr, e.Slices, e.Slice, e.PortLo)
	case e.Local:
		v.Dc = egressLocal
	case e.DC >= XDPMaxDCs:
		return fmt.Errorf("lb: egress %s: data center index %d out of range [0, %d)", addr, e.DC, XDPMaxDCs)
	}
	if err := o.objs.Egress4.Update(be32(addr), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb: set egress %s: %w", addr, err)
	}
	return nil
}

// DeleteEgress4 stops steering return traffic to addr. Deleting an unknown
// address is not an error.
func (o *Objects) DeleteEgress4(addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("lb: egress %s is not an IPv4 address", addr)
	}
	return deleteIgnoringMissing(o.objs.Egress4, be32(addr), "egress "+addr.String())
}

// SetDC sets the nodes of other data center idx that its return traffic
// is sent to (at most XDPDCTargets; none: that traffic stays here). Their
// addresses must also be peers (SetPeer) of the fronts over there, and
// theirs of ours, for the packets forwarded the other way.
func (o *Objects) SetDC(idx uint32, underlays []netip.Addr) error {
	if idx >= XDPMaxDCs {
		return fmt.Errorf("lb: data center index %d out of range [0, %d)", idx, XDPMaxDCs)
	}
	if len(underlays) > XDPDCTargets {
		return fmt.Errorf("lb: data center %d: %d nodes, at most %d", idx, len(underlays), XDPDCTargets)
	}
	var v wedgeLBDc
	for i, a := range underlays {
		if !a.Is4() {
			return fmt.Errorf("lb: data center %d: node %s is not an IPv4 address", idx, a)
		}
		v.Underlay4[i] = be32(a)
	}
	v.N = uint32(len(underlays))
	if err := o.objs.Dcs.Update(idx, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb: set data center %d: %w", idx, err)
	}
	return nil
}

// SetPeer accepts GUE packets whose outer source is underlay, the address
// of node idx. Packets from any other source to the GUE port are dropped.
func (o *Objects) SetPeer(underlay netip.Addr, idx uint32) error {
	if !underlay.Is4() {
		return fmt.Errorf("lb: peer %s is not an IPv4 address", underlay)
	}
	if err := o.objs.Peers4.Update(be32(underlay), idx, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb: set peer %s: %w", underlay, err)
	}
	return nil
}

// DeletePeer stops accepting GUE packets from underlay. Deleting an
// unknown peer is not an error.
func (o *Objects) DeletePeer(underlay netip.Addr) error {
	if !underlay.Is4() {
		return fmt.Errorf("lb: peer %s is not an IPv4 address", underlay)
	}
	return deleteIgnoringMissing(o.objs.Peers4, be32(underlay), "peer "+underlay.String())
}

// SetTable makes slots the Maglev table: slot i holds the node index that
// owns the ClientIDs with Hash(cid) % XDPTableSize == i. The program sees
// either the old table or the new one, never a mix: the table is filled
// in a new map that then replaces the old one in one update.
func (o *Objects) SetTable(slots []uint32) error {
	if len(slots) != XDPTableSize {
		return fmt.Errorf("lb: table has %d slots, want %d", len(slots), XDPTableSize)
	}
	inner, err := ebpf.NewMap(o.innerSpec)
	if err != nil {
		return fmt.Errorf("lb: create table: %w", err)
	}
	// The outer map holds its own reference once the update succeeds.
	defer inner.Close()

	keys := make([]uint32, len(slots))
	for i := range keys {
		keys[i] = uint32(i)
	}
	n, err := inner.BatchUpdate(keys, slots, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		for i, s := range slots {
			if err = inner.Update(uint32(i), s, ebpf.UpdateAny); err != nil {
				break
			}
		}
	} else if err == nil && n != len(slots) {
		err = fmt.Errorf("updated %d of %d slots", n, len(slots))
	}
	if err != nil {
		return fmt.Errorf("lb: fill table: %w", err)
	}
	if err := o.objs.MaglevOuter.Update(uint32(0), inner, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb: install table: %w", err)
	}
	return nil
}

// ClearTable removes the Maglev table: stamped packets without a pin are
// then delivered locally (counted as no_table).
func (o *Objects) ClearTable() error {
	return deleteIgnoringMissing(o.objs.MaglevOuter, uint32(0), "table")
}

// SetPin makes node idx the owner of ClientID cid (1 <= cid < 1<<24),
// whatever the table says, for as long as idx is this node or its node
// entry is valid: a draining node keeps its clients. While node idx is
// not valid (a node that is gone) the pin is ignored, counted as
// pin_stale, and the table decides; the pin takes effect again if the
// entry becomes valid.
//
// The program looks a ClientID up in pins only when the config's pins
// flag and the ClientID's bit in pin_bits are set, which spares every
// other stamped packet a hash lookup. SetPin sets the flag and the bit
// before it adds the entry, and DeletePin clears them after it removes
// the entry, so that a pin is never without them.
func (o *Objects) SetPin(cid, idx uint32) error {
	if cid == 0 || cid >= xdpCIDLimit {
		return fmt.Errorf("lb: set pin: ClientID %d out of range [1, %d)", cid, xdpCIDLimit)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	set, err := o.setPinBit(cid, true)
	if err != nil {
		return err
	}
	if err := o.objs.Pins.Update(cid, idx, ebpf.UpdateAny); err != nil {
		err = fmt.Errorf("lb: set pin %d: %w", cid, err)
		if set {
			// The bit was clear, so there was no entry and there is
			// none now: take the bit back (left set, it would only
			// cost a lookup).
			if _, err2 := o.setPinBit(cid, false); err2 != nil {
				err = errors.Join(err, err2)
			}
		}
		return err
	}
	return nil
}

// DeletePin returns cid to the table. Deleting a missing pin is not an error.
func (o *Objects) DeletePin(cid uint32) error {
	if cid == 0 || cid >= xdpCIDLimit {
		return nil // SetPin never made one
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := deleteIgnoringMissing(o.objs.Pins, cid, fmt.Sprintf("pin %d", cid)); err != nil {
		return err
	}
	_, err := o.setPinBit(cid, false)
	return err
}

// setPinBit sets (on) or clears the bit of cid in pin_bits and reports
// whether it changed. The config's pins flag is set before the first bit
// and cleared after the last one. The caller holds o.mu; no one else
// writes pin_bits, so the word read here is current.
func (o *Objects) setPinBit(cid uint32, on bool) (bool, error) {
	key, bit := cid/64, uint64(1)<<(cid%64)
	var word uint64
	if err := o.objs.PinBits.Lookup(key, &word); err != nil {
		return false, fmt.Errorf("lb: read pin bits of %d: %w", cid, err)
	}
	if (word&bit != 0) == on {
		return false, nil
	}
	if on && o.pinBits == 0 {
		if err := o.writeConfig(o.cfg, true); err != nil {
			return false, err
		}
	}
	// The program sees the old word or the new one: only this bit differs.
	if err := o.objs.PinBits.Update(key, word^bit, ebpf.UpdateExist); err != nil {
		return false, fmt.Errorf("lb: write pin bits of %d: %w", cid, err)
	}
	if on {
		o.pinBits++
		return true, nil
	}
	o.pinBits--
	if o.pinBits == 0 {
		// Left set on failure, the flag costs a bit lookup per packet;
		// the next SetConfig or DeletePin clears it.
		if err := o.writeConfig(o.cfg, false); err != nil {
			return true, err
		}
	}
	return true, nil
}

// SetFlow makes node idx the owner of the unstamped client at src. The flow
// table is an LRU: the kernel may evict entries when it is full.
func (o *Objects) SetFlow(src netip.AddrPort, idx uint32) error {
	if !src.IsValid() {
		return errors.New("lb: set flow: invalid address")
	}
	if err := o.objs.Flows.Update(flowKey(src), idx, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb: set flow %s: %w", src, err)
	}
	return nil
}

// DeleteFlow removes the flow entry of src. Deleting a missing entry is not
// an error.
func (o *Objects) DeleteFlow(src netip.AddrPort) error {
	return deleteIgnoringMissing(o.objs.Flows, flowKey(src), "flow "+src.String())
}

// Counters returns the program's counters summed over all CPUs, by name:
// not_ours, malformed, local, forwarded, pin_hit, flow_hit, fallback,
// no_node, no_table, encap_err, decap, decap_reject, pin_stale, index_hit,
// index_bad, egress, egress_dc, egress_unsliced, retarget, decap_refused,
// index_heir. See bpf/README.md.
func (o *Objects) Counters() (map[string]uint64, error) {
	var perCPU []wedgeLBCounters
	if err := o.objs.Counters.Lookup(uint32(0), &perCPU); err != nil {
		return nil, fmt.Errorf("lb: read counters: %w", err)
	}
	out := make(map[string]uint64, len(counterNames))
	for i, name := range counterNames {
		var sum uint64
		for _, c := range perCPU {
			sum += c.N[i]
		}
		out[name] = sum
	}
	return out, nil
}

func deleteIgnoringMissing(m *ebpf.Map, key any, what string) error {
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("lb: delete %s: %w", what, err)
	}
	return nil
}

// flowKey is the flows key of src: IPv4 as ::ffff:a.b.c.d.
func flowKey(src netip.AddrPort) wedgeLBFlowKey {
	return wedgeLBFlowKey{Saddr: src.Addr().As16(), Sport: htons(src.Port())}
}

// be32 is the IPv4 address a as a __be32 field: its bytes in memory are
// the address in network order.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// htons is port as a __be16 field.
func htons(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}
