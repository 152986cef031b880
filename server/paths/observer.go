package paths

import (
	"container/list"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// PrefixOf returns the prefix a destination's measurements are kept
// under: its /24 (IPv4, also IPv4-mapped) or its /48 (IPv6). Most
// origins of one /24 or /48 sit in one place and take one path, and the
// prefixes keep the table's size and its summaries small.
func PrefixOf(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 24
	if a.Is6() {
		bits = 48
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

// Defaults of ObserverOptions.
const (
	DefaultMaxPrefixes = 4096
	DefaultTau         = 5 * time.Second
	DefaultMinWeight   = 1.0 / 16
	DefaultHeatTau     = time.Minute
	maxDCs             = 256
)

// ObserverOptions tune an Observer. The zero value takes the defaults.
type ObserverOptions struct {
	// MaxPrefixes bounds the prefixes kept (DefaultMaxPrefixes, about
	// 150 bytes each): a sample of a new prefix beyond it evicts the
	// least recently sampled one.
	MaxPrefixes int
	// Tau is the time constant of the moving average: a sample that
	// comes dt after the previous one weighs 1-exp(-dt/Tau), at least
	// MinWeight. Sparse samples thus replace an old figure almost
	// entirely (it is stale), dense ones are averaged (one connection's
	// handshake RTT is noisy), and a change of latency is followed
	// within a few Tau whatever the rate of flows.
	Tau       time.Duration
	MinWeight float64
	// HeatTau is the time constant of a prefix's heat, its decayed count
	// of samples, by which the hottest prefixes are published.
	HeatTau time.Duration
	// Resample, if > 0, has ObserveConn read the connection's RTT a
	// second time that long after the first, if it is still open and
	// carried data: the kernel's smoothed RTT then covers the data's
	// round trips, not only the handshake's.
	Resample time.Duration
	// Now is the clock (time.Now); tests inject theirs.
	Now func() time.Time
}

// ewma is a smoothed RTT.
type ewma struct {
	rtt     float64 // nanoseconds
	samples uint64
	updated time.Time
}

func (e *ewma) add(rtt time.Duration, now time.Time, tau time.Duration, minW float64) {
	if e.samples == 0 {
		e.rtt = float64(rtt)
	} else {
		w := minW
		if dt := now.Sub(e.updated); dt > 0 {
			w = max(w, 1-math.Exp(-float64(dt)/float64(tau)))
		}
		e.rtt += w * (float64(rtt) - e.rtt)
	}
	e.samples++
	e.updated = now
}

// prefixEntry is one prefix's measurements.
type prefixEntry struct {
	prefix netip.Prefix
	ewma
	heat   float64   // decayed sample count as of heatAt
	heatAt time.Time //
	dst    netip.AddrPort
	elem   *list.Element
}

// Observer aggregates RTT samples per destination prefix and per data
// center. It is safe for concurrent use.
type Observer struct {
	o ObserverOptions

	mu       sync.Mutex
	prefixes map[netip.Prefix]*prefixEntry
	lru      *list.List // of *prefixEntry, most recently sampled first
	dcs      map[string]*dcEntry
	evicted  uint64
}

// dcEntry is the RTT to one other data center, and whether its relay is
// known down.
type dcEntry struct {
	ewma
	down time.Time // when DCDown was last called; zero: up
}

// NewObserver returns an empty Observer.
func NewObserver(o ObserverOptions) *Observer {
	if o.MaxPrefixes <= 0 {
		o.MaxPrefixes = DefaultMaxPrefixes
	}
	if o.Tau <= 0 {
		o.Tau = DefaultTau
	}
	if o.MinWeight <= 0 || o.MinWeight > 1 {
		o.MinWeight = DefaultMinWeight
	}
	if o.HeatTau <= 0 {
		o.HeatTau = DefaultHeatTau
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Observer{o: o, prefixes: map[netip.Prefix]*prefixEntry{}, lru: list.New(), dcs: map[string]*dcEntry{}}
}

// Observe adds one RTT sample of a path from this node to dst, a
// destination address and port (the port is kept as the prefix's probe
// target). Samples of zero or less are ignored.
func (ob *Observer) Observe(dst netip.AddrPort, rtt time.Duration) {
	if rtt <= 0 {
		return
	}
	p := PrefixOf(dst.Addr())
	if !p.IsValid() {
		return
	}
	now := ob.o.Now()
	ob.mu.Lock()
	defer ob.mu.Unlock()
	e := ob.prefixes[p]
	if e == nil {
		for len(ob.prefixes) >= ob.o.MaxPrefixes {
			old := ob.lru.Back().Value.(*prefixEntry)
			ob.lru.Remove(old.elem)
			delete(ob.prefixes, old.prefix)
			ob.evicted++
		}
		e = &prefixEntry{prefix: p, heatAt: now}
		e.elem = ob.lru.PushFront(e)
		ob.prefixes[p] = e
	} else {
		ob.lru.MoveToFront(e.elem)
	}
	e.add(rtt, now, ob.o.Tau, ob.o.MinWeight)
	e.heat = e.heatNow(now, ob.o.HeatTau) + 1
	e.heatAt = now
	e.dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
}

func (e *prefixEntry) heatNow(now time.Time, tau time.Duration) float64 {
	dt := now.Sub(e.heatAt)
	if dt <= 0 {
		return e.heat
	}
	return e.heat * math.Exp(-float64(dt)/float64(tau))
}

// ObserveDC adds one RTT sample of the path from this node to data center
// dc (a relay connection's), and marks its relay up again.
func (ob *Observer) ObserveDC(dc string, rtt time.Duration) { ob.observeDC(dc, rtt, true) }

// observeDC adds a sample of the RTT to dc; up: from the relay itself,
// which marks it up again (a probe's TCP handshake does not).
func (ob *Observer) observeDC(dc string, rtt time.Duration, up bool) {
	if rtt <= 0 || dc == "" {
		return
	}
	now := ob.o.Now()
	ob.mu.Lock()
	defer ob.mu.Unlock()
	e := ob.dcs[dc]
	if e == nil {
		if len(ob.dcs) >= maxDCs {
			return
		}
		e = &dcEntry{}
		ob.dcs[dc] = e
	}
	e.add(rtt, now, ob.o.Tau, ob.o.MinWeight)
	if up {
		e.down = time.Time{}
	}
}

// DCDown marks data center dc's relay down (it refused, failed or timed
// out): the Table chooses no exit there until ObserveDC is called for dc
// again (the relay answered) or DownFor passed.
func (ob *Observer) DCDown(dc string) {
	now := ob.o.Now()
	ob.mu.Lock()
	defer ob.mu.Unlock()
	e := ob.dcs[dc]
	if e == nil {
		if len(ob.dcs) >= maxDCs {
			return
		}
		e = &dcEntry{}
		ob.dcs[dc] = e
	}
	e.down = now
}

// Measure is a smoothed RTT and its provenance.
type Measure struct {
	RTT     time.Duration
	Samples uint64
	Updated time.Time
}

// Prefix returns this node's measurement of prefix p.
func (ob *Observer) Prefix(p netip.Prefix) (Measure, bool) {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	e := ob.prefixes[p]
	if e == nil {
		return Measure{}, false
	}
	return Measure{RTT: time.Duration(e.rtt), Samples: e.samples, Updated: e.updated}, true
}

// dst returns the last destination sampled in prefix p.
func (ob *Observer) dst(p netip.Prefix) netip.AddrPort {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	if e := ob.prefixes[p]; e != nil {
		return e.dst
	}
	return netip.AddrPort{}
}

// DC returns this node's measurement of the RTT to data center dc and
// when its relay was last marked down (zero: not since it last answered).
func (ob *Observer) DC(dc string) (Measure, time.Time, bool) {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	e := ob.dcs[dc]
	if e == nil {
		return Measure{}, time.Time{}, false
	}
	return Measure{RTT: time.Duration(e.rtt), Samples: e.samples, Updated: e.updated}, e.down, e.samples > 0
}

// Len returns the number of prefixes kept and how many were evicted
// since the start.
func (ob *Observer) Len() (kept int, evicted uint64) {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	return len(ob.prefixes), ob.evicted
}

// Summary returns what this node publishes: its n hottest prefixes
// sampled within maxAge (by heat, then by prefix for a stable order) and
// its RTTs to the other data centers sampled within maxAge, as of now.
func (ob *Observer) Summary(n int, maxAge time.Duration) Summary {
	now := ob.o.Now()
	s := Summary{At: now, DCs: map[string]Measure{}}
	type hot struct {
		e    *prefixEntry
		heat float64
	}
	ob.mu.Lock()
	var hs []hot
	for _, e := range ob.prefixes {
		if now.Sub(e.updated) <= maxAge {
			hs = append(hs, hot{e, e.heatNow(now, ob.o.HeatTau)})
		}
	}
	slices.SortFunc(hs, func(a, b hot) int {
		if a.heat != b.heat {
			if a.heat > b.heat {
				return -1
			}
			return 1
		}
		return a.e.prefix.Addr().Compare(b.e.prefix.Addr())
	})
	if len(hs) > n {
		hs = hs[:n]
	}
	for _, h := range hs {
		s.Prefixes = append(s.Prefixes, Entry{Prefix: h.e.prefix, Dst: h.e.dst,
			Measure: Measure{RTT: time.Duration(h.e.rtt), Samples: h.e.samples, Updated: h.e.updated}})
	}
	for dc, e := range ob.dcs {
		if e.samples > 0 && now.Sub(e.updated) <= maxAge {
			s.DCs[dc] = Measure{RTT: time.Duration(e.rtt), Samples: e.samples, Updated: e.updated}
		}
	}
	ob.mu.Unlock()
	slices.SortFunc(s.Prefixes, func(a, b Entry) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	return s
}

// ObserveConn samples c's RTT, the kernel's smoothed RTT of its socket
// (TCP_INFO), as a path to dst; with Resample, once more later. It has
// the signature of egress.Config.ObserveTCP. Connections that are not
// TCP sockets are ignored.
func (ob *Observer) ObserveConn(c net.Conn, dst netip.AddrPort) {
	info, err := TCPInfo(c)
	if err != nil {
		return
	}
	ob.Observe(dst, time.Duration(info.Rtt)*time.Microsecond)
	if ob.o.Resample <= 0 {
		return
	}
	segs := info.Segs_out
	time.AfterFunc(ob.o.Resample, func() {
		// A closed connection's Control fails: nothing is read then.
		info, err := TCPInfo(c)
		if err != nil || info.State != tcpEstablished || info.Segs_out < segs+2 {
			return
		}
		ob.Observe(dst, time.Duration(info.Rtt)*time.Microsecond)
	})
}

// TCPInfo reads the kernel's TCP_INFO of c's socket.
func TCPInfo(c net.Conn) (*unix.TCPInfo, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("paths: %T is not a socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("paths: TCP_INFO: %w", serr)
	}
	if info.Rtt == 0 {
		return nil, errors.New("paths: TCP_INFO: no RTT measured yet")
	}
	return info, nil
}

// tcpEstablished is TCP_ESTABLISHED, TCP_INFO's tcpi_state of an open
// connection.
const tcpEstablished = 1

// prefixList returns the prefixes kept.
func (ob *Observer) prefixList() []netip.Prefix {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	out := make([]netip.Prefix, 0, len(ob.prefixes))
	for p := range ob.prefixes {
		out = append(out, p)
	}
	return out
}
