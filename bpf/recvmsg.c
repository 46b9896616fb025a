//go:build ignore

/* raw tracepoint sock_recv_length (every recvmsg that reaches a socket's
 * protocol, read(2) included): counts the bytes a socket of the fast path
 * reads, so that the sk_msg program can bound what it leaves queued there
 * (ph_queued). A raw tracepoint, not an fexit: this kernel kind has no BPF
 * trampolines and no kprobes. */
#include "ph.h"

char __license[] SEC("license") = "Dual MIT/GPL";

#define MSG_PEEK 2

static __always_inline __u32 ph_rd32(const void *p)
{
	__u32 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), p);
	return v;
}

SEC("raw_tracepoint/sock_recv_length")
int ph_recvmsg(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int ret = (int)ctx->args[1];
	int flags = (int)ctx->args[2];
	struct ph_tuple t = {};
	struct ph_queue *q;
	__u16 family = 0, protocol = 0, num = 0, dport = 0;

	void *psock = 0;

	if (ret <= 0 || (flags & MSG_PEEK) || !sk)
		return 0;
	/* This runs for every read on the host: one load to leave at once
	 * unless the socket is in a sockmap (its psock is sk_user_data). */
	bpf_probe_read_kernel(&psock, sizeof(psock), &sk->sk_user_data);
	if (!psock)
		return 0;
	bpf_probe_read_kernel(&protocol, sizeof(protocol), &sk->sk_protocol);
	if (protocol != IPPROTO_TCP)
		return 0;
	bpf_probe_read_kernel(&family, sizeof(family), &sk->__sk_common.skc_family);
	if (family == AF_INET) {
		ph_set_v4(t.local_ip, ph_rd32(&sk->__sk_common.skc_rcv_saddr));
		ph_set_v4(t.remote_ip, ph_rd32(&sk->__sk_common.skc_daddr));
	} else if (family == AF_INET6) {
		__u32 l[4], r[4];
		bpf_probe_read_kernel(l, sizeof(l), &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(r, sizeof(r), &sk->__sk_common.skc_v6_daddr);
		ph_set_v6(t.local_ip, l);
		ph_set_v6(t.remote_ip, r);
	} else {
		return 0;
	}
	bpf_probe_read_kernel(&num, sizeof(num), &sk->__sk_common.skc_num);
	bpf_probe_read_kernel(&dport, sizeof(dport), &sk->__sk_common.skc_dport);
	t.local_port = num;
	t.remote_port = bpf_ntohs(dport);
	q = bpf_map_lookup_elem(&ph_queued, &t);
	if (q)
		__sync_fetch_and_add(&q->out, ret);
	return 0;
}
