package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"text/tabwriter"

	"github.com/proxy-hopper/proxy-hopper/agent"
	"github.com/proxy-hopper/proxy-hopper/metrics"
)

// runBPFCounters is `proxy-hopper bpf counters`: gateway mode's per-IP
// counters, read from the running agent's BPF maps, as a table.
func runBPFCounters(args []string, stdout, stderr io.Writer, usage func(error) error) error {
	fs := flag.NewFlagSet("bpf counters", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pid := fs.Int("pid", 0, "only the maps of this agent process (default: every gateway agent on the host)")
	cfgPath := fs.String("config", "", "the agent's config: label upstream IPs with their target, provider and region")
	if err := fs.Parse(args); err != nil {
		return usage(err)
	}
	if fs.NArg() > 0 {
		return usage(fmt.Errorf("bpf counters: unexpected argument %q", fs.Arg(0)))
	}
	var labels map[netip.Addr]metrics.UpstreamLabels
	if *cfgPath != "" {
		res, err := loadConfig(context.Background(), *cfgPath, nil)
		if err != nil {
			return err
		}
		labels = agent.UpstreamLabels(res)
	}
	sets, err := readCounterSets(*pid)
	if err != nil {
		return err
	}
	if len(sets) == 0 {
		return errors.New("bpf counters: no gateway agent's counter maps found (is gateway mode on?)")
	}
	for i, s := range sets {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "counters of %s\n", s.name)
		tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "IP\tDIRECTION\tPACKETS\tBYTES\tTARGET\tPROVIDER\tREGION")
		for _, r := range s.ips {
			var l metrics.UpstreamLabels
			if r.Direction != "client" {
				l = labels[r.IP]
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\n", r.IP, r.Direction, r.Packets, r.Bytes, dash(l.Target), dash(l.Provider), dash(l.Region))
		}
		tw.Flush()
		fmt.Fprintln(stdout)
		tw = tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "CLIENT\tCONNECTIONS")
		for _, r := range s.clients {
			fmt.Fprintf(tw, "%s\t%d\n", r.Client, r.Connections)
		}
		tw.Flush()
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

type counterSet struct {
	name    string
	ips     []metrics.IPCounter
	clients []metrics.ClientCounter
}
