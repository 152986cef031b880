package server

// Registrations that never handshake are removed. A registration is
// created "awaiting its first handshake" (registry.Client.
// AwaitingHandshake); the node that sees the client's first handshake
// records it on the registration (one write per client, never per
// handshake), and registrations still awaiting it --reg-expiry after
// they were made are deleted. That also removes the orphans of a crash
// between the store's fsync and the API's answer, whose client never
// learned of its registration.

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/wedge-edge/wedge/server/registry"
)

// ExpiryConfig says when registrations that never handshook go.
type ExpiryConfig struct {
	// After is how long a registration may await its first handshake;
	// 0 keeps them forever (first handshakes are still recorded).
	After time.Duration
	// Every is how often the node looks for expired registrations
	// (0: After/10, between 1 s and 10 min, with ±10% jitter so the
	// nodes of a cluster do not all look at once).
	Every time.Duration
	// MarkEvery is how often the device's peers are read for first
	// handshakes to record (0: 15 s).
	MarkEvery time.Duration
}

// errKeep: DeleteIf found the registration no longer expired.
var errKeep = errors.New("registration handshook or is not old enough")

// StartExpiry records first handshakes and removes registrations that
// never handshook, until the node closes.
func (n *Node) StartExpiry(cfg ExpiryConfig) {
	n.marking.Store(true)
	if cfg.MarkEvery <= 0 {
		cfg.MarkEvery = 15 * time.Second
	}
	if cfg.Every <= 0 {
		cfg.Every = min(max(cfg.After/10, time.Second), 10*time.Minute)
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		mark := time.NewTicker(cfg.MarkEvery)
		defer mark.Stop()
		jitter := func() time.Duration {
			return time.Duration(float64(cfg.Every) * (0.9 + 0.2*rand.Float64()))
		}
		sweep := time.NewTimer(jitter())
		defer sweep.Stop()
		for {
			select {
			case <-n.done:
				return
			case <-mark.C:
				n.markHandshakes()
			case <-sweep.C:
				if cfg.After > 0 {
					n.markHandshakes()
					n.expire(time.Now(), cfg.After)
				}
				sweep.Reset(jitter())
			}
		}
	}()
}

// markHandshakes records the first handshake of every client the device
// has handshaken with whose registration does not have one yet.
func (n *Node) markHandshakes() {
	n.mu.Lock()
	pending := 0
	for _, c := range n.clients {
		if c.AwaitingHandshake || c.FirstHandshake.IsZero() {
			pending++
		}
	}
	n.mu.Unlock()
	if pending == 0 {
		return // nothing to record: skip the device's peer dump
	}
	peers, err := n.peers()
	if err != nil {
		return
	}
	n.markFrom(peers)
}

// markFrom records the first handshakes peers show.
func (n *Node) markFrom(peers []peerState) {
	var todo []registry.Client
	at := map[string]time.Time{}
	n.mu.Lock()
	for _, p := range peers {
		if p.LastHandshake.IsZero() {
			continue
		}
		c, ok := n.clients[p.PublicKey]
		if ok && (c.AwaitingHandshake || c.FirstHandshake.IsZero()) {
			todo = append(todo, c)
			at[c.ID] = p.LastHandshake.UTC().Truncate(time.Second)
		}
	}
	n.mu.Unlock()
	for _, c := range todo {
		if n.cfg.Cluster != nil && !n.cfg.Cluster.Connected() {
			return // next round
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		got, err := n.cfg.Store.Update(ctx, c.ID, func(c *registry.Client) error {
			if c.FirstHandshake.IsZero() {
				c.FirstHandshake = at[c.ID]
			}
			c.AwaitingHandshake = false
			return nil
		})
		cancel()
		if err != nil {
			if !errors.Is(err, registry.ErrNotFound) {
				n.log.Warn("could not record a client's first handshake; will retry", "id", c.ID, "err", err)
			}
			continue
		}
		n.mu.Lock()
		if old, ok := n.clients[got.PublicKey]; ok && old.ID == got.ID {
			n.clients[got.PublicKey] = got
		}
		n.mu.Unlock()
	}
}

// expire deletes the registrations still awaiting their first handshake
// that were made before now-after. Several nodes of a cluster may try
// the same one: the store's DeleteIf deletes it once, and never one whose
// first handshake another node recorded meanwhile.
func (n *Node) expire(now time.Time, after time.Duration) {
	cutoff := now.Add(-after)
	var due []string
	n.mu.Lock()
	for _, c := range n.clients {
		if c.AwaitingHandshake && c.Created.Before(cutoff) {
			due = append(due, c.ID)
		}
	}
	n.mu.Unlock()
	for _, id := range due {
		if n.cfg.Cluster != nil && !n.cfg.Cluster.Connected() {
			return
		}
		n.expireOne(id, cutoff, after)
	}
}

func (n *Node) expireOne(id string, cutoff time.Time, after time.Duration) {
	n.regMu.Lock()
	defer n.regMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.cfg.Store.DeleteIf(ctx, id, func(c registry.Client) error {
		if !c.AwaitingHandshake || !c.Created.Before(cutoff) {
			return errKeep
		}
		return nil
	})
	switch {
	case err == nil:
		n.dropPeer(c)
		n.log.Info("registration removed: no handshake since it was made", "id", c.ID, "created", c.Created, "expiry", after)
	case errors.Is(err, errKeep), errors.Is(err, registry.ErrNotFound):
	default:
		n.log.Warn("could not remove an expired registration; will retry", "id", id, "err", err)
	}
}
