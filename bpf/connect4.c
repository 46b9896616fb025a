//go:build ignore

/* cgroup/connect4: send selected IPv4 TCP connects to the agent's
 * transparent listener on 127.0.0.1, remembering where they were going. */
#include "redirect.h"

char __license[] SEC("license") = "Dual MIT/GPL";

SEC("cgroup/connect4")
int ph_connect4(struct bpf_sock_addr *ctx)
{
	struct ph_config *cfg = ph_cfg();
	__u8 ip[16];
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	if (!cfg)
		return 1;
	ph_set_v4(ip, ctx->user_ip4);
	if (!ph_should_redirect(ctx, cfg, ip, port))
		return 1;
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons((__u16)cfg->listen_port);
	return 1;
}
