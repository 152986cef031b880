// Package relay carries a client's TCP flow from the node that holds its
// WireGuard session (the entry) to a node of another data center (the
// exit), which dials the origin for it: WARP+'s smart routing (issue #14).
// Which exit, if any, a flow should take is the path table's business
// (server/paths); this package is the transport.
//
// # Protocol
//
// An entry opens a flow with an HTTP CONNECT to the destination's address
// (never a name: the netstack knows only addresses) and these headers:
//
//	CONNECT 8.54.232.11:5564
//	Exit-Tcp-Keepalive-Duration: 15   TCP keepalive idle (s) of the exit's connection to the origin; 0: off
//	Application: warp
//	Wedge-Hops: 1                     relays the flow goes through, this one included
//	Wedge-Egress-Country: NL          the country the client's flows leave with (optional)
//	Wedge-Egress-Pool: gold           the client's egress pool (optional)
//
// Exit-Tcp-Keepalive-Duration, Application and Wedge-Hops are required,
// the tags optional (absent: the exit's defaults). The exit answers 200 once
// its own DialFunc connected to the origin, from an address of its data
// center with the client's country and pool, through its own egress ACL
// and port slice; the stream is then a raw byte pipe both ways. Refusals
// carry a Wedge-Error header: 400 bad-request (a header missing or
// malformed; 405 for a method other than CONNECT), 403 hop-limit
// (Wedge-Hops past ServerConfig.MaxHops), 403 denied (the exit's ACL),
// 502 dial and 504 timeout (the origin). The hop limit is a
// 4xx, not 508 Loop Detected: the request is what is wrong, and the entry
// treats a 5xx other than dial/timeout as the exit being unwell (backoff).
//
// # Transport: HTTP/2 over TLS 1.3
//
// Each entry keeps one long-lived HTTP/2 connection per exit (another
// when one is full: ServerConfig.MaxStreams streams, default 1000) and
// opens each flow as a CONNECT stream on it: on a warm path a new flow
// costs one round trip (the CONNECT and its 200, which includes the exit's
// own connection to the origin), as going direct costs one (the SYN). A
// cold path costs three: TCP, TLS 1.3 (one round trip, client certificate
// included) and the CONNECT, HTTP/2's preface and SETTINGS riding along.
// BenchmarkOpen measures it over a simulated 20 ms path: warm 1.1–1.2
// RTT (1.7 once), cold 3.3–3.8 RTT: cold/warm ≈ 3.2 (the spread is the
// shared 2-core test machine). BenchmarkThroughput gives the relay's own
// cost on loopback: 3.2–3.7 ms of CPU per MB, both nodes and the origin
// included, against 1.1 for a direct download (two TCP hops instead of
// one, and TLS); TLS records of a large write leave in one system call
// (corkConn).
//
// HTTP/3 would save one round trip on a cold path only (QUIC's handshake
// is TLS's; 0-RTT is unusable for CONNECT, which is not idempotent) and
// none on a warm one, which is the case that matters with connections that
// live as long as the node. What it would add: a QUIC stack (quic-go: not
// in the module graph; x/net's QUIC is internal), userspace congestion
// control and UDP packet handling on every relayed byte (the relay's own
// cost is meant to stay ≥ 0.8× direct throughput), and one more protocol
// to open in the data centers' firewalls. Its real advantage, no
// head-of-line blocking between flows when a packet of the shared
// connection is lost, matters on lossy last miles, less on paths between
// data centers. HTTP/2 is golang.org/x/net/http2, already a dependency.
//
// Flow control bounds what either side buffers for flows whose reader is
// slow: 4 MiB a flow, 64 MiB a connection. A connection whose peer stops
// answering (no PING answer, or writes that make no progress for 15 s) is
// closed and its flows reset.
//
// Half-close: the entry's CloseWrite ends its request (END_STREAM) and the
// exit half-closes its connection to the origin, whose answer keeps
// flowing. The origin's EOF ends the response, and with it the stream:
// net/http cannot end a response while still reading the request, so the
// exit then stops the entry's side too (RST_STREAM NO_ERROR, RFC 9113
// §8.1), as if the origin had closed rather than half-closed; an origin
// that half-closes and then waits for more data is not served (rare:
// protocols close after their last answer). A reset or error either way
// resets the other, so when an exit dies the flows it carried fail at
// once rather than hang.
//
// # Credentials: derived from the service key
//
// The listener is for the cluster's nodes only: mutual TLS 1.3, both
// certificates chaining to a CA that every node derives from the service
// private key the cluster already shares (--service-key, checked by
// server/cluster): an Ed25519 key from HKDF-SHA256(service key, info
// "wedge relay CA v1"), and a self-signed certificate with fixed fields,
// identical on every node. Each node makes its own leaf (a fresh Ed25519
// key, valid 7 days, renewed daily) signed by that CA, for ServerName
// relay.wedge.internal, and presents it both as server and as client.
//
// Why: the service key is already the secret every node must hold and
// the one that makes a node part of the cluster (a node without it cannot
// answer the clients' handshakes), so trusting it for the relay adds no
// secret, no PKI to run, and no file to distribute; a node with another
// key is refused (TestMutualTLS). HKDF with its own label keeps the two
// uses apart: the CA key reveals nothing of the service key, and the
// service key's X25519 form is never used to sign. The cost is that
// rotating the service key rotates the relay CA with it, which a cluster
// does all at once anyway (every node must run the same key). etcd (which
// every node also reaches) is not used: trust would then rest on whoever
// can write to etcd, and the relay would fail when etcd is away.
//
// # Failure
//
// Client.DialOrDirect tries the exit for at most ClientConfig.FallbackAfter
// (750 ms) and then dials direct, so a relay that is down (connection
// refused: at once), silent (a blackhole), slow or refusing costs a flow
// under 1 s. An exit whose connection fails, or that does not set one up
// within a flow's budget, or answers 5xx of its own, is put in backoff:
// DialOrDirect goes direct without trying it (1 s, doubling to 30 s while
// it keeps failing) and a probe in the background (a PING on a connection
// still open, else a new connection) takes it back as soon as it answers,
// so no flow pays for finding that out. A stream that times out on a
// connection that still answers PING (the exit is slow to reach the
// origin) falls back without the backoff. Refusals (4xx) and origin
// failures (502, 504) fall back too but leave the exit usable. Stats
// counts relayed, direct (with fallbacks and skipped), refused and failed.
//
// An exit that stops (Server.Close, or its process dies) resets the flows
// it carries; one that drains (Server.Shutdown) refuses new connections
// and sends GOAWAY, so entries go elsewhere for new flows while the open
// ones finish.
//
// # Feeding the path table
//
// ClientConfig.OnRTT receives round trips measured on the relay
// connections (each new connection's TCP handshake, every PING: the
// probes', Client.Ping's), for the path table's Observer.ObserveDC;
// OnDown and OnUp an exit's backoff and recovery, for Observer.DCDown.
// The table's own probes of a relay listener (a TCP handshake, then
// close) are counted as ServerStats.Probes, not as TLS refusals.
//
// UDP is not relayed: it goes direct from the entry.
package relay
