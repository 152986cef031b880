package cluster

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/internal/etcdtest"
	"github.com/wedge-edge/wedge/internal/testutil"
)

func sess(ep string, at int64) Session {
	return Session{Endpoint: netip.MustParseAddrPort(ep), Since: time.Unix(at, 0)}
}

// TestSessionReplication: what a node publishes reaches the others, its
// records outlive its death long enough for its heir, and a restart within
// the lease adopts the lease and reads its own records back.
func TestSessionReplication(t *testing.T) {
	e := etcdtest.Start(t)
	ctx := context.Background()
	opts := Options{TTL: 2 * time.Second}
	a, err := Join(ctx, e.Client(t), "/m/", member("a", "198.18.1.1"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	bcli := e.Client(t)
	b, err := Join(ctx, bcli, "/m/", member("b", "198.18.2.1"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	s1, s2 := sess("203.0.113.7:4000", 1700000000), sess("[2001:db8::7]:4001", 1700000100)
	b.SetSessions(map[uint32]Session{1: s1, 2: s2})
	testutil.WaitFor(t, 10*time.Second, "a reads b's two sessions", func() bool {
		return maps.Equal(a.SessionsOf("b"), map[uint32]Session{1: s1, 2: s2})
	})
	if node, s, ok := a.SessionElsewhere(2, ""); !ok || node != "b" || s != s2 {
		t.Errorf("SessionElsewhere(2) = %q %+v %v, want b's", node, s, ok)
	}
	if _, _, ok := b.SessionElsewhere(2, ""); ok {
		t.Error("b finds its own session elsewhere")
	}
	// A rehandshake and an ended session: the update arrives, the ended
	// one stays readable a while (an heir learning of a death after the
	// deletion still finds it).
	s1b := sess("203.0.113.8:4000", 1700000200)
	b.SetSessions(map[uint32]Session{1: s1b})
	testutil.WaitFor(t, 10*time.Second, "a reads b's update", func() bool {
		_, s, _ := a.SessionElsewhere(1, "")
		_, _, live2 := a.SessionElsewhere(2, "")
		return s == s1b && !live2
	})
	if got := a.SessionsOf("b"); !maps.Equal(got, map[uint32]Session{1: s1b, 2: s2}) {
		t.Errorf("SessionsOf(b) after the update = %v, want the live one and the recently ended one", got)
	}

	// b dies: its lease lapses, its records with it; a still reads them.
	bcli.Close()
	testutil.WaitFor(t, 10*time.Second, "b's records deleted with its lease", func() bool {
		_, _, ok := a.SessionElsewhere(1, "")
		return !ok
	})
	if got := a.SessionsOf("b"); got[1] != s1b {
		t.Errorf("SessionsOf(b) after its death = %v, want its last session", got)
	}
	testutil.WaitFor(t, 10*time.Second, "b out of the members", func() bool {
		return !slices.ContainsFunc(a.Members(), func(m Member) bool { return m.ID == "b" })
	})
	if node, s, ok := a.DepartedSession(1); !ok || node != "b" || s != s1b {
		t.Errorf("DepartedSession(1) = %q %+v %v, want b's last", node, s, ok)
	}

	// c is killed and restarted within its lease: the new run adopts the
	// lease (a sees no change of members) and reads its sessions back.
	ccli := e.Client(t)
	c, err := Join(ctx, ccli, "/m/", member("c", "198.18.3.1"), opts)
	if err != nil {
		t.Fatal(err)
	}
	s5 := sess("198.51.100.9:5000", 1700000300)
	c.SetSessions(map[uint32]Session{5: s5})
	testutil.WaitFor(t, 10*time.Second, "a reads c's session", func() bool { return a.SessionsOf("c")[5] == s5 })
	var left atomic.Bool
	unsub := a.Subscribe(func(ms []Member) {
		if !slices.ContainsFunc(ms, func(m Member) bool { return m.ID == "c" }) {
			left.Store(true)
		}
	})
	defer unsub()
	ccli.Close() // kill -9: nothing revoked
	c2, err := Join(ctx, e.Client(t), "/m/", member("c", "198.18.3.1"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := c2.Previous(); !maps.Equal(got, map[uint32]Session{5: s5}) {
		t.Errorf("restarted c's Previous() = %v, want its session", got)
	}
	if got := c2.Previous(); got != nil {
		t.Errorf("Previous() a second time = %v, want nil", got)
	}
	if c.Joined().IsZero() || !c2.Joined().IsZero() {
		t.Errorf("Joined: first run %v (want set), restart that adopted the lease %v (want zero)", c.Joined(), c2.Joined())
	}
	if c2.Self().Slot != c.Self().Slot {
		t.Errorf("restarted c has slot %d, want %d", c2.Self().Slot, c.Self().Slot)
	}
	time.Sleep(3 * time.Second) // longer than the TTL: the adopted lease is kept alive
	if left.Load() {
		t.Error("a saw c leave across its restart within the lease")
	}
	if a.SessionsOf("c")[5] != s5 {
		t.Error("c's record was lost across its restart")
	}
	c2.SetSessions(nil)
	testutil.WaitFor(t, 10*time.Second, "c's record withdrawn", func() bool {
		_, _, ok := a.SessionElsewhere(5, "")
		return !ok
	})
}

func TestParseSession(t *testing.T) {
	good := sess("[2001:db8::1]:51820", 1700000000)
	if s, err := parseSession([]byte(good.encode())); err != nil || s != good {
		t.Errorf("round trip: %+v %v", s, err)
	}
	for _, bad := range []string{"", "1.2.3.4:5", "1.2.3.4:0 17", "x 17", "1.2.3.4:5 -1", "1.2.3.4:5 y"} {
		if _, err := parseSession([]byte(bad)); err == nil {
			t.Errorf("parseSession(%q): no error", bad)
		}
	}
	dir := "/m/sessions/dc1/"
	if id, cid, ok := parseSessionKey(dir, dir+"n1/00002a"); !ok || id != "n1" || cid != 42 {
		t.Errorf("parseSessionKey: %q %d %v", id, cid, ok)
	}
	for _, bad := range []string{dir + "n1/2a", dir + "n1/000000", dir + "/00002a", dir + "n1", dir + "n1/zzzzzz"} {
		if _, _, ok := parseSessionKey(dir, bad); ok {
			t.Errorf("parseSessionKey(%q): ok", bad)
		}
	}
}

func FuzzParseSession(f *testing.F) {
	f.Add([]byte("203.0.113.1:1 1700000000"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseSession(b)
		if err != nil {
			return
		}
		if s2, err := parseSession([]byte(s.encode())); err != nil || s2 != s {
			t.Fatalf("%q: round trip %+v -> %+v %v", b, s, s2, err)
		}
	})
}
