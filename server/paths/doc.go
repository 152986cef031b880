// Package paths is the path table of WARP+ smart routing: which data
// center reaches a destination fastest.
//
// Measure, do not configure. Every node samples the kernel's smoothed RTT
// (TCP_INFO) of the TCP connections egress dials for its clients
// (Observer.ObserveConn, wired as egress.Config.ObserveTCP) and keeps,
// per destination prefix (/24 for IPv4, /48 for IPv6), an exponentially
// weighted moving average, for a bounded number of prefixes (least
// recently sampled evicted first). The RTT to every other data center
// comes from the relay connections (Observer.ObserveDC).
//
// Each node publishes a bounded summary of its hottest prefixes and its
// data-center RTTs to etcd, on its lease, every Refresh (Run):
//
//	PREFIX paths/DC/NODE   the Summary, text (see Summary.Encode)
//
// and mirrors every other node's. A Table then decides, per prefix,
// between going direct and relaying through the data center X with the
// lowest rtt(here → X) + rtt(X → prefix), with hysteresis (Table.Route).
//
// As all of server/, it must not import gVisor, client/, netstack/ or e2e/.
package paths
