package paths

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Probes fill the gaps flows leave, each a TCP connection opened (its
// handshake RTT read from TCP_INFO) and closed at once:
//
//   - a prefix hot in another data center's summary that this data center
//     has no fresh figure for, when a relay through here could win there
//     (its RTT there exceeds the RTT between the two data centers by
//     MinGain): probed at the destination the summary names, so that the
//     next summary from here offers the other data center a figure, and
//     again before that figure ages out there (MaxAge/2). No request
//     travels through etcd: the summaries are the requests.
//   - a prefix this node relays, whose direct figure is half MaxAge old
//     (relayed flows do not measure the direct path): probed directly, so
//     the route does not fall back to direct flows to re-measure it.
//   - another data center without a fresh RTT from this node (no relay
//     connection fed one, as before the first relayed flow): its relay
//     listener's address, from its summary.
//
// They are capped: at most ProbeOptions.Rate a second, a prefix or data
// center at most once per MaxAge/2.

// ProbeOptions tune RunProbes.
type ProbeOptions struct {
	// Dial opens a TCP connection to dst from this node's egress, for
	// the destinations; DialNode for the relay listeners of the other
	// data centers (nil: the destination Dial). Required. A probe is
	// dialed with the node's egress ACL like a client's flow.
	Dial, DialNode func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	// Rate is the most probes a second (default 2); Every how often the
	// candidates are gathered (default the Table's Refresh).
	Rate  float64
	Every time.Duration
	// Timeout bounds one probe (default 3 s).
	Timeout time.Duration
}

// probe is one probe to make.
type probe struct {
	dst    netip.AddrPort
	prefix netip.Prefix // a destination's; invalid for a data center
	dc     string       // a data center's relay listener; "" for a destination
	gain   time.Duration
}

// probeState is the Table's memory of its probes; guarded by Table.mu.
type probeState struct {
	last map[string]time.Time // by prefix or "dc:" + name
}

func (ps *probeState) key(p probe) string {
	if p.dc != "" {
		return "dc:" + p.dc
	}
	return p.prefix.String()
}

// probeCandidates returns the probes due now, the most useful first, at
// most n, and notes them as made.
func (t *Table) probeCandidates(n int) []probe {
	now := t.o.Now()
	every := t.o.MaxAge / 2
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.probes.last == nil {
		t.probes.last = map[string]time.Time{}
	}
	for k, at := range t.probes.last {
		if now.Sub(at) >= every {
			delete(t.probes.last, k)
		}
	}
	var out []probe
	want := map[string]bool{}
	add := func(p probe) {
		k := t.probes.key(p)
		if _, recent := t.probes.last[k]; recent || want[k] {
			return
		}
		want[k] = true
		out = append(out, p)
	}
	// Data centers: a relay listener, when no fresh RTT of this node's.
	for k, s := range t.sums {
		if k.dc == t.o.DC || s.Relay == "" || now.Sub(s.At) > t.o.Stale {
			continue
		}
		if m, _, ok := t.obs.DC(k.dc); ok && now.Sub(m.Updated) < every {
			continue
		}
		if ap, err := netip.ParseAddrPort(s.Relay); err == nil {
			add(probe{dst: ap, dc: k.dc, gain: time.Hour}) // first: without them nothing is relayed
		}
	}
	// Relayed prefixes whose direct figure ages.
	for p := range t.state {
		m, ok := t.obs.Prefix(p)
		if dst := t.obs.dst(p); ok && now.Sub(m.Updated) >= every && dst.IsValid() {
			add(probe{dst: dst, prefix: p, gain: time.Hour - 1})
		}
	}
	// Prefixes hot elsewhere that this data center could serve better.
	for k, s := range t.sums {
		if k.dc == t.o.DC || now.Sub(s.At) > t.o.Stale {
			continue
		}
		// Whether this node's relay connections to k.dc fail or not,
		// k.dc may relay through here.
		hop, ok, _ := t.pathRTTLocked(k.dc, now)
		if !ok {
			continue
		}
		for _, e := range s.Prefixes {
			gain := e.RTT - hop.RTT
			if !e.Dst.IsValid() || gain < t.o.MinGain || now.Sub(e.Updated) > t.o.MaxAge {
				continue
			}
			// Probed again before the figure from here ages out there.
			if m, ok := t.directLocked(e.Prefix, now); ok && now.Sub(m.Updated) < every {
				continue
			}
			add(probe{dst: e.Dst, prefix: e.Prefix, gain: gain})
		}
	}
	slices.SortFunc(out, func(a, b probe) int {
		if a.gain != b.gain {
			if a.gain > b.gain {
				return -1
			}
			return 1
		}
		return a.dst.Compare(b.dst)
	})
	if len(out) > n {
		out = out[:n]
	}
	for _, p := range out {
		t.probes.last[t.probes.key(p)] = now
	}
	return out
}

// RunProbes makes the probes the table wants until ctx ends.
func (t *Table) RunProbes(ctx context.Context, o ProbeOptions) {
	if o.Rate <= 0 {
		o.Rate = 2
	}
	if o.Every <= 0 {
		o.Every = t.o.Refresh
	}
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Second
	}
	if o.DialNode == nil {
		o.DialNode = o.Dial
	}
	n := max(1, int(o.Rate*o.Every.Seconds()))
	gap := o.Every / time.Duration(n)
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(o.Every)
	defer tick.Stop()
	for {
		for _, p := range t.probeCandidates(n) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t.probe(ctx, o, p)
			}()
			select {
			case <-ctx.Done():
				return
			case <-time.After(gap):
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// probe connects to p's destination and records its RTT.
func (t *Table) probe(ctx context.Context, o ProbeOptions, p probe) {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	dial := o.Dial
	if p.dc != "" {
		dial = o.DialNode
	}
	c, err := dial(ctx, p.dst)
	if err != nil {
		return
	}
	defer c.Close()
	info, err := TCPInfo(c)
	if err != nil {
		return
	}
	rtt := time.Duration(info.Rtt) * time.Microsecond
	if p.dc != "" {
		t.obs.observeDC(p.dc, rtt, false)
	} else {
		t.obs.Observe(p.dst, rtt)
	}
}
