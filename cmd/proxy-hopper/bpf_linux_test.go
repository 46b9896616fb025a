package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/proxy-hopper/proxy-hopper/bpf"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

func TestBPFUsage(t *testing.T) {
	for _, args := range [][]string{{"bpf"}, {"bpf", "attach"}, {"bpf", "status", "extra"}, {"bpf", "status", "--cgroup", "x"}, {"bpf", "detach", "--nope"}, {"bpf", "counters", "extra"}, {"bpf", "counters", "--pid", "x"}} {
		var out, errb bytes.Buffer
		err := run(context.Background(), args, &out, &errb)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(errb.String(), "usage: proxy-hopper bpf status") {
			t.Errorf("%v: %v, stderr %q; want exit 2 with usage", args, err, errb.String())
		}
	}
}

// `bpf status` lists a pinned install (links and pins); `bpf detach
// --cgroup` removes it, pins included, and leaves other cgroups alone.
func TestBPFStatusDetach(t *testing.T) {
	testenv.RequireRoot(t)
	if err := bpf.Probe(); err != nil {
		t.Fatal(err)
	}
	root, err := bpf.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	cg, err := os.MkdirTemp(root, "ph-test-cli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cg) })
	id, err := bpf.CgroupID(cg)
	if err != nil {
		t.Fatal(err)
	}
	dir := fmt.Sprintf("/sys/fs/bpf/ph-test-cli-%d", os.Getpid())
	t.Cleanup(func() {
		bpf.Detach(bpf.DetachOptions{PinDir: dir, Cgroups: []uint64{id}})
		os.RemoveAll(dir)
	})
	o, err := bpf.Load()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := o.InstallPinned(dir, []string{cg}, nil)
	o.Close() // the pins hold everything now
	if err != nil || !ch.Installed || ch.Attached != 3 {
		t.Fatalf("install = %+v, %v", ch, err)
	}

	cli := func(args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if err := run(context.Background(), args, &out, &errb); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, errb.String())
		}
		return out.String()
	}
	st := cli("bpf", "status", "--pin-dir", dir)
	for _, want := range []string{
		fmt.Sprintf("ph_connect4 on cgroup id %d (CGroupInet4Connect)\n", id),
		fmt.Sprintf("ph_connect6 on cgroup id %d (CGroupInet6Connect)\n", id),
		fmt.Sprintf("ph_sockops on cgroup id %d (CGroupSockOps)\n", id),
		fmt.Sprintf("pinned: %s/links/cgroup-%d-connect4\n", dir, id),
		"pinned: " + dir + "/maps/ph_config\n",
	} {
		if !strings.Contains(st, want) {
			t.Errorf("status misses %q:\n%s", want, st)
		}
	}
	if out := cli("bpf", "detach", "--pin-dir", dir, "--cgroup", cg); out != "detached 3 link(s)\n" {
		t.Errorf("detach said %q", out)
	}
	st = cli("bpf", "status", "--pin-dir", dir)
	if strings.Contains(st, fmt.Sprintf("cgroup id %d ", id)) || !strings.Contains(st, "pinned: none\n") {
		t.Errorf("status after detach:\n%s", st)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after detach: %v", dir, err)
	}
}

// `bpf counters` for a process without gateway maps says so and fails.
func TestBPFCountersNone(t *testing.T) {
	testenv.RequireRoot(t)
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"bpf", "counters", "--pid", fmt.Sprint(os.Getpid())}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "no gateway agent's counter maps found") {
		t.Errorf("bpf counters --pid self: %v (stdout %q)", err, out.String())
	}
}
