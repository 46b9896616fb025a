package testenv

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Redis is a redis-server started for a test: no persistence, so a
// restart comes back empty, as a Redis without AOF/RDB would.
type Redis struct {
	Addr string // 127.0.0.1:port
	dir  string
	bin  string
	t    testing.TB

	args   []string
	scheme string // redis, or rediss with TLS

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// RedisOptions adjusts a redis-server instance.
type RedisOptions struct {
	Password string   // requirepass
	TLS      bool     // TLS only, with a self-signed certificate for 127.0.0.1
	Cluster  bool     // a one-node Redis Cluster holding every slot
	Args     []string // more redis-server arguments
}

// StartRedis runs redis-server on a free loopback port in a temp dir and
// kills it when the test ends.
func StartRedis(t testing.TB, o RedisOptions) *Redis {
	t.Helper()
	r := &Redis{bin: LookPath(t, "redis-server"), dir: t.TempDir(), t: t, scheme: "redis"}
	r.Addr = net.JoinHostPort("127.0.0.1", fmt.Sprint(FreePort(t, "127.0.0.1")))
	args := []string{
		"--bind", "127.0.0.1", "--port", r.port(), "--dir", r.dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--logfile", filepath.Join(r.dir, "redis.log"),
	}
	if o.TLS {
		cert, key := selfSigned(t, r.dir)
		args[3] = "0"
		args = append(args, "--tls-port", r.port(), "--tls-cert-file", cert, "--tls-key-file", key, "--tls-auth-clients", "no")
		r.scheme = "rediss"
	}
	if o.Password != "" {
		args = append(args, "--requirepass", o.Password)
	}
	if o.Cluster {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(r.dir, "nodes.conf"))
	}
	r.args = append(args, o.Args...)
	t.Cleanup(r.Stop)
	r.Start()
	if o.Cluster {
		if _, err := r.Do("CLUSTER", "ADDSLOTSRANGE", "0", "16383"); err != nil {
			t.Fatalf("redis cluster: %v", err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			info, err := r.Do("CLUSTER", "INFO")
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("redis cluster not ok: %q %v", info, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return r
}

// Do sends one command over plain TCP (not with TLS) and returns the
// reply: a status, an integer or a bulk string; an error reply is an error.
func (r *Redis) Do(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", r.Addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case line == "":
		return "", errors.New("empty reply")
	case line[0] == '-':
		return "", errors.New(line[1:])
	case line[0] == '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return line[1:], nil
}

// Sentinel is a redis-server in sentinel mode watching one master.
type Sentinel struct {
	Addr string // 127.0.0.1:port
}

// StartSentinel runs a sentinel that monitors master under name, and stops
// it when the test ends.
func StartSentinel(t testing.TB, master *Redis, name string) *Sentinel {
	t.Helper()
	bin := LookPath(t, "redis-server")
	dir := t.TempDir()
	port := FreePort(t, "127.0.0.1")
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\nsentinel monitor %s 127.0.0.1 %s 1\n",
		port, dir, filepath.Join(dir, "sentinel.log"), name, master.port())
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, conf, "--sentinel")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis sentinel: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	s := &Sentinel{Addr: net.JoinHostPort("127.0.0.1", fmt.Sprint(port))}
	WaitListening(t, s.Addr, 5*time.Second)
	return s
}

func (r *Redis) port() string {
	_, p, _ := net.SplitHostPort(r.Addr)
	return p
}

// URL is redis://127.0.0.1:port/db (rediss:// with TLS).
func (r *Redis) URL(db int) string { return fmt.Sprintf("%s://%s/%d", r.scheme, r.Addr, db) }

// selfSigned writes a certificate and key for 127.0.0.1 into dir.
func selfSigned(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// Start starts the server again on the same port (after Stop), empty.
func (r *Redis) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		cmd := exec.Command(r.bin, r.args...)
		if err := cmd.Start(); err != nil {
			r.t.Fatalf("start redis-server: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		if waitListening(r.Addr, exited, deadline) {
			r.cmd, r.exited = cmd, exited
			return
		}
		_ = cmd.Process.Kill()
		<-exited
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			r.t.Fatalf("redis-server did not start on %s:\n%s", r.Addr, log)
		}
		time.Sleep(50 * time.Millisecond) // the port may still be held
	}
}

// Stop kills the server (as a crash would) and waits for it to exit. The
// port stays reserved for Start.
func (r *Redis) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exited
	r.cmd = nil
}

// waitListening waits until addr accepts connections, the process exits,
// or deadline passes; it reports whether addr is accepting.
func waitListening(addr string, exited <-chan struct{}, deadline time.Time) bool {
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

// Pid is the process id of the running server (0 when stopped).
func (r *Redis) Pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return 0
	}
	return r.cmd.Process.Pid
}
