// Package egress re-originates the flows that netstack terminated: it owns
// the egress ACL, the choice of source address and the node's source-port
// slice, and the sockets that reach the real destination.
//
// A Dialer (New) implements the netstack.Dialer contract: DialTCP, DialUDP
// and Ping check the destination against an ACL (deny by default for every
// non-global range, and always for loopback, unspecified and the node's
// own addresses), bind the egress source of the destination's family and
// let the kernel pick a source port inside the node's slice at connect()
// time (IP_BIND_ADDRESS_NO_PORT with IP_LOCAL_PORT_RANGE, Linux 6.3 or
// later), so one TCP source port serves many destinations.
//
// With Config.Route, each TCP and UDP flow leaves from the Source that
// Route picks for the client and destination instead: an egress address,
// typically shared by many nodes (an egress Plan), and this node's range
// of its source ports. A refusal or an unusable Source fails the flow
// with ErrNoEgress. A flow whose range has no free port fails at once
// with ErrSliceExhausted: for TCP, every port already has a connection to
// the same destination; for UDP, whose ports are never shared between
// destinations, every port is held by another flow. An egress address
// that is not local to the host fails at bind() with an error saying so.
// Ping keeps using Config.Sources: ICMP echo replies carry no port that
// would steer them back to the node that sent the request.
//
// It is plain sockets and the egress plan: it must not import gVisor,
// wireguard-go, server/, client/, lb/ or netstack/ (netstack reaches it
// through its Dialer interface, the XDP front through server/front).
package egress
