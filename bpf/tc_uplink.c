//go:build ignore

/* TC on the uplink interfaces: count packets and bytes per remote IP, on
 * egress by destination (this covers every upstream proxy IP) and on
 * ingress by source. skb->len includes the Ethernet header; a GSO packet
 * counts once. Never changes a packet. */
#include "gw.h"

char __license[] SEC("license") = "Dual MIT/GPL";

SEC("tc")
int ph_up_egress(struct __sk_buff *skb)
{
	__u8 ip[16];

	if (ph_addr_of(skb, 0, ip))
		ph_count(ip, PH_DIR_OUT, skb->len);
	return TC_ACT_OK;
}

SEC("tc")
int ph_up_ingress(struct __sk_buff *skb)
{
	__u8 ip[16];

	if (ph_addr_of(skb, 1, ip))
		ph_count(ip, PH_DIR_IN, skb->len);
	return TC_ACT_OK;
}
