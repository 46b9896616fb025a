//go:build ignore

/* sockops: when a redirected client connection is established, file its
 * original destination under the client's {local ip, port} (the accepted
 * socket's remote address, which the agent knows) and, with the fast path
 * on, put the client's end into ph_sockhash and the agent's end into
 * ph_agent_socks, with the agent end's queue entry (ph_queued). */
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

static __always_inline void ph_swap(struct ph_tuple *p, const struct ph_tuple *t)
{
	__builtin_memcpy(p->local_ip, t->remote_ip, 16);
	__builtin_memcpy(p->remote_ip, t->local_ip, 16);
	p->local_port = t->remote_port;
	p->remote_port = t->local_port;
}

/* The client's end joins the fast path (ph_sockhash, where the sk_msg
 * program runs on its sends) once its agent's end has a fresh queue entry:
 * whatever the client sends before the agent's end has joined
 * ph_agent_socks then goes over TCP under the entry's rules. Both ends get a
 * callback when they close, to remove the entry. */
static __always_inline void ph_join_client(struct bpf_sock_ops *skops, struct ph_tuple *t)
{
	struct ph_tuple agent = {};
	struct ph_queue q = {};

	ph_swap(&agent, t);
	/* Where the agent's end will start reading the TCP stream: right after
	 * the client's SYN. */
	q.copied_seq = skops->snd_nxt;
	if (bpf_map_update_elem(&ph_queued, &agent, &q, BPF_ANY))
		return;
	if (bpf_sock_hash_update(skops, &ph_sockhash, t, BPF_NOEXIST)) {
		bpf_map_delete_elem(&ph_queued, &agent);
		return;
	}
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* The agent's end becomes a redirect target; its entry (made with the
 * client's end) keeps what it has counted. */
static __always_inline void ph_join_agent(struct bpf_sock_ops *skops, struct ph_tuple *t)
{
	if (!bpf_map_lookup_elem(&ph_queued, t))
		return;
	if (bpf_sock_hash_update(skops, &ph_agent_socks, t, BPF_NOEXIST))
		return;
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
			ph_join_client(skops, &t);
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
		ph_join_agent(skops, &t);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* The entry is the agent end's: removed when either end closes
		 * (a closed client sends no more). */
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
