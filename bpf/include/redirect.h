/* The redirect decision shared by connect4 and connect6. */
#pragma once

#include "ph.h"

static __always_inline int ph_is_loopback(const __u8 *ip)
{
	int mapped = 1, zero10 = 1;
#pragma unroll
	for (int i = 0; i < 10; i++)
		if (ip[i])
			zero10 = 0;
	mapped = zero10 && ip[10] == 0xff && ip[11] == 0xff;
	if (mapped)
		return ip[12] == 127;
	if (!zero10 || ip[10] || ip[11] || ip[12] || ip[13] || ip[14])
		return 0;
	return ip[15] == 1; /* ::1 */
}

/* ph_should_redirect reports whether a TCP connect to ip:port (host order)
 * by a socket with SO_MARK mark goes to the agent, and remembers the
 * original destination under the socket's cookie when it does. */
static __always_inline int ph_should_redirect(struct bpf_sock_addr *ctx, struct ph_config *cfg,
					      const __u8 *ip, __u16 port)
{
	struct bpf_sock *sk;
	struct ph_lpm_key lk = {};
	struct ph_addr orig = {};
	__u64 cookie;

	if (!(cfg->flags & PH_F_ENABLED) || !cfg->listen_port)
		return 0;
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 0;
	sk = ctx->sk;
	if (!sk)
		return 0;
	if (cfg->mark && sk->mark == cfg->mark)
		return 0;
	if (ph_is_loopback(ip))
		return 0;
	if (!(cfg->flags & PH_F_ALL_PORTS) && !bpf_map_lookup_elem(&ph_ports, &port))
		return 0;
	lk.prefixlen = 128;
	__builtin_memcpy(lk.ip, ip, 16);
	if (bpf_map_lookup_elem(&ph_exclude, &lk))
		return 0;
	if ((cfg->flags & PH_F_HAS_INCLUDE) && !bpf_map_lookup_elem(&ph_include, &lk))
		return 0;

	__builtin_memcpy(orig.ip, ip, 16);
	orig.port = port;
	cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&ph_orig_cookie, &cookie, &orig, BPF_ANY))
		return 0; /* without a record the agent could not serve it: leave it alone */
	return 1;
}
