package registry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// usageStores is a store and a second handle on the same registry, as a
// second node would have.
type usageStores interface {
	Store
	UsageStore
}

func TestBoltUsage(t *testing.T) {
	testUsage(t, func(t *testing.T) (usageStores, usageStores) {
		s, err := OpenBolt(filepath.Join(t.TempDir(), "reg.db"), DefaultPools)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s, s
	})
}

func TestEtcdUsage(t *testing.T) {
	_, e := etcdOpener(t)
	n := 0
	testUsage(t, func(t *testing.T) (usageStores, usageStores) {
		n++
		prefix := fmt.Sprintf("/usage%d/", n)
		a, _ := NewEtcd(e.Client(t), prefix, DefaultPools)
		b, _ := NewEtcd(e.Client(t), prefix, DefaultPools)
		return a, b
	})
}

// testUsage is the usage contract of both stores.
func testUsage(t *testing.T, open func(t *testing.T) (usageStores, usageStores)) {
	ctx := context.Background()
	create := func(t *testing.T, s Store, n int) []string {
		var ids []string
		for range n {
			c, err := s.Create(ctx, Client{PublicKey: newKey(t)})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, c.ID)
		}
		return ids
	}
	t.Run("TwoNodesConcurrently", func(t *testing.T) {
		a, b := open(t)
		ids := create(t, a, 3)
		const rounds = 40
		var wg sync.WaitGroup
		for i, s := range []usageStores{a, b} {
			node := fmt.Sprintf("node-%d", i)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range rounds {
					var ds []Delta
					for j, id := range ids {
						ds = append(ds, Delta{ID: id, Rx: uint64(1000*(i+1) + j), Tx: uint64(r + 1)})
					}
					if _, err := s.AddUsage(ctx, node, rand.Uint64(), ds); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		for j, id := range ids {
			u, err := b.Usage(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			wantRx := uint64(rounds * (1000 + j + 2000 + j))
			wantTx := uint64(2 * rounds * (rounds + 1) / 2)
			if u.Rx() != wantRx || u.Tx() != wantTx || len(u.Nodes) != 2 {
				t.Errorf("client %d: rx %d tx %d nodes %v; want rx %d tx %d from 2 nodes", j, u.Rx(), u.Tx(), u.NodeIDs(), wantRx, wantTx)
			}
			if !u.Since.IsZero() {
				t.Errorf("since %v before any reset, want zero (the registration's creation)", u.Since)
			}
		}
	})
	t.Run("BatchOnce", func(t *testing.T) {
		a, _ := open(t)
		ids := create(t, a, 1)
		d := []Delta{{ID: ids[0], Rx: 10, Tx: 20}}
		for range 3 {
			got, err := a.AddUsage(ctx, "n1", 42, d)
			if err != nil {
				t.Fatal(err)
			}
			if u := got[ids[0]]; u.Rx() != 10 || u.Tx() != 20 {
				t.Fatalf("AddUsage returned rx %d tx %d, want 10, 20", u.Rx(), u.Tx())
			}
		}
		u, _ := a.Usage(ctx, ids[0])
		if u.Total() != 30 {
			t.Fatalf("a batch repeated (a retry after a lost answer) was added again: total %d, want 30", u.Total())
		}
	})
	t.Run("QuotaResetDelete", func(t *testing.T) {
		a, b := open(t)
		ids := create(t, a, 2)
		if _, err := a.AddUsage(ctx, "n1", 1, []Delta{{ID: ids[0], Rx: 600, Tx: 500}}); err != nil {
			t.Fatal(err)
		}
		u, _ := b.Usage(ctx, ids[0])
		if !u.Over(1000) || u.Over(1100) || u.Over(0) {
			t.Fatalf("total %d: Over(1000), Over(1100), Over(0) = %v %v %v; want true false false",
				u.Total(), u.Over(1000), u.Over(1100), u.Over(0))
		}
		before := time.Now().Add(-time.Second)
		r, err := b.ResetUsage(ctx, ids[0])
		if err != nil {
			t.Fatal(err)
		}
		u, _ = a.Usage(ctx, ids[0])
		if u.Total() != 0 || u.Since.Before(before) || !u.Since.Equal(r.Since) {
			t.Fatalf("after reset: total %d since %v (reset said %v)", u.Total(), u.Since, r.Since)
		}
		if _, err := a.AddUsage(ctx, "n1", 2, []Delta{{ID: ids[0], Rx: 1}}); err != nil {
			t.Fatal(err)
		}
		if u, _ = a.Usage(ctx, ids[0]); u.Total() != 1 || !u.Since.Equal(r.Since) {
			t.Fatalf("after reset and 1 byte: total %d since %v", u.Total(), u.Since)
		}
		// A deleted registration's usage goes with it, and bytes counted
		// for it afterwards are dropped.
		if _, err := a.Delete(ctx, ids[0]); err != nil {
			t.Fatal(err)
		}
		got, err := a.AddUsage(ctx, "n1", 3, []Delta{{ID: ids[0], Rx: 5}, {ID: ids[1], Tx: 7}})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := got[ids[0]]; ok || got[ids[1]].Tx() != 7 {
			t.Fatalf("AddUsage with a deleted client: %v", got)
		}
		for _, f := range []func() error{
			func() error { _, err := a.Usage(ctx, ids[0]); return err },
			func() error { _, err := a.ResetUsage(ctx, ids[0]); return err },
		} {
			if err := f(); !errors.Is(err, ErrNotFound) {
				t.Fatalf("usage of a deleted registration: %v, want ErrNotFound", err)
			}
		}
	})
	t.Run("ListPages", func(t *testing.T) {
		a, _ := open(t)
		ids := create(t, a, 5)
		if _, err := a.AddUsage(ctx, "n1", 1, []Delta{{ID: ids[2], Rx: 3, Tx: 4}}); err != nil {
			t.Fatal(err)
		}
		seen := map[string]uint64{}
		after, pages := "", 0
		for {
			page, err := a.ListUsage(ctx, after, 2)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			pages++
			if len(page) > 2 {
				t.Fatalf("page of %d, limit 2", len(page))
			}
			for _, cu := range page {
				if cu.ID <= after {
					t.Fatalf("page not in id order: %s after %s", cu.ID, after)
				}
				if _, dup := seen[cu.ID]; dup {
					t.Fatalf("%s listed twice", cu.ID)
				}
				seen[cu.ID] = cu.Usage.Total()
				after = cu.ID
			}
		}
		if len(seen) != 5 || pages != 3 || seen[ids[2]] != 7 {
			t.Fatalf("listed %v in %d pages; want 5 registrations in 3, %s with 7 bytes", seen, pages, ids[2])
		}
	})
}

// FuzzDecodeUsage: a usage record from etcd (any writer with access may
// have put it there) is read or refused, never a panic, and what is read
// writes back to a record that reads the same.
func FuzzDecodeUsage(f *testing.F) {
	f.Add([]byte(`{"since":"2026-12-02T10:00:00Z","nodes":{"node1":{"rx":1,"tx":2,"batch":3}}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"since":"9999-12-31T23:59:59-01:00"}`))
	f.Add([]byte(`{"nodes":{"a":{"rx":18446744073709551615,"tx":18446744073709551615},"b":{"rx":5}}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		u, err := decodeUsage(raw)
		if err != nil {
			return
		}
		_ = u.Total() // saturates, never wraps
		rec, err := encodeUsage(u)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeUsage(rec)
		if err != nil || back.Total() != u.Total() || !back.Since.Equal(u.Since) {
			t.Fatalf("%q → %q → %+v, %v", raw, rec, back, err)
		}
	})
}
