// Package bench is the load generator behind `custos bench`: it drives a
// Custos service with full key exchanges or with authenticated requests
// from many goroutines and reports throughput, latency percentiles and
// errors by SPEC code. Users run it against their own deployments, and
// `make bench` runs it against a local custosd.
package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/wire"
)

// Kinds of load.
const (
	Exchange = "exchange" // full exchanges, each with a fresh nonce key
	Requests = "requests" // authenticated requests on one session
	Plain    = "plain"    // unauthenticated GETs: the baseline requests are compared with
)

// Config says what load to generate.
type Config struct {
	Kind        string
	URL         string // the service's origin for exchanges; the URL to GET otherwise
	Concurrency int
	Duration    time.Duration
	// Key is the client credential (registered with the service) for
	// exchanges and requests.
	Key *exchange.ClientKey
	// Precompute makes the nonce keys and request bodies of the exchanges
	// before the clock starts, and verifies only a sample of responses
	// (after it stops), so that a client machine spends almost nothing per
	// exchange and can saturate the service.
	Precompute bool
	// State keeps the session for requests; nil keeps it in memory.
	State *client.State
	// Encrypt sends requests as JWE and gets JWE responses.
	Encrypt bool
	// Progress, if set, gets a progress line every second.
	Progress io.Writer
	// Transport carries the requests; nil means one tuned for Concurrency.
	Transport http.RoundTripper
}

// Result is what a run measured. Its JSON form is what `custos bench
// --json` prints; outside tools parse exactly these names.
type Result struct {
	Kind        string         `json:"kind"`
	Concurrency int            `json:"concurrency"`
	DurationS   float64        `json:"duration_s"`
	Completed   int            `json:"completed"`
	Throughput  float64        `json:"throughput_per_s"`
	Latency     Latency        `json:"latency_ms"`
	Errors      map[string]int `json:"errors"`
}

// Latency holds percentiles of successful operations, in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// precomputeRate is the exchange rate the precomputed pool is sized for;
// if the service outruns it, the rest are made during the run.
const precomputeRate = 6000

// verifySample is how many precomputed exchanges are finished (witness
// checked) after the run.
const verifySample = 64

// Run generates the load until cfg.Duration has passed or ctx is done.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	if cfg.Duration <= 0 {
		return nil, errors.New("bench: the duration must be positive")
	}
	if cfg.Transport == nil {
		cfg.Transport = &http.Transport{
			MaxIdleConns:        2 * cfg.Concurrency,
			MaxIdleConnsPerHost: 2 * cfg.Concurrency,
			DisableCompression:  true,
		}
	}
	var op func(ctx context.Context, worker int) (ok bool, code string)
	var after func(r *Result)
	switch cfg.Kind {
	case Exchange:
		e, err := newExchanger(cfg)
		if err != nil {
			return nil, err
		}
		op, after = e.do, e.verify
	case Requests, Plain:
		r, err := newRequester(ctx, cfg)
		if err != nil {
			return nil, err
		}
		op = r.do
	default:
		return nil, fmt.Errorf("bench: unknown kind %q (exchange or requests)", cfg.Kind)
	}

	var done atomic.Int64
	var errCount atomic.Int64
	lat := make([][]time.Duration, cfg.Concurrency)
	errs := make([]map[string]int, cfg.Concurrency)
	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	start := time.Now()
	stopProgress := progress(cfg.Progress, start, &done, &errCount)
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		errs[w] = map[string]int{}
		wg.Go(func() {
			for runCtx.Err() == nil {
				t0 := time.Now()
				ok, code := op(runCtx, w)
				if runCtx.Err() != nil && !ok {
					return // cut off by the end of the run, not a service error
				}
				if ok {
					lat[w] = append(lat[w], time.Since(t0))
					done.Add(1)
				} else {
					errs[w][code]++
					errCount.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()

	res := &Result{Kind: cfg.Kind, Concurrency: cfg.Concurrency, DurationS: elapsed.Seconds(), Errors: map[string]int{}}
	var all []time.Duration
	for w := range cfg.Concurrency {
		all = append(all, lat[w]...)
		for k, v := range errs[w] {
			res.Errors[k] += v
		}
	}
	res.Completed = len(all)
	res.Throughput = float64(len(all)) / elapsed.Seconds()
	res.Latency = percentiles(all)
	if after != nil {
		after(res)
	}
	return res, nil
}

func percentiles(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	at := func(q float64) float64 {
		i := int(q * float64(len(d)-1))
		return float64(d[i]) / float64(time.Millisecond)
	}
	return Latency{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: at(1)}
}

// progress rewrites one line on w every second until the returned func is called.
func progress(w io.Writer, start time.Time, done, errs *atomic.Int64) func() {
	if w == nil {
		return func() {}
	}
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				fmt.Fprintln(w)
				return
			case <-t.C:
				s := time.Since(start).Seconds()
				n := done.Load()
				fmt.Fprintf(w, "\r%5.0fs  %9d done  %9.0f/s  %6d errors ", s, n, float64(n)/s, errs.Load())
			}
		}
	}()
	return func() { close(stop); <-finished }
}

// errorCode names a failure: the SPEC code when the service gave one.
func errorCode(err error) string {
	var se *client.ServiceError
	var pe *client.PinError
	switch {
	case errors.As(err, &se) && se.Code != "":
		return se.Code
	case errors.As(err, &se):
		return "HTTP_" + strconv.Itoa(se.Status)
	case errors.As(err, &pe):
		return "PinMismatch"
	case errors.Is(err, exchange.ErrWitness):
		return "BadWitness"
	}
	return "transport"
}

// exchanger runs full exchanges.
type exchanger struct {
	cfg    Config
	pool   []prepared
	next   atomic.Int64
	mu     sync.Mutex
	sample []sampled // precomputed exchanges to finish after the run
}

type prepared struct {
	pending *exchange.PendingExchange
	body    []byte
}

type sampled struct {
	pending *exchange.PendingExchange
	resp    *wire.ExchangeResponse
}

func newExchanger(cfg Config) (*exchanger, error) {
	if cfg.Key == nil {
		return nil, errors.New("bench: exchanges need a registered credential (--key)")
	}
	e := &exchanger{cfg: cfg}
	if cfg.Precompute {
		n := min(int(cfg.Duration.Seconds()*precomputeRate)+cfg.Concurrency, 1_000_000)
		e.pool = make([]prepared, n)
		var wg sync.WaitGroup
		var failed atomic.Bool
		workers := 4
		for w := range workers {
			wg.Go(func() {
				for i := w; i < n; i += workers {
					p, err := e.prepare()
					if err != nil {
						failed.Store(true)
						return
					}
					e.pool[i] = p
				}
			})
		}
		wg.Wait()
		if failed.Load() {
			return nil, errors.New("bench: could not precompute the exchanges")
		}
	}
	return e, nil
}

func (e *exchanger) prepare() (prepared, error) {
	pending, msg, err := e.cfg.Key.NewExchange(rand.Reader, nil)
	if err != nil {
		return prepared{}, err
	}
	body, err := json.Marshal(msg)
	return prepared{pending, body}, err
}

func (e *exchanger) do(ctx context.Context, worker int) (bool, string) {
	var p prepared
	if i := int(e.next.Add(1)) - 1; i < len(e.pool) {
		p = e.pool[i]
		e.pool[i] = prepared{}
	} else {
		var err error
		if p, err = e.prepare(); err != nil {
			return false, "client"
		}
	}
	if e.cfg.Precompute {
		e.mu.Lock()
		keep := len(e.sample) < verifySample
		e.mu.Unlock()
		if !keep {
			// Outside the sample only the status is checked, so that the
			// client spends next to nothing per exchange.
			return postStatus(ctx, e.cfg.Transport, e.cfg.URL+client.WellKnown, p.body)
		}
	}
	resp, err := client.SendExchange(ctx, e.cfg.Transport, e.cfg.URL, p.body, "")
	if err != nil {
		return false, errorCode(err)
	}
	if e.cfg.Precompute {
		e.mu.Lock()
		e.sample = append(e.sample, sampled{p.pending, resp})
		e.mu.Unlock()
		return true, ""
	}
	s, err := p.pending.Finish(resp)
	if err != nil {
		return false, errorCode(err)
	}
	s.Zero()
	return true, ""
}

// postStatus posts body and reports whether the answer is a 200; a refusal
// is decoded for its code.
func postStatus(ctx context.Context, rt http.RoundTripper, endpoint string, body []byte) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return false, "client"
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return false, "transport"
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return false, "transport"
	}
	if resp.StatusCode == http.StatusOK {
		return true, ""
	}
	var m wire.ExchangeResponse
	if wire.Unmarshal(b, &m) == nil && m.Error != "" {
		return false, m.Error
	}
	return false, "HTTP_" + strconv.Itoa(resp.StatusCode)
}

// verify finishes the sampled precomputed exchanges: a response whose
// witness does not verify counts as an error after all.
func (e *exchanger) verify(r *Result) {
	for _, s := range e.sample {
		sess, err := s.pending.Finish(s.resp)
		if err != nil {
			r.Errors[errorCode(err)]++
			r.Completed--
			continue
		}
		sess.Zero()
	}
}

// requester sends GETs, authenticated on one session unless Kind is Plain.
type requester struct {
	cfg Config
	hc  *http.Client
}

func newRequester(ctx context.Context, cfg Config) (*requester, error) {
	r := &requester{cfg: cfg, hc: &http.Client{Transport: cfg.Transport}}
	if cfg.Kind == Plain {
		return r, nil
	}
	if cfg.Key == nil {
		return nil, errors.New("bench: authenticated requests need a registered credential (--key)")
	}
	r.hc.Transport = &client.Transport{Key: cfg.Key, State: cfg.State, Encrypt: cfg.Encrypt, Base: cfg.Transport}
	// The session is made before the clock starts.
	if ok, code := r.do(ctx, 0); !ok {
		return nil, fmt.Errorf("bench: the first request to %s failed: %s", cfg.URL, code)
	}
	return r, nil
}

func (r *requester) do(ctx context.Context, worker int) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.cfg.URL, nil)
	if err != nil {
		return false, "client"
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		return false, errorCode(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if code := client.AuthError(resp); code != "" {
			return false, code
		}
		return false, "HTTP_" + strconv.Itoa(resp.StatusCode)
	}
	return true, ""
}
