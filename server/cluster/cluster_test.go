package cluster

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/etcdtest"
)

func member(id, underlay string) Member {
	return Member{ID: id, DC: "dc1", Underlay: netip.MustParseAddr(underlay)}
}

// watcher records the member lists a subscription sees.
type watcher struct {
	mu   sync.Mutex
	last []Member
	ch   chan struct{}
}

func watch(m *Membership) *watcher {
	w := &watcher{ch: make(chan struct{}, 1)}
	m.Subscribe(func(ms []Member) {
		w.mu.Lock()
		w.last = ms
		w.mu.Unlock()
		select {
		case w.ch <- struct{}{}:
		default:
		}
	})
	return w
}

// waitFor waits until ok holds for the latest member list and returns how
// long that took.
func (w *watcher) waitFor(t *testing.T, what string, ok func([]Member) bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(15 * time.Second)
	for {
		w.mu.Lock()
		last := w.last
		w.mu.Unlock()
		if ok(last) {
			return time.Since(start)
		}
		select {
		case <-w.ch:
		case <-deadline:
			t.Fatalf("%s: members are %+v", what, last)
		}
	}
}

func ids(ms []Member) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.ID+":"+string(m.State))
	}
	return strings.Join(s, ",")
}

func TestMembership(t *testing.T) {
	e := etcdtest.Start(t)
	ctx := context.Background()
	a, err := Join(ctx, e.Client(t), "/m/", member("a", "198.18.1.1"), Options{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	wa := watch(a)
	wa.waitFor(t, "a sees itself", func(ms []Member) bool { return ids(ms) == "a:active" })

	// b runs on its own client: killing that client is a node dying.
	bcli := e.Client(t)
	b, err := Join(ctx, bcli, "/m/", member("b", "198.18.2.1"), Options{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	wa.waitFor(t, "a sees b", func(ms []Member) bool { return ids(ms) == "a:active,b:active" })

	// Another node with b's id but elsewhere is refused.
	if _, err := Join(ctx, e.Client(t), "/m/", member("b", "198.18.9.9"), Options{}); !errors.Is(err, ErrIDInUse) {
		t.Fatalf("second b: got %v, want ErrIDInUse", err)
	}

	// Drain b, from a; then undo.
	if err := a.SetDrain(ctx, "b", true); err != nil {
		t.Fatal(err)
	}
	wa.waitFor(t, "b draining", func(ms []Member) bool { return ids(ms) == "a:active,b:draining" })
	if b.Self().State != Draining {
		// b's own view comes through its watch too.
		watch(b).waitFor(t, "b sees itself draining", func(ms []Member) bool { return ids(ms) == "a:active,b:draining" })
	}
	if err := a.SetDrain(ctx, "b", false); err != nil {
		t.Fatal(err)
	}
	wa.waitFor(t, "b active again", func(ms []Member) bool { return ids(ms) == "a:active,b:active" })

	b.SetClients(7)
	wa.waitFor(t, "b's client count", func(ms []Member) bool { return len(ms) == 2 && ms[1].Clients == 7 })
	// The probe sees the newest change; the watch catches up with it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		h := a.Health()
		if h.MembersRevision > 0 && h.Revision >= h.MembersRevision {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health %+v: no members revision, or the view behind it", h)
		}
	}

	// b's pins: sorted and deduplicated on the way; withdrawn with false.
	b.SetPins(true, []uint32{0x030201, 7, 0xffffff, 7})
	wa.waitFor(t, "b's pins", func(ms []Member) bool {
		return len(ms) == 2 && ms[1].Pinned && slices.Equal(ms[1].PinnedClientIDs(), []uint32{7, 0x030201, 0xffffff})
	})
	// An active node's pins (clients a membership change moved away
	// from it) are published without the drain's flag.
	b.SetPins(false, []uint32{9})
	wa.waitFor(t, "b's pins without the flag", func(ms []Member) bool {
		return len(ms) == 2 && !ms[1].Pinned && slices.Equal(ms[1].PinnedClientIDs(), []uint32{9})
	})
	b.SetPins(false, nil)
	wa.waitFor(t, "b's pins withdrawn", func(ms []Member) bool {
		return len(ms) == 2 && !ms[1].Pinned && len(ms[1].Pins) == 0 && ms[1].Clients == 7
	})

	// b dies: its client stops, nothing is revoked; the lease runs out.
	bcli.Close()
	took := wa.waitFor(t, "b gone after its lease", func(ms []Member) bool { return ids(ms) == "a:active" })
	t.Logf("a dead node (TTL 2 s) dropped out after %v", took)
	if took > 4*time.Second {
		t.Errorf("b took %v to drop out with a 2 s TTL", took)
	}
	b.Close()

	// A restart of a (same id, same underlay) within its lease is fine.
	a2, err := Join(ctx, e.Client(t), "/m/", member("a", "198.18.1.1"), Options{TTL: 2 * time.Second})
	if err != nil {
		t.Fatalf("restarted a: %v", err)
	}
	a2.Close()
}

// TestMembershipOutage: etcd away longer than the TTL; the node reports it,
// and on etcd's return holds a new lease and is listed again.
func TestMembershipOutage(t *testing.T) {
	e := etcdtest.Start(t)
	ctx := context.Background()
	m, err := Join(ctx, e.Client(t), "/o/", member("a", "198.18.1.1"), Options{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	waitHealth := func(what string, ok func(Health) bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !ok(m.Health()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: health %+v", what, m.Health())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitHealth("connected", func(h Health) bool { return h.Connected && h.Lease != "" })
	e.Stop()
	start := time.Now()
	waitHealth("disconnected", func(h Health) bool { return !h.Connected && h.LastError != "" })
	t.Logf("outage noticed after %v", time.Since(start))
	time.Sleep(3 * time.Second) // longer than the TTL
	e.Restart(t)
	waitHealth("back", func(h Health) bool { return h.Connected && h.Lease != "" })
	watch(m).waitFor(t, "listed again", func(ms []Member) bool { return ids(ms) == "a:active" })
	if m.Self().Slot != 1 {
		t.Errorf("after the outage a holds slot %d, want its old 1", m.Self().Slot)
	}
}

// TestMembershipSlots: live nodes of a data center hold distinct slots; a
// dead node's slot is free again once its lease is gone; a restart takes
// its old slot back; another data center counts from 1.
func TestMembershipSlots(t *testing.T) {
	e := etcdtest.Start(t)
	ctx := context.Background()
	join := func(id, underlay, dc string) *Membership {
		t.Helper()
		mem := member(id, underlay)
		mem.DC = dc
		m, err := Join(ctx, e.Client(t), "/s/", mem, Options{TTL: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	a := join("a", "198.18.1.1", "dc1")
	b := join("b", "198.18.2.1", "dc1")
	c := join("c", "198.18.3.1", "dc1")
	x := join("x", "198.18.9.1", "dc2")
	if got := []uint8{a.Self().Slot, b.Self().Slot, c.Self().Slot, x.Self().Slot}; !slices.Equal(got, []uint8{1, 2, 3, 1}) {
		t.Fatalf("slots of a, b, c (dc1) and x (dc2): %v, want [1 2 3 1]", got)
	}
	watch(a).waitFor(t, "slots in the records", func(ms []Member) bool {
		return len(ms) == 4 && ms[0].Slot == 1 && ms[1].Slot == 2 && ms[2].Slot == 3 && ms[3].Slot == 1
	})
	// b leaves cleanly (its lease is revoked): d takes slot 2.
	b.Close()
	if d := join("d", "198.18.4.1", "dc1"); d.Self().Slot != 2 {
		t.Errorf("d took slot %d, want b's 2", d.Self().Slot)
	}
	// c restarts (same id and underlay, its lease still live): slot 3 again.
	if c2 := join("c", "198.18.3.1", "dc1"); c2.Self().Slot != 3 {
		t.Errorf("c restarted with slot %d, want 3", c2.Self().Slot)
	}
}

func TestCheckServiceKey(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	k1, _ := wgtypes.GeneratePrivateKey()
	k2, _ := wgtypes.GeneratePrivateKey()
	ctx := context.Background()
	for i := range 2 {
		if err := CheckServiceKey(ctx, cli, "/s/", k1.PublicKey()); err != nil {
			t.Fatalf("try %d with the first key: %v", i, err)
		}
	}
	err := CheckServiceKey(ctx, cli, "/s/", k2.PublicKey())
	if err == nil || !strings.Contains(err.Error(), "--service-key") {
		t.Fatalf("another key: got %v, want a refusal naming --service-key", err)
	}
}

func TestPinnedClientIDs(t *testing.T) {
	for _, tc := range []struct {
		pins []byte
		want []uint32
	}{
		{nil, []uint32{}},
		{[]byte{0, 0, 1, 1, 2, 3}, []uint32{1, 0x010203}},
		{[]byte{0, 0, 1, 2}, nil}, // not a multiple of 3
		{[]byte{0, 0, 0}, nil},    // ClientID 0 is never given out
	} {
		if got := (Member{Pins: tc.pins}).PinnedClientIDs(); !slices.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("%x: got %v, want %v", tc.pins, got, tc.want)
		}
	}
	if got := packPins([]uint32{5, 0, 1 << 24, 5, 2}); !bytes.Equal(got, []byte{0, 0, 2, 0, 0, 5}) {
		t.Errorf("packPins: got %x", got)
	}
}

func TestParseEndpoints(t *testing.T) {
	good, err := ParseEndpoints("http://198.18.11.1:2379, 198.18.12.1:2379,https://[2001:db8::1]:2379")
	if err != nil || !slices.Equal(good, []string{"http://198.18.11.1:2379", "198.18.12.1:2379", "https://[2001:db8::1]:2379"}) {
		t.Fatalf("got %q, %v", good, err)
	}
	for _, bad := range []string{"", ",", "ftp://a:1", "http://a:1/x", "a", "http://user@a:1", "http://a"} {
		if _, err := ParseEndpoints(bad); err == nil {
			t.Errorf("ParseEndpoints(%q) accepted", bad)
		}
	}
}

func TestDialConfigErrors(t *testing.T) {
	for _, c := range []Config{
		{},
		{Endpoints: []string{"a:1"}, Username: "u"},
		{Endpoints: []string{"a:1"}, PasswordFile: "/nonexistent"},
		{Endpoints: []string{"a:1"}, CertFile: "x"},
		{Endpoints: []string{"a:1"}, CAFile: "/nonexistent"},
	} {
		if cli, err := c.Dial(); err == nil {
			cli.Close()
			t.Errorf("Dial(%+v) accepted", c)
		}
	}
}
