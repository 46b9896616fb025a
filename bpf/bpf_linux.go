package bpf

import (
	"bufio"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
)

// Sentinels.
var (
	// ErrNotLoaded is returned by methods of a closed or unloaded Objects.
	ErrNotLoaded = errors.New("bpf objects not loaded")
	// ErrNoOrigin means no original destination is recorded for a client.
	ErrNoOrigin = errors.New("no original destination recorded")
	// ErrNoCgroup2 means no cgroup2 hierarchy is mounted.
	ErrNoCgroup2 = errors.New("no cgroup2 hierarchy mounted")
)

// Config is what the programs read from the ph_config, ph_ports,
// ph_include and ph_exclude maps.
type Config struct {
	ListenPort uint16         // the agent's transparent listener (127.0.0.1 and ::1)
	Mark       uint32         // sockets with this SO_MARK are never redirected
	Ports      []uint16       // destination ports to redirect; empty means all
	Include    []netip.Prefix // when not empty, only these destinations
	Exclude    []netip.Prefix // never these (wins over Include)
	Sockmap    bool           // the sk_msg fast path between loopback ends
	// QueueLimit is what the fast path may leave unread at the agent's end
	// of a connection; past it the client's data takes TCP until the agent
	// has read every byte (bytes; 0: 4 MiB).
	QueueLimit uint32
}

const (
	flagEnabled    = 1 << 0
	flagAllPorts   = 1 << 1
	flagHasInclude = 1 << 2
	flagSockmap    = 1 << 3
)

// Objects are the loaded programs and their shared maps.
type Objects struct {
	Connect4, Connect6, SockOps, SkMsg *ebpf.Program
	// RecvMsg counts what the fast path's sockets read (raw tracepoint
	// sock_recv_length); nil, like SkMsg, when the kernel cannot load it
	// (fastErr). It counts only while ph_config names counterID.
	RecvMsg   *ebpf.Program
	fastErr   error
	counterID uint32
	counting  bool // the counter is attached: Configure names it

	// The maps every program shares (ph_config, ph_ports…), as bpf2go
	// generates them from connect4.c, which declares them all.
	sharedMaps

	pinnedFrom string // the pinned state the maps came from (LoadPinned)
}

// sharedMaps are the maps the redirect's programs share: the generated
// struct, so that a map added to the C programs needs no list here.
type sharedMaps = connect4Maps

type addrKey = connect4PhAddr
type lpmKey = connect4PhLpmKey
type configValue = connect4PhConfig

// Probe checks every kernel feature the data plane needs and names the
// first one missing.
func Probe() error {
	return firstMissing([]featureCheck{
		{"program type cgroup_sock_addr", func() error { return features.HaveProgramType(ebpf.CGroupSockAddr) }},
		{"program type sock_ops", func() error { return features.HaveProgramType(ebpf.SockOps) }},
		{"program type sk_msg", func() error { return features.HaveProgramType(ebpf.SkMsg) }},
		{"map type lru_hash", func() error { return features.HaveMapType(ebpf.LRUHash) }},
		{"map type lpm_trie", func() error { return features.HaveMapType(ebpf.LPMTrie) }},
		{"map type sockhash", func() error { return features.HaveMapType(ebpf.SockHash) }},
		{"helper bpf_get_socket_cookie in cgroup_sock_addr", func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetSocketCookie)
		}},
		{"helper bpf_get_socket_cookie in sock_ops", func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnGetSocketCookie)
		}},
		{"helper bpf_sock_hash_update in sock_ops", func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnSockHashUpdate)
		}},
		{"helper bpf_msg_redirect_hash in sk_msg", func() error {
			return features.HaveProgramHelper(ebpf.SkMsg, asm.FnMsgRedirectHash)
		}},
	})
}

// featureCheck is one kernel feature a mode needs, and how to probe it.
type featureCheck struct {
	name string
	fn   func() error
}

// firstMissing runs checks in order and names the first feature missing.
func firstMissing(checks []featureCheck) error {
	for _, c := range checks {
		if err := c.fn(); err != nil {
			return fmt.Errorf("kernel feature %s: %w", c.name, err)
		}
	}
	return nil
}

// Load creates the shared maps once and loads every program against them.
// A verifier rejection comes back as a wrapped *ebpf.VerifierError.
func Load() (*Objects, error) { return load(nil) }

// namedMap is one shared map: its name in the objects (and under
// PinDir/maps) and the Objects field holding it.
type namedMap struct {
	name string
	m    **ebpf.Map
}

// maps lists the shared maps in the generated struct's order.
func (o *Objects) maps() []namedMap { return generatedMaps(&o.sharedMaps) }

// generatedMaps lists the maps of a generated bpf2go Maps struct (a pointer to
// one), in its field order, named by its `ebpf:"…"` tags.
func generatedMaps(generated any) []namedMap {
	v := reflect.ValueOf(generated).Elem()
	out := make([]namedMap, 0, v.NumField())
	for i := range v.NumField() {
		out = append(out, namedMap{name: v.Type().Field(i).Tag.Get("ebpf"), m: v.Field(i).Addr().Interface().(**ebpf.Map)})
	}
	return out
}

// mapNames are the shared maps' names.
func mapNames() []string {
	var out []string
	for _, nm := range (&Objects{}).maps() {
		out = append(out, nm.name)
	}
	return out
}

// load loads the programs against existing maps (by name; taken over by
// the Objects, also on error) and creates the ones missing.
func load(existing map[string]*ebpf.Map) (_ *Objects, err error) {
	spec, err := loadConnect4()
	if err != nil {
		return nil, fmt.Errorf("load connect4 spec: %w", err)
	}
	o := &Objects{counterID: newCounterID()}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	maps := o.maps()
	repl := make(map[string]*ebpf.Map, len(maps))
	for _, nm := range maps {
		if m, ok := existing[nm.name]; ok {
			*nm.m = m
			repl[nm.name] = m
			delete(existing, nm.name)
		}
	}
	for _, m := range existing {
		m.Close() // not one of ours
	}
	for _, nm := range maps {
		if repl[nm.name] != nil {
			continue
		}
		ms, ok := spec.Maps[nm.name]
		if !ok {
			return nil, fmt.Errorf("create map %s: not in the connect4 object", nm.name)
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			return nil, fmt.Errorf("create map %s: %w", nm.name, err)
		}
		*nm.m = m
		repl[nm.name] = m
	}
	progs := []struct {
		name string
		load func() (*ebpf.CollectionSpec, error)
		dst  **ebpf.Program
	}{
		{"ph_connect4", loadConnect4, &o.Connect4},
		{"ph_connect6", loadConnect6, &o.Connect6},
		{"ph_sockops", loadSockops, &o.SockOps},
		{"ph_sk_msg", loadSkmsg, &o.SkMsg},
		{"ph_recvmsg", loadRecvmsg, &o.RecvMsg},
	}
	for _, p := range progs {
		spec, err := p.load()
		if err != nil {
			return nil, fmt.Errorf("load %s spec: %w", p.name, err)
		}
		// Each object declares every shared map; hand it the ones made above.
		r := map[string]*ebpf.Map{}
		for name := range spec.Maps {
			if m, ok := repl[name]; ok {
				r[name] = m
			}
		}
		if v := spec.Variables["ph_counter_id"]; p.name == "ph_recvmsg" && v != nil {
			if err := v.Set(o.counterID); err != nil {
				return nil, fmt.Errorf("load %s: %w", p.name, err)
			}
		}
		if *p.dst, err = newProgram(spec, p.name, r); err != nil {
			if p.name == "ph_sk_msg" || p.name == "ph_recvmsg" {
				// Only the fast path needs them; the redirect works without.
				o.fastErr, err = errors.Join(o.fastErr, err), nil
				continue
			}
			return nil, err
		}
	}
	return o, nil
}

// newProgram loads program name of spec, with the maps in repl (by name)
// in place of the object's own.
func newProgram(spec *ebpf.CollectionSpec, name string, repl map[string]*ebpf.Map) (*ebpf.Program, error) {
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return nil, fmt.Errorf("load program %s: %w", name, err)
	}
	defer coll.Close()
	prog := coll.DetachProgram(name)
	if prog == nil {
		return nil, fmt.Errorf("load program %s: not in its object", name)
	}
	return prog, nil
}

// Close releases every program and map (attachments made through links
// are released by closing the links).
func (o *Objects) Close() error {
	if o == nil {
		return nil
	}
	var errs []error
	for _, p := range []*ebpf.Program{o.Connect4, o.Connect6, o.SockOps, o.SkMsg, o.RecvMsg} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	for _, nm := range o.maps() {
		if *nm.m != nil {
			errs = append(errs, (*nm.m).Close())
		}
	}
	return errors.Join(errs...)
}

func lpm(p netip.Prefix) lpmKey {
	p = p.Masked()
	k := lpmKey{Prefixlen: uint32(p.Bits())}
	if p.Addr().Is4() {
		k.Prefixlen += 96
	}
	k.Ip = p.Addr().As16()
	return k
}

// Configure writes c into the maps; the programs act on it at their next run.
// Ports, Include and Exclude replace what was there. The new entries go in
// first, then the config value, then stale entries go: a running redirect
// (a pinned one being taken over) never sees an empty port list.
func (o *Objects) Configure(c Config) error {
	if o == nil || o.PhConfig == nil {
		return ErrNotLoaded
	}
	keepPorts := map[string]bool{}
	for _, p := range c.Ports {
		if err := o.PhPorts.Put(p, uint8(1)); err != nil {
			return fmt.Errorf("put port %d: %w", p, err)
		}
		keepPorts[string([]byte{byte(p), byte(p >> 8)})] = true
	}
	keepCIDRs := []map[string]bool{{}, {}}
	for i, m := range []struct {
		m  *ebpf.Map
		ps []netip.Prefix
	}{{o.PhInclude, c.Include}, {o.PhExclude, c.Exclude}} {
		for _, p := range m.ps {
			k := lpm(p)
			if err := m.m.Put(&k, uint8(1)); err != nil {
				return fmt.Errorf("put cidr %s: %w", p, err)
			}
			keepCIDRs[i][lpmBytes(k)] = true
		}
	}
	v := configValue{Flags: flagEnabled, ListenPort: uint32(c.ListenPort), Mark: c.Mark, QueueLimit: c.QueueLimit}
	if c.Sockmap && o.counting {
		v.CounterId = o.counterID
	}
	if len(c.Ports) == 0 {
		v.Flags |= flagAllPorts
	}
	if len(c.Include) > 0 {
		v.Flags |= flagHasInclude
	}
	if c.Sockmap {
		v.Flags |= flagSockmap
	}
	if err := o.PhConfig.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("put config: %w", err)
	}
	if err := pruneMap(o.PhPorts, keepPorts); err != nil {
		return fmt.Errorf("prune ph_ports: %w", err)
	}
	if err := pruneMap(o.PhInclude, keepCIDRs[0]); err != nil {
		return fmt.Errorf("prune ph_include: %w", err)
	}
	if err := pruneMap(o.PhExclude, keepCIDRs[1]); err != nil {
		return fmt.Errorf("prune ph_exclude: %w", err)
	}
	return nil
}

// lpmBytes is k as the map stores it (little-endian prefix length, then
// the address).
func lpmBytes(k lpmKey) string {
	b := []byte{byte(k.Prefixlen), byte(k.Prefixlen >> 8), byte(k.Prefixlen >> 16), byte(k.Prefixlen >> 24)}
	return string(append(b, k.Ip[:]...))
}

// pruneMap deletes every key of m not in keep (raw key bytes).
func pruneMap(m *ebpf.Map, keep map[string]bool) error {
	var keys [][]byte
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !keep[string(k)] {
			keys = append(keys, append([]byte(nil), k...))
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// Disable makes connect4/6 leave every connect alone (links stay).
func (o *Objects) Disable() error {
	if o == nil || o.PhConfig == nil {
		return ErrNotLoaded
	}
	return o.PhConfig.Put(uint32(0), &configValue{})
}

// TakeOrigin returns and forgets the original destination of the
// redirected connection whose client end is client (the accepted
// connection's remote address).
func (o *Objects) TakeOrigin(client netip.AddrPort) (netip.AddrPort, error) {
	if o == nil || o.PhOrigAddr == nil {
		return netip.AddrPort{}, ErrNotLoaded
	}
	k := addrKey{Ip: client.Addr().As16(), Port: uint32(client.Port())}
	var v addrKey
	if err := o.PhOrigAddr.LookupAndDelete(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return netip.AddrPort{}, ErrNoOrigin
		}
		return netip.AddrPort{}, fmt.Errorf("look up origin of %s: %w", client, err)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(v.Ip).Unmap(), uint16(v.Port)), nil
}

// MapEntries counts the entries of m (for tests and status).
func MapEntries(m *ebpf.Map) (int, error) {
	var k, v []byte
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}

// AttachCgroup attaches connect4, connect6 and sockops to the cgroup2
// directory path and returns the links in attach order.
func (o *Objects) AttachCgroup(path string) (_ []link.Link, err error) {
	if o == nil || o.Connect4 == nil {
		return nil, ErrNotLoaded
	}
	var links []link.Link
	defer func() {
		if err != nil {
			for i := len(links) - 1; i >= 0; i-- {
				links[i].Close()
			}
		}
	}()
	for _, a := range []struct {
		name string
		prog *ebpf.Program
		at   ebpf.AttachType
	}{
		{"sockops", o.SockOps, ebpf.AttachCGroupSockOps},
		{"connect4", o.Connect4, ebpf.AttachCGroupInet4Connect},
		{"connect6", o.Connect6, ebpf.AttachCGroupInet6Connect},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: a.at, Program: a.prog})
		if err != nil {
			return nil, fmt.Errorf("attach %s to %s: %w", a.name, path, err)
		}
		links = append(links, l)
	}
	return links, nil
}

// SkMsgAttachment is the sk_msg program attached to the SOCKHASH, and the
// recvmsg counter it needs.
type SkMsgAttachment struct {
	m    *ebpf.Map
	prog *ebpf.Program
	recv *counterLink
}

// AttachSkMsg attaches the fast path to the SOCKHASH (cilium/ebpf has no
// link type for sk_msg: this is BPF_PROG_ATTACH on the map), after the
// program that counts what the agent's sockets read (raw tracepoint
// sock_recv_length): without that count the fast path could not bound what
// it queues, so it is not attached. The next Configure with Sockmap names
// this counter in ph_config; the sk_msg program redirects nothing while no
// counter is named.
func (o *Objects) AttachSkMsg() (*SkMsgAttachment, error) {
	if o == nil || o.PhConfig == nil {
		return nil, ErrNotLoaded
	}
	if o.SkMsg == nil || o.RecvMsg == nil {
		return nil, fmt.Errorf("load the fast path's programs (the recv counter needs the raw tracepoint sock_recv_length, Linux 6.3+): %w", o.fastErr)
	}
	recv, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sock_recv_length", Program: o.RecvMsg})
	if err != nil {
		return nil, fmt.Errorf("kernel feature raw tracepoint sock_recv_length (needed to bound the fast path's queues): %w", err)
	}
	err = link.RawAttachProgram(link.RawAttachProgramOptions{Target: o.PhSockhash.FD(), Program: o.SkMsg, Attach: ebpf.AttachSkMsgVerdict})
	if err != nil {
		recv.Close()
		return nil, fmt.Errorf("attach sk_msg to ph_sockhash: %w", err)
	}
	o.counting = true
	return &SkMsgAttachment{m: o.PhSockhash, prog: o.SkMsg, recv: &counterLink{o: o, l: recv}}, nil
}

// counterLink is the recv counter's link; closing it first takes its name
// out of ph_config (unless another agent's counter is named there by now),
// so that the fast path stops redirecting rather than queue uncounted.
type counterLink struct {
	o *Objects
	l link.Link
}

func (c *counterLink) Close() error {
	var errs []error
	var v configValue
	if err := c.o.PhConfig.Lookup(uint32(0), &v); err == nil && v.CounterId == c.o.counterID {
		v.CounterId = 0
		errs = append(errs, c.o.PhConfig.Put(uint32(0), &v))
	}
	c.o.counting = false
	return errors.Join(append(errs, c.l.Close())...)
}

// Counter is the recvmsg counter alone (pinned mode leaves the sk_msg
// program on the pinned SOCKHASH but not the counter).
func (a *SkMsgAttachment) Counter() io.Closer { return a.recv }

// Close detaches the fast path.
func (a *SkMsgAttachment) Close() error {
	errs := []error{a.recv.Close()}
	err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: a.m.FD(), Program: a.prog, Attach: ebpf.AttachSkMsgVerdict})
	if err != nil {
		errs = append(errs, fmt.Errorf("detach sk_msg from ph_sockhash: %w", err))
	}
	return errors.Join(errs...)
}

// newCounterID is a random non-zero id for this process's recv counter.
func newCounterID() uint32 {
	var b [4]byte
	for {
		_, _ = crand.Read(b[:])
		if id := binary.LittleEndian.Uint32(b[:]); id != 0 {
			return id
		}
	}
}

// Cgroup2Root returns where the cgroup2 hierarchy is mounted
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
func Cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 3 && fs[2] == "cgroup2" {
			return fs[1], nil
		}
	}
	return "", ErrNoCgroup2
}

// CgroupPath resolves a configured cgroup: an absolute path inside the
// cgroup2 mount is used as is, anything else is taken relative to it.
func CgroupPath(p string) (string, error) {
	root, err := Cgroup2Root()
	if err != nil {
		return "", err
	}
	if filepath.IsAbs(p) && (p == root || strings.HasPrefix(p, root+"/")) {
		return filepath.Clean(p), nil
	}
	return filepath.Join(root, strings.TrimPrefix(p, "/")), nil
}

// AttachSockOps attaches only the sockops program to a cgroup: the agent's
// own, so that its accepted sockets join the fast path.
func (o *Objects) AttachSockOps(path string) (link.Link, error) {
	if o == nil || o.SockOps == nil {
		return nil, ErrNotLoaded
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: ebpf.AttachCGroupSockOps, Program: o.SockOps})
	if err != nil {
		return nil, fmt.Errorf("attach sockops to %s: %w", path, err)
	}
	return l, nil
}
