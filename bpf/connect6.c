//go:build ignore

/* cgroup/connect6: the same for IPv6 sockets. IPv4-mapped destinations
 * (dual-stack sockets) go to ::ffff:127.0.0.1, IPv6 ones to ::1; the agent
 * listens on both. */
#include "redirect.h"

char __license[] SEC("license") = "Dual MIT/GPL";

SEC("cgroup/connect6")
int ph_connect6(struct bpf_sock_addr *ctx)
{
	struct ph_config *cfg = ph_cfg();
	__u32 w[4];
	__u8 ip[16];
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	if (!cfg)
		return 1;
	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	ph_set_v6(ip, w);
	if (!ph_should_redirect(ctx, cfg, ip, port))
		return 1;
	if (w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff)) {
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons((__u16)cfg->listen_port);
	return 1;
}
