package tests

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/custos-kx/custos/softhsm"
)

// writeCert writes a self-signed certificate for 127.0.0.1 with serial n.
func writeCert(t *testing.T, certFile, keyFile string, n int64) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(n), Subject: pkix.Name{CommonName: "custos test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(certFile+".tmp", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile+".tmp", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	os.Rename(keyFile+".tmp", keyFile)
	os.Rename(certFile+".tmp", certFile)
}

// TestTLSReloadOnHangup: SIGHUP makes new connections get the new
// certificate, and a connection opened before keeps working.
func TestTLSReloadOnHangup(t *testing.T) {
	st := softhsm.New(t)
	dir := t.TempDir()
	env := custosdEnv(st, filepath.Join(dir, "custos.db"))
	runCustosd(t, env, "init")
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, certFile, keyFile, 1)
	addr := freeAddr(t)
	cmd := exec.Command(bin(t, "custosd"), "serve")
	cmd.Env = append(env, "CUSTOS_LISTEN="+addr, "CUSTOS_TLS_CERT="+certFile, "CUSTOS_TLS_KEY="+keyFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	serial := func() (int64, error) {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64(), nil
	}
	waitFor(t, 15*time.Second, "custosd to serve TLS", func() error {
		if n, err := serial(); err != nil || n != 1 {
			return fmt.Errorf("serial %d, %v", n, err)
		}
		return nil
	})
	old, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	writeCert(t, certFile, keyFile, 2)
	cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "new connections to get the new certificate", func() error {
		if n, err := serial(); err != nil || n != 2 {
			return fmt.Errorf("serial %d, %v", n, err)
		}
		return nil
	})
	fmt.Fprintf(old, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(old), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("a connection opened before the reload: %v %v", err, resp)
	}
}
