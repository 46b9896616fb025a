/* Shared maps and helpers of proxy-hopper's transparent data plane.
 * Every program object includes this header; the Go loader creates the
 * maps once and hands them to each object (MapReplacements). */
#pragma once

#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6

/* cfg.flags */
#define PH_F_ENABLED (1 << 0)
#define PH_F_ALL_PORTS (1 << 1)
#define PH_F_HAS_INCLUDE (1 << 2)
#define PH_F_SOCKMAP (1 << 3)

struct ph_config {
	__u32 flags;
	__u32 listen_port; /* host order */
	__u32 mark;        /* sockets with this SO_MARK are never redirected */
	__u32 queue_limit; /* bytes; 0: PH_QUEUE_LIMIT */
	__u32 counter_id;  /* the recv counter that counts (0: none: no redirect) */
	__u32 _pad;
};

/* What the sk_msg fast path may leave unread at the agent's end of one
 * connection (ph_queued). */
#define PH_QUEUE_LIMIT (4u << 20)

/* An IPv4 address is stored as ::ffff:a.b.c.d, so one key type serves both
 * families. Ports are host order. */
struct ph_addr {
	__u8 ip[16];
	__u32 port;
};

struct ph_tuple {
	__u8 local_ip[16];
	__u8 remote_ip[16];
	__u32 local_port;
	__u32 remote_port;
};

struct ph_lpm_key {
	__u32 prefixlen;
	__u8 ip[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ph_config);
} ph_config SEC(".maps");

/* Destination ports to redirect (host order); unused with PH_F_ALL_PORTS. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} ph_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ph_lpm_key);
	__type(value, __u8);
} ph_include SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ph_lpm_key);
	__type(value, __u8);
} ph_exclude SEC(".maps");

/* connect4/6 → sockops: original destination by socket cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct ph_addr);
} ph_orig_cookie SEC(".maps");

/* sockops → agent: original destination by the client's local address,
 * which is the accepted connection's remote address. The agent deletes the
 * entry when it reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ph_addr);
	__type(value, struct ph_addr);
} ph_orig_addr SEC(".maps");

/* The sk_msg fast path runs one way, client → agent: the client's end of
 * each redirected loopback connection sits here, with the sk_msg program
 * attached, and its data goes straight into the receive queue of the
 * agent's end (ph_agent_socks). Only the agent's ends receive redirected
 * data: the agent reads them with plain reads, while a client might read
 * with splice(2) or zero-copy receive, which see only the TCP receive queue
 * (redirected bytes would be lost to them). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct ph_tuple);
	__type(value, __u64);
} ph_sockhash SEC(".maps");

/* The agent's ends, by their own tuple: redirect targets only (no program
 * on this map, so the agent's own sends take plain TCP). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct ph_tuple);
	__type(value, __u64);
} ph_agent_socks SEC(".maps");

/* Per agent end, by its own tuple. The kernel sets no bound on what a
 * redirect queues at a receiver (it charges the socket's memory but never
 * makes the writer wait), so the sk_msg program counts what it redirected
 * (in) and the recv counter counts what the agent read from that queue
 * (out); past the queue limit the client's data takes TCP, whose flow
 * control holds the client back. It comes back to the redirect only once
 * the agent has read every byte the client gave TCP: the client's write_seq
 * equals the agent end's copied_seq (recorded after each read), so no
 * redirected byte can overtake one still in the TCP receive queue.
 * Sequence numbers, not counts, decide that: the kernel may send a client's
 * bytes over TCP without running the program (after a partial send it
 * reuses the last verdict). Made by sockops when the client's end is
 * established (so what the client sends before the agent's end has joined
 * is held to the same rule), removed when either end closes. No entry, no
 * redirect; an LRU map, since losing an entry only means TCP. */
struct ph_queue {
	__u64 in;
	__u64 out;
	__u32 copied_seq;
	__u32 tcp;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ph_tuple);
	__type(value, struct ph_queue);
} ph_queued SEC(".maps");

static __always_inline struct ph_config *ph_cfg(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&ph_config, &zero);
}

static __always_inline void ph_set_v4(__u8 *dst, __u32 ip4 /* network order */)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &ip4, 4);
}

static __always_inline void ph_set_v6(__u8 *dst, const __u32 *ip6)
{
	__u32 w[4];
	w[0] = ip6[0];
	w[1] = ip6[1];
	w[2] = ip6[2];
	w[3] = ip6[3];
	__builtin_memcpy(dst, w, 16);
}
