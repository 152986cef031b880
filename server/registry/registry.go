// Package registry holds the registered clients: public key, ClientID and
// inner addresses. Store is the contract every backend implements; Bolt is the
// embedded default that needs no external service.
//
// As all of server/, it must not import gVisor, client/, netstack/ or e2e/;
// the API's view of a registration is internal/api's.
package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/internal/clientid"
)

// Client is one registration. Create reads only ID (optional),
// PublicKey, Tags and the fields below Created; it allocates the rest.
type Client struct {
	ID        string
	PublicKey wgtypes.Key
	ClientID  clientid.ID
	V4        netip.Addr
	V6        netip.Addr
	Tags      Tags
	Created   time.Time

	// TokenHash is the SHA-256 of the registration's bearer token (the
	// token itself is never stored); zero for registrations made before
	// tokens existed, which only the admin API can reach.
	TokenHash [32]byte
	// Plus and QuotaBytes are what an enrollment token or the operator
	// granted: the plus tier and a traffic quota (0: none). Stored and
	// shown; what they do comes with the features that read them.
	Plus       bool
	QuotaBytes uint64
	// Enrollment names the enrollment token the client registered with
	// (a short hash of it, never the token), "" for none; it counts the
	// token's registrations against its max_registrations.
	Enrollment string
	// AwaitingHandshake is set on registrations made since expiry
	// existed until their first handshake: one still awaiting it past
	// the node's --reg-expiry is removed (server: Expiry). Registrations
	// from before never expire.
	AwaitingHandshake bool
	// FirstHandshake is when a node first saw the client handshake
	// (zero: never, or not yet recorded).
	FirstHandshake time.Time
}

// Fixed reports whether c and d agree on the fields a registration keeps
// for life: its id, key, ClientID and addresses (the indexes). Update
// refuses to change them.
func (c Client) Fixed(d Client) bool {
	return c.ID == d.ID && c.PublicKey == d.PublicKey && c.ClientID == d.ClientID && c.V4 == d.V4 && c.V6 == d.V6
}

// ErrFixed: an Update tried to change a field a registration keeps for
// life.
var ErrFixed = errors.New("registry: id, key, ClientID and addresses cannot be changed")

// Tags choose how a client's traffic leaves (the egress pool and an
// optional country override); they and their rules are the API's
// (api.Tags.Validate), so a registration and the egress plan accept the
// same names.
type Tags = api.Tags

// MaxPoolLen is the longest pool name Tags.Validate accepts.
const MaxPoolLen = api.MaxPoolLen

// Sentinel errors callers branch on.
var (
	ErrNotFound  = errors.New("registry: no such registration")
	ErrExists    = errors.New("registry: public key already registered")
	ErrExhausted = errors.New("registry: address or ClientID pool exhausted")
	// ErrBadTags: Tags.Validate refused the tags; nothing was changed.
	ErrBadTags = api.ErrBadTags
	// ErrUnavailable: a shared store cannot be reached (or has no quorum);
	// nothing was changed and the caller may retry later.
	ErrUnavailable = errors.New("registry: store unavailable")
)

// Store is a registry backend. Implementations are safe for concurrent use.
// Create allocates a unique non-zero ClientID and unique inner addresses in
// one atomic step and returns only once the registration is durable.
// Create, SetTags and Update refuse tags that fail Tags.Validate (ErrBadTags).
type Store interface {
	// Create registers c.PublicKey with c's tags, token hash, grants
	// (Plus, QuotaBytes, Enrollment) and AwaitingHandshake; it sets ID,
	// ClientID, V4, V6 and Created.
	Create(ctx context.Context, c Client) (Client, error)
	Get(ctx context.Context, id string) (Client, error)
	// Update reads registration id, lets fn change it, and writes the
	// result in one atomic step, returning it as stored; ErrNotFound if
	// there is none. fn may run more than once (a shared store runs it
	// again when another writer changed the record meanwhile); an error
	// from fn aborts with that error, and a client fn left as it was is
	// not written. Changing a Fixed field is refused (ErrFixed).
	Update(ctx context.Context, id string, fn func(*Client) error) (Client, error)
	// DeleteIf is Delete when cond accepts the registration as stored at
	// that instant, in one atomic step; otherwise it deletes nothing and
	// returns cond's error. Nodes expiring registrations use it, so a
	// client whose first handshake is recorded meanwhile is kept.
	DeleteIf(ctx context.Context, id string, cond func(Client) error) (Client, error)
	// SetTags replaces the tags of registration id in one atomic step
	// and returns the registration as stored; ErrNotFound if there is
	// none. A registration deleted meanwhile is never brought back. In a
	// shared store the change reaches every Watcher as an EventPut.
	SetTags(ctx context.Context, id string, t Tags) (Client, error)
	// Delete removes the registration and returns what it held.
	Delete(ctx context.Context, id string) (Client, error)
	List(ctx context.Context) ([]Client, error)
	Close() error
}

// EventType says what an Event carries.
type EventType int

const (
	// EventReset replaces everything the watcher holds with Clients.
	EventReset EventType = iota
	// EventPut adds (or replaces) Client.
	EventPut
	// EventDelete removes Client. Only Client.ID is certain to be set.
	EventDelete
)

// Event is one change a Watcher delivers.
type Event struct {
	Type    EventType
	Client  Client   // EventPut, EventDelete
	Clients []Client // EventReset
}

// Watcher is implemented by stores that several nodes share: a registration
// made through any node must reach every node's device.
type Watcher interface {
	// Watch calls fn with an EventReset holding every registration, then
	// with every change in order, until ctx is done. It survives outages of
	// the store: it resumes where it was, or sends a new EventReset when the
	// store can no longer replay what was missed. fn is never called
	// concurrently.
	Watch(ctx context.Context, fn func(Event)) error
}

// Pools are the inner address ranges clients are numbered from. The first
// host address of each pool is the node's own inner address (the clients'
// gateway and DNS server) and is never handed out.
type Pools struct {
	V4 netip.Prefix
	V6 netip.Prefix
}

// DefaultPools: 100.96.0.0/12 is inside CGNAT space (never routed on the
// internet, rarely used on LANs next to 10/8 and 192.168/16); the v6 pool is
// a ULA whose global ID spells "Wedge" in ASCII.
var DefaultPools = Pools{
	V4: netip.MustParsePrefix("100.96.0.0/12"),
	V6: netip.MustParsePrefix("fd57:6564:6765::/64"),
}

// Validate checks the pools are usable.
func (p Pools) Validate() error {
	if !p.V4.IsValid() || !p.V4.Addr().Is4() || p.V4.Bits() > 30 {
		return fmt.Errorf("registry: v4 pool %v must be an IPv4 prefix of /30 or larger", p.V4)
	}
	if !p.V6.IsValid() || !p.V6.Addr().Is6() || p.V6.Addr().Is4In6() || p.V6.Bits() > 126 {
		return fmt.Errorf("registry: v6 pool %v must be an IPv6 prefix of /126 or larger", p.V6)
	}
	return nil
}

// Gateways returns the node's own inner addresses, one per family.
func (p Pools) Gateways() (v4, v6 netip.Addr) {
	return p.V4.Masked().Addr().Next(), p.V6.Masked().Addr().Next()
}

// usable reports whether a may be handed to a client from pool p: inside,
// not the network address, not the gateway, not the v4 broadcast address.
func usable(p netip.Prefix, a netip.Addr) bool {
	p = p.Masked()
	if !p.Contains(a) || a == p.Addr() || a == p.Addr().Next() {
		return false
	}
	if a.Is4() {
		b := a.As4()
		bits := p.Bits()
		host := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		mask := uint32(1)<<(32-bits) - 1
		if host&mask == mask {
			return false
		}
	}
	return true
}

// NewID returns a new random registration id: 32 lower-case hex
// characters (128 bits). Create uses the caller's when set (so the API
// can put it into the registration's token before the registration
// exists), else makes one.
func NewID() string { return newID() }

// ValidID reports whether id has the form NewID gives.
func ValidID(id string) bool { return validID(id) }

func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux ≥ 3.17
	}
	return hex.EncodeToString(b[:])
}

func randomClientID() clientid.ID {
	var b [3]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(err)
		}
		if id := clientid.FromBytes(b); id != 0 {
			return id
		}
	}
}
