//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * xdp_lb: the XDP front of a wedge node. See README.md in this directory for
 * the packet walk, the maps and the counters.
 *
 * WireGuard to a VIP is steered to the node that owns the client:
 *   ClientID != 0: pins[cid], else maglev[fmix32(cid) % TABLE_SIZE]
 *   ClientID == 0: flows[src addr, src port], else deliver locally
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

/* Underlay address -> node index, for accepting GUE only from peers. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_NODES);
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

/* ClientID -> node index, overriding the table. Not preallocated: a full
 * preallocation of 1<<20 entries would cost ~80 MiB per loaded copy. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PINS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u32);
} pins SEC(".maps");

/* (source address, source port) of unstamped clients -> node index. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, __u32);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* What the parser hands to owner selection. */
struct wg_pkt {
	struct flow_key key; /* for unstamped clients */
	__u32 cid;           /* ClientID, 0 when not stamped */
	__u32 ip_len;        /* length of the whole IP packet, from its header */
};

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

/* verdict counts the outcome cnt and returns action. */
static __always_inline int verdict(__u32 cnt, int action)
{
	count(cnt);
	return action;
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

static __always_inline int addr6_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

/* wg_plausible reports whether a UDP payload of len bytes starting with
 * message type typ can be WireGuard. */
static __always_inline int wg_plausible(__u8 typ, __u32 len)
{
	switch (typ) {
	case WG_INITIATION:
		return len == WG_INITIATION_LEN;
	case WG_RESPONSE:
		return len == WG_RESPONSE_LEN;
	case WG_COOKIE:
		return len == WG_COOKIE_LEN;
	case WG_DATA:
		return len >= WG_DATA_MIN_LEN;
	}
	return 0;
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
				 __be32 dst, const struct wg_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 mac_dst[ETH_ALEN], mac_src[ETH_ALEN];
	__u32 entropy;

	if ((void *)(eth + 1) > data_end || p->ip_len > 0xffff - GUE_OVERHEAD) {
		count(CNT_ENCAP_ERR);
		return XDP_PASS;
	}
	__builtin_memcpy(mac_dst, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(mac_src, eth->h_source, ETH_ALEN);

	if (bpf_xdp_adjust_head(ctx, -(int)GUE_OVERHEAD)) {
		count(CNT_ENCAP_ERR);
		return XDP_PASS; /* nothing was changed */
	}

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > data_end) {
		/* Cannot happen (the head grew by exactly this much), but the
		 * verifier needs the check. Put the original back if we can. */
		count(CNT_ENCAP_ERR);
		if (bpf_xdp_adjust_head(ctx, (int)GUE_OVERHEAD))
			return XDP_DROP;
		return XDP_PASS;
	}

	/* Back to the L2 neighbour that delivered the packet (the router). */
	__builtin_memcpy(eth->h_dest, mac_src, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac_dst, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	struct iphdr oip = {
		.ver_ihl = 0x45,
		.tot_len = bpf_htons((__u16)(p->ip_len + GUE_OVERHEAD)),
		.frag_off = bpf_htons(IP_DF),
		.ttl = GUE_TTL,
		.protocol = IPPROTO_UDP,
		.saddr = cfg->self_underlay4,
		.daddr = dst,
	};
	oip.check = ip_csum(&oip);
	*ip = oip;

	/* Receiver RSS entropy: per client, stable across NAT rebinding when
	 * the client is stamped. */
	if (p->cid) {
		entropy = fmix32(p->cid);
	} else {
		const __u32 *a = (const __u32 *)p->key.saddr;

		entropy = fmix32(a[0] ^ a[1] ^ a[2] ^ a[3] ^ p->key.sport);
	}
	udp->source = bpf_htons((__u16)(GUE_SPORT_BASE + entropy % GUE_SPORT_RANGE));
	udp->dest = cfg->gue_port;
	udp->len = bpf_htons((__u16)(p->ip_len + sizeof(struct udphdr)));
	udp->check = 0;

	count(CNT_FORWARDED);
	return XDP_TX;
}

/* steer picks the owner of a WireGuard packet and delivers or forwards it. */
static __always_inline int steer(struct xdp_md *ctx, const struct config *cfg,
				 const struct wg_pkt *p)
{
	__u32 zero = 0, owner, slot;
	__u32 *v;

	if (p->cid) {
		v = bpf_map_lookup_elem(&pins, &p->cid);
		if (v) {
			count(CNT_PIN_HIT);
		} else {
			void *table = bpf_map_lookup_elem(&maglev_outer, &zero);

			if (!table)
				return verdict(CNT_NO_TABLE, XDP_PASS);
			slot = fmix32(p->cid) % TABLE_SIZE;
			v = bpf_map_lookup_elem(table, &slot);
			if (!v)
				return verdict(CNT_NO_TABLE, XDP_PASS);
		}
	} else {
		v = bpf_map_lookup_elem(&flows, &p->key);
		if (!v)
			return verdict(CNT_FALLBACK, XDP_PASS);
		count(CNT_FLOW_HIT);
	}
	owner = *v;

	if (owner == cfg->self)
		return verdict(CNT_LOCAL, XDP_PASS);

	struct node *n = bpf_map_lookup_elem(&nodes, &owner);

	if (!n || !(n->flags & NODE_VALID))
		return verdict(CNT_NO_NODE, XDP_PASS);
	return encap(ctx, cfg, n->underlay4, p);
}

/* decap strips the outer IPv4 + UDP header of a GUE packet from a peer and
 * passes the inner packet up the stack. ip and udp point into the packet;
 * udp is followed by at least WG_HDR_LEN bytes. */
static __always_inline int decap(struct xdp_md *ctx, struct iphdr *ip, struct udphdr *udp)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;
	__u8 mac_dst[ETH_ALEN], mac_src[ETH_ALEN];
	__u8 *inner = (void *)(udp + 1);
	__be16 proto;

	if (!bpf_map_lookup_elem(&peers4, &ip->saddr))
		return verdict(CNT_DECAP_REJECT, XDP_DROP);
	/* We never send options; the strip below is a fixed 28 bytes. */
	if (ip->ver_ihl != 0x45 || (void *)(eth + 1) > data_end)
		return verdict(CNT_DECAP_REJECT, XDP_DROP);

	switch (inner[0] >> 4) {
	case 4:
		if ((void *)(inner + sizeof(struct iphdr)) > data_end)
			return verdict(CNT_DECAP_REJECT, XDP_DROP);
		proto = bpf_htons(ETH_P_IP);
		break;
	case 6:
		if ((void *)(inner + sizeof(struct ipv6hdr)) > data_end)
			return verdict(CNT_DECAP_REJECT, XDP_DROP);
		proto = bpf_htons(ETH_P_IPV6);
		break;
	default:
		return verdict(CNT_DECAP_REJECT, XDP_DROP);
	}

	__builtin_memcpy(mac_dst, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(mac_src, eth->h_source, ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, (int)GUE_OVERHEAD))
		return verdict(CNT_DECAP_REJECT, XDP_DROP);

	eth = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if ((void *)(eth + 1) > data_end)
		return verdict(CNT_DECAP_REJECT, XDP_DROP); /* cannot happen */
	__builtin_memcpy(eth->h_dest, mac_dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac_src, ETH_ALEN);
	eth->h_proto = proto;
	return verdict(CNT_DECAP, XDP_PASS);
}

static __always_inline int handle_ipv4(struct xdp_md *ctx, const struct config *cfg)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	struct wg_pkt p = {};
	__u32 ihl, tot_len, udp_len;

	if ((void *)(ip + 1) > data_end)
		return verdict(CNT_NOT_OURS, XDP_PASS);
	ihl = (ip->ver_ihl & 0x0f) * 4;
	if ((ip->ver_ihl >> 4) != 4 || ihl < sizeof(struct iphdr) ||
	    ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return verdict(CNT_NOT_OURS, XDP_PASS);

	/* The one bounds check for UDP and the WireGuard (or inner) header. */
	struct udphdr *udp = (void *)ip + ihl;
	__u8 *wg = (void *)(udp + 1);

	if ((void *)(wg + WG_HDR_LEN) > data_end)
		return verdict(CNT_NOT_OURS, XDP_PASS);

	if (cfg->self_underlay4 && ip->daddr == cfg->self_underlay4 &&
	    udp->dest == cfg->gue_port)
		return decap(ctx, ip, udp);
	if (ip->daddr != cfg->vip4 || udp->dest != cfg->wg_port)
		return verdict(CNT_NOT_OURS, XDP_PASS);

	tot_len = bpf_ntohs(ip->tot_len);
	udp_len = bpf_ntohs(udp->len);
	if ((void *)ip + tot_len > data_end || udp_len < sizeof(*udp) ||
	    ihl + udp_len > tot_len || !wg_plausible(wg[0], udp_len - sizeof(*udp)))
		return verdict(CNT_MALFORMED, XDP_PASS);

	p.cid = (__u32)wg[1] << 16 | (__u32)wg[2] << 8 | wg[3];
	p.ip_len = tot_len;
	/* ::ffff:a.b.c.d */
	((__u32 *)p.key.saddr)[2] = bpf_htonl(0x0000ffff);
	((__u32 *)p.key.saddr)[3] = ip->saddr;
	p.key.sport = udp->source;
	return steer(ctx, cfg, &p);
}

static __always_inline int handle_ipv6(struct xdp_md *ctx, const struct config *cfg)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct udphdr *udp = (void *)(ip6 + 1);
	__u8 *wg = (void *)(udp + 1);
	struct wg_pkt p = {};
	__u32 payload_len, udp_len;

	/* The one bounds check: fixed header, UDP directly, WireGuard header. */
	if ((void *)(wg + WG_HDR_LEN) > data_end)
		return verdict(CNT_NOT_OURS, XDP_PASS);
	if ((ip6->ver_tc_flow[0] >> 4) != 6 || ip6->nexthdr != IPPROTO_UDP ||
	    !addr6_eq(ip6->daddr, cfg->vip6) || udp->dest != cfg->wg_port)
		return verdict(CNT_NOT_OURS, XDP_PASS);

	payload_len = bpf_ntohs(ip6->payload_len);
	udp_len = bpf_ntohs(udp->len);
	if ((void *)udp + payload_len > data_end || udp_len < sizeof(*udp) ||
	    udp_len > payload_len || !wg_plausible(wg[0], udp_len - sizeof(*udp)))
		return verdict(CNT_MALFORMED, XDP_PASS);

	p.cid = (__u32)wg[1] << 16 | (__u32)wg[2] << 8 | wg[3];
	p.ip_len = sizeof(*ip6) + payload_len;
	__builtin_memcpy(p.key.saddr, ip6->saddr, sizeof(p.key.saddr));
	p.key.sport = udp->source;
	return steer(ctx, cfg, &p);
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
		return verdict(CNT_NOT_OURS, XDP_PASS);
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_ipv4(ctx, cfg);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_ipv6(ctx, cfg);
	return verdict(CNT_NOT_OURS, XDP_PASS);
}
