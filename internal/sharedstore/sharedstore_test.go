package sharedstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/custos-kx/custos/internal/replay"
	"github.com/custos-kx/custos/tests/cluster"
)

func startRedis(t *testing.T) *cluster.Redis {
	t.Helper()
	if m := cluster.Missing(); len(m) > 0 && m[0] == "redis-server" {
		if os.Getenv("CI") != "" {
			t.Fatal("redis-server is not installed")
		}
		t.Skip("redis-server is not installed")
	}
	r, err := cluster.StartRedis(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// replicas opens n Stores on r, as n replicas would.
func replicas(t *testing.T, r *cluster.Redis, n int, failOpen bool) []*Store {
	t.Helper()
	var out []*Store
	for range n {
		s, err := Open(context.Background(), r.URL(), Options{FailOpen: failOpen, ProbeInterval: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		out = append(out, s)
	}
	return out
}

func newKey() replay.Key {
	var k replay.Key
	rand.Read(k[:])
	return k
}

func seen(t *testing.T, s *Store, k replay.Key) (bool, error) {
	t.Helper()
	now := time.Now()
	return s.FirstSeen(context.Background(), k, now.Add(2*time.Minute), now)
}

func mustFirst(t *testing.T, s *Store, k replay.Key, want bool, what string) {
	t.Helper()
	first, err := seen(t, s, k)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if first != want {
		t.Fatalf("%s: first seen = %v, want %v", what, first, want)
	}
}

func waitUp(t *testing.T, stores ...*Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range stores {
		err := cluster.Wait(ctx, func() error {
			if !s.Up() {
				return errors.New("the store is not up")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestReplaySharedAcrossReplicas: a request seen by one replica is
// refused by another, and by the first again.
func TestReplaySharedAcrossReplicas(t *testing.T) {
	s := replicas(t, startRedis(t), 2, false)
	k := newKey()
	mustFirst(t, s[0], k, true, "first sight")
	mustFirst(t, s[1], k, false, "replayed to the other replica")
	mustFirst(t, s[0], k, false, "replayed to the same replica")
	mustFirst(t, s[1], newKey(), true, "another request")
}

// TestFailClosed: while Redis is down, requests are refused (not accepted
// on one replica's word), readiness says so, and once it is back — empty,
// as a restart without persistence leaves it — what each replica saw
// before is refused by the others too.
func TestFailClosed(t *testing.T) {
	r := startRedis(t)
	s := replicas(t, r, 2, false)
	before := newKey()
	mustFirst(t, s[0], before, true, "before the outage")

	r.Stop()
	if _, err := seen(t, s[0], newKey()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("with Redis down, a request was answered %v, want ErrUnavailable", err)
	}
	if _, err := seen(t, s[1], newKey()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("with Redis down, a request on the other replica was answered %v, want ErrUnavailable", err)
	}
	if s[0].Ready(context.Background()) == nil || s[0].Up() {
		t.Fatal("with Redis down and failing closed, the store says it is ready")
	}
	lim := s[0].Limiter("address", 100, 10)
	if _, _, err := lim.Allow(context.Background(), "192.0.2.1"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("with Redis down, a rate limit answered %v, want ErrUnavailable", err)
	}

	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	waitUp(t, s...)
	mustFirst(t, s[1], before, false, "a request from before the outage, replayed to the other replica after Redis came back empty")
	if s[0].Ready(context.Background()) != nil {
		t.Fatal("Redis is back, and the store is not ready")
	}
}

// TestFailOpen: while Redis is down each replica checks requests against
// its own memory and keeps serving; once Redis is back, what a replica saw
// meanwhile is refused by every other.
func TestFailOpen(t *testing.T) {
	r := startRedis(t)
	s := replicas(t, r, 2, true)
	before := newKey()
	mustFirst(t, s[0], before, true, "before the outage")

	r.Stop()
	during := newKey()
	mustFirst(t, s[0], during, true, "during the outage")
	mustFirst(t, s[0], during, false, "replayed to the same replica during the outage")
	if s[0].Ready(context.Background()) != nil {
		t.Fatal("failing open, the store is not ready while Redis is down")
	}
	if s[0].Up() {
		t.Fatal("with Redis down, the store says it is up")
	}
	lim := s[0].Limiter("address", 1, 2)
	for i, want := range []bool{true, true, false} {
		ok, _, err := lim.Allow(context.Background(), "192.0.2.1")
		if err != nil || ok != want {
			t.Fatalf("during the outage, rate-limited request %d: %v, %v; want %v (this replica's own bucket)", i, ok, err, want)
		}
	}

	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	waitUp(t, s...)
	mustFirst(t, s[1], during, false, "a request seen during the outage, replayed to the other replica after")
	mustFirst(t, s[1], before, false, "a request seen before the outage, replayed to the other replica after Redis came back empty")
}

// TestLostDataRestored: Redis restarted between two probes, so that no
// command failed; the replicas notice that it lost what it held.
func TestLostDataRestored(t *testing.T) {
	r := startRedis(t)
	s := replicas(t, r, 2, false)
	k := newKey()
	mustFirst(t, s[0], k, true, "first sight")
	r.Stop()
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Asking the other replica would record the request there; ask Redis.
	err := cluster.Wait(ctx, func() error {
		if n, err := s[1].rdb.Exists(ctx, replayPrefix+string(k[:])).Result(); err != nil || n != 1 {
			return fmt.Errorf("the request seen before the restart is not in Redis again (%v)", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	waitUp(t, s...) // a replica whose probe met the restart refuses (fails closed) until its next
	mustFirst(t, s[1], k, false, "replayed to the other replica after the restart")
}

// TestLimitsShared: one rate across replicas; Peek takes nothing; a rate
// below one a second works.
func TestLimitsShared(t *testing.T) {
	s := replicas(t, startRedis(t), 3, false)
	ctx := context.Background()
	var lims []*Limiter
	for _, st := range s {
		lims = append(lims, st.Limiter("account", 0.5, 4))
	}
	for range 3 {
		if ok, _, err := lims[0].Peek(ctx, "alice"); !ok || err != nil {
			t.Fatalf("peek: %v %v", ok, err)
		}
	}
	for i := range 4 {
		if ok, _, err := lims[i%3].Allow(ctx, "alice"); !ok || err != nil {
			t.Fatalf("request %d of the burst of 4 was refused: %v", i, err)
		}
	}
	for i, l := range lims {
		ok, retry, err := l.Allow(ctx, "alice")
		if ok || err != nil {
			t.Fatalf("replica %d allowed a fifth request in the burst of 4: %v", i, err)
		}
		if retry < time.Second || retry > 2*time.Second {
			t.Fatalf("replica %d: retry after %s, want about 2 s at 0.5/s", i, retry)
		}
		if ok, _, _ := l.Peek(ctx, "alice"); ok {
			t.Fatalf("replica %d: peek says a token is left", i)
		}
	}
	if ok, _, err := lims[1].Allow(ctx, "bob"); !ok || err != nil {
		t.Fatal("another key is limited with alice")
	}
}

// TestUnixSocket: the same store through Redis's unix socket.
func TestUnixSocket(t *testing.T) {
	r := startRedis(t)
	overTCP := replicas(t, r, 1, false)[0]
	overUnix, err := Open(context.Background(), "unix://"+r.Socket, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer overUnix.Close()
	k := newKey()
	mustFirst(t, overUnix, k, true, "first sight, over the socket")
	mustFirst(t, overTCP, k, false, "replayed over TCP")
	if ok, _, err := overUnix.Limiter("address", 1, 1).Allow(context.Background(), "192.0.2.1"); !ok || err != nil {
		t.Fatalf("a rate limit over the socket: %v %v", ok, err)
	}
}

// TestTLS: rediss:// to a Redis whose certificate chains to a private
// authority, trusted through RootCAs and refused without it.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	pool, certFile, keyFile := testAuthority(t, dir)
	r, err := cluster.StartRedisTLS(dir, certFile, keyFile)
	if err != nil {
		if os.Getenv("CI") == "" && len(cluster.Missing()) > 0 {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	if !strings.HasPrefix(r.URL(), "rediss://") {
		t.Fatalf("URL %s", r.URL())
	}
	quiet := slog.New(slog.DiscardHandler)
	if _, err := Open(context.Background(), r.URL(), Options{Logger: quiet, Timeout: 200 * time.Millisecond}); err == nil {
		t.Fatal("a Redis whose certificate chains to no trusted authority was accepted")
	}
	s, err := Open(context.Background(), r.URL(), Options{RootCAs: pool, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k := newKey()
	mustFirst(t, s, k, true, "first sight, over TLS")
	mustFirst(t, s, k, false, "replayed, over TLS")
	if ok, _, err := s.Limiter("address", 1, 1).Allow(context.Background(), "192.0.2.1"); !ok || err != nil {
		t.Fatalf("a rate limit over TLS: %v %v", ok, err)
	}
}

// testAuthority makes a CA and a certificate for 127.0.0.1 signed by it,
// in dir, and returns the CA as a pool and the certificate's files.
func testAuthority(t *testing.T, dir string) (*x509.CertPool, string, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "custos test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "redis"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "redis.crt"), filepath.Join(dir, "redis.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return pool, certFile, keyFile
}

// TestOpenRefusesBadURLs: a wrong URL or an address nothing answers on is
// an error at start, which names it without its password.
func TestOpenRefusesBadURLs(t *testing.T) {
	addr, _ := cluster.FreeAddr()
	for url, want := range map[string]string{
		"http://example.com":                 "is not a redis://",
		"redis://:hunter2@" + addr:           "does not answer",
		"unix:///nonexistent/custos-redis.s": "does not answer",
	} {
		_, err := Open(context.Background(), url, Options{Timeout: 100 * time.Millisecond})
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q) = %v, want an error saying %q without the password", url, err, want)
		}
	}
}

// BenchmarkFirstSeen is the replay check through Redis from 32 goroutines,
// as a loaded replica makes it; cpu-ns/op is this process's CPU per check.
func BenchmarkFirstSeen(b *testing.B) {
	r, err := cluster.StartRedis(b.TempDir())
	if err != nil {
		b.Skip(err)
	}
	defer r.Stop()
	s, err := Open(context.Background(), r.URL(), Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.SetParallelism(16)
	cpu0 := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			now := time.Now()
			if _, err := s.FirstSeen(context.Background(), newKey(), now.Add(time.Minute), now); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestChecksAreBatched: two replicas check the same requests from 32
// goroutines each. Every request is new to exactly one of them, and the
// checks reach Redis in batches: fewer reads by Redis than commands.
func TestChecksAreBatched(t *testing.T) {
	r := startRedis(t)
	reps := replicas(t, r, 2, false)
	stats := func() (cmds, reads int) {
		info, err := reps[0].rdb.Info(context.Background(), "stats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
				cmds, _ = strconv.Atoi(v)
			}
			if v, ok := strings.CutPrefix(line, "total_reads_processed:"); ok {
				reads, _ = strconv.Atoi(v)
			}
		}
		return cmds, reads
	}
	const n, workers = 4000, 32
	keys := make([]replay.Key, n)
	for i := range keys {
		keys[i] = newKey()
	}
	firsts := make([]atomic.Int32, n)
	cmds0, reads0 := stats()
	var wg sync.WaitGroup
	for _, s := range reps {
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += workers {
					first, err := seen(t, s, keys[i])
					if err != nil {
						t.Error(err)
						return
					}
					if first {
						firsts[i].Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	cmds1, reads1 := stats()
	for i := range firsts {
		if got := firsts[i].Load(); got != 1 {
			t.Fatalf("request %d was new to %d replicas, want 1", i, got)
		}
	}
	// The INFO commands, and the replicas' probes, are among those counted.
	sets, reads := cmds1-cmds0, reads1-reads0
	t.Logf("%d commands in %d reads by Redis: %.1f a read", sets, reads, float64(sets)/float64(reads))
	if sets < 2*n || float64(sets) < 2*float64(reads) {
		t.Errorf("Redis read %d times for %d commands, want batches of two or more", reads, sets)
	}
}

// TestBatchOutlivesItsRequests: while Redis holds back writes, a check
// whose request ends returns at once, its SET still goes out with its
// batch, and the checks queued behind a batch are answered once Redis
// lets it through.
func TestBatchOutlivesItsRequests(t *testing.T) {
	r := startRedis(t)
	reps := replicas(t, r, 2, false)
	s := reps[0]
	// Shorter than the Stores' timeout (250 ms): a batch that timed out
	// would be sent again and find its own keys (FirstSeen says why).
	const pause = 150 * time.Millisecond
	if err := s.rdb.Do(context.Background(), "CLIENT", "PAUSE", pause.Milliseconds(), "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ahead, behind, gone := newKey(), newKey(), newKey()
	answers := make(chan error, 2)
	ask := func(k replay.Key) {
		first, err := seen(t, s, k)
		if err == nil && !first {
			err = errors.New("a new request was taken for a replay")
		}
		answers <- err
	}
	// state waits, for less than the pause, until the batches are as
	// wanted.
	state := func(what string, want func(q *checkBatches) bool) {
		for deadline := time.Now().Add(pause / 2); ; {
			s.batches.mu.Lock()
			ok := want(&s.batches)
			s.batches.mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	go ask(ahead) // sends the first batch, which Redis holds
	state("the first check did not start its batch", func(q *checkBatches) bool { return q.busy })
	go ask(behind) // the next batch's first check: it sends it
	state("the second check did not queue behind the first batch", func(q *checkBatches) bool { return q.next != nil })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	now := time.Now()
	if _, err := s.FirstSeen(ctx, gone, now.Add(2*time.Minute), now); !errors.Is(err, context.Canceled) {
		t.Fatalf("a check whose request ended answered %v, want context.Canceled", err)
	}
	if waited := time.Since(start); waited >= pause {
		t.Fatalf("a check whose request ended waited %v, for Redis", waited)
	}
	for range 2 {
		if err := <-answers; err != nil {
			t.Fatal(err)
		}
	}
	// The ended request's SET went out with its batch: the other replica
	// refuses it as a replay.
	mustFirst(t, reps[1], gone, false, "the request whose check was left")
}
