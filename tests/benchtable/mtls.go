package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"github.com/custos-kx/custos/tests/cluster"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThalesGroup/crypto11"

	"github.com/custos-kx/custos/tests/benchkit"
)

// The peer a user would pick instead of Custos: a TLS 1.3 server that
// requires client certificates, its private key in the same SoftHSM token
// (a crypto11 signer), as an HSM-backed mTLS proxy such as ghostunnel does
// per connection. X25519 key share, session tickets off, every handshake a
// new connection. It runs as this program in a process of its own, like
// custosd: -mtls ADDR -mtls-key ecdsa|rsa -mtls-dir DIR.
var (
	mtlsAddr = flag.String("mtls", "", "internal: serve the mTLS peer on this address")
	mtlsKey  = flag.String("mtls-key", "ecdsa", "internal: the mTLS peer's key: ecdsa (P-256) or rsa (2048)")
	mtlsDir  = flag.String("mtls-dir", "", "internal: where the mTLS peer reads the client CA and writes its certificate")
)

// serveMTLS generates the server key in the token, certifies it with
// itself, writes the certificate for the client to trust, and answers
// each handshake with one byte, so that the client knows the server
// finished it (verified the client's certificate).
func serveMTLS(addr, keyType, dir string) error {
	pin, err := os.ReadFile(os.Getenv("CUSTOS_PIN_FILE"))
	if err != nil {
		return err
	}
	ctx, err := crypto11.Configure(&crypto11.Config{Path: os.Getenv("CUSTOS_PKCS11_MODULE"), TokenLabel: os.Getenv("CUSTOS_TOKEN_LABEL"), Pin: strings.TrimSpace(string(pin))})
	if err != nil {
		return err
	}
	defer ctx.Close()
	id := []byte("mtls-" + keyType + "-" + strconv.Itoa(os.Getpid()))
	var signer crypto11.Signer
	switch keyType {
	case "ecdsa":
		signer, err = ctx.GenerateECDSAKeyPair(id, elliptic.P256())
	case "rsa":
		signer, err = ctx.GenerateRSAKeyPair(id, 2048)
	default:
		err = fmt.Errorf("unknown key type %q", keyType)
	}
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mtls peer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "client-ca.pem"))
	if err != nil {
		return err
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{
		Certificates:           []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: signer}},
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              clientCAs,
		MinVersion:             tls.VersionTLS13,
		CurvePreferences:       []tls.CurveID{tls.X25519},
		SessionTicketsDisabled: true,
	}
	ln, err := tls.Listen("tcp", addr, cfg)
	if err != nil {
		return err
	}
	certFile := filepath.Join(dir, "mtls-"+keyType+".pem")
	if err := os.WriteFile(certFile+".tmp", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	if err := os.Rename(certFile+".tmp", certFile); err != nil {
		return err
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer conn.Close()
			tc := conn.(*tls.Conn)
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if tc.Handshake() == nil {
				tc.Write([]byte{1})
			}
		}()
	}
}

// mtlsPeer is a running mTLS peer process and the client side of it.
type mtlsPeer struct {
	cmd    *exec.Cmd
	addr   string
	client *tls.Config
}

// clientIdentity makes a CA and a client certificate under it (in
// software: the client's key is not what is measured) and writes the CA
// for the peer to require.
func clientIdentity(dir string) (tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench client CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "alice@example.com"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, "client-ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: crypto.Signer(key)}, nil
}

func startMTLS(rig *benchkit.Rig, dir, keyType string, id tls.Certificate) (*mtlsPeer, error) {
	addr, err := cluster.FreeAddr()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-mtls", addr, "-mtls-key", keyType, "-mtls-dir", dir)
	cmd.Env = append(os.Environ(), tokenEnv(rig, dir)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &mtlsPeer{cmd: cmd, addr: addr}
	certFile := filepath.Join(dir, "mtls-"+keyType+".pem")
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(certFile)
		if err == nil {
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM(b)
			p.client = &tls.Config{
				RootCAs: roots, ServerName: "127.0.0.1", Certificates: []tls.Certificate{id},
				MinVersion: tls.VersionTLS13, CurvePreferences: []tls.CurveID{tls.X25519},
			}
			if _, err := p.handshake(); err == nil {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("the %s mTLS peer did not answer a handshake within 20 s", keyType)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// handshake makes one connection, completes the handshake and reads the
// server's byte.
func (p *mtlsPeer) handshake() (time.Duration, error) {
	start := time.Now()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", p.addr, p.client)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// loadResult is one load's throughput, latency and failures.
type loadResult struct {
	throughput float64
	p50, p99   time.Duration
	errors     int
	completed  int
}

// load runs handshakes from c goroutines for d.
func (p *mtlsPeer) load(c int, d time.Duration) loadResult {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var (
		mu   sync.Mutex
		lats []time.Duration
		errs atomic.Int64
		wg   sync.WaitGroup
	)
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			for ctx.Err() == nil {
				l, err := p.handshake()
				if err != nil {
					errs.Add(1)
					continue
				}
				local = append(local, l)
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lats)
	r := loadResult{errors: int(errs.Load()), completed: len(lats)}
	if len(lats) > 0 {
		r.throughput = float64(len(lats)) / elapsed.Seconds()
		r.p50, r.p99 = lats[len(lats)/2], lats[min(len(lats)-1, len(lats)*99/100)]
	}
	return r
}

func (p *mtlsPeer) pid() int { return p.cmd.Process.Pid }

func (p *mtlsPeer) stop() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}
