package server

// Rate limits of the public API's registrations: a token bucket per
// source address and one per enrollment token, and the HTTP server
// settings (timeouts, header size) every listener of the node uses.

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Rate is N events per Per, with bursts of up to N: a bucket of N tokens
// that refills at N/Per. The zero Rate is no limit.
type Rate struct {
	N   int
	Per time.Duration
}

// Off reports whether r limits nothing.
func (r Rate) Off() bool { return r.N <= 0 || r.Per <= 0 }

func (r Rate) String() string {
	if r.Off() {
		return "0"
	}
	return fmt.Sprintf("%d/%v", r.N, r.Per)
}

// ParseRate reads "N/DURATION" (such as "20/1h": bursts of 20, one more
// every 3 minutes) or "0" for no limit.
func ParseRate(s string) (Rate, error) {
	if s == "0" {
		return Rate{}, nil
	}
	n, per, ok := strings.Cut(s, "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: want N/DURATION such as 20/1h, or 0 for none", s)
	}
	count, err := strconv.Atoi(n)
	if err != nil || count < 1 || count > 1_000_000 {
		return Rate{}, fmt.Errorf("rate %q: want a count of 1 to 1000000 before the /", s)
	}
	d, err := time.ParseDuration(per)
	if err != nil || d < time.Second || d > 30*24*time.Hour {
		return Rate{}, fmt.Errorf("rate %q: want a duration of 1s to 720h after the /", s)
	}
	return Rate{N: count, Per: d}, nil
}

// maxLimiterKeys bounds a limiter's memory. When it is full, buckets that
// have refilled (their key is as good as new) are dropped; if that frees
// nothing, new keys are refused until it does: under a flood from more
// sources than this, new sources wait rather than memory growing.
const maxLimiterKeys = 1 << 16

// keyedLimiter is a token bucket per key.
type keyedLimiter struct {
	rate Rate
	now  func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newKeyedLimiter(r Rate) *keyedLimiter {
	return &keyedLimiter{rate: r, now: time.Now, buckets: map[string]*bucket{}}
}

// take takes one token of key's bucket. When there is none it returns
// false and how long until there is.
func (l *keyedLimiter) take(key string) (bool, time.Duration) {
	if l == nil || l.rate.Off() {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	perToken := l.rate.Per / time.Duration(l.rate.N)
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxLimiterKeys {
			l.sweep(now)
		}
		if len(l.buckets) >= maxLimiterKeys {
			return false, perToken
		}
		b = &bucket{tokens: float64(l.rate.N), last: now}
		l.buckets[key] = b
	}
	b.refill(now, l.rate)
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration(math.Ceil((1 - b.tokens) * float64(perToken)))
	return false, wait
}

// peek reports whether key's bucket has a token, without taking it.
func (l *keyedLimiter) peek(key string) (bool, time.Duration) {
	if l == nil || l.rate.Off() {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		return true, 0
	}
	b.refill(l.now(), l.rate)
	if b.tokens >= 1 {
		return true, 0
	}
	perToken := l.rate.Per / time.Duration(l.rate.N)
	return false, time.Duration(math.Ceil((1 - b.tokens) * float64(perToken)))
}

func (b *bucket) refill(now time.Time, r Rate) {
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(float64(r.N), b.tokens+float64(el)*float64(r.N)/float64(r.Per))
		b.last = now
	}
}

// sweep drops the buckets that are full again.
func (l *keyedLimiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		b.refill(now, l.rate)
		if b.tokens >= float64(l.rate.N) {
			delete(l.buckets, k)
		}
	}
}

// sourceKey is the rate-limit key of a client address: the address for
// IPv4, its /64 for IPv6 (one host usually holds a whole /64).
func sourceKey(remote string) string {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return remote
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.String()
	}
	return a.String()
}

// tooMany answers 429 with Retry-After in whole seconds (at least 1).
func tooMany(w http.ResponseWriter, wait time.Duration, what string) {
	secs := max(1, int(math.Ceil(wait.Seconds())))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeError(w, http.StatusTooManyRequests, fmt.Sprintf("too many registrations %s; retry in %d s", what, secs))
}

// Limits of every HTTP listener of the node (admin, public, pprof).
const (
	// MaxHeaderBytes bounds a request's header (Go's default is 1 MiB).
	MaxHeaderBytes    = 16 << 10
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 15 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
)

// NewHTTPServer is an http.Server for h with the node's limits: header
// size, read, write and idle timeouts, so a slow or idle client cannot
// hold a connection or a goroutine for long. Bodies are bounded by the
// handlers (MaxBodyBytes). write is the write timeout (0: 30 s); pprof's
// profiles need longer.
func NewHTTPServer(h http.Handler, write time.Duration) *http.Server {
	if write <= 0 {
		write = writeTimeout
	}
	return &http.Server{
		Handler:           h,
		MaxHeaderBytes:    MaxHeaderBytes,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      write,
		IdleTimeout:       idleTimeout,
	}
}
