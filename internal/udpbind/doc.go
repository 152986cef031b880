// Package udpbind is a Linux conn.Bind for wireguard-go that always replies
// from the local address a peer sent to.
//
// wedge nodes answer on an anycast VIP under direct server return, so every
// reply must leave from the address the client targeted or the client's NAT
// drops it. conn.StdNetBind mostly does this (IP_PKTINFO "sticky sockets")
// but loses the source when UDP_GRO splits coalesced packets, and its Send
// can address IPv6 packets wrongly after an IPv4 send (shared *net.UDPAddr
// pool). This Bind keeps to the simple path:
//
//   - one IPv4 socket on 0.0.0.0:port and one IPv6-only socket on [::]:port;
//   - recvmmsg with IP_PKTINFO/IPV6_PKTINFO giving each packet's local
//     destination address, and UDP GRO: a train of datagrams from one
//     client arrives as one message (the kernel no longer segments what a
//     GSO sender or GRO made one), cut here into datagrams that all carry
//     that message's endpoint (each socket's receiver reads into its own
//     128 × 64 KiB, touched only as far as messages fill them);
//   - sendmmsg with a PKTINFO control message naming that address as the
//     source (ifindex 0, so routing is unchanged);
//   - immutable, cached *Endpoint values, so steady-state receive does not
//     allocate.
//
// recvmmsg and sendmmsg are called directly through syscall.RawConn rather
// than through golang.org/x/net's ReadBatch/WriteBatch, which allocate a
// *net.UDPAddr per received packet.
//
// On other operating systems Supported is false and Open returns an error
// wrapping errors.ErrUnsupported; use conn.NewDefaultBind there.
//
// Both the node and `wedge connect` use it; it must not import any room of
// the tree (server/, client/, netstack/, egress/, lb/, e2e/).
package udpbind

const (
	// defaultSocketBuffer is SO_RCVBUF and SO_SNDBUF, as wireguard-go uses:
	// enough for bursts on fast links. Set with SO_*BUFFORCE when permitted
	// (CAP_NET_ADMIN) so net.core.{r,w}mem_max does not clamp it.
	defaultSocketBuffer = 7 << 20

	// defaultCacheSize bounds each socket's endpoint cache.
	defaultCacheSize = 1 << 16
)

// An Option configures a Bind.
type Option func(*options)

type options struct {
	rcvBuf, sndBuf int
	cacheSize      int
	noGSO          bool
	noGRO          bool
}

func defaultOptions() options {
	return options{
		rcvBuf:    defaultSocketBuffer,
		sndBuf:    defaultSocketBuffer,
		cacheSize: defaultCacheSize,
	}
}

// WithSocketBuffers sets SO_RCVBUF and SO_SNDBUF (default 7 MiB each). A
// value <= 0 leaves the kernel default.
func WithSocketBuffers(recv, send int) Option {
	return func(o *options) { o.rcvBuf, o.sndBuf = recv, send }
}

// WithEndpointCacheSize bounds the number of endpoints each socket caches
// (default 65536). When full, the cache is emptied; endpoints already handed
// out stay valid. A value < 1 means 1.
func WithEndpointCacheSize(n int) Option {
	return func(o *options) { o.cacheSize = max(n, 1) }
}

// WithoutGSO sends every datagram as its own message instead of coalescing
// runs of equal-sized datagrams with UDP GSO (for comparison and for
// kernels or devices without it; a device that refuses GSO with EIO turns
// it off by itself).
func WithoutGSO() Option {
	return func(o *options) { o.noGSO = true }
}

// WithoutGRO receives datagram by datagram into the caller's buffers
// instead of enabling UDP GRO (for comparison, and for kernels without
// it, where it is off by itself).
func WithoutGRO() Option {
	return func(o *options) { o.noGRO = true }
}

// Stats are a Bind's counters since New.
type Stats struct {
	// SrcFallbacks counts Sends the kernel refused from the endpoint's Src
	// (the address is no longer local) that were retried from the kernel's
	// chosen source address.
	SrcFallbacks uint64
	// CacheResets counts times an endpoint cache was full and emptied.
	CacheResets uint64
	// GSOOff counts sockets that turned UDP GSO off after the kernel
	// refused it (EIO).
	GSOOff uint64
	// Coalesced counts received messages that carried several datagrams
	// (UDP GRO), Datagrams the datagrams cut from them.
	Coalesced, Datagrams uint64
}
