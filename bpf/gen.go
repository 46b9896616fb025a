// Package bpf is proxy-hopper's transparent data plane: the C programs,
// their generated bpf2go bindings and the loaders built on them.
//
// Local transparent mode (intercept/local): cgroup connect4/6 programs that
// steer selected connects to the agent, a sockops program that records each
// connection's original destination, and an sk_msg fast path (with a
// recvmsg counter bounding its queues) between the two loopback ends.
//
// Gateway mode (intercept/gateway): a TC program on the LAN interfaces
// that assigns selected forwarded flows to the agent's IP_TRANSPARENT
// listener (tc_lan.c), and TC programs on the uplinks that count traffic
// per IP (tc_uplink.c). The policy routing and clsact qdiscs those need are
// netlink, not BPF: they live in intercept/gateway.
//
// The generated names stay inside this package; callers use Load,
// LoadPinned, LoadGateway and the attach functions.
package bpf

//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem connect4 connect4 connect4.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem connect6 connect6 connect6.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem sockops sockops sockops.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem skmsg skmsg skmsg.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem recvmsg recvmsg recvmsg.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem tclan tclan tc_lan.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem tcuplink tcuplink tc_uplink.c -- -I./include
