package bpf

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// CounterMaps are one gateway agent's counter maps, found on the host.
type CounterMaps struct {
	IPStats, ClientConns *ebpf.Map
	IPStatsID            ebpf.MapID
}

// Close releases the maps.
func (c CounterMaps) Close() error {
	return errors.Join(c.IPStats.Close(), c.ClientConns.Close())
}

// FindCounterMaps finds the counter maps of every loaded gateway program
// (ph_lan_ingress, ph_up_*), one set per agent; with pid > 0 only the maps
// that process holds.
func FindCounterMaps(pid int) ([]CounterMaps, error) {
	var held map[ebpf.MapID]bool
	if pid > 0 {
		var err error
		if held, err = mapsOf(pid); err != nil {
			return nil, err
		}
	}
	var out []CounterMaps
	seen := map[ebpf.MapID]bool{}
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list programs: %w", err)
		}
		id = next
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // gone meanwhile
		}
		info, err := prog.Info()
		prog.Close()
		if err != nil || !slices.Contains([]string{"ph_lan_ingress", "ph_up_egress", "ph_up_ingress"}, info.Name) {
			continue
		}
		ids, _ := info.MapIDs()
		var cm CounterMaps
		for _, mid := range ids {
			if held != nil && !held[mid] {
				continue
			}
			m, err := ebpf.NewMapFromID(mid)
			if err != nil {
				continue
			}
			mi, err := m.Info()
			switch {
			case err == nil && mi.Name == "ph_ip_stats" && cm.IPStats == nil:
				cm.IPStats, cm.IPStatsID = m, mid
			case err == nil && mi.Name == "ph_client_conns" && cm.ClientConns == nil:
				cm.ClientConns = m
			default:
				m.Close()
			}
		}
		if cm.IPStats == nil || cm.ClientConns == nil || seen[cm.IPStatsID] {
			if cm.IPStats != nil {
				cm.IPStats.Close()
			}
			if cm.ClientConns != nil {
				cm.ClientConns.Close()
			}
			continue
		}
		seen[cm.IPStatsID] = true
		out = append(out, cm)
	}
	return out, nil
}

// mapsOf lists the IDs of the BPF maps process pid holds.
func mapsOf(pid int) (map[ebpf.MapID]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read maps of process %d: %w", pid, err)
	}
	out := map[ebpf.MapID]bool{}
	for _, fd := range fds {
		b, err := os.ReadFile(dir + "/" + fd.Name())
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "map_id:"); ok {
				if id, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					out[ebpf.MapID(id)] = true
				}
			}
		}
	}
	return out, nil
}
