package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/proxy-hopper/proxy-hopper/bpf"
)

// runBPF is `proxy-hopper bpf status|detach`: what of the transparent data
// plane is attached or pinned on this host, and a way to remove it all.
func runBPF(args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 || (args[0] != "status" && args[0] != "detach") {
		fmt.Fprintln(stderr, "usage: proxy-hopper bpf status|detach")
		return &exitError{code: 2, err: errors.New("bpf: want status or detach")}
	}
	if args[0] == "detach" {
		n, err := bpf.DetachAll()
		fmt.Fprintf(stdout, "detached %d link(s)\n", n)
		return err
	}
	atts, pins, err := bpf.Status()
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
	return nil
}
