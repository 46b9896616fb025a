//go:build ignore

/* sk_msg, on the client's end of each redirected loopback connection: the
 * client's data goes straight into the receive queue of the agent's end,
 * skipping the loopback TCP stack, as long as the agent keeps up (see
 * ph_queued). Otherwise, or when the agent's end is not in ph_agent_socks,
 * it takes the normal TCP path. */
#include "ph.h"

char __license[] SEC("license") = "Dual MIT/GPL";

SEC("sk_msg")
int ph_sk_msg(struct sk_msg_md *msg)
{
	struct ph_config *cfg = ph_cfg();
	struct ph_tuple peer = {};
	struct ph_queue *q;
	struct bpf_sock *sk;
	struct tcp_sock *tp;
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
	sk = msg->sk;
	tp = sk ? bpf_skc_to_tcp_sock(sk) : 0;
	/* TCP, for good or for now: with no recv counter running (the queue
	 * could not be bounded); after the client's shutdown(SHUT_WR) (TCP
	 * refuses the write, a redirect would not); for a socket with
	 * SO_ZEROCOPY (only TCP sends its completions). */
	if (!cfg || !cfg->counter_id || !tp ||
	    (sk->state != BPF_TCP_ESTABLISHED && sk->state != BPF_TCP_CLOSE_WAIT) ||
	    (tp->inet_conn.icsk_inet.sk.__sk_common.skc_flags & (1UL << SOCK_ZEROCOPY))) {
		q->tcp = 1;
		return SK_PASS;
	}
	if (q->tcp) {
		/* Back to the redirect only once the agent has read every byte
		 * this client gave TCP. */
		if (tp->write_seq != q->copied_seq)
			return SK_PASS;
		q->tcp = 0;
	}
	if (cfg->queue_limit)
		limit = cfg->queue_limit;
	queued = (__s64)(q->in - q->out);
	if (queued < 0)
		queued = 0;
	if ((__u64)queued + size > limit) {
		q->tcp = 1;
		return SK_PASS;
	}
	if (bpf_msg_redirect_hash(msg, &ph_agent_socks, &peer, BPF_F_INGRESS) != SK_PASS) {
		q->tcp = 1; /* the agent's end is not (or no longer) there: TCP */
		return SK_PASS;
	}
	/* The bytes reach the queue after this program returns: the agent
	 * cannot count them out before they are counted in. */
	__sync_fetch_and_add(&q->in, size);
	return SK_PASS;
}
