//go:build ignore

/* sockops: when a redirected client connection is established, file its
 * original destination under the client's {local ip, port} (the accepted
 * socket's remote address, which the agent knows) and, with the fast path
 * on, put both ends into the SOCKHASH that the sk_msg program uses. */
#include "ph.h"

char __license[] SEC("license") = "Dual MIT/GPL";

static __always_inline void ph_tuple_of(struct bpf_sock_ops *skops, struct ph_tuple *t)
{
	if (skops->family == AF_INET) {
		ph_set_v4(t->local_ip, skops->local_ip4);
		ph_set_v4(t->remote_ip, skops->remote_ip4);
	} else {
		__u32 l[4], r[4];
		l[0] = skops->local_ip6[0];
		l[1] = skops->local_ip6[1];
		l[2] = skops->local_ip6[2];
		l[3] = skops->local_ip6[3];
		r[0] = skops->remote_ip6[0];
		r[1] = skops->remote_ip6[1];
		r[2] = skops->remote_ip6[2];
		r[3] = skops->remote_ip6[3];
		ph_set_v6(t->local_ip, l);
		ph_set_v6(t->remote_ip, r);
	}
	t->local_port = skops->local_port;
	t->remote_port = bpf_ntohl(skops->remote_port);
}

#define PH_EEXIST 17

/* ph_entry makes t's queue entry unless it exists already. */
static __always_inline int ph_entry(struct ph_tuple *t)
{
	struct ph_queue q = {};
	long err = bpf_map_update_elem(&ph_queued, t, &q, BPF_NOEXIST);

	return err == 0 || err == -PH_EEXIST ? 0 : -1;
}

static __always_inline void ph_swap(struct ph_tuple *p, const struct ph_tuple *t)
{
	__builtin_memcpy(p->local_ip, t->remote_ip, 16);
	__builtin_memcpy(p->remote_ip, t->local_ip, 16);
	p->local_port = t->remote_port;
	p->remote_port = t->local_port;
}

/* ph_join puts a socket on the fast path: its queue entry first (none, no
 * redirect to it), then the SOCKHASH, and a callback when it closes, to
 * remove the entries. The client's side, which is established first, also
 * makes the entry of the agent's side: what the client sends before the
 * agent's side has joined then goes over TCP *counted*, and the redirect to
 * the agent's side starts only once the agent has read those bytes. */
static __always_inline void ph_join(struct bpf_sock_ops *skops, struct ph_tuple *t, int client)
{
	struct ph_tuple peer = {};

	if (ph_entry(t))
		return;
	if (client) {
		ph_swap(&peer, t);
		if (ph_entry(&peer)) {
			bpf_map_delete_elem(&ph_queued, t);
			return;
		}
	}
	if (bpf_sock_hash_update(skops, &ph_sockhash, t, BPF_NOEXIST)) {
		bpf_map_delete_elem(&ph_queued, t);
		if (client)
			bpf_map_delete_elem(&ph_queued, &peer);
		return;
	}
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

SEC("sockops")
int ph_sockops(struct bpf_sock_ops *skops)
{
	struct ph_config *cfg = ph_cfg();
	struct ph_tuple t = {};
	struct ph_addr key = {};
	struct ph_addr *orig;
	__u64 cookie;

	if (!cfg)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		cookie = bpf_get_socket_cookie(skops);
		orig = bpf_map_lookup_elem(&ph_orig_cookie, &cookie);
		if (!orig)
			return 1;
		ph_tuple_of(skops, &t);
		__builtin_memcpy(key.ip, t.local_ip, 16);
		key.port = t.local_port;
		bpf_map_update_elem(&ph_orig_addr, &key, orig, BPF_ANY);
		bpf_map_delete_elem(&ph_orig_cookie, &cookie);
		if (cfg->flags & PH_F_SOCKMAP)
			ph_join(skops, &t, 1);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (!(cfg->flags & PH_F_SOCKMAP) || skops->local_port != cfg->listen_port)
			return 1;
		ph_tuple_of(skops, &t);
		/* Only the agent's side of a connection that connect4/6 redirected. */
		__builtin_memcpy(key.ip, t.remote_ip, 16);
		key.port = t.remote_port;
		if (!bpf_map_lookup_elem(&ph_orig_addr, &key))
			return 1;
		ph_join(skops, &t, 0);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* A closed socket sends no more: the entry of its peer, which
		 * only its sends use, goes too (the agent's side may never have
		 * joined, when sockops does not run for the agent's cgroup). */
		if (skops->args[1] == BPF_TCP_CLOSE) {
			struct ph_tuple p = {};

			ph_tuple_of(skops, &t);
			bpf_map_delete_elem(&ph_queued, &t);
			ph_swap(&p, &t);
			bpf_map_delete_elem(&ph_queued, &p);
		}
		break;
	}
	return 1;
}
