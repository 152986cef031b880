//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * xdp_lb: the XDP front of a wedge node. See README.md in this directory for
 * the packet walk, the maps and the counters.
 *
 * WireGuard to a VIP is steered to the node that owns the client's session:
 *   ClientID != 0: the slot of a tagged receiver index (responses, cookie
 *                  replies, data) if its node is valid, is this node or has
 *                  an heir, else pins[cid] if its node is valid (or is this
 *                  node), else maglev[fmix32(cid) % TABLE_SIZE]
 *   ClientID == 0: the slot of a tagged receiver index, else
 *                  flows[src addr, src port], else deliver locally
 * and, when the owner is another node, sent back out (XDP_TX) inside a GUE
 * variant 1 (IP in UDP) packet to the owner's underlay address. The owner
 * strips that outer header here too and passes the inner packet up.
 */

/* kernel.h first: libbpf's headers expect the __u32 family defined. */
#include "kernel.h"

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "wedge_lb.h"

char __license[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_NODES);
	__type(key, __u32);
	__type(value, struct node);
} nodes SEC(".maps");

/* Underlay address -> node index, for accepting GUE only from peers: the
 * nodes of this data center and those of other data centers that send it
 * return traffic. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PEERS);
	__type(key, __be32);
	__type(value, __u32);
} peers4 SEC(".maps");

/* One Maglev table, swapped whole by userspace: a new inner map is filled,
 * then stored in slot 0. Inner maps must have exactly TABLE_SIZE entries. */
struct maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TABLE_SIZE);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct maglev_inner);
} maglev_outer SEC(".maps");

/* ClientID -> node index, overriding the table while that node is valid
 * (a draining node keeps its clients; a departed one does not black-hole
 * them). Not preallocated: a full preallocation of 1<<20 entries would cost
 * ~80 MiB per loaded copy. A hash lookup is a real call (and jhash), the
 * most expensive step of the stamped path, so it is only made for a
 * ClientID whose bit is set in pin_bits. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PINS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u32);
} pins SEC(".maps");

/* One bit per ClientID (bit cid % 64 of word cid / 64): set for every
 * ClientID that has an entry in pins. Userspace sets the bit before it adds
 * the entry and clears it after it deletes the entry, so a set bit without
 * an entry costs one wasted lookup and a pin never lacks its bit. Read only
 * while config.flags has CONFIG_PINS. 2 MiB, preallocated. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PIN_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} pin_bits SEC(".maps");

/* (source address, source port) of unstamped clients -> node index. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, __u32);
} flows SEC(".maps");

/* IPv4 egress address -> how its return traffic is steered. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_EGRESS4);
	__type(key, __be32);
	__type(value, struct egress4);
} egress4 SEC(".maps");

/* Another data center's index (egress4.dc) -> nodes to send to there. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_DCS);
	__type(key, __u32);
	__type(value, struct dc);
} dcs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} counters SEC(".maps");

/* verdict2 counts the outcome cnt, the extra counter extra (CNT_NONE for
 * none) and, if bad is 1, index_bad, and returns action. The only counter
 * lookup of a packet. bad is 0 or 1 and added without a branch: a
 * variable counter index here would need a bound the verifier can follow,
 * and outside the unstamped path bad is the constant 0, which compiles to
 * nothing. */
static __always_inline int verdict2(__u32 cnt, __u32 extra, __u32 bad, int action)
{
	__u32 zero = 0;
	struct counters *c = bpf_map_lookup_elem(&counters, &zero);

	if (c) {
		if (cnt < CNT_MAX)
			c->n[cnt] += 1;
		if (extra < CNT_MAX)
			c->n[extra] += 1;
		c->n[CNT_INDEX_BAD] += bad;
	}
	return action;
}

static __always_inline int verdict(__u32 cnt, __u32 extra, int action)
{
	return verdict2(cnt, extra, 0, action);
}

/* murmur3's 32-bit finalizer; lb.Hash in Go is the same function. */
static __always_inline __u32 fmix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* table_slot is h % TABLE_SIZE without a division (the JIT makes `%` a
 * 64-bit div, the slowest instruction of the stamped path). With
 * m = 0xffff0001 = ceil(2^48 / 65537), m * 65537 = 2^48 + 1, so
 * h * m / 2^48 = h / 65537 + h / (65537 * 2^48). The second term is below
 * 1 / (65537 * 65536) for h < 2^32, while h / 65537 is at least 1/65537
 * below the next integer, so the floor is the same: (h * m) >> 48 is
 * exactly h / 65537 for every 32-bit h, and h * m fits in 64 bits.
 * lb.TestXDPTableSlot checks it for every ClientID. */
_Static_assert(TABLE_SIZE == 65537, "table_slot is written for 65537 slots");
static __always_inline __u32 table_slot(__u32 h)
{
	__u32 q = (__u32)(((__u64)h * 0xffff0001ULL) >> 48);

	return h - q * TABLE_SIZE;
}

static __always_inline int addr6_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

/* The fixed sizes of message types 1, 2 and 3 as the bytes 0, 1 and 2 of
 * one constant, so that checking them takes no branch per type. */
_Static_assert(WG_RESPONSE == WG_INITIATION + 1 && WG_COOKIE == WG_INITIATION + 2 &&
		       WG_INITIATION_LEN < 256 && WG_RESPONSE_LEN < 256 && WG_COOKIE_LEN < 256,
	       "types 1..3 index the bytes of WG_FIXED_LENS");
#define WG_FIXED_LENS (WG_INITIATION_LEN | WG_RESPONSE_LEN << 8 | WG_COOKIE_LEN << 16)

/* wg_plausible reports whether a UDP payload of len bytes starting with
 * message type typ can be WireGuard: a data message (the common case) of at
 * least 32 bytes, or an initiation, response or cookie reply of exactly its
 * size. */
static __always_inline int wg_plausible(__u8 typ, __u32 len)
{
	__u32 i = (__u32)typ - WG_INITIATION;

	if (typ == WG_DATA)
		return len >= WG_DATA_MIN_LEN;
	return i < 3 && len == ((WG_FIXED_LENS >> (i * 8)) & 0xff);
}

/* wg_cid is the ClientID in the reserved bytes 1..3 (big-endian) of the
 * WireGuard header at wg. */
static __always_inline __u32 wg_cid(const __u8 *wg)
{
	return (__u32)wg[1] << 16 | (__u32)wg[2] << 8 | wg[3];
}

static __always_inline __u16 ip_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* encap prepends an outer Ethernet + IPv4 + UDP header to the IP packet
 * and sends the frame back out where it came from, to the owner's underlay. */
static __always_inline int encap(struct xdp_md *ctx, const struct config *cfg,
				 __be32 dst, __u32 ip_len, __u32 entropy, __u32 extra, __u32 bad)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 mac_dst[ETH_ALEN], mac_src[ETH_ALEN];

	if ((void *)(eth + 1) > data_end || ip_len > 0xffff - GUE_OVERHEAD)
		return verdict2(CNT_ENCAP_ERR, extra, bad, XDP_PASS);
	__builtin_memcpy(mac_dst, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(mac_src, eth->h_source, ETH_ALEN);

	if (bpf_xdp_adjust_head(ctx, -(int)GUE_OVERHEAD))
		return verdict2(CNT_ENCAP_ERR, extra, bad, XDP_PASS); /* nothing was changed */

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > data_end) {
		/* Cannot happen (the head grew by exactly this much), but the
		 * verifier needs the check. Put the original back if we can. */
		if (bpf_xdp_adjust_head(ctx, (int)GUE_OVERHEAD))
			return verdict2(CNT_ENCAP_ERR, extra, bad, XDP_DROP);
		return verdict2(CNT_ENCAP_ERR, extra, bad, XDP_PASS);
	}

	/* Back to the L2 neighbour that delivered the packet (the router). */
	__builtin_memcpy(eth->h_dest, mac_src, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac_dst, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	struct iphdr oip = {
		.ver_ihl = 0x45,
		.tot_len = bpf_htons((__u16)(ip_len + GUE_OVERHEAD)),
		.frag_off = bpf_htons(IP_DF),
		.ttl = GUE_TTL,
		.protocol = IPPROTO_UDP,
		.saddr = cfg->self_underlay4,
		.daddr = dst,
	};
	oip.check = ip_csum(&oip);
	*ip = oip;

	udp->source = bpf_htons((__u16)(GUE_SPORT_BASE + entropy % GUE_SPORT_RANGE));
	udp->dest = cfg->gue_port;
	udp->len = bpf_htons((__u16)(ip_len + sizeof(struct udphdr)));
	udp->check = 0;

	return verdict2(CNT_FORWARDED, extra, bad, XDP_TX);
}

/* deliver passes up a packet that node owner owns, or sends it there.
 * entropy picks the outer source port (receiver RSS); extra and bad are
 * counted with the verdict (see verdict2). An owner taken from a tagged
 * index (extra CNT_INDEX_HIT) whose entry is a departed node's with an heir
 * goes to the heir, counted as CNT_INDEX_HEIR instead; anything else that
 * names a node not valid stays here (no_node). */
static __always_inline int deliver(struct xdp_md *ctx, const struct config *cfg,
				   __u32 owner, __u32 ip_len, __u32 entropy, __u32 extra,
				   __u32 bad)
{
	if (owner == cfg->self)
		return verdict2(CNT_LOCAL, extra, bad, XDP_PASS);

	struct node *n = bpf_map_lookup_elem(&nodes, &owner);

	if (!n)
		return verdict2(CNT_NO_NODE, extra, bad, XDP_PASS);
	if (!(n->flags & NODE_VALID)) {
		if (extra != CNT_INDEX_HIT || !(n->flags & NODE_HEIR))
			return verdict2(CNT_NO_NODE, extra, bad, XDP_PASS);
		extra = CNT_INDEX_HEIR;
		if (n->underlay4 == cfg->self_underlay4)
			return verdict2(CNT_LOCAL, extra, bad, XDP_PASS);
	}
	return encap(ctx, cfg, n->underlay4, ip_len, entropy, extra, bad);
}

/* index_hash is the hash whose top nibble is the check of receiver index
 * ridx with slot slot (server/wgmsg: fmix32(r ^ key ^ slot << 20)). */
static __always_inline __u32 index_hash(const struct config *cfg, __u32 ridx, __u32 slot)
{
	return fmix32((ridx & INDEX_RANDOM_MASK) ^ cfg->index_key ^ (slot << INDEX_CHECK_SHIFT));
}

/* index_tagged reports whether ridx's check (bits 20..23) is the top nibble
 * of its index_hash h. */
static __always_inline int index_tagged(__u32 ridx, __u32 h)
{
	return ((h ^ (ridx << (28 - INDEX_CHECK_SHIFT))) >> 28) == 0;
}

/* pin_bit reports whether ClientID cid (0 < cid < 1<<24) may have a pin. */
static __always_inline int pin_bit(const struct config *cfg, __u32 cid)
{
	__u32 word = cid / 64;
	__u64 *bits;

	if (!(cfg->flags & CONFIG_PINS))
		return 0;
	bits = bpf_map_lookup_elem(&pin_bits, &word);
	return bits && ((*bits >> (cid % 64)) & 1);
}

/* What the parser hands to owner selection. */
struct wg_pkt {
	struct flow_key key; /* the source, for unstamped clients only */
	__u32 cid;           /* ClientID, 0 when not stamped */
	__u32 ip_len;        /* length of the whole IP packet, from its header */
	__u32 wg_off;        /* where the WireGuard message starts */
};

/* wg_receiver is the receiver index of the plausible WireGuard message at
 * offset off of the frame: the little-endian u32 at byte 8 of a response,
 * at byte 4 of a cookie reply or data message; 0 (untagged) for an
 * initiation. Read in owner selection rather than in the parsers, and only
 * while config.flags has CONFIG_INDEX. */
static __always_inline __u32 wg_receiver(struct xdp_md *ctx, __u32 off)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	/* off is at most 14 + 60 + 8; the mask tells the verifier so. */
	__u8 *wg = data + (off & 0xff);

	/* For the verifier only: a plausible message of these types is at
	 * least 32 bytes, all of them inside the frame. */
	if ((void *)(wg + WG_RESPONSE_RECEIVER_OFF + 4) > data_end || wg[0] == WG_INITIATION)
		return 0;
	if (wg[0] == WG_RESPONSE)
		return *(const __u32 *)(wg + WG_RESPONSE_RECEIVER_OFF);
	return *(const __u32 *)(wg + WG_RECEIVER_OFF);
}

/* steer_stamped picks the owner of a packet stamped with ClientID cid: the
 * node whose slot a tagged receiver index names (the node that made the
 * session, whatever the table became since) while that node is valid, is
 * this node or has an heir; else its pin while the pinned node is valid (or
 * is this node), else the table. Initiations carry no receiver index: they
 * always go by pin or table. An index with a wrong check is not counted
 * (index_bad is for unstamped packets). The outer source port's entropy is
 * fmix32(cid), stable for the client across NAT rebinding and sessions. */
static __always_inline int steer_stamped(struct xdp_md *ctx, const struct config *cfg,
					 const struct wg_pkt *p)
{
	__u32 cid = p->cid, h = fmix32(cid), extra = CNT_NONE, zero = 0, owner, slot;
	__u32 *v;

	if (cfg->flags & CONFIG_INDEX) {
		__u32 ridx = wg_receiver(ctx, p->wg_off);

		slot = ridx >> INDEX_SLOT_SHIFT;
		if (slot && index_tagged(ridx, index_hash(cfg, ridx, slot))) {
			owner = slot;
			extra = CNT_INDEX_HIT;
			if (owner == cfg->self)
				goto found;

			struct node *n = bpf_map_lookup_elem(&nodes, &owner);

			if (n && (n->flags & (NODE_VALID | NODE_HEIR)))
				goto found;
			/* The session's node is gone, its heir too: the
			 * ClientID decides. */
			extra = CNT_NONE;
		}
	}

	if (pin_bit(cfg, cid)) {
		v = bpf_map_lookup_elem(&pins, &cid);
		if (v) {
			owner = *v;
			extra = CNT_PIN_HIT;
			if (owner == cfg->self)
				goto found;

			struct node *n = bpf_map_lookup_elem(&nodes, &owner);

			if (n && (n->flags & NODE_VALID))
				goto found;
			/* The pinned node is gone: the table decides. */
			extra = CNT_PIN_STALE;
		}
	}

	void *table = bpf_map_lookup_elem(&maglev_outer, &zero);

	if (!table)
		return verdict(CNT_NO_TABLE, extra, XDP_PASS);
	slot = table_slot(h);
	v = bpf_map_lookup_elem(table, &slot);
	if (!v)
		return verdict(CNT_NO_TABLE, extra, XDP_PASS);
	owner = *v;
found:
	return deliver(ctx, cfg, owner, p->ip_len, h, extra, 0);
}

/* steer_unstamped picks the owner of an unstamped packet: the node whose
 * slot a tagged receiver index names (the slot is the node index; a
 * departed node's heir while it has one, else delivered here: no_node),
 * else its flow entry; without one it is delivered here. The outer source port's
 * entropy is the check's hash for a tagged index (stable for the session,
 * across NAT rebinding), else a hash of the flow key. */
static __always_inline int steer_unstamped(struct xdp_md *ctx, const struct config *cfg,
					   const struct wg_pkt *p)
{
	__u32 ridx = 0, slot, bad = 0, owner, entropy, extra;

	if (cfg->flags & CONFIG_INDEX)
		ridx = wg_receiver(ctx, p->wg_off);
	slot = ridx >> INDEX_SLOT_SHIFT;
	if (slot) {
		__u32 h = index_hash(cfg, ridx, slot);

		if (index_tagged(ridx, h)) {
			owner = slot;
			entropy = h;
			extra = CNT_INDEX_HIT;
			goto found;
		}
		bad = 1; /* a slot, but not our check: not a tagged index */
	}

	__u32 *v = bpf_map_lookup_elem(&flows, &p->key);

	if (!v)
		return verdict2(CNT_FALLBACK, CNT_NONE, bad, XDP_PASS);

	const __u32 *a = (const __u32 *)p->key.saddr;

	owner = *v;
	entropy = fmix32(a[0] ^ a[1] ^ a[2] ^ a[3] ^ p->key.sport);
	extra = CNT_FLOW_HIT;
found:
	return deliver(ctx, cfg, owner, p->ip_len, entropy, extra, bad);
}

/* slice_owner is the node index whose port slice of the egress address
 * e holds port (host order), 0 when no slice does. */
static __always_inline __u32 slice_owner(const struct egress4 *e, __u32 port)
{
	__u32 off = port - e->port_lo; /* wraps below port_lo: no slice */

	if (e->slice == 0 || off >= (__u32)e->slices * e->slice)
		return 0;
	return off / e->slice + 1;
}

/* steer_egress steers a TCP or UDP packet to an IPv4 egress address (return
 * traffic of a flow some node re-originated from it): to the node whose
 * slice holds the destination port if this data center owns the address,
 * else to a node of the data center that does. ip is the packet's IPv4
 * header, ihl its length; anything else passes as not ours. */
static __always_inline int steer_egress(struct xdp_md *ctx, const struct config *cfg,
					struct iphdr *ip, __u32 ihl)
{
	void *data_end = (void *)(long)ctx->data_end;
	__be16 *ports = (void *)ip + ihl;
	__u32 ip_len = bpf_ntohs(ip->tot_len), entropy, owner, extra;
	struct egress4 *e;
	__be32 dst;

	if ((void *)(ports + 2) > data_end)
		return verdict(CNT_NOT_OURS, CNT_NONE, XDP_PASS);
	e = bpf_map_lookup_elem(&egress4, &ip->daddr);
	if (!e)
		return verdict(CNT_NOT_OURS, CNT_NONE, XDP_PASS);
	if ((void *)ip + ip_len > data_end || ip_len < ihl + 4)
		return verdict(CNT_MALFORMED, CNT_NONE, XDP_PASS);
	/* The remote end of the flow: stable for the flow, spread over flows. */
	entropy = fmix32(ip->saddr ^ ((__u32)ports[0] << 16 | ports[1]));
	/* One encap call site for both cases: each is a full inlined copy. */
	if (e->dc != EGRESS_LOCAL) {
		__u32 dc = e->dc;
		struct dc *d = bpf_map_lookup_elem(&dcs, &dc);

		extra = CNT_EGRESS_DC;
		if (!d || d->n == 0)
			return verdict(CNT_NO_NODE, extra, XDP_PASS);
		dst = d->underlay4[(entropy % d->n) & (DC_TARGETS - 1)];
	} else {
		struct node *n;

		extra = CNT_EGRESS;
		owner = slice_owner(e, bpf_ntohs(ports[1]));
		if (!owner)
			return verdict(CNT_LOCAL, CNT_EGRESS_UNSLICED, XDP_PASS);
		if (owner == cfg->self)
			return verdict(CNT_LOCAL, extra, XDP_PASS);
		n = bpf_map_lookup_elem(&nodes, &owner);
		if (!n || !(n->flags & NODE_VALID))
			return verdict(CNT_NO_NODE, extra, XDP_PASS);
		dst = n->underlay4;
	}
	return encap(ctx, cfg, dst, ip_len, entropy, extra, 0);
}

/* retarget sends a GUE packet from a peer on to another node of this data
 * center when its inner packet is return traffic for that node's port
 * slice (it came from another data center, whose node cannot know our
 * slices): the outer addresses are rewritten and the frame goes back out.
 * It returns -1 when the packet is to be unwrapped here instead. The outer
 * TTL drops by one each time, so nodes that disagree for a moment about a
 * slice cannot bounce a packet for ever. e is the inner destination's
 * egress4 entry (one of ours), dport its destination port (host order). */
static __always_inline int retarget(struct xdp_md *ctx, const struct config *cfg,
				    struct iphdr *ip, const struct egress4 *e, __u32 dport)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;
	__u8 mac[ETH_ALEN];
	__u32 owner;

	if (ip->ttl <= 1 || (void *)(eth + 1) > data_end)
		return -1;
	owner = slice_owner(e, dport);
	if (!owner || owner == cfg->self)
		return -1;

	struct node *n = bpf_map_lookup_elem(&nodes, &owner);

	if (!n || !(n->flags & NODE_VALID))
		return -1;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	ip->saddr = cfg->self_underlay4;
	ip->daddr = n->underlay4;
	ip->ttl -= 1;
	ip->check = 0;
	ip->check = ip_csum(ip);
	return verdict(CNT_RETARGET, CNT_EGRESS, XDP_TX);
}

/* decap strips the outer IPv4 + UDP header of a GUE packet from a peer and
 * passes the inner packet up the stack, if it is something a node may be
 * sent: UDP to a VIP's WireGuard port (a client's packet a front
 * forwarded), or IPv4 TCP or UDP to an egress address of this data center
 * (return traffic). Anything else inside GUE (TCP to the node's own
 * address, ICMP, fragments, another data center's egress address) is
 * dropped as decap_refused: a peer's underlay is not a licence to reach
 * the node's own services. ip and udp point into the packet; udp is
 * followed by at least WG_HDR_LEN bytes. */
static __always_inline int decap(struct xdp_md *ctx, const struct config *cfg,
				 struct iphdr *ip, struct udphdr *udp)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;
	__u8 mac_dst[ETH_ALEN], mac_src[ETH_ALEN];
	__u8 *inner = (void *)(udp + 1);
	__be16 proto;

	if (!bpf_map_lookup_elem(&peers4, &ip->saddr))
		return verdict(CNT_DECAP_REJECT, CNT_NONE, XDP_DROP);
	/* We never send options; the strip below is a fixed 28 bytes. */
	if (ip->ver_ihl != 0x45 || (void *)(eth + 1) > data_end)
		return verdict(CNT_DECAP_REJECT, CNT_NONE, XDP_DROP);

	switch (inner[0] >> 4) {
	case 4: {
		struct iphdr *in = (void *)inner;
		__u32 ihl;

		if ((void *)(in + 1) > data_end)
			return verdict(CNT_DECAP_REJECT, CNT_NONE, XDP_DROP);
		ihl = (in->ver_ihl & 0x0f) * 4;
		if ((in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP) ||
		    ihl < sizeof(*in) || (in->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
			return verdict(CNT_DECAP_REFUSED, CNT_NONE, XDP_DROP);

		__be16 *ports = (void *)in + ihl;

		if ((void *)(ports + 2) > data_end)
			return verdict(CNT_DECAP_REFUSED, CNT_NONE, XDP_DROP);
		if (!(in->protocol == IPPROTO_UDP && cfg->vip4 && in->daddr == cfg->vip4 &&
		      ports[1] == cfg->wg_port)) {
			struct egress4 *e = bpf_map_lookup_elem(&egress4, &in->daddr);

			if (!e || e->dc != EGRESS_LOCAL)
				return verdict(CNT_DECAP_REFUSED, CNT_NONE, XDP_DROP);
			if (cfg->flags & CONFIG_EGRESS) {
				int act = retarget(ctx, cfg, ip, e, bpf_ntohs(ports[1]));

				if (act >= 0)
					return act;
			}
		}
		proto = bpf_htons(ETH_P_IP);
		break;
	}
	case 6: {
		struct ipv6hdr *in6 = (void *)inner;
		struct udphdr *iudp = (void *)(in6 + 1);

		if ((void *)(in6 + 1) > data_end)
			return verdict(CNT_DECAP_REJECT, CNT_NONE, XDP_DROP);
		if ((void *)(iudp + 1) > data_end || in6->nexthdr != IPPROTO_UDP ||
		    !addr6_eq(in6->daddr, cfg->vip6) || iudp->dest != cfg->wg_port)
			return verdict(CNT_DECAP_REFUSED, CNT_NONE, XDP_DROP);
		proto = bpf_htons(ETH_P_IPV6);
		break;
	}
	default:
		return verdict(CNT_DECAP_REJECT, CNT_NONE, XDP_DROP);
	}

	__builtin_memcpy(mac_dst, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(mac_src, eth->h_source, ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, (int)GUE_OVERHEAD))
		return verdict(CNT_DECAP_REJECT, CNT_NONE, XDP_DROP);

	eth = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if ((void *)(eth + 1) > data_end)
		return verdict(CNT_DECAP_REJECT, CNT_NONE, XDP_DROP); /* cannot happen */
	__builtin_memcpy(eth->h_dest, mac_dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac_src, ETH_ALEN);
	eth->h_proto = proto;
	return verdict(CNT_DECAP, CNT_NONE, XDP_PASS);
}

/* parse_ipv4 and parse_ipv6 return STEER with *p filled for a plausible
 * WireGuard packet to the VIP; for anything else they count the verdict and
 * return the action. */
#define STEER (-1)

static __always_inline int parse_ipv4(struct xdp_md *ctx, const struct config *cfg,
				      struct wg_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	__u32 ihl, tot_len, udp_len;

	if ((void *)(ip + 1) > data_end)
		return verdict(CNT_NOT_OURS, CNT_NONE, XDP_PASS);
	ihl = (ip->ver_ihl & 0x0f) * 4;
	if ((ip->ver_ihl >> 4) != 4 || ihl < sizeof(struct iphdr) ||
	    (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return verdict(CNT_NOT_OURS, CNT_NONE, XDP_PASS);
	if (ip->protocol != IPPROTO_UDP) {
		if (ip->protocol == IPPROTO_TCP && (cfg->flags & CONFIG_EGRESS))
			return steer_egress(ctx, cfg, ip, ihl);
		return verdict(CNT_NOT_OURS, CNT_NONE, XDP_PASS);
	}
	/* Return traffic to an egress address, before the WireGuard bounds
	 * check: a UDP reply may be shorter than a WireGuard header. */
	if ((cfg->flags & CONFIG_EGRESS) && ip->daddr != cfg->vip4 &&
	    ip->daddr != cfg->self_underlay4)
		return steer_egress(ctx, cfg, ip, ihl);

	/* The one bounds check for UDP and the WireGuard (or inner) header. */
	struct udphdr *udp = (void *)ip + ihl;
	__u8 *wg = (void *)(udp + 1);

	if ((void *)(wg + WG_HDR_LEN) > data_end)
		return verdict(CNT_NOT_OURS, CNT_NONE, XDP_PASS);

	if (cfg->self_underlay4 && ip->daddr == cfg->self_underlay4 &&
	    udp->dest == cfg->gue_port)
		return decap(ctx, cfg, ip, udp);
	if (ip->daddr != cfg->vip4 || udp->dest != cfg->wg_port)
		return verdict(CNT_NOT_OURS, CNT_NONE, XDP_PASS);

	tot_len = bpf_ntohs(ip->tot_len);
	udp_len = bpf_ntohs(udp->len);
	if ((void *)ip + tot_len > data_end || udp_len < sizeof(*udp) ||
	    ihl + udp_len > tot_len || !wg_plausible(wg[0], udp_len - sizeof(*udp)))
		return verdict(CNT_MALFORMED, CNT_NONE, XDP_PASS);

	p->cid = wg_cid(wg);
	p->ip_len = tot_len;
	p->wg_off = (__u32)((void *)wg - data);
	if (p->cid)
		return STEER; /* the flow key is for unstamped clients only */
	/* ::ffff:a.b.c.d */
	((__u32 *)p->key.saddr)[2] = bpf_htonl(0x0000ffff);
	((__u32 *)p->key.saddr)[3] = ip->saddr;
	p->key.sport = udp->source;
	return STEER;
}

static __always_inline int parse_ipv6(struct xdp_md *ctx, const struct config *cfg,
				      struct wg_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct udphdr *udp = (void *)(ip6 + 1);
	__u8 *wg = (void *)(udp + 1);
	__u32 payload_len, udp_len;

	/* The one bounds check: fixed header, UDP directly, WireGuard header. */
	if ((void *)(wg + WG_HDR_LEN) > data_end)
		return verdict(CNT_NOT_OURS, CNT_NONE, XDP_PASS);
	if ((ip6->ver_tc_flow[0] >> 4) != 6 || ip6->nexthdr != IPPROTO_UDP ||
	    !addr6_eq(ip6->daddr, cfg->vip6) || udp->dest != cfg->wg_port)
		return verdict(CNT_NOT_OURS, CNT_NONE, XDP_PASS);

	payload_len = bpf_ntohs(ip6->payload_len);
	udp_len = bpf_ntohs(udp->len);
	if ((void *)udp + payload_len > data_end || udp_len < sizeof(*udp) ||
	    udp_len > payload_len || !wg_plausible(wg[0], udp_len - sizeof(*udp)))
		return verdict(CNT_MALFORMED, CNT_NONE, XDP_PASS);

	p->cid = wg_cid(wg);
	p->ip_len = sizeof(*ip6) + payload_len;
	p->wg_off = ETH_HLEN + sizeof(*ip6) + sizeof(*udp);
	if (p->cid)
		return STEER;
	__builtin_memcpy(p->key.saddr, ip6->saddr, sizeof(p->key.saddr));
	p->key.sport = udp->source;
	return STEER;
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || !(cfg->flags & CONFIG_ENABLED) || (void *)(eth + 1) > data_end)
		return verdict(CNT_NOT_OURS, CNT_NONE, XDP_PASS);
	/* Zeroed: the parsers do not write the flow key's pad, nor the
	 * leading zeros of an IPv4 source's ::ffff:a.b.c.d. */
	struct wg_pkt p = {};
	int act;

	if (eth->h_proto == bpf_htons(ETH_P_IP))
		act = parse_ipv4(ctx, cfg, &p);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		act = parse_ipv6(ctx, cfg, &p);
	else
		return verdict(CNT_NOT_OURS, CNT_NONE, XDP_PASS);
	if (act != STEER)
		return act;
	if (p.cid)
		return steer_stamped(ctx, cfg, &p);
	return steer_unstamped(ctx, cfg, &p);
}
