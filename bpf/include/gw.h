/* Maps and helpers of gateway mode: TC programs on the LAN interfaces
 * (assign selected forwarded TCP flows to the agent's listener, count per
 * client) and on the uplinks (count per remote IP). The Go loader creates
 * the maps once and hands them to each object (MapReplacements). */
#pragma once

#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_HLEN 14
#define IPPROTO_TCP 6

/* gw config flags */
#define PH_GW_ENABLED (1 << 0)
#define PH_GW_ALL_PORTS (1 << 1)
#define PH_GW_HAS_INCLUDE (1 << 2)
#define PH_GW_HAS_SOURCES (1 << 3)
#define PH_GW_DRAIN (1 << 4) /* shutting down: only flows the agent already has */

/* ph_ip_key.dir */
#define PH_DIR_OUT 0    /* uplink egress, ip = destination */
#define PH_DIR_IN 1     /* uplink ingress, ip = source */
#define PH_DIR_CLIENT 2 /* LAN ingress, ip = the LAN client (source) */

struct ph_gw_config {
	__u32 flags;
	__u32 mark; /* set on assigned packets: the policy rule routes them locally */
};

/* An IPv4 address is stored as ::ffff:a.b.c.d. */
struct ph_gw_lpm_key {
	__u32 prefixlen;
	__u8 ip[16];
};

struct ph_ip_key {
	__u8 ip[16];
	__u32 dir;
};

struct ph_counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ph_gw_config);
} ph_gw_config SEC(".maps");

/* Destination ports to intercept (host order); unused with PH_GW_ALL_PORTS. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} ph_gw_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ph_gw_lpm_key);
	__type(value, __u8);
} ph_gw_include SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ph_gw_lpm_key);
	__type(value, __u8);
} ph_gw_exclude SEC(".maps");

/* Client source addresses to intercept; unused without PH_GW_HAS_SOURCES. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ph_gw_lpm_key);
	__type(value, __u8);
} ph_gw_sources SEC(".maps");

/* The agent's IP_TRANSPARENT listeners: slot 0 IPv4, slot 1 IPv6. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} ph_gw_listen SEC(".maps");

/* Packets and bytes per IP and direction; max_entries set by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ph_ip_key);
	__type(value, struct ph_counter);
} ph_ip_stats SEC(".maps");

/* New TCP connections (SYN) per LAN client; max_entries set by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u8[16]);
	__type(value, __u64);
} ph_client_conns SEC(".maps");

static __always_inline void ph_gw_v4(__u8 *dst, __u32 ip4 /* network order */)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &ip4, 4);
}

static __always_inline void ph_count(const __u8 *ip, __u32 dir, __u32 len)
{
	struct ph_ip_key k = {};
	struct ph_counter *c, init = {1, len};

	__builtin_memcpy(k.ip, ip, 16);
	k.dir = dir;
	c = bpf_map_lookup_elem(&ph_ip_stats, &k);
	if (c) {
		/* per-CPU value: no other CPU writes it */
		c->packets++;
		c->bytes += len;
		return;
	}
	bpf_map_update_elem(&ph_ip_stats, &k, &init, BPF_NOEXIST);
}

/* ph_addr_of reads the source (src=1) or destination address of an IPv4 or
 * IPv6 packet into ip; 0 when the packet is neither. */
static __always_inline int ph_addr_of(struct __sk_buff *skb, int src, __u8 *ip)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = data + ETH_HLEN;
		if ((void *)(iph + 1) > end)
			return 0;
		ph_gw_v4(ip, src ? iph->saddr : iph->daddr);
		return 1;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > end)
			return 0;
		__builtin_memcpy(ip, src ? (void *)&ip6->saddr : (void *)&ip6->daddr, 16);
		return 1;
	}
	return 0;
}
