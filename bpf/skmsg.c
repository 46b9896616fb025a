//go:build ignore

/* sk_msg: data sent on one end of a redirected loopback connection goes
 * straight into the receive queue of the other end, skipping the loopback
 * TCP stack. When the peer is not in the SOCKHASH it takes the normal path. */
#include "ph.h"

char __license[] SEC("license") = "Dual MIT/GPL";

SEC("sk_msg")
int ph_sk_msg(struct sk_msg_md *msg)
{
	struct ph_tuple peer = {};

	if (msg->family == AF_INET) {
		ph_set_v4(peer.local_ip, msg->remote_ip4);
		ph_set_v4(peer.remote_ip, msg->local_ip4);
	} else {
		__u32 l[4], r[4];
		l[0] = msg->local_ip6[0];
		l[1] = msg->local_ip6[1];
		l[2] = msg->local_ip6[2];
		l[3] = msg->local_ip6[3];
		r[0] = msg->remote_ip6[0];
		r[1] = msg->remote_ip6[1];
		r[2] = msg->remote_ip6[2];
		r[3] = msg->remote_ip6[3];
		ph_set_v6(peer.local_ip, r);
		ph_set_v6(peer.remote_ip, l);
	}
	peer.local_port = bpf_ntohl(msg->remote_port);
	peer.remote_port = msg->local_port;
	bpf_msg_redirect_hash(msg, &ph_sockhash, &peer, BPF_F_INGRESS);
	return SK_PASS;
}
