package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/proxy-hopper/proxy-hopper/mitm"
)

// runCA is `ca init`: it writes a new interception CA.
func runCA(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "init" {
		fmt.Fprintln(stderr, "usage: proxy-hopper ca init --cert PATH --key PATH [--days N] [--force]")
		return &exitError{code: 2, err: errors.New("ca: want the subcommand init")}
	}
	return caInit(args[1:], stdout, stderr)
}

// caInit is `ca init --cert PATH --key PATH [--days N] [--force]`: a new
// ECDSA P-256 CA, the key written 0600 and the certificate 0644, each
// refused if it exists unless --force (which replaces both atomically).
// It prints the fingerprint and how to make clients trust the CA.
func caInit(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ca init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	certPath := fs.String("cert", "", "where to write the CA certificate (PEM, mode 0644)")
	keyPath := fs.String("key", "", "where to write the CA private key (PEM, mode 0600)")
	days := fs.Int("days", int(mitm.DefaultCAValidity/(24*time.Hour)), "validity of the CA in days")
	force := fs.Bool("force", false, "replace existing files")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: proxy-hopper ca init --cert PATH --key PATH [--days N] [--force]")
		fmt.Fprintln(stderr, "Writes a new TLS interception CA (ECDSA P-256). See docs/interception.md.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2, err: err}
	}
	if *certPath == "" || *keyPath == "" || fs.NArg() != 0 {
		fs.Usage()
		return &exitError{code: 2, err: errors.New("ca init: --cert and --key are required, nothing else")}
	}
	if *days < 1 || *days > 100*365 {
		return &exitError{code: 2, err: fmt.Errorf("ca init: --days %d is out of 1..%d", *days, 100*365)}
	}
	if a, b := filepath.Clean(*certPath), filepath.Clean(*keyPath); a == b {
		return &exitError{code: 2, err: errors.New("ca init: --cert and --key name the same file")}
	}
	certPEM, keyPEM, err := mitm.GenerateCA(mitm.CAOptions{Validity: time.Duration(*days) * 24 * time.Hour})
	if err != nil {
		return err
	}
	if *force {
		if err := replaceFiles(*keyPath, *certPath, keyPEM, certPEM); err != nil {
			return err
		}
	} else {
		if err := writeNew(*keyPath, *certPath, keyPEM, certPEM); err != nil {
			return err
		}
	}
	ca, err := mitm.LoadCA(*certPath, *keyPath)
	if err != nil {
		return fmt.Errorf("check the written CA: %w", err)
	}
	fmt.Fprintf(stdout, `wrote CA key         %s (mode 0600: keep it secret, back it up offline)
wrote CA certificate %s
subject              %s
valid until          %s
SHA-256 fingerprint  %s

Make the clients that will be intercepted trust the certificate (never the key):
  Debian/Ubuntu:  sudo cp %s /usr/local/share/ca-certificates/proxy-hopper-ca.crt && sudo update-ca-certificates
  curl:           curl --cacert %s https://...
  Check a copy:   openssl x509 -in CERT -noout -fingerprint -sha256  (must print the fingerprint above)
`, *keyPath, *certPath, ca.Cert.Subject.CommonName, ca.Cert.NotAfter.UTC().Format(time.RFC3339), ca.Fingerprint(), *certPath, *certPath)
	return nil
}

// writeNew creates both files with O_EXCL; if the second cannot be
// created, the first is removed, so a refusal leaves nothing behind.
func writeNew(keyPath, certPath string, keyPEM, certPEM []byte) error {
	kf, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create CA key (--force replaces it): %w", err)
	}
	cf, err := os.OpenFile(certPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		kf.Close()
		os.Remove(keyPath)
		return fmt.Errorf("create CA certificate (--force replaces it): %w", err)
	}
	err = writeClose(kf, keyPEM, 0o600)
	if err2 := writeClose(cf, certPEM, 0o644); err == nil {
		err = err2
	}
	if err != nil {
		os.Remove(keyPath)
		os.Remove(certPath)
		return fmt.Errorf("write CA: %w", err)
	}
	return nil
}

// writeClose writes b, sets mode (the umask may have narrowed it), syncs
// and closes f.
func writeClose(f *os.File, b []byte, mode os.FileMode) error {
	_, err := f.Write(b)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if err2 := f.Close(); err == nil {
		err = err2
	}
	return err
}

// replaceFiles writes the key and the certificate to temporary files in
// their directories (created 0600, so the key is never readable by others,
// even briefly), and only when both are written renames them over the
// old files, so a failed write leaves the old pair as it was.
func replaceFiles(keyPath, certPath string, keyPEM, certPEM []byte) error {
	tk, err := writeTemp(keyPath, keyPEM, 0o600)
	if err != nil {
		return err
	}
	tc, err := writeTemp(certPath, certPEM, 0o644)
	if err != nil {
		os.Remove(tk)
		return err
	}
	if err := os.Rename(tk, keyPath); err != nil {
		os.Remove(tk)
		os.Remove(tc)
		return fmt.Errorf("replace %s: %w", keyPath, err)
	}
	if err := os.Rename(tc, certPath); err != nil {
		os.Remove(tc)
		return fmt.Errorf("replace %s (the key was replaced: run ca init --force again): %w", certPath, err)
	}
	return nil
}

// writeTemp writes b to a new temporary file next to path.
func writeTemp(path string, b []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".ca-*.tmp")
	if err != nil {
		return "", fmt.Errorf("create temporary file for %s: %w", path, err)
	}
	if err := writeClose(f, b, mode); err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return f.Name(), nil
}
