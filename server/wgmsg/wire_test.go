package wgmsg

import (
	"testing"

	"golang.zx2c4.com/wireguard/device"
)

// TestConstantsMatchWireGuard pins the wire constants to wireguard-go's.
func TestConstantsMatchWireGuard(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want int
	}{
		{"initiation type", int(Initiation), device.MessageInitiationType},
		{"response type", int(Response), device.MessageResponseType},
		{"cookie reply type", int(CookieReply), device.MessageCookieReplyType},
		{"transport type", int(Transport), device.MessageTransportType},
		{"initiation size", InitiationSize, device.MessageInitiationSize},
		{"response size", ResponseSize, device.MessageResponseSize},
		{"cookie reply size", CookieReplySize, device.MessageCookieReplySize},
		{"transport header size", TransportHeaderSize, device.MessageTransportHeaderSize},
		{"min transport size", MinTransportSize, device.MessageKeepaliveSize},
		{"transport receiver", OffsetReceiver, device.MessageTransportOffsetReceiver},
		{"transport counter", OffsetTransportCounter, device.MessageTransportOffsetCounter},
		{"transport content", OffsetTransportContent, device.MessageTransportOffsetContent},
		{"initiation MAC1", OffsetInitiationMAC1, InitiationSize - 2*MACSize},
		{"initiation MAC2", OffsetInitiationMAC2, InitiationSize - MACSize},
		{"response MAC1", OffsetResponseMAC1, ResponseSize - 2*MACSize},
		{"response MAC2", OffsetResponseMAC2, ResponseSize - MACSize},
		{"initiation fields", OffsetInitiationTimestamp + 12 + 16, OffsetInitiationMAC1},
		{"response fields", OffsetResponseEmpty + 16, OffsetResponseMAC1},
		{"cookie fields", OffsetCookie + 32, CookieReplySize},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func msgOf(typ byte, size int) []byte {
	m := make([]byte, size)
	m[0] = typ
	return m
}

func TestClassify(t *testing.T) {
	stamped := msgOf(4, 100)
	stamped[1], stamped[2], stamped[3] = 0xab, 0xcd, 0xef
	for _, tc := range []struct {
		name string
		msg  []byte
		want Type
	}{
		{"initiation", msgOf(1, 148), Initiation},
		{"response", msgOf(2, 92), Response},
		{"cookie reply", msgOf(3, 64), CookieReply},
		{"keepalive", msgOf(4, 32), Transport},
		{"data", msgOf(4, 1420), Transport},
		{"stamped transport", stamped, Transport},
		{"short initiation", msgOf(1, 147), Invalid},
		{"long initiation", msgOf(1, 149), Invalid},
		{"short response", msgOf(2, 91), Invalid},
		{"long cookie reply", msgOf(3, 65), Invalid},
		{"short transport", msgOf(4, 31), Invalid},
		{"type 5", msgOf(5, 148), Invalid},
		{"type 0", msgOf(0, 64), Invalid},
		{"empty", nil, Invalid},
		{"header only", msgOf(4, 4), Invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Classify(tc.msg); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSenderReceiver(t *testing.T) {
	put := func(m []byte, off int, v uint32) []byte {
		m[off], m[off+1], m[off+2], m[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		return m
	}
	init := put(msgOf(1, 148), 4, 0x11223344)
	resp := put(put(msgOf(2, 92), 4, 0x55667788), 8, 0x99aabbcc)
	cookie := put(msgOf(3, 64), 4, 0x01020304)
	data := put(msgOf(4, 48), 4, 0x05060708)

	for _, tc := range []struct {
		name         string
		msg          []byte
		sender, recv uint32
		hasS, hasR   bool
	}{
		{"initiation", init, 0x11223344, 0, true, false},
		{"response", resp, 0x55667788, 0x99aabbcc, true, true},
		{"cookie reply", cookie, 0, 0x01020304, false, true},
		{"transport", data, 0, 0x05060708, false, true},
		{"invalid", msgOf(9, 64), 0, 0, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, ok := Sender(tc.msg)
			if s != tc.sender || ok != tc.hasS {
				t.Errorf("Sender: got %#x %v, want %#x %v", s, ok, tc.sender, tc.hasS)
			}
			r, ok := Receiver(tc.msg)
			if r != tc.recv || ok != tc.hasR {
				t.Errorf("Receiver: got %#x %v, want %#x %v", r, ok, tc.recv, tc.hasR)
			}
		})
	}
}
