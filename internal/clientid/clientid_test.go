package clientid

import (
	"bytes"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, id := range []ID{1, 0x0102, 0xabcdef, Max} {
		msg := []byte{4, 0, 0, 0, 0xaa, 0xbb}
		Stamp(msg, id)
		if got := Read(msg); got != id {
			t.Errorf("Read after Stamp(%#x) = %#x", id, got)
		}
		if got := FromBytes(id.Bytes()); got != id {
			t.Errorf("FromBytes(Bytes(%#x)) = %#x", id, got)
		}
		p, err := Parse(id.String())
		if err != nil || p != id {
			t.Errorf("Parse(%q) = %#x, %v; want %#x", id.String(), p, err, id)
		}
		if got := Zero(msg); got != id {
			t.Errorf("Zero returned %#x, want %#x", got, id)
		}
		if want := []byte{4, 0, 0, 0, 0xaa, 0xbb}; !bytes.Equal(msg, want) {
			t.Errorf("after Zero: got % x, want % x", msg, want)
		}
	}
}

func TestWireOrder(t *testing.T) {
	msg := make([]byte, 4)
	Stamp(msg, 0x123456)
	if want := []byte{0, 0x12, 0x34, 0x56}; !bytes.Equal(msg, want) {
		t.Errorf("got % x, want % x", msg, want)
	}
	if got := ID(0x123456).String(); got != "EjRW" {
		t.Errorf("String = %q, want EjRW", got)
	}
}

func TestShort(t *testing.T) {
	for n := 0; n < HeaderLen; n++ {
		msg := bytes.Repeat([]byte{0xff}, n)
		Stamp(msg, 7)
		if got := Zero(msg); got != 0 {
			t.Errorf("Zero(%d bytes) = %#x, want 0", n, got)
		}
		if !bytes.Equal(msg, bytes.Repeat([]byte{0xff}, n)) {
			t.Errorf("short message of %d bytes was modified", n)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, s := range []string{"", "AAAA", "!!!!", "AQID" + "AQ==", "AQ=="} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) succeeded, want error", s)
		}
	}
}

func FuzzCodec(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0}, uint32(5))
	f.Add([]byte{4, 1, 2, 3, 9, 9}, uint32(0xffffff))
	f.Add([]byte{}, uint32(0))
	f.Fuzz(func(t *testing.T, msg []byte, raw uint32) {
		id := ID(raw) & Max
		orig := bytes.Clone(msg)
		Stamp(msg, id)
		got := Zero(msg)
		if len(msg) < HeaderLen {
			if got != 0 || !bytes.Equal(msg, orig) {
				t.Fatalf("short message changed or returned %#x", got)
			}
			return
		}
		if got != id {
			t.Fatalf("Zero after Stamp = %#x, want %#x", got, id)
		}
		if msg[0] != orig[0] || !bytes.Equal(msg[4:], orig[4:]) || msg[1]|msg[2]|msg[3] != 0 {
			t.Fatalf("Stamp/Zero touched bytes other than 1..3: % x -> % x", orig, msg)
		}
		if id, err := Parse(string(orig)); err == nil && (id == 0 || id > Max) {
			t.Fatalf("Parse(%q) = %#x without error", orig, id)
		}
	})
}
