// Package wgmsg reads and rewrites WireGuard messages on their way between the
// node's socket and wireguard-go, so that standard clients (which carry no
// ClientID) can be routed to the node that owns their session.
//
// It has three parts:
//
//   - the wire format and MAC1 (wire.go, mac.go, on x/crypto's BLAKE2s);
//   - the Opener, which recovers a standard client's static public key from
//     its handshake initiation with the service private key, so any node can
//     find the client and forward the initiation to its owner;
//   - the Translator, which gives every session index the node hands out
//     the node's slot (Tag), and translates those indexes back to
//     wireguard-go's own on receive.
//
// # Reserved bytes
//
// wireguard-go reads the first four bytes of a message as a little-endian
// uint32 and drops it unless that equals the type, so bytes 1..3 must be zero
// when it sees the message. Wedge clients stamp a ClientID there after
// computing MAC1, and the server Bind zeroes them. Nothing in this package
// reads bytes 1..3 or requires them to be zero, with one exception that
// WireGuard itself makes: MAC1 covers them. A stamped handshake message fails
// CheckMAC1 (and so Open, and the Translator's MAC1 checks) until the stamp is
// zeroed, which restores exactly what the peer MACed.
//
// # Tagged session index
//
// This layout is a contract with the XDP program (bpf/) and with third
// parties that route WireGuard to wedge nodes; it never changes in place.
//
// WireGuard carries a session index as 4 bytes that wireguard-go and the
// kernel read as a little-endian uint32. The tagged index is that uint32:
//
//	 31        24 23     20 19                       0
//	+------------+---------+--------------------------+
//	|    slot    |  check  |         random r         |
//	+------------+---------+--------------------------+
//
//	slot  = idx >> 24        the owning node's slot, 1..255; 0 means untagged
//	check = (idx >> 20) & 0xf
//	r     = idx & 0xfffff    2^20 indexes per node
//
//	tagged iff slot != 0 && check == Hash(r ^ key ^ slot<<20) >> 28
//
// Hash is murmur3's 32-bit finalizer fmix32, the same function as lb.Hash
// and the XDP program's hash:
//
//	h ^= h >> 16; h *= 0x85ebca6b; h ^= h >> 13; h *= 0xc2b2ae35; h ^= h >> 16
//
// key is the cluster's 32-bit index key: the first four bytes, read
// little-endian, of BLAKE2s-256("wedge index key v1" || service private key)
// (IndexKey). Every node holds the service private key, so every node and the
// XDP program it feeds agree on it without coordination.
//
// On the wire, with the index at offset o (4 for every sender index and for
// the receiver of a cookie reply or transport message, 8 for the receiver of
// a response), byte o+3 is the slot, the high nibble of byte o+2 is the check,
// and bytes o, o+1 and the low nibble of o+2 are r. The XDP program routes
// responses (type 2), cookie replies (type 3) and transport messages (type 4)
// by their receiver index; initiations (type 1) have none.
//
// An index that Tag did not make (wireguard-go's random ones, another
// implementation's, junk) has a nonzero slot byte with probability 255/256 and
// then a matching check with probability 1/16. So it passes as the index of
// one given slot with probability 1/4096, and as an index of any live slot
// with probability (live slots/256)/16: 1/16 of the fraction of slots in use.
// The check is an integrity filter, not authentication: an attacker guesses
// it in 16 tries. Routing by it is safe because a misrouted transport message
// fails its AEAD wherever it lands, and a misrouted handshake message its MAC1
// or Noise state.
//
// As all of server/, it must not import gVisor, client/, netstack/ or e2e/.
package wgmsg
