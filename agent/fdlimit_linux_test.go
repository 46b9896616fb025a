package agent

import (
	"log/slog"
	"syscall"
	"testing"

	"github.com/proxy-hopper/proxy-hopper/config"
)

// TestRaiseFDLimit: a soft fd limit under the hard one is raised to it.
func TestRaiseFDLimit(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < 2048 {
		t.Skipf("hard fd limit %d too low to lower the soft one", lim.Max)
	}
	low := lim
	low.Cur = lim.Max - 1
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) })
	got, err := raiseFDLimit()
	if err != nil {
		t.Fatal(err)
	}
	var now syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now)
	if got != lim.Max || now.Cur != lim.Max {
		t.Errorf("raiseFDLimit() = %d, soft limit now %d; want both %d", got, now.Cur, lim.Max)
	}
}

func TestConnectionLimit(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name    string
		max     int
		reserve int
		nofile  uint64
		want    int
	}{
		{"from the fd limit", 0, 256, 20000, (20000 - 256) / 2},
		{"configured wins", 500, 256, 20000, 500},
		{"small fd limit", 0, 256, 280, minAutoConnections},
		{"unknown fd limit", 0, 256, 0, 0},
		{"no reserve", 0, 0, 1024, 512},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := config.ServerConfig{MaxConnections: tc.max, FdReserve: tc.reserve}
			if got := connectionLimit(s, tc.nofile, log); got != tc.want {
				t.Errorf("connectionLimit = %d, want %d", got, tc.want)
			}
		})
	}
}
