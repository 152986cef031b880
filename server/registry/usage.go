package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"
)

// Usage is a registration's traffic in its current period, as the nodes
// that served it reported it. Rx is what nodes received from the client
// (its uploads), Tx what they sent it (its downloads), both counted as
// WireGuard counts a peer's bytes.
//
// The record keeps one entry per node: each node adds its own counts to
// its own entry only, so nodes adding to one client at one instant never
// lose each other's bytes, and an entry carries the id of the last batch
// its node added, so a write whose answer was lost is never added twice.
// The total is the sum of the entries.
type Usage struct {
	// Since is when the period began: the last usage reset, zero for
	// "since the registration was made" (Client.Created).
	Since time.Time
	// Nodes are each node's counts in this period, by node id.
	Nodes map[string]NodeUsage
}

// NodeUsage is one node's counts of one client in a period.
type NodeUsage struct {
	Rx    uint64 `json:"rx"`
	Tx    uint64 `json:"tx"`
	Batch uint64 `json:"batch,omitempty"` // the id of the last AddUsage batch applied
}

// Rx returns the bytes received from the client in the period.
func (u Usage) Rx() uint64 {
	var s uint64
	for _, n := range u.Nodes {
		s = addSat(s, n.Rx)
	}
	return s
}

// Tx returns the bytes sent to the client in the period.
func (u Usage) Tx() uint64 {
	var s uint64
	for _, n := range u.Nodes {
		s = addSat(s, n.Tx)
	}
	return s
}

// Total returns Rx+Tx, the bytes a quota counts.
func (u Usage) Total() uint64 { return addSat(u.Rx(), u.Tx()) }

// Over reports whether the period's total has passed quota (0: none).
func (u Usage) Over(quota uint64) bool { return quota > 0 && u.Total() > quota }

// addSat is a+b, or MaxUint64 if that overflows.
func addSat(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// Delta is what one node counted of one client since its last AddUsage.
type Delta struct {
	ID     string
	Rx, Tx uint64
}

// ClientUsage is a registration with its usage (UsageStore.ListUsage).
type ClientUsage struct {
	Client
	Usage Usage
}

// UsageStore keeps each registration's usage. Both stores implement it.
type UsageStore interface {
	// AddUsage adds each delta to node's entry of its registration's
	// usage, exactly once even when a write must be retried, and returns
	// the usage as stored of those it added to. Deltas of registrations
	// that are gone are dropped. batch must differ from the node's
	// previous batch (a random number will do).
	AddUsage(ctx context.Context, node string, batch uint64, deltas []Delta) (map[string]Usage, error)
	// Usage returns the usage of registration id (ErrNotFound: none).
	Usage(ctx context.Context, id string) (Usage, error)
	// ResetUsage starts a new period of registration id: Since is now,
	// every count zero.
	ResetUsage(ctx context.Context, id string) (Usage, error)
	// ListUsage returns, in id order, up to limit registrations whose id
	// is greater than after, with their usage: a page of the registry.
	ListUsage(ctx context.Context, after string, limit int) ([]ClientUsage, error)
}

// UsageEvent is one change a UsageWatcher delivers.
type UsageEvent struct {
	// Reset: All replaces everything the watcher holds.
	Reset bool
	All   map[string]Usage
	// Otherwise the usage of registration ID is now Usage, or Deleted.
	ID      string
	Usage   Usage
	Deleted bool
}

// UsageWatcher is implemented by stores several nodes share: each node
// follows every client's usage, to refuse new flows of clients over
// their quota whichever node counted the bytes.
type UsageWatcher interface {
	// WatchUsage is Watcher.Watch for usage records.
	WatchUsage(ctx context.Context, fn func(UsageEvent)) error
}

// usageRecord is the stored form of a Usage (Bolt's and Etcd's): a few
// dozen bytes per node that served the client in the period.
type usageRecord struct {
	Since *time.Time           `json:"since,omitempty"`
	Nodes map[string]NodeUsage `json:"nodes,omitempty"`
}

func encodeUsage(u Usage) ([]byte, error) {
	r := usageRecord{Nodes: u.Nodes}
	if !u.Since.IsZero() {
		t := u.Since.UTC()
		r.Since = &t
	}
	return json.Marshal(r)
}

func decodeUsage(raw []byte) (Usage, error) {
	var r usageRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return Usage{}, fmt.Errorf("registry: corrupt usage record: %w", err)
	}
	u := Usage{Nodes: r.Nodes}
	if r.Since != nil {
		u.Since = r.Since.UTC()
		if y := u.Since.Year(); y < 1970 || y > 9999 {
			return Usage{}, fmt.Errorf("registry: corrupt usage record: since %v", u.Since)
		}
	}
	return u, nil
}

// add returns u with d added to node's entry as batch, and whether that
// batch was applied already (then u is returned as it is).
func (u Usage) add(node string, batch uint64, d Delta) (Usage, bool) {
	cur := u.Nodes[node]
	if batch != 0 && cur.Batch == batch {
		return u, true
	}
	nodes := maps.Clone(u.Nodes)
	if nodes == nil {
		nodes = map[string]NodeUsage{}
	}
	nodes[node] = NodeUsage{Rx: addSat(cur.Rx, d.Rx), Tx: addSat(cur.Tx, d.Tx), Batch: batch}
	u.Nodes = nodes
	return u, false
}

// Clone returns a copy of u that shares nothing with it.
func (u Usage) Clone() Usage {
	u.Nodes = maps.Clone(u.Nodes)
	return u
}

// NodeIDs returns the nodes that counted the client in the period, sorted.
func (u Usage) NodeIDs() []string { return slices.Sorted(maps.Keys(u.Nodes)) }

// MaxUsagePage bounds ListUsage's limit.
const MaxUsagePage = 1000

func pageLimit(limit int) int {
	if limit <= 0 || limit > MaxUsagePage {
		return MaxUsagePage
	}
	return limit
}
