package registry

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
)

func newKey(t testing.TB) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func openBolt(t *testing.T, pools Pools) Store {
	t.Helper()
	s, err := OpenBolt(filepath.Join(t.TempDir(), "reg.db"), pools)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testStore is the contract every Store backend must meet.
func testStore(t *testing.T, open func(t *testing.T, p Pools) Store) {
	ctx := context.Background()
	t.Run("CreateGetDelete", func(t *testing.T) {
		s := open(t, DefaultPools)
		pub := newKey(t)
		c, err := s.Create(ctx, Client{PublicKey: pub})
		if err != nil {
			t.Fatal(err)
		}
		if c.ClientID == 0 || c.ID == "" || c.PublicKey != pub {
			t.Fatalf("bad client %+v", c)
		}
		gw4, gw6 := DefaultPools.Gateways()
		if !DefaultPools.V4.Contains(c.V4) || c.V4 == gw4 || !DefaultPools.V6.Contains(c.V6) || c.V6 == gw6 {
			t.Fatalf("addresses %v %v outside pools or equal to the gateway", c.V4, c.V6)
		}
		got, err := s.Get(ctx, c.ID)
		if err != nil || got != c {
			t.Fatalf("Get = %+v, %v; want %+v", got, err, c)
		}
		if _, err := s.Create(ctx, Client{PublicKey: pub}); !errors.Is(err, ErrExists) {
			t.Fatalf("duplicate Create: got %v, want ErrExists", err)
		}
		del, err := s.Delete(ctx, c.ID)
		if err != nil || del != c {
			t.Fatalf("Delete = %+v, %v", del, err)
		}
		if _, err := s.Get(ctx, c.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get after Delete: got %v, want ErrNotFound", err)
		}
		if _, err := s.Delete(ctx, c.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second Delete: got %v, want ErrNotFound", err)
		}
		// The key is free again.
		if _, err := s.Create(ctx, Client{PublicKey: pub}); err != nil {
			t.Fatalf("Create after Delete: %v", err)
		}
	})
	t.Run("Tags", func(t *testing.T) {
		s := open(t, DefaultPools)
		want := Tags{Pool: "trusted", Country: "NL"}
		c, err := s.Create(ctx, Client{PublicKey: newKey(t), Tags: want})
		if err != nil {
			t.Fatal(err)
		}
		if c.Tags != want {
			t.Fatalf("Create: tags %+v, want %+v", c.Tags, want)
		}
		if got, err := s.Get(ctx, c.ID); err != nil || got != c {
			t.Fatalf("Get = %+v, %v; want %+v", got, err, c)
		}
		if _, err := s.Create(ctx, Client{PublicKey: newKey(t), Tags: Tags{Pool: "Trusted"}}); !errors.Is(err, ErrBadTags) {
			t.Fatalf("Create with a bad pool: got %v, want ErrBadTags", err)
		}
		for _, next := range []Tags{{Pool: "acme"}, {Pool: "acme", Country: "DE"}, {}} {
			got, err := s.SetTags(ctx, c.ID, next)
			want := c
			want.Tags = next
			if err != nil || got != want {
				t.Fatalf("SetTags(%+v) = %+v, %v; want %+v", next, got, err, want)
			}
			if got, err := s.Get(ctx, c.ID); err != nil || got != want {
				t.Fatalf("Get after SetTags(%+v) = %+v, %v; want %+v", next, got, err, want)
			}
		}
		if _, err := s.SetTags(ctx, c.ID, Tags{Country: "nl"}); !errors.Is(err, ErrBadTags) {
			t.Fatalf("SetTags with a bad country: got %v, want ErrBadTags", err)
		}
		if got, _ := s.Get(ctx, c.ID); got.Tags != (Tags{}) {
			t.Fatalf("a refused SetTags changed the tags to %+v", got.Tags)
		}
		if _, err := s.SetTags(ctx, newID(), want); !errors.Is(err, ErrNotFound) {
			t.Fatalf("SetTags of an unknown id: got %v, want ErrNotFound", err)
		}
		if _, err := s.Delete(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetTags(ctx, c.ID, want); !errors.Is(err, ErrNotFound) {
			t.Fatalf("SetTags after Delete: got %v, want ErrNotFound", err)
		}
		if all, _ := s.List(ctx); len(all) != 0 {
			t.Fatalf("%d registrations, want 0: a bad Create stored one, or SetTags after Delete brought one back", len(all))
		}
	})
	t.Run("SetTagsRacesDelete", func(t *testing.T) {
		// SetTags racing the Delete of its registration must never write
		// the record back: afterwards the store holds nothing.
		s := open(t, DefaultPools)
		for range 10 {
			c, err := s.Create(ctx, Client{PublicKey: newKey(t)})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for i := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := range 5 {
						_, err := s.SetTags(ctx, c.ID, Tags{Pool: fmt.Sprintf("p%d-%d", i, j)})
						if err != nil && !errors.Is(err, ErrNotFound) {
							t.Error(err)
						}
					}
				}()
			}
			if _, err := s.Delete(ctx, c.ID); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			if got, err := s.Get(ctx, c.ID); !errors.Is(err, ErrNotFound) {
				t.Fatalf("after Delete and SetTags: Get = %+v, %v; want ErrNotFound", got, err)
			}
		}
		if all, _ := s.List(ctx); len(all) != 0 {
			t.Fatalf("%d registrations left, want 0", len(all))
		}
	})
	t.Run("ConcurrentUnique", func(t *testing.T) {
		s := open(t, DefaultPools)
		const n = 200
		var wg sync.WaitGroup
		res := make([]Client, n)
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i], errs[i] = s.Create(ctx, Client{PublicKey: newKey(t)})
			}()
		}
		wg.Wait()
		cids, addrs, ids := map[uint32]bool{}, map[netip.Addr]bool{}, map[string]bool{}
		for i, c := range res {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if cids[uint32(c.ClientID)] || addrs[c.V4] || addrs[c.V6] || ids[c.ID] {
				t.Fatalf("duplicate allocation in %+v", c)
			}
			cids[uint32(c.ClientID)], addrs[c.V4], addrs[c.V6], ids[c.ID] = true, true, true, true
		}
		all, err := s.List(ctx)
		if err != nil || len(all) != n {
			t.Fatalf("List: %d clients, %v; want %d", len(all), err, n)
		}
	})
	t.Run("SmallPoolExhausts", func(t *testing.T) {
		// /29: 8 addresses minus network, gateway and broadcast = 5.
		p := Pools{V4: netip.MustParsePrefix("192.0.2.0/29"), V6: netip.MustParsePrefix("2001:db8::/64")}
		s := open(t, p)
		seen := map[netip.Addr]bool{}
		for range 5 {
			c, err := s.Create(ctx, Client{PublicKey: newKey(t)})
			if err != nil {
				t.Fatal(err)
			}
			if !usable(p.V4, c.V4) || seen[c.V4] {
				t.Fatalf("bad or repeated address %v", c.V4)
			}
			seen[c.V4] = true
		}
		if _, err := s.Create(ctx, Client{PublicKey: newKey(t)}); !errors.Is(err, ErrExhausted) {
			t.Fatalf("6th Create in a /29: got %v, want ErrExhausted", err)
		}
		all, _ := s.List(ctx)
		if len(all) != 5 {
			t.Fatalf("a failed Create changed the store: %d clients", len(all))
		}
		if _, err := s.Delete(ctx, all[2].ID); err != nil {
			t.Fatal(err)
		}
		c, err := s.Create(ctx, Client{PublicKey: newKey(t)})
		if err != nil || c.V4 != all[2].V4 {
			t.Fatalf("after a delete, Create = %v, %v; want the freed %v", c.V4, err, all[2].V4)
		}
	})
	t.Run("Grants", func(t *testing.T) {
		// What Create is given beyond key and tags is stored as given;
		// what it allocates is not taken from the caller.
		s := open(t, DefaultPools)
		if _, err := s.Create(ctx, Client{ID: "mine", PublicKey: newKey(t)}); err == nil {
			t.Fatal("Create took an id that is not one NewID makes")
		}
		in := Client{ID: NewID(), ClientID: 7, PublicKey: newKey(t), Tags: Tags{Pool: "acme"},
			TokenHash: [32]byte{1, 2, 3}, Plus: true, QuotaBytes: 5 << 30, Enrollment: "e1", AwaitingHandshake: true}
		c, err := s.Create(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Create(ctx, Client{ID: in.ID, PublicKey: newKey(t)}); err == nil {
			t.Fatal("Create reused an id that is taken")
		}
		if c.ID != in.ID || c.TokenHash != in.TokenHash || !c.Plus ||
			c.QuotaBytes != in.QuotaBytes || c.Enrollment != "e1" || !c.AwaitingHandshake || !c.FirstHandshake.IsZero() {
			t.Fatalf("Create(%+v) = %+v", in, c)
		}
		if got, err := s.Get(ctx, c.ID); err != nil || got != c {
			t.Fatalf("Get = %+v, %v; want %+v", got, err, c)
		}
		// Update: one atomic read-modify-write.
		at := time.Unix(1800000000, 0).UTC()
		got, err := s.Update(ctx, c.ID, func(c *Client) error {
			c.FirstHandshake, c.AwaitingHandshake, c.QuotaBytes = at, false, 1
			return nil
		})
		want := c
		want.FirstHandshake, want.AwaitingHandshake, want.QuotaBytes = at, false, 1
		if err != nil || got != want {
			t.Fatalf("Update = %+v, %v; want %+v", got, err, want)
		}
		if got, err := s.Get(ctx, c.ID); err != nil || got != want {
			t.Fatalf("Get after Update = %+v, %v; want %+v", got, err, want)
		}
		boom := errors.New("boom")
		for name, fn := range map[string]func(*Client) error{
			"fn error":  func(c *Client) error { c.Plus = false; return boom },
			"address":   func(c *Client) error { c.V4 = c.V4.Next(); return nil },
			"key":       func(c *Client) error { c.PublicKey = wgtypes.Key{9}; return nil },
			"bad tags":  func(c *Client) error { c.Tags.Pool = "A"; return nil },
			"client id": func(c *Client) error { c.ClientID ^= 1; return nil },
		} {
			if _, err := s.Update(ctx, c.ID, fn); err == nil {
				t.Errorf("Update (%s) succeeded", name)
			}
		}
		if got, _ := s.Get(ctx, c.ID); got != want {
			t.Fatalf("refused Updates changed the record: %+v, want %+v", got, want)
		}
		if _, err := s.Update(ctx, newID(), func(*Client) error { return nil }); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Update of an unknown id: %v, want ErrNotFound", err)
		}
		// DeleteIf deletes only what its condition accepts.
		keep := errors.New("keep")
		if _, err := s.DeleteIf(ctx, c.ID, func(c Client) error {
			if !c.FirstHandshake.IsZero() {
				return keep
			}
			return nil
		}); !errors.Is(err, keep) {
			t.Fatalf("DeleteIf refused by its condition: %v, want its error", err)
		}
		if _, err := s.Get(ctx, c.ID); err != nil {
			t.Fatalf("a refused DeleteIf deleted: %v", err)
		}
		if del, err := s.DeleteIf(ctx, c.ID, func(Client) error { return nil }); err != nil || del != want {
			t.Fatalf("DeleteIf = %+v, %v", del, err)
		}
		if _, err := s.DeleteIf(ctx, c.ID, func(Client) error { return nil }); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second DeleteIf: %v, want ErrNotFound", err)
		}
		// Every index went with it: the key and addresses are free.
		if c2, err := s.Create(ctx, Client{PublicKey: in.PublicKey}); err != nil || c2.AwaitingHandshake || c2.Plus {
			t.Fatalf("Create after DeleteIf = %+v, %v", c2, err)
		}
	})
}

func TestBolt(t *testing.T) { testStore(t, openBolt) }

func TestBoltReopenAndLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "reg.db")
	s, err := OpenBolt(path, DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Create(context.Background(), Client{PublicKey: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBolt(path, DefaultPools); err == nil {
		t.Fatal("a second OpenBolt of a locked file succeeded")
	}
	s.Close()
	s2, err := OpenBolt(path, DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got, err := s2.Get(context.Background(), c.ID); err != nil || got != c {
		t.Fatalf("after reopen Get = %+v, %v; want %+v", got, err, c)
	}
}

// TestBoltTagsPersist: tags given at Create and changed by SetTags are
// there after a reopen.
func TestBoltTagsPersist(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "reg.db")
	s, err := OpenBolt(path, DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := s.Create(ctx, Client{PublicKey: newKey(t), Tags: Tags{Pool: "untrusted"}})
	if err != nil {
		t.Fatal(err)
	}
	changed, err := s.Create(ctx, Client{PublicKey: newKey(t), Tags: Tags{Pool: "trusted", Country: "NL"}})
	if err != nil {
		t.Fatal(err)
	}
	if changed, err = s.SetTags(ctx, changed.ID, Tags{Pool: "acme-1", Country: "DE"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = OpenBolt(path, DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, want := range []Client{kept, changed} {
		if got, err := s.Get(ctx, want.ID); err != nil || got != want {
			t.Fatalf("after reopen Get = %+v, %v; want %+v", got, err, want)
		}
	}
}

func TestTagsValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		tags Tags
		ok   bool
	}{
		{"empty", Tags{}, true},
		{"pool", Tags{Pool: "trusted"}, true},
		{"pool digits and dash", Tags{Pool: "0-acme-2"}, true},
		{"pool 32", Tags{Pool: strings.Repeat("a", 32)}, true},
		{"country", Tags{Country: "NL"}, true},
		{"both", Tags{Pool: "untrusted", Country: "US"}, true},
		{"pool 33", Tags{Pool: strings.Repeat("a", 33)}, false},
		{"pool upper case", Tags{Pool: "Acme"}, false},
		{"pool leading dash", Tags{Pool: "-acme"}, false},
		{"pool underscore", Tags{Pool: "a_b"}, false},
		{"pool space", Tags{Pool: "a b"}, false},
		{"pool dot", Tags{Pool: "a.b"}, false},
		{"pool non-ASCII", Tags{Pool: "café"}, false},
		{"country lower case", Tags{Country: "nl"}, false},
		{"country three letters", Tags{Country: "NLD"}, false},
		{"country one letter", Tags{Country: "N"}, false},
		{"country digits", Tags{Country: "12"}, false},
		{"country non-ASCII", Tags{Country: "ÑL"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.tags.Validate()
			if (err == nil) != c.ok {
				t.Fatalf("Validate(%+v) = %v, want ok %v", c.tags, err, c.ok)
			}
			if err != nil && !errors.Is(err, ErrBadTags) {
				t.Fatalf("got %v, want an ErrBadTags", err)
			}
		})
	}
	long := Tags{Pool: strings.Repeat("X", 10000)}
	if err := long.Validate(); err == nil || len(err.Error()) > 300 {
		t.Fatalf("a long bad pool gives %d bytes of error: echo less", len(err.Error()))
	}
}

func TestPoolsValidate(t *testing.T) {
	for _, p := range []Pools{
		{},
		{V4: netip.MustParsePrefix("2001:db8::/64"), V6: DefaultPools.V6},
		{V4: DefaultPools.V4, V6: netip.MustParsePrefix("10.0.0.0/8")},
		{V4: netip.MustParsePrefix("10.0.0.0/31"), V6: DefaultPools.V6},
	} {
		if err := p.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want error", p)
		}
	}
	if err := DefaultPools.Validate(); err != nil {
		t.Errorf("DefaultPools: %v", err)
	}
}

// TestBoltKill9 registers clients in a child process as fast as it can, kills
// it with SIGKILL at an arbitrary moment, and checks that every registration
// the child saw acknowledged is there and that the file opens cleanly.
func TestBoltKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	path := filepath.Join(t.TempDir(), "reg.db")
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestBoltKill9Child$")
		cmd.Env = append(os.Environ(), "WEDGE_KILL9_DB="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var acked []string
		sc := bufio.NewScanner(out)
		deadline := time.Now().Add(time.Duration(150+100*round) * time.Millisecond)
		for sc.Scan() {
			acked = append(acked, sc.Text())
			if time.Now().After(deadline) {
				cmd.Process.Signal(syscall.SIGKILL)
				break
			}
		}
		// Lines the child printed before it died were acknowledged too.
		for sc.Scan() {
			acked = append(acked, sc.Text())
		}
		cmd.Wait()
		if len(acked) == 0 {
			t.Fatal("child acknowledged nothing")
		}
		s, err := OpenBolt(path, DefaultPools)
		if err != nil {
			t.Fatalf("round %d: reopen after kill -9: %v", round, err)
		}
		for _, id := range acked {
			if _, err := s.Get(context.Background(), id); err != nil {
				t.Fatalf("round %d: acknowledged registration %s lost: %v", round, id, err)
			}
		}
		all, err := s.List(context.Background())
		if err != nil {
			t.Fatalf("round %d: List: %v", round, err)
		}
		t.Logf("round %d: %d acknowledged, %d stored", round, len(acked), len(all))
		s.Close()
	}
}

func TestBoltKill9Child(t *testing.T) {
	path := os.Getenv("WEDGE_KILL9_DB")
	if path == "" {
		t.Skip("helper process for TestBoltKill9")
	}
	s, err := OpenBolt(path, DefaultPools)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	// Eight registrations at a time, so that they share commits
	// (Bolt.Create batches): each is printed only once Create returned,
	// and must survive the kill.
	var mu sync.Mutex
	for range 8 {
		go func() {
			for {
				c, err := s.Create(context.Background(), Client{PublicKey: newKey(t)})
				if err != nil {
					os.Exit(1)
				}
				mu.Lock()
				fmt.Println(c.ID)
				mu.Unlock()
			}
		}()
	}
	select {}
}

// TestBoltCreateConcurrent: registrations made at once (one batched
// commit) each get their own ClientID and addresses, a key registered
// twice in one batch is refused once, and everything answered is there
// after a reopen.
func TestBoltCreateConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "reg.db")
	s, err := OpenBolt(path, DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	const n = 64
	keys := make([]wgtypes.Key, n)
	for i := range keys {
		keys[i] = newKey(t)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var made []Client
	exists := 0
	for i := range 2 * n { // every key twice
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := s.Create(context.Background(), Client{PublicKey: keys[i%n]})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, ErrExists):
				exists++
			case err != nil:
				t.Errorf("Create: %v", err)
			default:
				made = append(made, c)
			}
		}()
	}
	wg.Wait()
	if len(made) != n || exists != n {
		t.Fatalf("%d created, %d refused as existing; want %d and %d", len(made), exists, n, n)
	}
	ids, cids, v4s := map[string]bool{}, map[clientid.ID]bool{}, map[netip.Addr]bool{}
	for _, c := range made {
		if ids[c.ID] || cids[c.ClientID] || v4s[c.V4] || c.ClientID == 0 || !c.V4.IsValid() {
			t.Fatalf("duplicate or missing id/ClientID/address in %+v", c)
		}
		ids[c.ID], cids[c.ClientID], v4s[c.V4] = true, true, true
	}
	s.Close()
	s, err = OpenBolt(path, DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, c := range made {
		got, err := s.Get(context.Background(), c.ID)
		if err != nil || got.ClientID != c.ClientID || got.V4 != c.V4 || got.PublicKey != c.PublicKey {
			t.Fatalf("after reopen %s: %+v %v, want %+v", c.ID, got, err, c)
		}
	}
}

// BenchmarkBoltCreate: registrations a second into the embedded store,
// one at a time and from many callers at once (their commits batched):
// go test -run '^$' -bench BoltCreate ./server/registry/
func BenchmarkBoltCreate(b *testing.B) {
	for _, par := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("callers=%d", par), func(b *testing.B) {
			s, err := OpenBolt(filepath.Join(b.TempDir(), "reg.db"), DefaultPools)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			keys := make([]wgtypes.Key, b.N)
			for i := range keys {
				keys[i] = newKey(b)
			}
			var next atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			for range par {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						if _, err := s.Create(context.Background(), Client{PublicKey: keys[i]}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
		})
	}
}

// FuzzDecode: records come from a store other nodes write to; garbage is an
// error, never a panic, and whatever decodes survives a round trip.
func FuzzDecode(f *testing.F) {
	c := Client{ID: newID(), PublicKey: newKey(f), ClientID: 0xabcdef,
		V4: netip.MustParseAddr("100.96.0.2"), V6: netip.MustParseAddr("fd57:6564:6765::2"),
		Tags: Tags{Pool: "trusted", Country: "NL"}, Created: time.Unix(1700000000, 0).UTC()}
	good, _ := encode(c)
	f.Add(good)
	c.TokenHash, c.Plus, c.QuotaBytes, c.Enrollment, c.FirstHandshake = [32]byte{1}, true, 1<<40, "e", time.Unix(1700000001, 5).UTC()
	full, _ := encode(c)
	f.Add(full)
	f.Add([]byte(`{"id":"x","public_key":"Y2xpZW50LWtleS1jbGllbnQta2V5LWNsaWVudC1rZXk=","client_id":1,"v4":"1.2.3.4","v6":"::2","token_sha256":"zz"}`))
	f.Add([]byte(`{"id":"x","public_key":"","client_id":0}`))
	f.Add([]byte(`{"client_id":16777216}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := decode(raw)
		if err != nil {
			return
		}
		if got.ClientID == 0 || got.ClientID > 1<<24-1 {
			t.Fatalf("decoded an out-of-range ClientID %d", got.ClientID)
		}
		again, err := encode(got)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decode(again)
		if err != nil || back != got {
			t.Fatalf("round trip: %+v, %v; want %+v", back, err, got)
		}
	})
}
