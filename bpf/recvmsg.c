//go:build ignore

/* raw tracepoint sock_recv_length (every recvmsg that reaches a socket's
 * protocol, read(2) included; Linux 6.3 and later): for the agent's ends of
 * the fast path (ph_queued), counts what a read took from the redirect's
 * queue and records copied_seq, how far the agent has read the TCP stream,
 * so that the sk_msg program can bound the one and know when the other has
 * caught up. A raw tracepoint, not an fexit: this kernel kind has no BPF
 * trampolines and no kprobes. */
#include "ph.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* Set at load time; the counter counts only while ph_config names it, so
 * that two agents' counters (a pinned install upgraded with overlap) never
 * count a read twice. */
volatile const __u32 ph_counter_id = 0;

#define MSG_PEEK 2
#define MSG_ERRQUEUE 0x2000

/* The head of struct sock_common, read with one probe: addresses, hash,
 * ports and family sit at the same offsets since Linux 2.6. */
struct ph_skc_head {
	__u32 daddr;
	__u32 rcv_saddr;
	__u32 hash;
	__u16 dport; /* network order */
	__u16 num;   /* host order */
	__u16 family;
};

_Static_assert(__builtin_offsetof(struct sock_common, skc_dport) == 12 &&
		       __builtin_offsetof(struct sock_common, skc_num) == 14 &&
		       __builtin_offsetof(struct sock_common, skc_family) == 16,
	       "struct sock_common head moved");

SEC("raw_tracepoint/sock_recv_length")
int ph_recvmsg(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int ret = (int)ctx->args[1];
	int flags = (int)ctx->args[2];
	struct ph_tuple t = {};
	struct ph_skc_head h = {};
	struct ph_queue *q;
	__u16 protocol = 0;
	__u32 seq = 0;
	void *psock = 0;
	struct ph_config *cfg;

	if (ret <= 0 || (flags & (MSG_PEEK | MSG_ERRQUEUE)) || !sk)
		return 0;
	/* This runs for every read on the host: one load to leave at once
	 * unless the socket is in a sockmap (its psock is sk_user_data). */
	bpf_probe_read_kernel(&psock, sizeof(psock), &sk->sk_user_data);
	if (!psock)
		return 0;
	bpf_probe_read_kernel(&protocol, sizeof(protocol), &sk->sk_protocol);
	if (protocol != IPPROTO_TCP)
		return 0;
	cfg = ph_cfg();
	if (!cfg || cfg->counter_id != ph_counter_id)
		return 0;
	bpf_probe_read_kernel(&h, sizeof(h), &sk->__sk_common);
	if (h.family == AF_INET) {
		ph_set_v4(t.local_ip, h.rcv_saddr);
		ph_set_v4(t.remote_ip, h.daddr);
	} else if (h.family == AF_INET6) {
		__u32 l[4], r[4];
		bpf_probe_read_kernel(l, sizeof(l), &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(r, sizeof(r), &sk->__sk_common.skc_v6_daddr);
		ph_set_v6(t.local_ip, l);
		ph_set_v6(t.remote_ip, r);
	} else {
		return 0;
	}
	t.local_port = h.num;
	t.remote_port = bpf_ntohs(h.dport);
	q = bpf_map_lookup_elem(&ph_queued, &t);
	if (!q)
		return 0;
	/* One read takes from the redirect's queue or from TCP, never both
	 * (tcp_bpf_recvmsg); a TCP read moves copied_seq. */
	bpf_probe_read_kernel(&seq, sizeof(seq), &((struct tcp_sock *)sk)->copied_seq);
	if (seq == q->copied_seq)
		__sync_fetch_and_add(&q->out, ret);
	else
		q->copied_seq = seq;
	return 0;
}
