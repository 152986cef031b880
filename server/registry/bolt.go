package registry

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.etcd.io/bbolt"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
)

// Bolt is the embedded Store: one bbolt file under the node's state
// directory. bbolt fsyncs every committed transaction and never overwrites
// live pages, so a kill -9 at any moment leaves the last committed state; a
// Create returns only after its commit, so no acknowledged registration is
// lost. The file is locked: two daemons cannot share one state directory.
type Bolt struct {
	db    *bbolt.DB
	pools Pools
	group groupCommit // Create's shared commits (bolt_group.go)
}

var _ Store = (*Bolt)(nil)

var (
	bucketClients = []byte("clients") // id → record (JSON)
	bucketByKey   = []byte("by_key")  // public key (32 bytes) → id
	bucketByCID   = []byte("by_cid")  // ClientID (3 bytes) → id
	bucketByAddr  = []byte("by_addr") // inner address (4 or 16 bytes) → id
	bucketMeta    = []byte("meta")    // allocation cursors
	bucketUsage   = []byte("usage")   // id → usage record (JSON), absent until counted or reset
	cursorV4      = []byte("next_v4")
	cursorV6      = []byte("next_v6")
)

// record is the stored form of a Client (Bolt's and Etcd's).
type record struct {
	ID        string    `json:"id"`
	PublicKey string    `json:"public_key"`
	ClientID  uint32    `json:"client_id"`
	V4        string    `json:"v4"`
	V6        string    `json:"v6"`
	Pool      string    `json:"pool,omitempty"`
	Country   string    `json:"country,omitempty"`
	Created   time.Time `json:"created"`
	// TokenHash is hex SHA-256 of the registration's bearer token.
	TokenHash      string     `json:"token_sha256,omitempty"`
	Plus           bool       `json:"plus,omitempty"`
	QuotaBytes     uint64     `json:"quota_bytes,omitempty"`
	Enrollment     string     `json:"enrollment,omitempty"`
	Awaiting       bool       `json:"awaiting_handshake,omitempty"`
	FirstHandshake *time.Time `json:"first_handshake,omitempty"`
}

func encode(c Client) ([]byte, error) {
	r := record{
		ID: c.ID, PublicKey: c.PublicKey.String(), ClientID: uint32(c.ClientID),
		V4: c.V4.String(), V6: c.V6.String(), Pool: c.Tags.Pool, Country: c.Tags.Country,
		Created: c.Created, Plus: c.Plus, QuotaBytes: c.QuotaBytes, Enrollment: c.Enrollment,
		Awaiting: c.AwaitingHandshake,
	}
	if c.TokenHash != ([32]byte{}) {
		r.TokenHash = hex.EncodeToString(c.TokenHash[:])
	}
	if !c.FirstHandshake.IsZero() {
		t := c.FirstHandshake.UTC()
		r.FirstHandshake = &t
	}
	return json.Marshal(r)
}

// OpenBolt opens (creating if needed) the store at path.
func OpenBolt(path string, pools Pools) (*Bolt, error) {
	if err := pools.Validate(); err != nil {
		return nil, err
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bbolt.ErrTimeout) {
			return nil, fmt.Errorf("registry: %s is locked by another process (is another wedged running on this --state?)", path)
		}
		return nil, fmt.Errorf("registry: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketClients, bucketByKey, bucketByCID, bucketByAddr, bucketMeta, bucketUsage} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("registry: init %s: %w", path, err)
	}
	return &Bolt{db: db, pools: pools}, nil
}

// Close closes the file.
func (b *Bolt) Close() error { return b.db.Close() }

// Create registers c.PublicKey (Store.Create).
func (b *Bolt) Create(ctx context.Context, c Client) (Client, error) {
	pub := c.PublicKey
	if err := c.Tags.Validate(); err != nil {
		return Client{}, err
	}
	if c.ID != "" && !validID(c.ID) {
		return Client{}, fmt.Errorf("registry: id %q: want 32 lower-case hex characters", c.ID)
	}
	if err := ctx.Err(); err != nil {
		return Client{}, err
	}
	// Registrations that arrive together share one commit (one fsync)
	// instead of one each, and each caller returns only once its own is
	// durable (bolt_group.go). fn may run more than once, so every run
	// starts from the caller's c and only a successful one is kept.
	var out Client
	err := b.update(func(tx *bbolt.Tx) error {
		c := c
		if tx.Bucket(bucketByKey).Get(pub[:]) != nil {
			return ErrExists
		}
		cid, err := allocClientID(tx.Bucket(bucketByCID))
		if err != nil {
			return err
		}
		v4, err := allocAddr(tx, b.pools.V4, cursorV4)
		if err != nil {
			return err
		}
		v6, err := allocAddr(tx, b.pools.V6, cursorV6)
		if err != nil {
			return err
		}
		if c.ID == "" {
			c.ID = newID()
		} else if tx.Bucket(bucketClients).Get([]byte(c.ID)) != nil {
			return fmt.Errorf("registry: id %s is taken", c.ID)
		}
		c.ClientID, c.V4, c.V6 = cid, v4, v6
		c.Created = time.Now().UTC().Truncate(time.Second)
		if err := put(tx, c); err != nil {
			return err
		}
		out = c
		return nil
	})
	if err != nil {
		return Client{}, err
	}
	return out, nil
}

func put(tx *bbolt.Tx, c Client) error {
	rec, err := encode(c)
	if err != nil {
		return err
	}
	id := []byte(c.ID)
	cid := c.ClientID.Bytes()
	for _, kv := range []struct{ bucket, k, v []byte }{
		{bucketClients, id, rec},
		{bucketByKey, c.PublicKey[:], id},
		{bucketByCID, cid[:], id},
		{bucketByAddr, c.V4.AsSlice(), id},
		{bucketByAddr, c.V6.AsSlice(), id},
	} {
		if err := tx.Bucket(kv.bucket).Put(kv.k, kv.v); err != nil {
			return err
		}
	}
	return nil
}

func allocClientID(byCID *bbolt.Bucket) (clientid.ID, error) {
	// Random ClientIDs spread clients evenly whatever hash the front uses and
	// reveal nothing about how many clients exist. Random probes find a free
	// one at once until the space is nearly full; then scan.
	for range 64 {
		id := randomClientID()
		b := id.Bytes()
		if byCID.Get(b[:]) == nil {
			return id, nil
		}
	}
	start := randomClientID()
	for i := clientid.ID(0); i < clientid.Max; i++ {
		id := (start+i-1)%clientid.Max + 1
		b := id.Bytes()
		if byCID.Get(b[:]) == nil {
			return id, nil
		}
	}
	return 0, fmt.Errorf("%w: no free ClientID", ErrExhausted)
}

// allocAddr hands out the next free address of pool after the stored cursor,
// wrapping around, so deleted addresses are reused only after the pool has
// gone round once (a new client does not inherit a just-deleted address).
func allocAddr(tx *bbolt.Tx, pool netip.Prefix, cursorKey []byte) (netip.Addr, error) {
	pool = pool.Masked()
	meta, byAddr := tx.Bucket(bucketMeta), tx.Bucket(bucketByAddr)
	a := pool.Addr()
	if raw := meta.Get(cursorKey); raw != nil {
		if c, ok := netip.AddrFromSlice(raw); ok && pool.Contains(c) {
			a = c
		}
	}
	// Bound the scan by the pool size (capped: a v6 pool never fills).
	limit := uint64(1) << min(pool.Addr().BitLen()-pool.Bits(), 32)
	for range limit {
		a = a.Next()
		if !a.IsValid() || !pool.Contains(a) {
			a = pool.Addr()
			continue
		}
		if !usable(pool, a) || byAddr.Get(a.AsSlice()) != nil {
			continue
		}
		if err := meta.Put(cursorKey, a.AsSlice()); err != nil {
			return netip.Addr{}, err
		}
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("%w: pool %v is full", ErrExhausted, pool)
}

// Get returns the registration with id.
func (b *Bolt) Get(ctx context.Context, id string) (Client, error) {
	var c Client
	err := b.db.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(bucketClients).Get([]byte(id))
		if raw == nil {
			return ErrNotFound
		}
		var err error
		c, err = decode(raw)
		return err
	})
	return c, err
}

// SetTags replaces the tags of the registration with id; the record is
// rewritten in one transaction, its indexes are untouched.
func (b *Bolt) SetTags(ctx context.Context, id string, t Tags) (Client, error) {
	if err := t.Validate(); err != nil {
		return Client{}, err
	}
	return b.Update(ctx, id, func(c *Client) error { c.Tags = t; return nil })
}

// Update changes the registration with id in one transaction (Store.Update).
func (b *Bolt) Update(ctx context.Context, id string, fn func(*Client) error) (Client, error) {
	if err := ctx.Err(); err != nil {
		return Client{}, err
	}
	var c Client
	err := b.db.Update(func(tx *bbolt.Tx) error {
		clients := tx.Bucket(bucketClients)
		raw := clients.Get([]byte(id))
		if raw == nil {
			return ErrNotFound
		}
		old, err := decode(raw)
		if err != nil {
			return err
		}
		c = old
		if err := fn(&c); err != nil {
			return err
		}
		if err := checkUpdate(old, c); err != nil || c == old {
			return err
		}
		rec, err := encode(c)
		if err != nil {
			return err
		}
		return clients.Put([]byte(id), rec)
	})
	if err != nil {
		return Client{}, err
	}
	return c, nil
}

// checkUpdate refuses what Update must not write.
func checkUpdate(old, c Client) error {
	if !old.Fixed(c) {
		return ErrFixed
	}
	return c.Tags.Validate()
}

// Delete removes the registration with id.
func (b *Bolt) Delete(ctx context.Context, id string) (Client, error) {
	return b.DeleteIf(ctx, id, nil)
}

// DeleteIf removes the registration with id if cond (nil: always)
// accepts it, in one transaction (Store.DeleteIf).
func (b *Bolt) DeleteIf(ctx context.Context, id string, cond func(Client) error) (Client, error) {
	var c Client
	err := b.db.Update(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(bucketClients).Get([]byte(id))
		if raw == nil {
			return ErrNotFound
		}
		var err error
		if c, err = decode(raw); err != nil {
			return err
		}
		if cond != nil {
			if err := cond(c); err != nil {
				return err
			}
		}
		cid := c.ClientID.Bytes()
		for _, kv := range []struct{ bucket, k []byte }{
			{bucketClients, []byte(id)},
			{bucketByKey, c.PublicKey[:]},
			{bucketByCID, cid[:]},
			{bucketByAddr, c.V4.AsSlice()},
			{bucketByAddr, c.V6.AsSlice()},
			{bucketUsage, []byte(id)},
		} {
			if err := tx.Bucket(kv.bucket).Delete(kv.k); err != nil {
				return err
			}
		}
		return nil
	})
	return c, err
}

// List returns every registration.
func (b *Bolt) List(ctx context.Context) ([]Client, error) {
	var out []Client
	err := b.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketClients).ForEach(func(_, raw []byte) error {
			c, err := decode(raw)
			if err != nil {
				return err
			}
			out = append(out, c)
			return nil
		})
	})
	return out, err
}

func decode(raw []byte) (Client, error) {
	var r record
	if err := json.Unmarshal(raw, &r); err != nil {
		return Client{}, fmt.Errorf("registry: corrupt record: %w", err)
	}
	pub, err := wgtypes.ParseKey(r.PublicKey)
	if err != nil {
		return Client{}, fmt.Errorf("registry: corrupt record %s: %w", r.ID, err)
	}
	if r.ClientID == 0 || r.ClientID > uint32(clientid.Max) {
		return Client{}, fmt.Errorf("registry: corrupt record %s: ClientID %d out of range", r.ID, r.ClientID)
	}
	v4, err4 := netip.ParseAddr(r.V4)
	v6, err6 := netip.ParseAddr(r.V6)
	if err := errors.Join(err4, err6); err != nil {
		return Client{}, fmt.Errorf("registry: corrupt record %s: %w", r.ID, err)
	}
	if !v4.Is4() || !v6.Is6() || v6.Is4In6() || v6.Zone() != "" {
		return Client{}, fmt.Errorf("registry: corrupt record %s: addresses %v, %v", r.ID, v4, v6)
	}
	c := Client{ID: r.ID, PublicKey: pub, ClientID: clientid.ID(r.ClientID), V4: v4, V6: v6,
		Tags: Tags{Pool: r.Pool, Country: r.Country}, Created: r.Created,
		Plus: r.Plus, QuotaBytes: r.QuotaBytes, Enrollment: r.Enrollment, AwaitingHandshake: r.Awaiting}
	if r.TokenHash != "" {
		h, err := hex.DecodeString(r.TokenHash)
		if err != nil || len(h) != len(c.TokenHash) {
			return Client{}, fmt.Errorf("registry: corrupt record %s: token hash", r.ID)
		}
		c.TokenHash = [32]byte(h)
	}
	if r.FirstHandshake != nil {
		c.FirstHandshake = r.FirstHandshake.UTC()
	}
	return c, nil
}
