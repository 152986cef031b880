package wgmsg

import "encoding/binary"

// Type is a WireGuard message type, byte 0 of every message.
type Type uint8

// Message types. Invalid is what Classify returns for anything wireguard-go
// would not accept.
const (
	Invalid     Type = 0
	Initiation  Type = 1
	Response    Type = 2
	CookieReply Type = 3
	Transport   Type = 4
)

func (t Type) String() string {
	switch t {
	case Initiation:
		return "initiation"
	case Response:
		return "response"
	case CookieReply:
		return "cookie reply"
	case Transport:
		return "transport"
	}
	return "invalid"
}

// Message sizes. Handshake messages have one size each; a transport message
// is a 16-byte header and at least a 16-byte Poly1305 tag (an empty one is a
// keepalive).
const (
	InitiationSize      = 148
	ResponseSize        = 92
	CookieReplySize     = 64
	TransportHeaderSize = 16
	MinTransportSize    = TransportHeaderSize + 16
)

// Field offsets. The MACs are the last 32 bytes of both handshake messages.
const (
	OffsetSender           = 4 // initiation and response
	OffsetResponseReceiver = 8 // response
	OffsetReceiver         = 4 // cookie reply and transport

	OffsetInitiationEphemeral = 8
	OffsetInitiationStatic    = 40  // 32-byte key + 16-byte tag
	OffsetInitiationTimestamp = 88  // 12-byte TAI64N + 16-byte tag
	OffsetInitiationMAC1      = 116 // 16 bytes
	OffsetInitiationMAC2      = 132 // 16 bytes

	OffsetResponseEphemeral = 12
	OffsetResponseEmpty     = 44 // 16-byte tag over nothing
	OffsetResponseMAC1      = 60
	OffsetResponseMAC2      = 76

	OffsetCookieNonce = 8  // 24 bytes
	OffsetCookie      = 32 // 16-byte cookie + 16-byte tag

	OffsetTransportCounter = 8
	OffsetTransportContent = 16

	MACSize = 16
)

// Classify returns msg's type if msg has that type's size, and Invalid
// otherwise. It reads byte 0 only: bytes 1..3 may hold a wedge client's
// ClientID (see the package comment).
func Classify(msg []byte) Type {
	if len(msg) < MinTransportSize {
		return Invalid
	}
	switch t := Type(msg[0]); t {
	case Transport:
		return t
	case Initiation:
		if len(msg) == InitiationSize {
			return t
		}
	case Response:
		if len(msg) == ResponseSize {
			return t
		}
	case CookieReply:
		if len(msg) == CookieReplySize {
			return t
		}
	}
	return Invalid
}

// Sender returns the sender index of an initiation or response.
func Sender(msg []byte) (idx uint32, ok bool) {
	switch Classify(msg) {
	case Initiation, Response:
		return binary.LittleEndian.Uint32(msg[OffsetSender:]), true
	}
	return 0, false
}

// Receiver returns the receiver index of a response, cookie reply or
// transport message: the index the receiving side chose, which is what the
// XDP program routes by.
func Receiver(msg []byte) (idx uint32, ok bool) {
	off := receiverOffset(Classify(msg))
	if off < 0 {
		return 0, false
	}
	return binary.LittleEndian.Uint32(msg[off:]), true
}

func receiverOffset(t Type) int {
	switch t {
	case Response:
		return OffsetResponseReceiver
	case CookieReply, Transport:
		return OffsetReceiver
	}
	return -1
}

func isZero(b []byte) bool {
	var acc byte
	for _, c := range b {
		acc |= c
	}
	return acc == 0
}
