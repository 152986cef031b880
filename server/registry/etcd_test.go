package registry

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wedge-edge/wedge/internal/etcdtest"
	"github.com/wedge-edge/wedge/server/etcdwatch"
)

// etcdOpener returns an opener giving each call a fresh prefix on one
// test etcd, so the contract's subtests do not see each other.
func etcdOpener(t *testing.T) (func(t *testing.T, p Pools) Store, *etcdtest.Etcd) {
	e := etcdtest.Start(t)
	var n atomic.Int32
	return func(t *testing.T, p Pools) Store {
		t.Helper()
		s, err := NewEtcd(e.Client(t), fmt.Sprintf("/test%d/", n.Add(1)), p)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, e
}

func TestEtcd(t *testing.T) {
	open, _ := etcdOpener(t)
	testStore(t, open)
}

// TestEtcdTwoClientsConcurrent registers from many goroutines through two
// independent etcd clients (two nodes, as far as etcd can tell), into a
// pool small enough that random draws collide often.
func TestEtcdTwoClientsConcurrent(t *testing.T) {
	e := etcdtest.Start(t)
	pools := Pools{V4: netip.MustParsePrefix("100.64.0.0/24"), V6: netip.MustParsePrefix("fd00::/120")}
	a, _ := NewEtcd(e.Client(t), "/c/", pools)
	b, _ := NewEtcd(e.Client(t), "/c/", pools)
	const n = 120 // of 253 usable v4 addresses
	var wg sync.WaitGroup
	res := make([]Client, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			res[i], errs[i] = s.Create(context.Background(), Client{PublicKey: newKey(t)})
		}()
	}
	wg.Wait()
	seen := map[any]bool{}
	for i, c := range res {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		for _, k := range []any{c.ClientID, c.V4, c.V6, c.ID} {
			if seen[k] {
				t.Fatalf("%v handed out twice", k)
			}
			seen[k] = true
		}
	}
	all, err := b.List(context.Background())
	if err != nil || len(all) != n {
		t.Fatalf("List: %d, %v; want %d", len(all), err, n)
	}
}

// TestEtcdUnavailable: with etcd gone, calls fail quickly with
// ErrUnavailable and work again once it is back.
func TestEtcdUnavailable(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	s, _ := NewEtcd(cli, "/u/", DefaultPools)
	s.timeout = time.Second
	c, err := s.Create(context.Background(), Client{PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	e.Stop()
	start := time.Now()
	if _, err := s.Create(context.Background(), Client{PublicKey: newKey(t)}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Create with etcd down: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Create with etcd down took %v", d)
	}
	if _, err := s.Get(context.Background(), c.ID); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get with etcd down: %v, want ErrUnavailable", err)
	}
	e.Restart(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := s.Get(context.Background(), c.ID)
		if err == nil && got == c {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after restart Get = %+v, %v", got, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// watchView applies Events to a map, as a node does.
type watchView struct {
	mu     sync.Mutex
	m      map[string]Client
	resets int
	ch     chan struct{}
}

func newWatchView() *watchView { return &watchView{m: map[string]Client{}, ch: make(chan struct{}, 1)} }

func (v *watchView) apply(ev Event) {
	v.mu.Lock()
	switch ev.Type {
	case EventReset:
		v.resets++
		v.m = map[string]Client{}
		for _, c := range ev.Clients {
			v.m[c.ID] = c
		}
	case EventPut:
		v.m[ev.Client.ID] = ev.Client
	case EventDelete:
		delete(v.m, ev.Client.ID)
	}
	v.mu.Unlock()
	select {
	case v.ch <- struct{}{}:
	default:
	}
}

// waitFor waits until the view equals want.
func (v *watchView) waitFor(t *testing.T, want map[string]Client, what string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		v.mu.Lock()
		ok := len(v.m) == len(want)
		for id, c := range want {
			ok = ok && v.m[id] == c
		}
		n := len(v.m)
		v.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-v.ch:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%s: the watch holds %d clients, want %d", what, n, len(want))
		}
	}
}

func TestEtcdWatch(t *testing.T) {
	e := etcdtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writer, _ := NewEtcd(e.Client(t), "/w/", DefaultPools)
	watcher, _ := NewEtcd(e.Client(t), "/w/", DefaultPools)
	want := map[string]Client{}
	for range 3 {
		c, err := writer.Create(ctx, Client{PublicKey: newKey(t)})
		if err != nil {
			t.Fatal(err)
		}
		want[c.ID] = c
	}
	v := newWatchView()
	done := make(chan struct{})
	go func() { watcher.Watch(ctx, v.apply); close(done) }()
	v.waitFor(t, want, "initial snapshot")

	start := time.Now()
	c, err := writer.Create(ctx, Client{PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	want[c.ID] = c
	v.waitFor(t, want, "after a Create")
	t.Logf("a registration reached the watcher in %v", time.Since(start))
	if _, err := writer.Delete(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	delete(want, c.ID)
	v.waitFor(t, want, "after a Delete")

	// An outage: with one etcd nothing can change while it is down, so
	// change things right after it returns, while the watcher may still be
	// reconnecting, and check that none is missed and no reset was needed.
	e.Stop()
	time.Sleep(500 * time.Millisecond)
	e.Restart(t)
	var gone string
	for id := range want {
		gone = id
		break
	}
	if _, err := writer.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	delete(want, gone)
	c2, err := writer.Create(ctx, Client{PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	want[c2.ID] = c2
	v.waitFor(t, want, "after an etcd restart")
	v.mu.Lock()
	resets := v.resets
	v.mu.Unlock()
	if resets != 1 {
		t.Errorf("%d resets: the watch should have resumed, not started over", resets)
	}
	cancel()
	<-done
}

// TestEtcdWatchCompacted: resuming from a revision etcd has compacted away
// gives a fresh snapshot that drops what was deleted meanwhile.
func TestEtcdWatchCompacted(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, _ := NewEtcd(cli, "/k/", DefaultPools)
	a, err := s.Create(ctx, Client{PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Create(ctx, Client{PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/k/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	seenRev := resp.Header.Revision
	// The watcher "held" a and b as of seenRev, then was away while a was
	// deleted and the history compacted.
	if _, err := s.Delete(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	c, err := s.Create(ctx, Client{PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := cli.Get(ctx, "x")
	if _, err := cli.Compact(ctx, r.Header.Revision); err != nil {
		t.Fatal(err)
	}
	v := newWatchView()
	v.m[a.ID], v.m[b.ID] = a, b
	var errs atomic.Int32
	go s.WatchFrom(ctx, v.apply, &etcdwatch.Options{From: seenRev, OnError: func(error) { errs.Add(1) }})
	v.waitFor(t, map[string]Client{b.ID: b, c.ID: c}, "after compaction")
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.resets != 1 || errs.Load() == 0 {
		t.Errorf("resets %d, errors %d: want a reset after a reported compaction", v.resets, errs.Load())
	}
}

// TestEtcdWatchTags: a SetTags through one store reaches another store's
// watch as an EventPut carrying the new tags.
func TestEtcdWatchTags(t *testing.T) {
	e := etcdtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writer, _ := NewEtcd(e.Client(t), "/t/", DefaultPools)
	watcher, _ := NewEtcd(e.Client(t), "/t/", DefaultPools)
	c, err := writer.Create(ctx, Client{PublicKey: newKey(t), Tags: Tags{Pool: "trusted"}})
	if err != nil {
		t.Fatal(err)
	}
	v := newWatchView()
	var mu sync.Mutex
	var puts []Event
	done := make(chan struct{})
	go func() {
		watcher.Watch(ctx, func(ev Event) {
			if ev.Type == EventPut {
				mu.Lock()
				puts = append(puts, ev)
				mu.Unlock()
			}
			v.apply(ev)
		})
		close(done)
	}()
	v.waitFor(t, map[string]Client{c.ID: c}, "initial snapshot")

	start := time.Now()
	changed, err := writer.SetTags(ctx, c.ID, Tags{Pool: "acme", Country: "NL"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Tags{Pool: "acme", Country: "NL"}); changed.Tags != want || changed.ID != c.ID || changed.V4 != c.V4 {
		t.Fatalf("SetTags = %+v; want %+v with tags %+v", changed, c, want)
	}
	v.waitFor(t, map[string]Client{c.ID: changed}, "after SetTags")
	t.Logf("a tags change reached the watcher in %v", time.Since(start))
	mu.Lock()
	if len(puts) != 1 || puts[0].Client != changed {
		t.Errorf("EventPuts %+v; want one with %+v", puts, changed)
	}
	mu.Unlock()

	// The same tags again write nothing: no event.
	if _, err := writer.SetTags(ctx, c.ID, changed.Tags); err != nil {
		t.Fatal(err)
	}
	cleared, err := writer.SetTags(ctx, c.ID, Tags{Pool: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	v.waitFor(t, map[string]Client{c.ID: cleared}, "after clearing the country")
	mu.Lock()
	if len(puts) != 2 {
		t.Errorf("%d EventPuts, want 2 (an unchanged SetTags writes nothing)", len(puts))
	}
	mu.Unlock()
	cancel()
	<-done
}

// TestEtcdDeleteIfRacesMark: node a decides to expire a registration
// while node b records its first handshake between a's read and a's
// delete. a's delete compares the record's revision, so it fails, a
// reads the record again, and the condition now keeps it.
func TestEtcdDeleteIfRacesMark(t *testing.T) {
	e := etcdtest.Start(t)
	ctx := context.Background()
	a, _ := NewEtcd(e.Client(t), "/x/", DefaultPools)
	b, _ := NewEtcd(e.Client(t), "/x/", DefaultPools)
	c, err := a.Create(ctx, Client{PublicKey: newKey(t), AwaitingHandshake: true})
	if err != nil {
		t.Fatal(err)
	}
	errKeep := errors.New("handshook: keep")
	calls := 0
	_, err = a.DeleteIf(ctx, c.ID, func(c Client) error {
		calls++
		if !c.AwaitingHandshake {
			return errKeep
		}
		if calls == 1 {
			// b marks the client after a read it.
			if _, err := b.Update(ctx, c.ID, func(c *Client) error {
				c.AwaitingHandshake, c.FirstHandshake = false, time.Now().UTC().Truncate(time.Second)
				return nil
			}); err != nil {
				t.Error(err)
			}
		}
		return nil
	})
	if !errors.Is(err, errKeep) || calls != 2 {
		t.Fatalf("DeleteIf = %v after %d looks; want the condition's refusal on a second look", err, calls)
	}
	got, err := b.Get(ctx, c.ID)
	if err != nil || got.AwaitingHandshake || got.FirstHandshake.IsZero() {
		t.Fatalf("after the race: %+v, %v; want the marked registration kept", got, err)
	}
	// Two nodes expiring the same registration: one deletes it, the other
	// is told it is gone.
	d, err := a.Create(ctx, Client{PublicKey: newKey(t), AwaitingHandshake: true})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, s := range []*Etcd{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.DeleteIf(ctx, d.ID, func(Client) error { return nil })
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrNotFound):
			t.Errorf("concurrent DeleteIf: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("concurrent DeleteIf: %d succeeded (%v), want exactly 1", ok, errs)
	}
}
