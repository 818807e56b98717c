package p11

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/softhsm"
)

// BenchmarkToken measures the token operations an exchange and an
// authenticated request cost, through the session pool, at several
// concurrencies. ns/op is wall time per operation (the inverse of
// throughput); p50 and p99 are per-operation latencies.
func BenchmarkToken(b *testing.B) {
	st := softhsm.New(b)
	tok, err := hsm.Open(context.Background(), hsm.Config{Module: st.Module, TokenLabel: st.Label, PIN: st.PIN})
	if err != nil {
		b.Fatal(err)
	}
	defer tok.Close()
	ks, err := Open(context.Background(), tok)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := ks.Init(ctx); err != nil {
		b.Fatal(err)
	}
	X, _ := ks.Credential(ctx, exchange.ModP2048)
	k, _ := group.GenerateScalar(rand.Reader)
	peer := exchange.DHKey(k.Public())
	XP, _ := ks.Credential(ctx, exchange.P256)
	kp, _ := p256.GenerateScalar(rand.Reader)
	peerP := exchange.ECDHKey(kp.Public())
	plaintext := make([]byte, 260) // the size of a ticket's plaintext
	sealed, _ := ticket.Seal(ctx, ks, rand.Reader, plaintext)

	ops := []struct {
		name string
		fn   func() error
	}{
		{"derive", func() error { _, err := ks.Derive(ctx, X.KeyID(), peer); return err }},
		{"derive-p256", func() error { _, err := ks.Derive(ctx, XP.KeyID(), peerP); return err }},
		{"seal", func() error { _, err := ticket.Seal(ctx, ks, rand.Reader, plaintext); return err }},
		{"open", func() error { _, err := ticket.Open(ctx, ks, sealed); return err }},
	}
	for _, op := range ops {
		for _, g := range []int{1, 2, 8} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", op.name, g), func(b *testing.B) {
				concurrent(b, g, op.fn)
			})
		}
	}
}

// concurrent runs b.N calls of fn spread over g goroutines and reports
// latency percentiles and throughput.
func concurrent(b *testing.B, g int, fn func() error) {
	var next atomic.Int64
	var mu sync.Mutex
	lat := make([]time.Duration, 0, b.N)
	var wg sync.WaitGroup
	cpu0 := processCPU()
	b.ResetTimer()
	for range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if err := fn(); err != nil {
					b.Error(err)
					return
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds())
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
