package mitm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// genCA generates a CA valid from now-1h for validity and parses it.
func genCA(t testing.TB, now time.Time, validity time.Duration) (*CA, []byte, []byte) {
	t.Helper()
	certPEM, keyPEM, err := GenerateCA(CAOptions{Host: "testhost", Validity: validity, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ParseCA(certPEM, keyPEM, now)
	if err != nil {
		t.Fatal(err)
	}
	return ca, certPEM, keyPEM
}

// TestGenerateCA: ECDSA P-256, self-signed, CA:true, path length 0, key
// usage certSign|CRLSign, named after the host, valid for the default
// 5 years or what is asked.
func TestGenerateCA(t *testing.T) {
	now := time.Now()
	ca, _, keyPEM := genCA(t, now, 0)
	c := ca.Cert
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("constraints: IsCA %v valid %v pathlen %d zero %v", c.IsCA, c.BasicConstraintsValid, c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("key usage %v", c.KeyUsage)
	}
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if c.Subject.CommonName != "proxy-hopper interception CA testhost" {
		t.Errorf("subject %q", c.Subject.CommonName)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if got := c.NotAfter.Sub(now); got < DefaultCAValidity-time.Second || got > DefaultCAValidity+time.Second {
		t.Errorf("validity %v, want %v", got, DefaultCAValidity)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v", c.SerialNumber)
	}
	if blk, _ := pem.Decode(keyPEM); blk == nil || blk.Type != "PRIVATE KEY" {
		t.Errorf("key PEM is not PKCS#8")
	}
	ca2, _, _ := genCA(t, now, 48*time.Hour)
	if got := ca2.Cert.NotAfter.Sub(now); got < 48*time.Hour-time.Second || got > 48*time.Hour {
		t.Errorf("validity %v, want 48h", got)
	}
	if ca2.Fingerprint() == ca.Fingerprint() || len(ca.Fingerprint()) != 95 {
		t.Errorf("fingerprints %s, %s", ca.Fingerprint(), ca2.Fingerprint())
	}
	if _, _, err := GenerateCA(CAOptions{Validity: -time.Hour}); err == nil {
		t.Error("negative validity accepted")
	}
}

// writeCA writes cert and key files with the given key mode.
func writeCA(t *testing.T, certPEM, keyPEM []byte, mode os.FileMode) (string, string) {
	t.Helper()
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(cf, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kf, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(kf, mode); err != nil {
		t.Fatal(err)
	}
	return cf, kf
}

// keyLines are the base64 lines of a PEM key, which no error may quote.
func keyLines(keyPEM []byte) []string {
	var out []string
	for _, l := range strings.Split(string(keyPEM), "\n") {
		if len(l) > 8 && !strings.HasPrefix(l, "-----") {
			out = append(out, l)
		}
	}
	return out
}

// leafPEM is a non-CA certificate and its key.
func leafPEM(t *testing.T) ([]byte, []byte) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(k)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
}

// TestLoadCA: a 0600 key loads (and a 0400 one); a key readable by group
// or others is refused with the fix named; a certificate that is not a
// CA, a key of another CA, an expired or not yet valid CA, an oversized
// or malformed file are refused; no error quotes the key.
func TestLoadCA(t *testing.T) {
	now := time.Now()
	ca, certPEM, keyPEM := genCA(t, now, 0)
	_, _, otherKey := genCA(t, now, 0)
	_, expiredCert, expiredKey := genCA(t, now.Add(-72*time.Hour), time.Hour)
	notCACert, notCAKey := leafPEM(t)

	for _, mode := range []os.FileMode{0o600, 0o400} {
		cf, kf := writeCA(t, certPEM, keyPEM, mode)
		got, err := LoadCA(cf, kf)
		if err != nil {
			t.Fatalf("mode %04o: %v", mode, err)
		}
		if got.Fingerprint() != ca.Fingerprint() {
			t.Errorf("loaded another CA")
		}
	}
	garbledKey := []byte(strings.Replace(string(keyPEM), "\n", "\nAAAA", 2))
	for _, tc := range []struct {
		name       string
		cert, key  []byte
		mode       os.FileMode
		want       error
		wantSubstr string
	}{
		{"group-readable key", certPEM, keyPEM, 0o640, ErrKeyPermissions, "chmod 600"},
		{"world-readable key", certPEM, keyPEM, 0o644, ErrKeyPermissions, "chmod 600"},
		{"group-writable key", certPEM, keyPEM, 0o620, ErrKeyPermissions, "mode 0620"},
		{"other CA's key", certPEM, otherKey, 0o600, ErrKeyMismatch, ""},
		{"not a CA", notCACert, notCAKey, 0o600, ErrNotCA, ""},
		{"expired CA", expiredCert, expiredKey, 0o600, ErrCAExpired, ""},
		{"oversized key", certPEM, append(keyPEM, make([]byte, MaxPEMFile)...), 0o600, ErrTooLarge, ""},
		{"oversized cert", append(certPEM, make([]byte, MaxPEMFile)...), keyPEM, 0o600, ErrTooLarge, ""},
		{"garbled key", certPEM, garbledKey, 0o600, nil, "malformed"},
		{"no key", certPEM, []byte("nothing here"), 0o600, nil, "no PRIVATE KEY"},
		{"key as cert", keyPEM, keyPEM, 0o600, nil, "no CERTIFICATE"},
	} {
		cf, kf := writeCA(t, tc.cert, tc.key, tc.mode)
		_, err := LoadCA(cf, kf)
		if err == nil {
			t.Errorf("%s: loaded", tc.name)
			continue
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if !strings.Contains(err.Error(), tc.wantSubstr) {
			t.Errorf("%s: %v, want it to say %q", tc.name, err, tc.wantSubstr)
		}
		for _, l := range append(keyLines(tc.key), keyLines(keyPEM)...) {
			if strings.Contains(err.Error(), l[:8]) {
				t.Errorf("%s: error quotes the key: %v", tc.name, err)
			}
		}
	}
	// Not yet valid.
	if _, err := ParseCA(certPEM, keyPEM, now.Add(-2*time.Hour)); !errors.Is(err, ErrCAExpired) {
		t.Errorf("CA before NotBefore: %v", err)
	}
	// Not a regular file.
	if _, err := LoadCA(t.TempDir(), t.TempDir()); err == nil {
		t.Error("directories loaded")
	}
}
