// Package bpf is proxy-hopper's transparent data plane: cgroup connect4/6
// programs that steer selected connects to the agent, a sockops program that
// records each connection's original destination, and an sk_msg fast path
// between the two loopback ends. The generated bpf2go names stay inside
// this package; callers use Load and the attach functions.
package bpf

//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem connect4 connect4 connect4.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem connect6 connect6 connect6.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem sockops sockops sockops.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem skmsg skmsg skmsg.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem recvmsg recvmsg recvmsg.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem tclan tclan tc_lan.c -- -I./include
//go:generate go tool bpf2go -cc ${BPF_CLANG} -cflags ${BPF_CFLAGS} -target bpfel -go-package bpf -output-stem tcuplink tcuplink tc_uplink.c -- -I./include
