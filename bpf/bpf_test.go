//go:build linux

package bpf

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

func loadForTest(t *testing.T) *Objects {
	t.Helper()
	testenv.RequireRoot(t)
	if err := Probe(); err != nil {
		t.Fatal(err)
	}
	o, err := Load()
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// childCgroup makes a fresh cgroup2 child for the test and removes it after.
func childCgroup(t *testing.T) string {
	t.Helper()
	root, err := Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(root, "ph-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(dir) })
	return dir
}

func TestLoadConfigureAttach(t *testing.T) {
	o := loadForTest(t)
	cfg := Config{
		ListenPort: 15001, Mark: 0x5048, Ports: []uint16{80, 443},
		Include: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")},
		Exclude: []netip.Prefix{netip.MustParsePrefix("198.18.0.12/32"), netip.MustParsePrefix("2001:db8::/32")},
	}
	if err := o.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	for m, want := range map[*ebpf.Map]int{o.PhPorts: 2, o.PhInclude: 1, o.PhExclude: 2} {
		if n, err := MapEntries(m); err != nil || n != want {
			t.Fatalf("entries = %d, %v; want %d", n, err, want)
		}
	}
	cfg.Ports = []uint16{8080}
	cfg.Exclude = cfg.Exclude[1:]
	if err := o.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	if n, _ := MapEntries(o.PhPorts); n != 1 {
		t.Fatalf("ports after reconfigure = %d, want 1", n)
	}
	var one uint8
	if err := o.PhPorts.Lookup(uint16(8080), &one); err != nil || one != 1 {
		t.Fatalf("port 8080 after reconfigure: %v", err)
	}
	if n, _ := MapEntries(o.PhExclude); n != 1 {
		t.Fatalf("exclude cidrs after reconfigure = %d, want 1", n)
	}
	k := lpm(netip.MustParsePrefix("2001:db8::/32"))
	if err := o.PhExclude.Lookup(&k, &one); err != nil {
		t.Fatalf("exclude 2001:db8::/32 after reconfigure: %v", err)
	}

	cg := childCgroup(t)
	links, err := o.AttachCgroup(cg)
	if err != nil {
		t.Fatal(err)
	}
	if got := attached(t, cg, ebpf.AttachCGroupInet4Connect); got != 1 {
		t.Fatalf("connect4 programs on %s = %d, want 1", cg, got)
	}
	for i := len(links) - 1; i >= 0; i-- {
		if err := links[i].Close(); err != nil {
			t.Fatal(err)
		}
	}
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupSockOps} {
		if got := attached(t, cg, at); got != 0 {
			t.Fatalf("%v programs left on %s: %d", at, cg, got)
		}
	}
	sk, err := o.AttachSkMsg()
	if err != nil {
		t.Fatal(err)
	}
	if err := sk.Close(); err != nil {
		t.Fatal(err)
	}
}

func attached(t *testing.T, cg string, at ebpf.AttachType) int {
	t.Helper()
	f, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	qr, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
	if err != nil {
		t.Fatal(err)
	}
	return len(qr.Programs)
}

func TestCgroupPath(t *testing.T) {
	root, err := Cgroup2Root()
	if err != nil {
		t.Skip(err)
	}
	for in, want := range map[string]string{
		"ph/clients":             filepath.Join(root, "ph/clients"),
		"/ph/clients":            filepath.Join(root, "ph/clients"),
		root + "/system.slice/x": root + "/system.slice/x",
	} {
		got, err := CgroupPath(in)
		if err != nil || got != want {
			t.Errorf("CgroupPath(%q) = %q, %v; want %q", in, got, err, want)
		}
		if !strings.HasPrefix(got, root) {
			t.Errorf("%q escapes %q", got, root)
		}
	}
}

// A detach (as `proxy-hopper bpf detach` does) removes links that another
// holder still has open: the fail-safe for a hung agent.
func TestStatusAndDetach(t *testing.T) {
	o := loadForTest(t)
	cg := childCgroup(t)
	links, err := o.AttachCgroup(cg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, l := range links {
			l.Close()
		}
	})
	var st syscall.Stat_t
	if err := syscall.Stat(cg, &st); err != nil {
		t.Fatal(err)
	}
	ours := func(a Attachment) bool { return a.CgroupID == st.Ino }
	atts, _, err := Status()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range atts {
		if ours(a) {
			names = append(names, a.Program)
		}
	}
	slices.Sort(names)
	if want := []string{"ph_connect4", "ph_connect6", "ph_sockops"}; !slices.Equal(names, want) {
		t.Fatalf("status on our cgroup: %v, want %v (all: %v)", names, want, atts)
	}
	n, err := DetachMatching(ours)
	if err != nil || n != 3 {
		t.Fatalf("detach = %d, %v; want 3", n, err)
	}
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupSockOps} {
		if got := attached(t, cg, at); got != 0 {
			t.Fatalf("%v still attached after detach: %d", at, got)
		}
	}
}

// TestSharedMapsFromObjects: the shared maps are named by the generated
// connect4 struct alone; every map any redirect object declares is among
// them (Load hands each object exactly these), connect4 declares them all,
// and a loaded Objects has each one open (Close and the pins go through
// the same list).
func TestSharedMapsFromObjects(t *testing.T) {
	names := mapNames()
	if len(names) == 0 {
		t.Fatal("no shared maps derived from the generated objects")
	}
	c4, err := loadConnect4()
	if err != nil {
		t.Fatal(err)
	}
	if len(c4.Maps) != len(names) {
		t.Errorf("connect4 declares %d maps, shared list has %d: %v", len(c4.Maps), len(names), names)
	}
	for name, load := range map[string]func() (*ebpf.CollectionSpec, error){
		"connect4": loadConnect4, "connect6": loadConnect6, "sockops": loadSockops, "skmsg": loadSkmsg, "recvmsg": loadRecvmsg,
	} {
		spec, err := load()
		if err != nil {
			t.Fatal(err)
		}
		for m := range spec.Maps {
			if strings.HasPrefix(m, ".") {
				continue // a global variable's section (.rodata): per object
			}
			if !slices.Contains(names, m) {
				t.Errorf("%s declares map %s, not among the shared maps %v", name, m, names)
			}
		}
	}
	o := loadForTest(t)
	for _, nm := range o.maps() {
		if *nm.m == nil {
			t.Errorf("shared map %s not loaded", nm.name)
			continue
		}
		info, err := (*nm.m).Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Name != nm.name {
			t.Errorf("field for %s holds map %s", nm.name, info.Name)
		}
	}
}
