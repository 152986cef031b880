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
package egress
