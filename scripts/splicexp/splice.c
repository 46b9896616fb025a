//go:build ignore

/* Experiment only (scripts/splicexp): an in-kernel splice of a relay's two
 * sockets, to measure what it would save against the user-space relay.
 * Keys are loopback ports in host order (every socket is on 127.0.0.1). */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* {local port, remote port} of a socket: unique on 127.0.0.1. */
struct xp_key {
	__u32 local;
	__u32 remote;
};

/* Client sockets and the relay's accepted sockets, by their own ports. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4096);
	__type(key, struct xp_key);
	__type(value, __u64);
} local SEC(".maps");

/* The relay's upstream sockets, by the port of the client they serve. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} up SEC(".maps");

/* Relay's upstream-side port → the client socket's key. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct xp_key);
} up2cli SEC(".maps");

SEC("sk_msg")
int xp_sk_msg(struct sk_msg_md *msg)
{
	__u32 self = msg->local_port;
	struct xp_key peer = { .local = bpf_ntohl(msg->remote_port), .remote = msg->local_port };

	/* Spliced: client data goes straight out of the upstream socket. */
	if (bpf_msg_redirect_hash(msg, &up, &self, 0) == SK_PASS)
		return SK_PASS;
	bpf_msg_redirect_hash(msg, &local, &peer, BPF_F_INGRESS);
	return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int xp_sk_skb(struct __sk_buff *skb)
{
	__u32 port = skb->local_port;
	struct xp_key *cli = bpf_map_lookup_elem(&up2cli, &port);

	if (!cli)
		return SK_PASS;
	return bpf_sk_redirect_hash(skb, &local, cli, BPF_F_INGRESS);
}
