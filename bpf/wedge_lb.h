/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * Definitions shared by the XDP front (xdp_lb.c) and its Go loader (lb/).
 * bpf2go turns the structs below into Go types (wedgeLBConfig, wedgeLBNode,
 * wedgeLBFlowKey); the constants and the counter order are mirrored by hand
 * in lb/xdp.go. TestXDPLayout checks map sizes, struct sizes and the number
 * of counters against the compiled object; the fixture tests check each
 * counter by name.
 * Byte order: every __be field is in network order, as on the wire.
 */
#ifndef WEDGE_LB_H
#define WEDGE_LB_H

#include "kernel.h"

/* Slots in a Maglev table: prime, so that Maglev's permutation works. */
#define TABLE_SIZE 65537
/* Node indexes are 0..MAX_NODES-1. */
#define MAX_NODES 256
/* GUE peers: this data center's nodes and other data centers' senders. */
#define MAX_PEERS 1024
#define MAX_PINS (1 << 20)
#define MAX_FLOWS (1 << 18)
/* ClientIDs are 24 bits; 0 means not stamped. */
#define CID_BITS 24
/* `pin_bits` has one bit per ClientID, 64 to a word. */
#define PIN_WORDS ((1 << CID_BITS) / 64)

/* WireGuard: a 4-byte header (type, 3 reserved bytes that carry the 24-bit
 * big-endian ClientID) and the fixed message sizes of types 1..3. */
#define WG_HDR_LEN 4
#define WG_INITIATION 1
#define WG_RESPONSE 2
#define WG_COOKIE 3
#define WG_DATA 4
#define WG_INITIATION_LEN 148
#define WG_RESPONSE_LEN 92
#define WG_COOKIE_LEN 64
#define WG_DATA_MIN_LEN 32
/* Where the receiver index (a little-endian u32) is: byte 8 of a response,
 * byte 4 of a cookie reply or data message. An initiation has none. */
#define WG_RECEIVER_OFF 4
#define WG_RESPONSE_RECEIVER_OFF 8

/* A tagged session index (server/wgmsg, a contract): bits 24..31 the slot
 * of the node that handed it out (1..255, 0: untagged), bits 20..23 the
 * check fmix32(r ^ index_key ^ slot << 20) >> 28, bits 0..19 random r. A
 * node's slot is its node index. */
#define INDEX_SLOT_SHIFT 24
#define INDEX_CHECK_SHIFT 20
#define INDEX_RANDOM_MASK 0xfffff

/* GUE variant 1: the inner IP packet directly after an outer IPv4 + UDP
 * header, no GUE header. */
#define GUE_OVERHEAD (sizeof(struct iphdr) + sizeof(struct udphdr)) /* 28 */
#define GUE_TTL 64
/* Outer source ports are 49152 + entropy % 16384. */
#define GUE_SPORT_BASE 49152
#define GUE_SPORT_RANGE 16384

/* config.flags */
#define CONFIG_ENABLED (1U << 0)
/* Some ClientID may have a pin: its bit in `pin_bits` is set. Clear: no
 * pins, and the program reads neither `pin_bits` nor `pins`. Maintained by
 * lb.Objects (SetPin, DeletePin), not by SetConfig's caller. */
#define CONFIG_PINS (1U << 1)
/* Route unstamped responses, cookie replies and data messages by the slot
 * of a tagged receiver index (checked with config.index_key). Set by
 * lb.Objects.SetConfig when the index key is not 0. */
#define CONFIG_INDEX (1U << 2)
/* Steer TCP and UDP to the addresses of `egress4` (return traffic of
 * flows a node re-originated) to the node whose port slice holds the
 * destination port, or to the data center that owns the address. Set by
 * lb.Objects.SetConfig's caller with Config.Egress. */
#define CONFIG_EGRESS (1U << 3)
/* node.flags */
#define NODE_VALID (1U << 0)
/* The entry of a departed node's slot, for a while after it left (its
 * lease gone): not valid (pins, flows, the table and egress slices treat
 * it as gone), but a tagged session index of that slot is sent to
 * underlay4, its heir's address (or delivered here when that is this
 * node's own). Written by lb.Front; see bpf/README.md, Heirs. */
#define NODE_HEIR (1U << 1)

/* Egress addresses and the data centers they can belong to. */
#define MAX_EGRESS4 (1 << 16)
#define MAX_DCS 64
/* The nodes of another data center return traffic may be sent to. */
#define DC_TARGETS 8
/* egress4.dc of an address this data center owns. */
#define EGRESS_LOCAL 0xffffffffU

/* The single entry of the `config` map. */
struct config {
	__be32 vip4;          /* IPv4 anycast VIP */
	__u8 vip6[16];        /* IPv6 anycast VIP */
	__be16 wg_port;       /* WireGuard UDP port on the VIPs */
	__be16 gue_port;      /* UDP port of the encapsulation, on underlays */
	__u32 self;           /* this node's index in `nodes` */
	__be32 self_underlay4; /* this node's underlay address */
	__u32 flags;          /* CONFIG_* */
	__u32 index_key;      /* the cluster's index key (CONFIG_INDEX) */
};

/* A value of the `nodes` map, indexed by node index. */
struct node {
	__be32 underlay4;
	__u32 flags; /* NODE_* */
};

/* A value of the `egress4` map, keyed by an IPv4 egress address (network
 * order). Ports are in host order. An address this data center owns
 * (dc == EGRESS_LOCAL) is shared by port slices: port p belongs to the node
 * whose node index (its slot) is (p - port_lo) / slice + 1, for
 * p - port_lo < slices * slice. Another data center's address goes to
 * that data center: dcs[dc]. */
struct egress4 {
	__u32 dc;
	__u16 port_lo;
	__u16 slice;   /* ports per node, > 0 */
	__u16 slices;  /* nodes sharing the address */
	__u16 pad;     /* always zero */
};

/* A value of the `dcs` map: nodes of another data center, any of which
 * steers the packet on to the owner (n of them valid, 0: unreachable). */
struct dc {
	__be32 underlay4[DC_TARGETS];
	__u32 n;
};

/* A key of the `flows` map: the client's source address (IPv4 mapped to
 * ::ffff:a.b.c.d) and source port. */
struct flow_key {
	__u8 saddr[16];
	__be16 sport;
	__u16 pad; /* always zero */
};

/* Indexes into struct counters. Every packet increments exactly one verdict
 * counter; PIN_HIT, FLOW_HIT, PIN_STALE, INDEX_HIT and INDEX_HEIR are
 * counted in addition to the verdict (at most one of them per packet), and
 * INDEX_BAD too (alone, or with FLOW_HIT). Keep in sync with counterNames in
 * lb/xdp.go; new counters go at the end. */
enum counter {
	CNT_NOT_OURS = 0, /* verdict: not WireGuard to a VIP nor GUE to us: PASS */
	CNT_MALFORMED,    /* verdict: to VIP:wg_port but not plausible WireGuard: PASS */
	CNT_LOCAL,        /* verdict: owner is this node: PASS */
	CNT_FORWARDED,    /* verdict: encapsulated to the owner: TX */
	CNT_PIN_HIT,      /* extra: owner taken from `pins` */
	CNT_FLOW_HIT,     /* extra: owner taken from `flows` */
	CNT_FALLBACK,     /* verdict: unstamped, no flow entry: PASS */
	CNT_NO_NODE,      /* verdict: owner's node entry missing or not valid: PASS */
	CNT_NO_TABLE,     /* verdict: stamped, no pin, no Maglev table: PASS */
	CNT_ENCAP_ERR,    /* verdict: encapsulation failed: PASS (or DROP) */
	CNT_DECAP,        /* verdict: GUE from a peer, outer header stripped: PASS */
	CNT_DECAP_REJECT, /* verdict: GUE from an unknown source or bad inner: DROP */
	CNT_PIN_STALE,    /* extra: a pin names a node that is not valid; the table decided */
	CNT_INDEX_HIT,    /* extra: owner taken from the slot of a tagged receiver index */
	CNT_INDEX_BAD,    /* extra: unstamped, receiver index with a slot but a wrong check; flows decided */
	CNT_EGRESS,       /* extra: return traffic to an egress address of this data center */
	CNT_EGRESS_DC,    /* extra: return traffic to another data center's egress address */
	CNT_EGRESS_UNSLICED, /* extra: to an egress address of ours, port in no slice: PASS */
	CNT_RETARGET,     /* verdict: GUE from a peer for another node's slice, sent on: TX */
	CNT_DECAP_REFUSED, /* verdict: GUE from a peer whose inner packet no node may be sent: DROP */
	CNT_INDEX_HEIR,   /* extra: a tagged receiver index of a departed node's slot, sent to its heir */
	CNT_MAX,
};

/* No extra counter (the verdict only). */
#define CNT_NONE CNT_MAX

/* The single entry of the per-CPU `counters` map: one lookup per packet
 * serves the verdict and the extra counter. */
struct counters {
	__u64 n[CNT_MAX];
};

#endif /* WEDGE_LB_H */
