package main

import (
	"errors"
	"fmt"

	"github.com/proxy-hopper/proxy-hopper/bpf"
	"github.com/proxy-hopper/proxy-hopper/metrics"
)

func readCounterSets(pid int) ([]counterSet, error) {
	found, err := bpf.FindCounterMaps(pid)
	if err != nil {
		return nil, err
	}
	var out []counterSet
	var errs []error
	for _, cm := range found {
		ips, clients, err := bpf.ReadCounters(cm.IPStats, cm.ClientConns)
		cm.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s := counterSet{name: fmt.Sprintf("map ph_ip_stats id %d", cm.IPStatsID)}
		for _, r := range ips {
			s.ips = append(s.ips, metrics.IPCounter{IP: r.IP, Direction: r.Direction, Packets: r.Packets, Bytes: r.Bytes})
		}
		for _, r := range clients {
			s.clients = append(s.clients, metrics.ClientCounter{Client: r.Client, Connections: r.Connections})
		}
		out = append(out, s)
	}
	return out, errors.Join(errs...)
}
