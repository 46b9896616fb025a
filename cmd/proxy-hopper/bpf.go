package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/proxy-hopper/proxy-hopper/bpf"
	"github.com/proxy-hopper/proxy-hopper/intercept/gateway"
)

// runBPF is `proxy-hopper bpf status|detach`: what of the transparent data
// plane is attached or pinned on this host, and a way to remove it.
func runBPF(args []string, stdout, stderr io.Writer) error {
	usage := func(err error) error {
		fmt.Fprintln(stderr, "usage: proxy-hopper bpf status [--pin-dir DIR]")
		fmt.Fprintln(stderr, "       proxy-hopper bpf detach [--pin-dir DIR] [--cgroup PATH]...")
		fmt.Fprintln(stderr, "       proxy-hopper bpf counters [--pid PID] [--config FILE]")
		return &exitError{code: 2, err: err}
	}
	if len(args) > 0 && args[0] == "counters" {
		return runBPFCounters(args[1:], stdout, stderr, usage)
	}
	if len(args) == 0 || (args[0] != "status" && args[0] != "detach") {
		return usage(errors.New("bpf: want status, detach or counters"))
	}
	fs := flag.NewFlagSet("bpf "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	pinDir := fs.String("pin-dir", bpf.PinDir, "pinned state of transparent.local.pinned (transparent.local.pinDir)")
	var cgroups []uint64
	if args[0] == "detach" {
		fs.Func("cgroup", "only the links on this cgroup (repeatable; default: every proxy-hopper link)", func(v string) error {
			p, err := bpf.CgroupPath(v)
			if err != nil {
				return err
			}
			id, err := bpf.CgroupID(p)
			if err != nil {
				return err
			}
			cgroups = append(cgroups, id)
			return nil
		})
	}
	if err := fs.Parse(args[1:]); err != nil {
		return usage(err)
	}
	if fs.NArg() > 0 {
		return usage(fmt.Errorf("bpf %s: unexpected argument %q", args[0], fs.Arg(0)))
	}
	if args[0] == "detach" {
		n, err := bpf.Detach(bpf.DetachOptions{PinDir: *pinDir, Cgroups: cgroups})
		fmt.Fprintf(stdout, "detached %d link(s)\n", n)
		return err
	}
	atts, pins, err := bpf.StatusOf(*pinDir)
	if err != nil {
		return err
	}
	if len(atts) == 0 {
		fmt.Fprintln(stdout, "attached: none")
	}
	for _, a := range atts {
		fmt.Fprintln(stdout, "attached:", a)
	}
	if len(pins) == 0 {
		fmt.Fprintln(stdout, "pinned: none")
	}
	for _, p := range pins {
		fmt.Fprintln(stdout, "pinned:", p)
	}
	// Gateway mode's rule, route, filters and qdiscs, in this network
	// namespace: a running agent's, or a crashed one's leftovers.
	nl, err := gateway.Leftovers()
	if err != nil {
		return err
	}
	if len(nl) == 0 {
		fmt.Fprintln(stdout, "gateway netlink: none")
	}
	for _, l := range nl {
		fmt.Fprintln(stdout, "gateway netlink:", l)
	}
	return nil
}
