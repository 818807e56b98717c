package tests

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pollInterval is how often waitFor checks its condition.
const pollInterval = 10 * time.Millisecond

// waitFor checks cond every pollInterval until it returns nil, and fails
// the test once timeout has passed without it holding, saying what was
// awaited and what cond reported last. cond returns nil when the
// condition holds, else an error describing what it found instead. Call
// it from the test's goroutine.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s; last: %v", timeout, what, err)
		}
		time.Sleep(pollInterval)
	}
}

// scrape is a client that opens a new connection for every request, so
// that an answer shows the service accepted a connection after any made
// before it.
var scrape = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}

// metric returns the sum of the samples of the counter or gauge name, on
// the /metrics page of the service at base, whose labels include every
// label="value" pair of labels.
func metric(base, name string, labels ...string) (float64, error) {
	resp, err := scrape.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s/metrics: %s", base, resp.Status)
	}
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || !(strings.HasPrefix(rest, "{") || strings.HasPrefix(rest, " ")) {
			continue // a comment, another metric, or one whose name extends name
		}
		i := strings.LastIndexByte(rest, ' ')
		if i < 0 {
			return 0, fmt.Errorf("%s/metrics: a sample without a value: %q", base, line)
		}
		sample, value := rest[:i], rest[i+1:]
		matches := true
		for j := 0; j+1 < len(labels); j += 2 {
			if !strings.Contains(sample, labels[j]+`="`+labels[j+1]+`"`) {
				matches = false
			}
		}
		if !matches {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return 0, fmt.Errorf("%s/metrics: %q: %v", base, line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

// served is what the service at base has answered successfully so far:
// exchanges, rekeys and authenticated requests.
type served struct{ exchanges, rekeys, requests float64 }

func readServed(base string) (served, error) {
	var s served
	var err error
	if s.exchanges, err = metric(base, "custos_exchanges_total", "kind", "exchange", "result", "ok"); err != nil {
		return s, err
	}
	if s.rekeys, err = metric(base, "custos_exchanges_total", "kind", "rekey", "result", "ok"); err != nil {
		return s, err
	}
	s.requests, err = metric(base, "custos_authenticated_requests_total", "result", "ok")
	return s, err
}

// servedAtLeast returns a waitFor condition: the service at base has
// answered successfully at least want.exchanges exchanges, want.rekeys
// rekeys and want.requests authenticated requests more than in since.
func servedAtLeast(base string, since, want served) func() error {
	return func() error {
		now, err := readServed(base)
		if err != nil {
			return err
		}
		got := served{now.exchanges - since.exchanges, now.rekeys - since.rekeys, now.requests - since.requests}
		if got.exchanges < want.exchanges || got.rekeys < want.rekeys || got.requests < want.requests {
			return fmt.Errorf("%v exchanges, %v rekeys and %v requests answered", got.exchanges, got.rekeys, got.requests)
		}
		return nil
	}
}
