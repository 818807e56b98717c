package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os/signal"
	"slices"
	"syscall"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/client/bench"
)

func cmdBench(o *options, kind string, b benchFlags, precompute bool, stdout, stderr io.Writer) error {
	u, key, err := o.target(b.URL)
	if err != nil {
		return err
	}
	defer key.Zero()
	cfg := bench.Config{
		Kind: kind, Concurrency: b.Concurrency, Duration: b.Duration, Key: key,
		Precompute: precompute, Encrypt: o.Encrypt, Progress: stderr,
	}
	switch kind {
	case bench.Exchange:
		cfg.URL = u.Scheme + "://" + u.Host
	case bench.Requests:
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/whoami"
		}
		cfg.URL = u.String()
		cfg.State = &client.State{Dir: o.State}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if precompute {
		fmt.Fprintf(stderr, "custos: precomputing nonce keys for %s…\n", b.Duration)
	}
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if b.JSON {
		b, _ := json.Marshal(res)
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	}
	fmt.Fprintf(stdout, "%s against %s, %d in flight, %.1f s\n", res.Kind, cfg.URL, res.Concurrency, res.DurationS)
	fmt.Fprintf(stdout, "  completed   %d\n", res.Completed)
	fmt.Fprintf(stdout, "  throughput  %.0f/s\n", res.Throughput)
	fmt.Fprintf(stdout, "  latency ms  p50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n", res.Latency.P50, res.Latency.P90, res.Latency.P99, res.Latency.Max)
	if len(res.Errors) == 0 {
		fmt.Fprintf(stdout, "  errors      none\n")
	}
	for _, code := range slices.Sorted(maps.Keys(res.Errors)) {
		fmt.Fprintf(stdout, "  errors      %-24s %d\n", code, res.Errors[code])
	}
	return nil
}
