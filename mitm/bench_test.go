package mitm

import (
	"crypto/tls"
	"strconv"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/benchutil"
	"github.com/proxy-hopper/proxy-hopper/internal/cputime"
)

// BenchmarkMint: a cold GetCertificate (a name not cached: one leaf
// signed), with the Minter's shared leaf key and with a new key per leaf.
func BenchmarkMint(b *testing.B) {
	for _, perLeaf := range []bool{false, true} {
		name := "shared-key"
		if perLeaf {
			name = "per-leaf-key"
		}
		b.Run(name, func(b *testing.B) {
			m, _ := newMinter(b, MinterOptions{})
			m.perLeafKey = perLeaf
			i := 0
			for b.Loop() {
				i++
				if _, err := m.Certificate(&tls.ClientHelloInfo{ServerName: "n" + strconv.Itoa(i) + ".example"}); err != nil {
					b.Fatal(err)
				}
			}
			if s := m.Stats(); s.Hits != 0 {
				b.Fatalf("stats %+v: not cold", s)
			}
		})
	}
}

// BenchmarkCached: a warm GetCertificate (the name is cached).
func BenchmarkCached(b *testing.B) {
	m, _ := newMinter(b, MinterOptions{})
	hello := &tls.ClientHelloInfo{ServerName: "warm.example"}
	if _, err := m.Certificate(hello); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := m.Certificate(hello); err != nil {
			b.Fatal(err)
		}
	}
	if s := m.Stats(); s.Mints != 1 {
		b.Fatalf("stats %+v: not warm", s)
	}
}

// BenchmarkHandshake: a full TLS handshake over loopback (new TCP
// connection, no session resumption, the client verifying the chain),
// cold (a new name each time: a mint) and warm (one cached name).
func BenchmarkHandshake(b *testing.B) {
	for _, warm := range []bool{false, true} {
		name := "cold"
		if warm {
			name = "warm"
		}
		b.Run(name, func(b *testing.B) {
			m, pool := newMinter(b, MinterOptions{})
			addr := serveTLS(b, m, "")
			i := 0
			for b.Loop() {
				i++
				sni := "h" + strconv.Itoa(i) + ".example"
				if warm {
					sni = "warm.example"
				}
				if _, _, err := handshake(b, addr, sni, []string{"h2", "http/1.1"}, pool); err != nil {
					b.Fatal(err)
				}
			}
			s := m.Stats()
			if warm && s.Mints != 1 || !warm && s.Hits != 0 {
				b.Fatalf("stats %+v", s)
			}
		})
	}
}

// benchCase is one measured operation of BenchmarkRounds.
type benchCase struct {
	name string
	ops  int
	fn   func(i int) error
}

// runRounds runs the cases in alternating rounds (so machine noise hits
// each alike) and reports, per case, the median wall and CPU time (the
// whole process: client and server sides of a handshake) per operation.
func runRounds(b *testing.B, rounds int, cases []benchCase) map[string][2]float64 {
	wall := map[string][]float64{}
	cpu := map[string][]float64{}
	n := 0
	for r := 0; r < rounds; r++ {
		for _, c := range cases {
			c0, _ := cputime.Self()
			t0 := time.Now()
			for i := 0; i < c.ops; i++ {
				n++
				if err := c.fn(n); err != nil {
					b.Fatalf("%s: %v", c.name, err)
				}
			}
			w := time.Since(t0)
			c1, _ := cputime.Self()
			wall[c.name] = append(wall[c.name], float64(w.Nanoseconds())/float64(c.ops))
			cpu[c.name] = append(cpu[c.name], float64((c1-c0).Nanoseconds())/float64(c.ops))
		}
	}
	out := map[string][2]float64{}
	for _, c := range cases {
		out[c.name] = [2]float64{benchutil.Median(wall[c.name]), benchutil.Median(cpu[c.name])}
		b.ReportMetric(out[c.name][0], c.name+"-wall-ns/op")
		b.ReportMetric(out[c.name][1], c.name+"-cpu-ns/op")
	}
	return out
}

// BenchmarkRounds measures, in one run of alternating rounds, what
// BENCHMARKS.md reports: a cold mint with the shared leaf key and with a
// key per leaf, a warm (cached) GetCertificate, and full handshakes over
// loopback with a cold and a warm cache; ratios are within the run. Run it
// with -benchtime 1x (one iteration is the whole set of rounds).
func BenchmarkRounds(b *testing.B) {
	shared, pool := newMinter(b, MinterOptions{CacheSize: 1 << 20})
	perLeaf, _ := newMinter(b, MinterOptions{CacheSize: 1 << 20})
	perLeaf.perLeafKey = true
	warmHello := &tls.ClientHelloInfo{ServerName: "warm.example"}
	addr := serveTLS(b, shared, "")
	protos := []string{"h2", "http/1.1"}
	hs := func(sni string) error { _, _, err := handshake(b, addr, sni, protos, pool); return err }
	cases := []benchCase{
		{"mint-shared-key", 300, func(i int) error {
			_, err := shared.ForName("m" + strconv.Itoa(i) + ".example")
			return err
		}},
		{"mint-per-leaf-key", 300, func(i int) error {
			_, err := perLeaf.ForName("m" + strconv.Itoa(i) + ".example")
			return err
		}},
		{"cached", 100000, func(int) error { _, err := shared.Certificate(warmHello); return err }},
		{"handshake-cold", 150, func(i int) error { return hs("h" + strconv.Itoa(i) + ".example") }},
		{"handshake-warm", 150, func(int) error { return hs("warm.example") }},
	}
	for b.Loop() {
		r := runRounds(b, 7, cases)
		b.ReportMetric(r["mint-per-leaf-key"][1]/r["mint-shared-key"][1], "per-leaf/shared-cpu-x")
		b.ReportMetric(r["handshake-warm"][0]/r["handshake-cold"][0], "warm/cold-wall-x")
		b.ReportMetric(r["handshake-warm"][1]/r["handshake-cold"][1], "warm/cold-cpu-x")
	}
}
