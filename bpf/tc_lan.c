//go:build ignore

/* TC ingress on the LAN interfaces: count packets, bytes and new TCP
 * connections per client, and hand selected forwarded TCP flows (IPv4 and
 * IPv6) to the agent's IP_TRANSPARENT listeners with bpf_sk_assign.
 * Assigned packets get the configured mark, which a policy rule sends to a
 * table whose only route is `local 0.0.0.0/0 dev lo` (`local ::/0` for
 * IPv6), so the stack delivers them locally instead of forwarding them. */
#include "gw.h"

char __license[] SEC("license") = "Dual MIT/GPL";

static __always_inline int ph_lpm_has(void *map, const __u8 *ip)
{
	struct ph_gw_lpm_key k = {};

	k.prefixlen = 128;
	__builtin_memcpy(k.ip, ip, 16);
	return bpf_map_lookup_elem(map, &k) != 0;
}

static __always_inline int ph_selected(struct ph_gw_config *cfg, const __u8 *src, const __u8 *dst, __u16 dport)
{
	if (!(cfg->flags & PH_GW_ENABLED))
		return 0;
	if ((cfg->flags & PH_GW_HAS_SOURCES) && !ph_lpm_has(&ph_gw_sources, src))
		return 0;
	if (!(cfg->flags & PH_GW_ALL_PORTS) && !bpf_map_lookup_elem(&ph_gw_ports, &dport))
		return 0;
	if (ph_lpm_has(&ph_gw_exclude, dst))
		return 0;
	if ((cfg->flags & PH_GW_HAS_INCLUDE) && !ph_lpm_has(&ph_gw_include, dst))
		return 0;
	return 1;
}

SEC("tc")
int ph_lan_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct bpf_sock_tuple tuple = {};
	struct ph_gw_config *cfg;
	struct ipv6hdr *ip6 = 0;
	struct iphdr *iph = 0;
	struct bpf_sock *sk;
	struct tcphdr *th;
	__u8 src[16], dst[16];
	__u32 zero = 0, slot = 0, tuple_len;
	__u64 one = 1, *n;
	int syn, ret, cookie;

	if (!ph_addr_of(skb, 1, src))
		return TC_ACT_OK;
	ph_count(src, PH_DIR_CLIENT, skb->len);
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		iph = data + ETH_HLEN;
		if ((void *)(iph + 1) > end || iph->protocol != IPPROTO_TCP || iph->ihl < 5)
			return TC_ACT_OK;
		if (iph->frag_off & bpf_htons(0x3fff))
			return TC_ACT_OK; /* fragments are forwarded as they are */
		th = (void *)iph + iph->ihl * 4;
	} else {
		ip6 = data + ETH_HLEN;
		/* TCP right after the fixed header; extension headers are forwarded. */
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return TC_ACT_OK;
		th = (void *)(ip6 + 1);
	}
	if ((void *)(th + 1) > end)
		return TC_ACT_OK;
	syn = th->syn && !th->ack;
	if (syn) {
		n = bpf_map_lookup_elem(&ph_client_conns, src);
		if (n)
			(*n)++;
		else
			bpf_map_update_elem(&ph_client_conns, src, &one, BPF_NOEXIST);
	}

	cfg = bpf_map_lookup_elem(&ph_gw_config, &zero);
	if (!cfg)
		return TC_ACT_OK;
	if (iph) {
		ph_gw_v4(dst, iph->daddr);
		tuple.ipv4.saddr = iph->saddr;
		tuple.ipv4.daddr = iph->daddr;
		tuple.ipv4.sport = th->source;
		tuple.ipv4.dport = th->dest;
		tuple_len = sizeof(tuple.ipv4);
	} else if (ip6) {
		__builtin_memcpy(dst, &ip6->daddr, 16);
		__builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, 16);
		tuple.ipv6.sport = th->source;
		tuple.ipv6.dport = th->dest;
		tuple_len = sizeof(tuple.ipv6);
		slot = 1;
	} else {
		return TC_ACT_OK;
	}
	if (!ph_selected(cfg, src, dst, bpf_ntohs(th->dest)))
		return TC_ACT_OK;

	/* A connection the agent already has (or is accepting): its socket. */
	sk = bpf_skc_lookup_tcp(skb, &tuple, tuple_len, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state != BPF_TCP_LISTEN)
			goto assign;
		bpf_sk_release(sk);
	}
	/* While the agent drains, new flows are forwarded. */
	if (cfg->flags & PH_GW_DRAIN)
		return TC_ACT_OK;
	sk = bpf_map_lookup_elem(&ph_gw_listen, &slot);
	if (!sk)
		return TC_ACT_OK; /* no listener: fail open */
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return TC_ACT_OK;
	}
	/* No socket and no SYN: the last ACK of a handshake the listener
	 * answered with a SYN cookie goes to it; anything else is a flow that
	 * was forwarded before the agent started, and stays forwarded. */
	if (!syn) {
		cookie = -1;
		if (th->ack && !th->syn && !th->rst) {
			if (iph)
				cookie = bpf_tcp_check_syncookie(sk, iph, sizeof(*iph), th, sizeof(*th));
			else if (ip6)
				cookie = bpf_tcp_check_syncookie(sk, ip6, sizeof(*ip6), th, sizeof(*th));
		}
		if (cookie != 0) {
			bpf_sk_release(sk);
			return TC_ACT_OK;
		}
	}
assign:
	ret = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (ret)
		return TC_ACT_OK;
	skb->mark = cfg->mark;
	return TC_ACT_OK;
}
