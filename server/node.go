// Package server runs a wedge node's WireGuard side: the wireguard-go device
// (used as a library) over a Bind that understands ClientIDs, the registry of
// clients applied to that device live, the UAPI socket `wg` talks to, and the
// registration API. The device's tun.Device is supplied by the caller (the
// gVisor netstack in wedged); this package never imports gVisor.
//
// server/ and its subpackages are the node alone: they must not import
// gVisor (netstack/ owns it), client/, netstack/ or e2e/.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/internal/udpbind"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/registry"
)

// Config is what a Node needs. Store, TUN and Logger are required.
type Config struct {
	// Name names the device and its UAPI socket (/var/run/wireguard/NAME.sock).
	Name       string
	ListenPort uint16
	PrivateKey wgtypes.Key
	// Endpoints are advertised to clients at registration.
	Endpoints []string
	// MTU and DNS are advertised to clients at registration.
	MTU int
	DNS []netip.Addr
	// Pools are the inner address pools (for the registration response's
	// prefix lengths only; the Store allocates).
	Store  registry.Store
	TUN    tun.Device
	Bind   conn.Bind // nil: udpbind on Linux (replies from the targeted address)
	Logger *slog.Logger
	// UAPI opens the UAPI socket so `wg show NAME` works.
	UAPI bool
	// Stats adds sections to the status report (netstack, egress...).
	Stats map[string]func() any
	// Paths, if set, returns the path table for the status report
	// (server/paths: Table.Snapshot).
	Paths func() api.PathsStatus
	// Cluster, if set, is the node's membership of an etcd cluster whose
	// registry Store is shared: registrations are refused while etcd is
	// unreachable, the status reports the cluster, and drain is served.
	Cluster *cluster.Membership
	// Owners, in a cluster, builds the function the fronts use to give a
	// ClientID to one of the active nodes (lb.NewTable). With it the node
	// pins each client it holds a session with that the table gives to
	// another node, so no membership change (a node joining, dying or
	// draining) moves a live session; without it only a draining node
	// pins.
	Owners func(active []string) (func(cid uint32) string, error)
	// OnHandshake, if set, is told of every handshake this node answers:
	// the client and the outer address it handshook from (for its egress
	// country). It runs on wireguard-go's handshake goroutine before the
	// response leaves, so the client's first flows see what it stored;
	// it must be quick. It costs one X25519 per handshake.
	OnHandshake func(c registry.Client, src netip.AddrPort)
	// OnTags, if set, is told when a client the device holds has new
	// tags (a PATCH through this node, or a change from another node of
	// the cluster), after the change is stored. It must be quick.
	OnTags func(c registry.Client)
	// ValidTags, if set, vetoes tags this node cannot serve (an egress
	// pool or country it has no address for): registrations and tag
	// changes made through this node with tags it returns an error for
	// are refused (the API answers 422 with the error's message). It is
	// called with tags that already passed registry.Tags.Validate, and
	// only for changes made through this node, not for ones arriving
	// from other nodes of a cluster.
	ValidTags func(registry.Tags) error
	// UsageInterval is how often the node adds the bytes it counted per
	// client to the registry (usage.go); 0: DefaultUsageInterval.
	UsageInterval time.Duration
	// MaxPeers is the most clients the device holds a peer for at once
	// (ondemand.go); 0: DefaultMaxPeers. At most device.MaxPeers.
	MaxPeers int
	// PeerIdle removes a peer without a handshake or data for this long;
	// 0: DefaultPeerIdle.
	PeerIdle time.Duration
}

// Node is a running WireGuard side of a wedge node.
type Node struct {
	cfg  Config
	log  *slog.Logger
	bind *Bind
	dev  *device.Device
	uapi net.Listener

	// regMu serializes Register and Unregister, so the store and the device
	// change together: a delete racing a re-registration of the same key
	// cannot remove the new peer.
	regMu sync.Mutex
	// peerMu serializes the device's peer changes with the registry
	// mirror's deletions: a peer added on demand for a client being
	// deleted is either removed by the delete or never added.
	peerMu sync.Mutex
	door   *demand // the peer table (ondemand.go)
	// marking: StartExpiry records first handshakes; the peer sweep
	// does too, for peers removed before its next look.
	marking atomic.Bool

	mu sync.Mutex // guards clients, byAddr, seen and extraStats
	// clients is every registered client (the node's mirror of the
	// registry); the device holds peers only for some (door.held).
	clients    map[wgtypes.Key]registry.Client
	byAddr     map[netip.Addr]clientid.ID  // inner addresses of clients, for ClientOf
	seen       map[wgtypes.Key]clientid.ID // ClientID last seen per peer
	extraStats map[string]func() any

	mismatches atomic.Uint64
	recovered  atomic.Uint64 // handshakes started by session recovery
	refused    atomic.Uint64 // recoveries refused (recover.go)
	inherited  atomic.Uint64 // handshakes started for inherited sessions

	// peersAdded and peersRemoved count peers put into and taken out of
	// the device (on demand; deleted, idle, unfinished or evicted).
	peersAdded, peersRemoved atomic.Uint64

	vips      []netip.Addr  // IndexConfig.VIPs; set once by EnableIndexes
	countKick chan struct{} // asks the watcher to publish counts and pins now
	indexSlot atomic.Uint32 // the slot of tagged indexes, 0 while off
	// membershipChanged is when (UnixNano) the active nodes of this data
	// center or this node's state last changed; session recovery waits
	// for the other nodes' pins after it (recover.go).
	membershipChanged atomic.Int64
	lastStamped       uint64     // Bind's stamped count at the last ClientID check; watcher only
	owners            ownerCache // watcher only
	usage             usageState
	usageStopped      chan struct{} // closed when countUsage returned; nil without usage
	done              chan struct{}
	closeOnce         sync.Once
	wg                sync.WaitGroup
}

// MaxPeers is the most peers one device holds (wireguard-go's limit), so
// the most Config.MaxPeers may be.
const MaxPeers = device.MaxPeers

// ErrOwnKey reports an attempt to register the service's own public key,
// which wireguard-go would silently refuse as a peer.
var ErrOwnKey = errors.New("server: that is the server's own public key")

// New builds the device and reads the registry; peers are added when their
// clients handshake (ondemand.go). The device is up and listening when New
// returns.
func New(ctx context.Context, cfg Config) (*Node, error) {
	switch {
	case cfg.Store == nil:
		return nil, errors.New("server: nil Store")
	case cfg.TUN == nil:
		return nil, errors.New("server: nil TUN")
	case cfg.Logger == nil:
		return nil, errors.New("server: nil Logger")
	case cfg.Name == "":
		return nil, errors.New("server: empty device name")
	}
	inner := cfg.Bind
	if inner == nil {
		// wedge's own Bind replies from the address each client targeted
		// (the VIP), which wireguard-go's StdNetBind loses under UDP GRO.
		inner = conn.NewDefaultBind()
		if udpbind.Supported {
			inner = udpbind.New()
		}
	}
	n := &Node{
		cfg:     cfg,
		log:     cfg.Logger,
		bind:    NewBind(inner),
		clients: map[wgtypes.Key]registry.Client{},
		byAddr:  map[netip.Addr]clientid.ID{},
		seen:    map[wgtypes.Key]clientid.ID{},
		done:    make(chan struct{}),

		countKick: make(chan struct{}, 1),
	}
	if err := n.observeHandshakes(); err != nil {
		return nil, err
	}
	maxPeers, idle := cfg.MaxPeers, cfg.PeerIdle
	if maxPeers == 0 {
		maxPeers = DefaultMaxPeers
	}
	if idle == 0 {
		idle = DefaultPeerIdle
	}
	if maxPeers < 0 || maxPeers > MaxPeers {
		return nil, fmt.Errorf("server: max peers %d: one device holds 1..%d", maxPeers, MaxPeers)
	}
	if idle < 0 {
		return nil, fmt.Errorf("server: negative peer idle time %v", idle)
	}
	door, err := newDemand(n, maxPeers, idle)
	if err != nil {
		return nil, err
	}
	n.door = door
	n.bind.door.Store(door)
	n.dev = device.NewDevice(cfg.TUN, n.bind, deviceLogger(cfg.Logger))
	sk := cfg.PrivateKey
	if err := n.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hexKey(sk), cfg.ListenPort)); err != nil {
		n.dev.Close()
		return nil, fmt.Errorf("server: configure device: %w", err)
	}
	watcher, shared := cfg.Store.(registry.Watcher)
	var all []registry.Client
	if !shared {
		var err error
		if all, err = cfg.Store.List(ctx); err != nil {
			n.dev.Close()
			return nil, fmt.Errorf("server: load clients: %w", err)
		}
		n.learn(all)
	}
	if err := n.dev.Up(); err != nil {
		n.dev.Close()
		return nil, fmt.Errorf("server: device up (is UDP port %d free?): %w", cfg.ListenPort, err)
	}
	if cfg.UAPI {
		if err := n.openUAPI(); err != nil {
			n.dev.Close()
			return nil, err
		}
	}
	n.wg.Add(3)
	go n.watchClientIDs()
	go n.recoverSessions()
	go n.sweepPeers()
	if shared {
		if err := n.follow(ctx, watcher); err != nil {
			n.Close()
			return nil, err
		}
	}
	n.startUsage()
	n.mu.Lock()
	loaded := len(n.clients)
	n.mu.Unlock()
	n.log.Info("wireguard device up", "name", cfg.Name, "port", cfg.ListenPort, "clients", loaded,
		"max_peers", maxPeers, "peer_idle", idle, "public_key", sk.PublicKey().String())
	return n, nil
}

// firstSyncWait is how long New waits for a shared store's first snapshot
// before starting without it (the clients arrive when the store answers).
const firstSyncWait = 10 * time.Second

// follow applies a shared store's registrations to the device, now and on
// every change, until Close. It returns once the first snapshot is in the
// device, or after firstSyncWait with a warning, so a node starts (and can
// report its state) while etcd is down.
func (n *Node) follow(ctx context.Context, w registry.Watcher) error {
	wctx, cancel := context.WithCancel(context.Background())
	synced := make(chan struct{})
	var once sync.Once
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		<-n.done
		cancel()
	}()
	go func() {
		defer n.wg.Done()
		w.Watch(wctx, func(ev registry.Event) {
			n.apply(ev)
			if ev.Type == registry.EventReset {
				once.Do(func() { close(synced) })
			}
		})
	}()
	select {
	case <-synced:
	case <-time.After(firstSyncWait):
		n.log.Warn("registry not loaded yet (store unreachable?); starting without clients, they load when it answers")
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// apply makes the device match one registry change. Changes that the
// device already reflects (a node's own registration coming back through
// the watch) do nothing.
func (n *Node) apply(ev registry.Event) {
	n.regMu.Lock()
	defer n.regMu.Unlock()
	switch ev.Type {
	case registry.EventReset:
		want := make(map[wgtypes.Key]registry.Client, len(ev.Clients))
		for _, c := range ev.Clients {
			want[c.PublicKey] = c
		}
		var gone []registry.Client
		n.mu.Lock()
		for k, c := range n.clients {
			if w, ok := want[k]; !ok || w.ID != c.ID {
				gone = append(gone, c)
			}
		}
		n.mu.Unlock()
		for _, c := range gone {
			n.dropPeer(c)
		}
		n.learn(ev.Clients)
		n.log.Info("registry synced", "clients", len(ev.Clients), "removed", len(gone))
	case registry.EventPut:
		n.learn([]registry.Client{ev.Client})
	case registry.EventDelete:
		n.mu.Lock()
		var found *registry.Client
		for _, c := range n.clients {
			if c.ID == ev.Client.ID {
				found = &c
				break
			}
		}
		n.mu.Unlock()
		if found != nil {
			n.dropPeer(*found)
		}
	}
}

// learn puts registrations into the node's view of the registry. A client
// whose inner addresses changed (its key registered again) loses its peer,
// if it has one: its next initiation adds it as registered now. A client
// whose tags alone changed keeps it, and OnTags is told (rewriting the
// peer would drop its allowed IPs for a moment, losing packets).
func (n *Node) learn(cs []registry.Client) {
	var retagged, readdressed []registry.Client
	n.mu.Lock()
	for _, c := range cs {
		old, ok := n.clients[c.PublicKey]
		if ok && old == c {
			continue
		}
		if ok {
			n.forgetAddrs(old)
			if old.V4 != c.V4 || old.V6 != c.V6 {
				readdressed = append(readdressed, c)
			} else if old.Tags != c.Tags {
				retagged = append(retagged, c)
			}
		}
		n.clients[c.PublicKey] = c
		n.byAddr[c.V4], n.byAddr[c.V6] = c.ClientID, c.ClientID
	}
	n.mu.Unlock()
	if n.cfg.OnTags != nil {
		for _, c := range retagged {
			n.cfg.OnTags(c)
		}
	}
	for _, c := range readdressed {
		// Rewriting the peer in place would keep a session the new
		// registration never made: remove it, the client's next
		// initiation adds it as registered now.
		n.peerMu.Lock()
		n.removePeerLocked(c.PublicKey, time.Now(), removedDeleted)
		n.peerMu.Unlock()
	}
}

// dropPeer forgets a deleted registration and removes its peer, if it has
// one.
func (n *Node) dropPeer(c registry.Client) {
	n.peerMu.Lock()
	defer n.peerMu.Unlock()
	n.mu.Lock()
	held, ok := n.clients[c.PublicKey]
	if ok && held.ID == c.ID {
		n.forgetAddrs(held)
		delete(n.clients, c.PublicKey)
		delete(n.usage.mirror, c.ID)
	}
	n.mu.Unlock()
	if ok && held.ID == c.ID {
		n.removePeerLocked(c.PublicKey, time.Now(), removedDeleted)
	}
}

// forgetAddrs drops c's inner addresses from byAddr unless another client
// holds them now. n.mu must be held.
func (n *Node) forgetAddrs(c registry.Client) {
	for _, a := range []netip.Addr{c.V4, c.V6} {
		if n.byAddr[a] == c.ClientID {
			delete(n.byAddr, a)
		}
	}
}

// ClientOf returns the ClientID of the client the device holds with inner
// address a (either of its two): the netstack's and the egress dialer's
// budgets count per client with it.
func (n *Node) ClientOf(a netip.Addr) (clientid.ID, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	id, ok := n.byAddr[a]
	return id, ok
}

func (n *Node) openUAPI() error {
	f, err := ipc.UAPIOpen(n.cfg.Name)
	if err != nil {
		return fmt.Errorf("server: UAPI socket for %s: %w", n.cfg.Name, err)
	}
	l, err := ipc.UAPIListen(n.cfg.Name, f)
	if err != nil {
		f.Close()
		return fmt.Errorf("server: UAPI listen for %s: %w", n.cfg.Name, err)
	}
	n.uapi = l
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go n.dev.IpcHandle(c)
		}
	}()
	return nil
}

func writePeer(b *strings.Builder, c registry.Client) {
	fmt.Fprintf(b, "public_key=%s\nreplace_allowed_ips=true\nallowed_ip=%s/32\nallowed_ip=%s/128\n",
		hexKey(c.PublicKey), c.V4, c.V6)
}

// Register creates a registration with tags (RegisterClient).
func (n *Node) Register(ctx context.Context, pub wgtypes.Key, tags registry.Tags) (registry.Client, error) {
	return n.RegisterClient(ctx, registry.Client{PublicKey: pub, Tags: tags})
}

// RegisterClient creates a registration of want.PublicKey with want's
// tags, token hash and grants (registry.Store.Create); the client's peer
// is added when it handshakes. Tags that fail registry.Tags.Validate are
// refused with registry.ErrBadTags, ones Config.ValidTags vetoes with
// ErrTagsRefused.
func (n *Node) RegisterClient(ctx context.Context, want registry.Client) (registry.Client, error) {
	if want.PublicKey == n.PublicKey() {
		return registry.Client{}, ErrOwnKey
	}
	if err := n.checkTags(want.Tags); err != nil {
		return registry.Client{}, err
	}
	n.regMu.Lock()
	defer n.regMu.Unlock()
	if n.cfg.Cluster != nil && !n.cfg.Cluster.Connected() {
		return registry.Client{}, fmt.Errorf("%w: etcd is not reachable from this node", registry.ErrUnavailable)
	}
	c, err := n.cfg.Store.Create(ctx, want)
	if err != nil {
		return registry.Client{}, err
	}
	n.learn([]registry.Client{c})
	n.log.Info("client registered", "id", c.ID, "client_id", c.ClientID.String(), "v4", c.V4, "v6", c.V6,
		"pool", c.Tags.Pool, "country", c.Tags.Country)
	return c, nil
}

// Unregister deletes a registration and removes its peer from the device
// at once, if it has one: its session ends with the call.
func (n *Node) Unregister(ctx context.Context, id string) (registry.Client, error) {
	n.regMu.Lock()
	defer n.regMu.Unlock()
	c, err := n.cfg.Store.Delete(ctx, id)
	if err != nil {
		return registry.Client{}, err
	}
	n.dropPeer(c)
	n.log.Info("client deleted", "id", c.ID)
	return c, nil
}

// removePeer removes a peer through the IPC path, which wireguard-go
// serializes with every other configuration change (device.RemovePeer does
// not take the IPC lock).
func (n *Node) removePeer(pub wgtypes.Key) {
	if err := n.dev.IpcSet("public_key=" + hexKey(pub) + "\nremove=true\n"); err != nil {
		n.log.Error("remove peer", "public_key", pub.String(), "err", err)
	}
}

// Get returns a registration. When a shared store is unreachable it
// answers from the node's own view of the registry.
func (n *Node) Get(ctx context.Context, id string) (registry.Client, error) {
	c, err := n.cfg.Store.Get(ctx, id)
	if errors.Is(err, registry.ErrUnavailable) {
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, c := range n.clients {
			if c.ID == id {
				return c, nil
			}
		}
	}
	return c, err
}

// PublicKey is the service public key clients peer with.
func (n *Node) PublicKey() wgtypes.Key { return n.cfg.PrivateKey.PublicKey() }

// Close stops the device, the UAPI socket and background work.
func (n *Node) Close() {
	n.closeOnce.Do(func() {
		close(n.done)
		if n.usageStopped != nil {
			// What was counted since the last flush is not lost with
			// the device's counters.
			<-n.usageStopped
			n.finalFlush()
		}
		if n.uapi != nil {
			n.uapi.Close()
		}
		n.dev.Close()
		n.wg.Wait()
	})
}

// Wait returns a channel closed when the device stops.
func (n *Node) Wait() <-chan struct{} { return n.dev.Wait() }

// watchClientIDs joins what Bind saw (ClientID per source address) with the
// device's peers (endpoint per authenticated peer), so each peer's ClientID is
// known and a ClientID that differs from the registered one is counted. It
// runs every 2 s rather than per packet: the hot path stays untouched.
//
// In a cluster it also publishes, every 6 s and at once when the active
// nodes of its data center or its own state change, how many clients it
// serves and which it pins (countActive).
func (n *Node) watchClientIDs() {
	defer n.wg.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	kick := n.countKick
	if m := n.cfg.Cluster; m != nil {
		var last string
		unsub := m.Subscribe(func(ms []cluster.Member) {
			self := m.Self()
			if key := string(self.State) + "|" + strings.Join(activeIDs(ms, self.DC), ","); key != last {
				last = key
				n.membershipChanged.Store(time.Now().UnixNano())
				n.kickCount()
			}
		})
		defer unsub()
	}
	for tick := 0; ; tick++ {
		select {
		case <-n.done:
			return
		case <-kick:
			n.countActive()
		case <-t.C:
			n.checkClientIDs()
			if n.cfg.Cluster != nil && tick%3 == 0 {
				n.countActive()
			}
		}
	}
}

// kickCount asks the watcher to publish the client count and pins now.
func (n *Node) kickCount() {
	select {
	case n.countKick <- struct{}{}:
	default:
	}
}

func (n *Node) checkClientIDs() {
	// Nothing new was stamped: nothing to join (the UAPI dump costs O(peers)).
	stamped, _ := n.bind.Counts()
	if stamped == n.lastStamped {
		return
	}
	n.lastStamped = stamped
	peers, err := n.peers()
	if err != nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range peers {
		if !p.Endpoint.IsValid() {
			continue
		}
		id := n.bind.Seen(p.Endpoint)
		if id == 0 || id == n.seen[p.PublicKey] {
			continue
		}
		n.seen[p.PublicKey] = id
		if c, ok := n.clients[p.PublicKey]; ok && c.ClientID != id {
			n.mismatches.Add(1)
			n.log.Warn("client stamps a ClientID other than its registered one",
				"id", c.ID, "registered", c.ClientID.String(), "seen", id.String(), "endpoint", p.Endpoint)
		}
	}
}

// peerState is one peer as the device reports it over UAPI.
type peerState struct {
	PublicKey     wgtypes.Key
	Endpoint      netip.AddrPort
	LastHandshake time.Time
	RxBytes       uint64
	TxBytes       uint64
}

// peers reads the device's peers through its UAPI get operation.
func (n *Node) peers() ([]peerState, error) {
	var b strings.Builder
	if err := n.dev.IpcGetOperation(&b); err != nil {
		return nil, err
	}
	return parsePeers(b.String())
}

func parsePeers(uapi string) ([]peerState, error) {
	// A hand-written loop: this reads every peer of the device, every
	// second or two, so it avoids what a Scanner and hex.DecodeString
	// would copy and allocate per line.
	out := make([]peerState, 0, strings.Count(uapi, "public_key="))
	var sec, nsec int64
	flush := func() {
		if len(out) > 0 && sec != 0 {
			out[len(out)-1].LastHandshake = time.Unix(sec, nsec)
		}
		sec, nsec = 0, 0
	}
	for len(uapi) > 0 {
		line := uapi
		if i := strings.IndexByte(uapi, '\n'); i >= 0 {
			line, uapi = uapi[:i], uapi[i+1:]
		} else {
			uapi = ""
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if k == "public_key" {
			flush()
			key, ok := hexKey32(v)
			if !ok {
				return nil, fmt.Errorf("server: bad public_key in UAPI output")
			}
			out = append(out, peerState{PublicKey: key})
			continue
		}
		if len(out) == 0 {
			continue
		}
		p := &out[len(out)-1]
		switch k {
		case "endpoint":
			if ap, err := netip.ParseAddrPort(v); err == nil {
				p.Endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			p.RxBytes, _ = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			p.TxBytes, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	flush()
	return out, nil
}

// hexKey32 decodes 64 hex digits.
func hexKey32(s string) (k wgtypes.Key, ok bool) {
	if len(s) != 2*wgtypes.KeyLen {
		return k, false
	}
	for i := range k {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return k, false
		}
		k[i] = hi<<4 | lo
	}
	return k, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// deviceLogger adapts slog to wireguard-go's logger; its verbose lines are
// per handshake, so they go to debug.
func deviceLogger(l *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug(fmt.Sprintf(format, args...), "component", "wireguard")
			}
		},
		Errorf: func(format string, args ...any) {
			l.Error(fmt.Sprintf(format, args...), "component", "wireguard")
		},
	}
}
