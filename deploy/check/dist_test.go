package check

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDist checks make dist's output: one static binary per architecture
// of the right ELF machine, each embedding every BPF object of bpf/ byte
// for byte (the objects are little-endian BPF, the same for amd64 and
// arm64), and SHA256SUMS matching the files.
func TestDist(t *testing.T) {
	dist := need(t, "PH_DIST")
	objs, _ := filepath.Glob(filepath.Join(root(t), "bpf/*_bpfel.o"))
	if len(objs) == 0 {
		t.Fatal("no bpf/*_bpfel.o")
	}
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q", line)
		}
		bin, err := os.ReadFile(filepath.Join(dist, name))
		if err != nil {
			t.Fatal(err)
		}
		if h := sha256.Sum256(bin); hex.EncodeToString(h[:]) != sum {
			t.Errorf("%s: sha256 differs from SHA256SUMS", name)
		}
		arch := name[strings.LastIndex(name, "-")+1:]
		want, ok := machines[arch]
		if !ok {
			t.Errorf("%s: unknown architecture %q", name, arch)
			continue
		}
		seen++
		f, err := elf.NewFile(bytes.NewReader(bin))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if f.Machine != want {
			t.Errorf("%s: ELF machine %v, want %v", name, f.Machine, want)
		}
		if f.Section(".interp") != nil {
			t.Errorf("%s: dynamically linked", name)
		}
		for _, o := range objs {
			obj, err := os.ReadFile(o)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(bin, obj) {
				t.Errorf("%s does not embed %s", name, filepath.Base(o))
			}
		}
	}
	if seen != len(machines) {
		t.Errorf("dist has %d binaries, want one per %v", seen, machines)
	}
}
