// Package clientid is the codec for the 24-bit ClientID that WARP-style
// clients carry in the three reserved bytes (1..3) of every WireGuard message.
//
// A stamping client writes the ClientID after wireguard-go has computed MAC1,
// so the receiver must zero bytes 1..3 before wireguard-go sees the message:
// zeroing restores exactly what the client MACed. The client, the server Bind
// and the tests share this package.
//
// Both sides use it; it must not import any room of the tree (server/,
// client/, netstack/, egress/, lb/, e2e/).
package clientid

import (
	"encoding/base64"
	"errors"
	"fmt"
)

// ID is a 24-bit ClientID. Zero means "not stamped"; registries never hand
// out zero.
type ID uint32

// Max is the largest ClientID.
const Max ID = 1<<24 - 1

// HeaderLen is the length of the WireGuard message header whose bytes 1..3
// hold the ClientID.
const HeaderLen = 4

// Bytes returns the three reserved bytes in wire order (big-endian), the form
// third-party clients take as `reserved = [b1, b2, b3]`.
func (id ID) Bytes() [3]byte {
	return [3]byte{byte(id >> 16), byte(id >> 8), byte(id)}
}

// FromBytes is the inverse of Bytes.
func FromBytes(b [3]byte) ID {
	return ID(b[0])<<16 | ID(b[1])<<8 | ID(b[2])
}

// String is the base64 of the three bytes, as in the registration API.
func (id ID) String() string {
	b := id.Bytes()
	return base64.StdEncoding.EncodeToString(b[:])
}

// ErrInvalid reports a ClientID that is not 24 bits, or is zero.
var ErrInvalid = errors.New("clientid: invalid ClientID")

// Parse reads the base64 form produced by String.
func Parse(s string) (ID, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != 3 {
		return 0, fmt.Errorf("%w: %q is not the base64 of 3 bytes", ErrInvalid, s)
	}
	id := FromBytes([3]byte{b[0], b[1], b[2]})
	if id == 0 {
		return 0, fmt.Errorf("%w: zero", ErrInvalid)
	}
	return id, nil
}

// Read returns the ClientID in msg's reserved bytes, or 0 when msg is shorter
// than a WireGuard header.
func Read(msg []byte) ID {
	if len(msg) < HeaderLen {
		return 0
	}
	return ID(msg[1])<<16 | ID(msg[2])<<8 | ID(msg[3])
}

// Zero clears msg's reserved bytes and returns the ClientID they held (0 when
// msg is shorter than a header, which is left untouched).
func Zero(msg []byte) ID {
	if len(msg) < HeaderLen {
		return 0
	}
	id := ID(msg[1])<<16 | ID(msg[2])<<8 | ID(msg[3])
	msg[1], msg[2], msg[3] = 0, 0, 0
	return id
}

// Stamp writes id into msg's reserved bytes. It does nothing when msg is
// shorter than a header. Stamp after MAC1 is computed, never before.
func Stamp(msg []byte, id ID) {
	if len(msg) < HeaderLen {
		return
	}
	msg[1], msg[2], msg[3] = byte(id>>16), byte(id>>8), byte(id)
}
