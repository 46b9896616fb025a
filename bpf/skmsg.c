//go:build ignore

/* sk_msg: data sent on one end of a redirected loopback connection goes
 * straight into the receive queue of the other end, skipping the loopback
 * TCP stack. When the peer is not in the SOCKHASH it takes the normal path,
 * and so does what is sent to a peer that would be left more than the
 * queue limit unread (the kernel sets no bound of its own): TCP's flow
 * control then holds the sender back, until the peer has read every byte
 * and the redirect can resume without overtaking any. */
#include "ph.h"

char __license[] SEC("license") = "Dual MIT/GPL";

SEC("sk_msg")
int ph_sk_msg(struct sk_msg_md *msg)
{
	struct ph_config *cfg = ph_cfg();
	struct ph_tuple peer = {};
	struct ph_queue *q;
	__s64 queued;
	__u64 limit = PH_QUEUE_LIMIT;
	__u64 size = msg->size; /* read once: the verifier rejects a ctx pointer kept across branches */

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
	q = bpf_map_lookup_elem(&ph_queued, &peer);
	if (!q)
		return SK_PASS;
	if (cfg && cfg->queue_limit)
		limit = cfg->queue_limit;
	queued = (__s64)(q->in - q->out);
	if (queued < 0)
		queued = 0;
	if (q->tcp) {
		/* Back to the redirect only once the reader has taken every byte
		 * sent so far, by either path: nothing left in its TCP receive
		 * queue for redirected bytes to overtake. */
		if (queued > 0) {
			__sync_fetch_and_add(&q->in, size);
			return SK_PASS;
		}
		q->tcp = 0;
	}
	if ((__u64)queued + size > limit) {
		q->tcp = 1;
		__sync_fetch_and_add(&q->in, size);
		return SK_PASS;
	}
	/* The bytes reach the queue after this program returns: the reader
	 * cannot count them out before they are counted in. */
	if (bpf_msg_redirect_hash(msg, &ph_sockhash, &peer, BPF_F_INGRESS) != SK_PASS)
		q->tcp = 1; /* the peer left the SOCKHASH: TCP it is */
	__sync_fetch_and_add(&q->in, size);
	return SK_PASS;
}
