package bpf

// PinDir is where pinned mode keeps its state on bpffs: maps/<name> (the
// shared maps) and links/cgroup-<id>-<program> (the cgroup links).
const PinDir = "/sys/fs/bpf/proxy-hopper"
