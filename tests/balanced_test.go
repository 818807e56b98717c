package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/wire"
	"github.com/custos-kx/custos/softhsm"
	"github.com/custos-kx/custos/tests/cluster"
	"github.com/custos-kx/custos/tests/pgtest"
)

// balanced is the replicated deployment of README's production notes, on
// loopback: custosd replicas sharing one SoftHSM token, one PostgreSQL
// registry and one Redis, behind haproxy (round robin, no affinity).
// Clients talk only to the balancer.
type balanced struct {
	addrs    atomic.Int64 // for next
	env      []string
	dsn      string
	kid      string // the P-256 credential, which clients pin
	redis    *cluster.Redis
	replicas []*cluster.Replica
	lb       *cluster.Balancer
}

// Limits of the balanced deployment: an address is allowed less than an
// account, so that each limit can be shown binding alone.
const (
	balancedPerAddress, balancedAddressBurst = 10, 5
	balancedPerAccount, balancedAccountBurst = 20, 10
)

func startBalanced(t *testing.T, n int) *balanced {
	t.Helper()
	if m := cluster.Missing(); len(m) > 0 {
		msg := "!!! " + strings.Join(m, " and ") + " not installed: the replica tests need them"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	b := &balanced{dsn: pgtest.Start(t)}
	var err error
	if b.redis, err = cluster.StartRedis(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.redis.Stop() })
	b.env = custosdEnv(softhsm.New(t), b.dsn,
		"CUSTOS_SHARED_STORE="+b.redis.URL(),
		"CUSTOS_TRUSTED_PROXIES=127.0.0.1",
		fmt.Sprintf("CUSTOS_RATE_PER_ADDRESS=%d/%d", balancedPerAddress, balancedAddressBurst),
		fmt.Sprintf("CUSTOS_RATE_PER_ACCOUNT=%d/%d", balancedPerAccount, balancedAccountBurst),
		"CUSTOS_KEY_REFRESH=200ms", "CUSTOS_REQUEST_LOG=off")
	b.kid = initCredential(t, runCustosd(t, b.env, "init"), "p256")
	var backends []string
	for range n {
		r := b.startReplica(t)
		b.replicas = append(b.replicas, r)
		backends = append(backends, r.Addr)
	}
	if b.lb, err = cluster.StartBalancer(t.TempDir(), backends, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.lb.Stop()
		if t.Failed() {
			t.Logf("haproxy:\n%s", b.lb.Logs())
		}
	})
	return b
}

// startReplica starts one more replica on the deployment's parts, not
// behind the balancer unless it was started by startBalanced.
func (b *balanced) startReplica(t *testing.T, extraEnv ...string) *cluster.Replica {
	t.Helper()
	return startReplicaAt(t, append(append([]string{}, b.env...), extraEnv...), freeAddr(t)).Replica
}

// next is an address no client has used yet, so that the per-address
// limit, which the deployment's tests show binding once, binds nowhere
// else.
func (b *balanced) next() string {
	n := b.addrs.Add(1)
	return fmt.Sprintf("198.51.%d.%d", 100+n/250, n%250+1)
}

// exchange runs an exchange with the engine alone, through url, from an
// address of its own, so tests can forge requests with the session's keys.
func (b *balanced) exchange(t *testing.T, url string, key *exchange.ClientKey) *exchange.Session {
	t.Helper()
	pending, msg, _ := key.NewExchange(rand.Reader, nil)
	body, _ := json.Marshal(msg)
	status, resp := postFrom(t, url, b.next(), body)
	if status != http.StatusOK {
		t.Fatalf("exchange through %s: %d %s %s", url, status, resp.Error, resp.StatusDescription)
	}
	sess, err := pending.Finish(resp)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// postFrom posts an exchange body to url as if from addr.
func postFrom(t *testing.T, url, addr string, body []byte) (int, *wire.ExchangeResponse) {
	t.Helper()
	status, m, _ := postWith(t, url, body, http.Header{"X-Forwarded-For": {addr}})
	return status, m
}

// account registers a new P-256 credential to account.
func (b *balanced) account(t *testing.T, account string) *exchange.ClientKey {
	t.Helper()
	ctx := context.Background()
	reg, err := accounts.Open(ctx, b.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	key, _ := exchange.GenerateClientKey(rand.Reader, exchange.P256)
	if err := reg.Add(ctx, account, key.Public()); err != nil {
		t.Fatal(err)
	}
	return key
}

// client is a Transport of key through the balancer, whose requests come
// from addr as far as the limits can tell (the balancer, trusted, passes
// the X-Forwarded-For it was given on).
func (b *balanced) client(key *exchange.ClientKey, addr string) (*client.Transport, *http.Client) {
	tr := &client.Transport{Key: key, PinnedKID: b.kid, Base: fromAddr{addr, http.DefaultTransport}}
	return tr, &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// fromAddr sends every request as if from addr.
type fromAddr struct {
	addr string
	base http.RoundTripper
}

func (f fromAddr) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Forwarded-For", f.addr)
	return f.base.RoundTrip(r)
}

// TestReplicasBehindBalancer runs the replica deployment through what
// issue 15 asks of it, in order; the Redis outage comes last.
func TestReplicasBehindBalancer(t *testing.T) {
	b := startBalanced(t, 3)
	t.Run("ReplayToAnotherReplica", b.testReplay)
	t.Run("RenewedTicketOnAnotherReplica", b.testRenewOnce)
	t.Run("AddressLimitAcrossReplicas", b.testAddressLimit)
	t.Run("AccountLimitAcrossReplicas", b.testAccountLimit)
	t.Run("DisableAndRemoveReachEveryReplica", b.testDisable)
	t.Run("TicketKeyRotationUnderLoad", b.testRotation)
	t.Run("ReplicaKilledUnderLoad", b.testKill)
	t.Run("RedisStoppedUnderLoad", b.testRedisOutage)
}

// whoamiOn sends a captured request again, as it was, to the service at url.
func resend(t *testing.T, url string, c *capture) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(c.Method, url+c.Path, bytes.NewReader(c.Body))
	req.Header = c.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// testReplay: an on-path relay in front of the balancer captures a signed
// request and sends it again to each replica directly. Every replica
// refuses it, the one that answered it and the two that never saw it; a
// replica of the same deployment without the shared store (the control)
// accepts it, which is the hole the shared store closes.
func (b *balanced) testReplay(t *testing.T) {
	key := b.account(t, "replay@example.com")
	rl := newRelay(t, b.lb.URL)
	tr := &client.Transport{Key: key, PinnedKID: b.kid}
	hc := &http.Client{Transport: tr}
	resp, err := hc.Get(rl.url + "/v1/whoami")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("whoami through the balancer: %d", resp.StatusCode)
	}
	var captured *capture
	rl.mu.Lock()
	for _, c := range rl.seen {
		if c.Path == "/v1/whoami" {
			captured = c
		}
	}
	rl.mu.Unlock()
	if captured == nil {
		t.Fatal("the relay saw no whoami")
	}
	for i, r := range b.replicas {
		status, body := resend(t, r.URL, captured)
		if status != http.StatusUnauthorized || !strings.Contains(string(body), "already received") {
			t.Errorf("the captured request replayed to replica %d: %d %s; want 401, already received", i, status, body)
		}
	}
	control := b.startReplica(t, "CUSTOS_SHARED_STORE=")
	if status, body := resend(t, control.URL, captured); status != 200 {
		t.Errorf("control: the captured request replayed to a replica without the shared store: %d %s; want 200 (each replica alone knows only what it saw)", status, body)
	}
}

// testRenewOnce: a ticket renewed by a rekey on one replica cannot be
// renewed again on another (SPEC §7), the attack of docs/security.md.
func (b *balanced) testRenewOnce(t *testing.T) {
	key := b.account(t, "renew@example.com")
	e := &env{clock: &clock{}}
	sess := b.exchange(t, b.replicas[0].URL, key)
	if status, m := e.rekey(t, b.replicas[1].URL, sess); status != 200 {
		t.Fatalf("the first rekey, on replica 1: %d %s", status, m.StatusDescription)
	}
	for _, i := range []int{2, 1} {
		status, m := e.rekey(t, b.replicas[i].URL, sess)
		if status != http.StatusUnauthorized || m.Error != string(exchange.BadAuthentication) {
			t.Fatalf("the same ticket rekeyed again on replica %d: %d %s %s; want 401 BadAuthentication", i, status, m.Error, m.StatusDescription)
		}
	}
}

// exchangeFrom posts one exchange of key through url as if from addr and
// returns the status.
func exchangeFrom(t *testing.T, url, addr string, key *exchange.ClientKey) int {
	t.Helper()
	_, msg, _ := key.NewExchange(rand.Reader, nil)
	body, _ := json.Marshal(msg)
	status, _ := postFrom(t, url, addr, body)
	return status
}

// flood sends exchanges through the balancer from 4 goroutines for d and
// returns how many were answered 200, the time from the first to the last
// sent, and any status other than 200 and 429.
func (b *balanced) flood(t *testing.T, d time.Duration, key *exchange.ClientKey, addr func(i int) string) (ok int, span time.Duration) {
	t.Helper()
	var (
		mu          sync.Mutex
		first, last time.Time
		n, other    atomic.Int64
		wg          sync.WaitGroup
		seq         atomic.Int64
	)
	end := time.Now().Add(d)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				sent := time.Now()
				status := exchangeFrom(t, b.lb.URL, addr(int(seq.Add(1))), key)
				mu.Lock()
				if first.IsZero() || sent.Before(first) {
					first = sent
				}
				if sent.After(last) {
					last = sent
				}
				mu.Unlock()
				switch status {
				case 200:
					n.Add(1)
				case 429:
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if other.Load() > 0 {
		t.Fatalf("%d exchanges answered neither 200 nor 429", other.Load())
	}
	return int(n.Load()), last.Sub(first)
}

// withinRate checks that ok exchanges in span is what one limit of rate
// and burst allows, ±10 %, and not what one limit per replica would.
func (b *balanced) withinRate(t *testing.T, what string, ok int, span time.Duration, rate, burst int) {
	t.Helper()
	want := float64(burst) + float64(rate)*span.Seconds()
	t.Logf("%s: %d exchanges allowed in %s across %d replicas; one limit allows %.0f", what, ok, span.Round(time.Millisecond), len(b.replicas), want)
	if float64(ok) < 0.9*want || float64(ok) > 1.1*want {
		t.Errorf("%s: %d exchanges allowed in %s, want %.0f ± 10 %% (%d replicas, each alone, would allow %.0f)", what, ok, span, want, len(b.replicas), want*float64(len(b.replicas)))
	}
}

// testAddressLimit: one address flooding exchanges through the balancer
// gets one address's rate across all replicas together.
func (b *balanced) testAddressLimit(t *testing.T) {
	key := b.account(t, "address-limit@example.com")
	ok, span := b.flood(t, 3*time.Second, key, func(int) string { return "192.0.2.77" })
	b.withinRate(t, "one address", ok, span, balancedPerAddress, balancedAddressBurst)
}

// testAccountLimit: one account exchanging from many addresses gets one
// account's rate across all replicas together.
func (b *balanced) testAccountLimit(t *testing.T) {
	key := b.account(t, "account-limit@example.com")
	ok, span := b.flood(t, 3*time.Second, key, func(i int) string { return fmt.Sprintf("198.18.%d.%d", i/250%250, i%250+1) })
	b.withinRate(t, "one account", ok, span, balancedPerAccount, balancedAccountBurst)
}

// testDisable: an account disabled, and a credential removed, by the admin
// command beside one replica stop their sessions on every replica within
// 30 s.
func (b *balanced) testDisable(t *testing.T) {
	type target struct {
		account string
		admin   func(key *exchange.ClientKey) []string
		code    exchange.Code
		sess    *exchange.Session
	}
	targets := []*target{
		{account: "disabled@example.com", admin: func(*exchange.ClientKey) []string { return []string{"account", "disable", "disabled@example.com"} }, code: exchange.AccountDisabled},
		{account: "removed@example.com", admin: func(k *exchange.ClientKey) []string {
			return []string{"account", "remove-credential", "removed@example.com", k.Public().KeyID()}
		}, code: exchange.UnknownCredential},
	}
	e := &env{clock: &clock{}}
	whoamiOn := func(url string, sess *exchange.Session) (*http.Response, []byte) {
		e.url = url
		return e.send(t, sess, request{method: "GET", path: "/v1/whoami"})
	}
	var keys []*exchange.ClientKey
	for _, c := range targets {
		key := b.account(t, c.account)
		keys = append(keys, key)
		c.sess = b.exchange(t, b.lb.URL, key)
		for _, r := range b.replicas { // every replica has the session open and its status cached
			if resp, body := whoamiOn(r.URL, c.sess); resp.StatusCode != 200 {
				t.Fatalf("%s before: %d %s", c.account, resp.StatusCode, body)
			}
		}
	}
	start := time.Now()
	for i, c := range targets {
		runCustosd(t, b.env, c.admin(keys[i])...)
	}
	for _, c := range targets {
		for i, r := range b.replicas {
			waitFor(t, 30*time.Second-time.Since(start), fmt.Sprintf("replica %d to refuse %s's session %s", i, c.account, c.code), func() error {
				resp, body := whoamiOn(r.URL, c.sess)
				if resp.StatusCode != c.code.Status() || !strings.Contains(string(body), string(c.code)) {
					return fmt.Errorf("%d %s", resp.StatusCode, body)
				}
				return nil
			})
		}
		t.Logf("%s: refused by every replica %s after the command", c.account, time.Since(start).Round(100*time.Millisecond))
	}
}

// load runs workers clients through the balancer, each with a session of
// its own, sending authenticated requests until stop is closed, and
// rekeying every rekeyEvery (0: never), within the per-address limit. It
// returns the requests answered 200 and the failures, by what went wrong.
type load struct {
	ok       atomic.Int64
	rekeys   atomic.Int64
	mu       sync.Mutex
	failures map[string]int
	wg       sync.WaitGroup
	stop     chan struct{}
}

func (b *balanced) startLoad(t *testing.T, workers int, rekeyEvery time.Duration) *load {
	t.Helper()
	l := &load{failures: map[string]int{}, stop: make(chan struct{})}
	ctx := context.Background()
	for w := range workers {
		key := b.account(t, fmt.Sprintf("load-%d-%s@example.com", w, t.Name()))
		tr, hc := b.client(key, fmt.Sprintf("203.0.113.%d", w+1))
		if err := tr.Exchange(ctx, b.lb.URL); err != nil {
			t.Fatal(err)
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			rekeyed := time.Now()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if rekeyEvery > 0 && time.Since(rekeyed) > rekeyEvery {
					rekeyed = time.Now()
					if err := tr.Rekey(ctx, b.lb.URL); err != nil {
						l.fail("rekey: " + err.Error())
						continue
					}
					l.rekeys.Add(1)
				}
				resp, err := hc.Get(b.lb.URL + "/v1/whoami")
				if err != nil {
					l.fail(err.Error())
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					l.fail(fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(body)))
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	return l
}

func (l *load) fail(what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures[what]++
}

// end stops the load and returns the failures.
func (l *load) end() (ok int64, failed int, failures map[string]int) {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.failures {
		failed += n
	}
	return l.ok.Load(), failed, l.failures
}

// waitRequests waits until the load has had n more requests answered.
func (l *load) waitRequests(t *testing.T, n int64) {
	t.Helper()
	target := l.ok.Load() + n
	waitFor(t, 30*time.Second, fmt.Sprintf("%d more requests answered", n), func() error {
		if got := l.ok.Load(); got < target {
			return fmt.Errorf("%d of %d", got, target)
		}
		return nil
	})
}

// testRotation: the ticket key rotated by the admin command while clients
// exchange, rekey and send requests through the balancer: no request fails
// on any replica.
func (b *balanced) testRotation(t *testing.T) {
	l := b.startLoad(t, 6, 250*time.Millisecond)
	l.waitRequests(t, 300)
	out := runCustosd(t, b.env, "keys", "rotate-ticket-key")
	m := regexp.MustCompile(`new ticket key ([0-9a-f]{16}) is active`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("keys rotate-ticket-key printed %q", out)
	}
	key := b.account(t, "rotation-probe@example.com")
	for i, r := range b.replicas {
		waitFor(t, 10*time.Second, fmt.Sprintf("replica %d to seal under the new key %s", i, m[1]), func() error {
			_, msg, _ := key.NewExchange(rand.Reader, nil)
			body, _ := json.Marshal(msg)
			status, resp := postFrom(t, r.URL, b.next(), body)
			switch {
			case status == http.StatusTooManyRequests: // the probe's own account, polled fast
				return errors.New("the probe was rate limited")
			case status != http.StatusOK:
				t.Fatalf("exchange on replica %d: %d %s", i, status, resp.StatusDescription)
			}
			if got := sealingKey(t, resp.Ticket); got != m[1] {
				return fmt.Errorf("a ticket sealed under %s", got)
			}
			return nil
		})
	}
	// Every client rekeys twice more: new tickets, which every replica opens.
	rekeys := l.rekeys.Load()
	waitFor(t, 30*time.Second, "two rekeys per client after the rotation", func() error {
		if n := l.rekeys.Load() - rekeys; n < 12 {
			return fmt.Errorf("%d rekeys", n)
		}
		return nil
	})
	l.waitRequests(t, 300)
	ok, failed, failures := l.end()
	t.Logf("%d requests and %d rekeys answered across the rotation", ok, l.rekeys.Load())
	if failed > 0 {
		t.Fatalf("%d requests failed across a ticket-key rotation: %v", failed, failures)
	}
}

// testKill: one replica killed (SIGKILL) while clients send requests
// through the balancer: at most the requests it had in flight fail (one
// per client at most), and the balancer sends the rest to the others.
func (b *balanced) testKill(t *testing.T) {
	const workers = 8
	l := b.startLoad(t, workers, 250*time.Millisecond)
	l.waitRequests(t, 300)
	victim := b.replicas[len(b.replicas)-1]
	victim.Kill()
	l.waitRequests(t, 1000)
	ok, failed, failures := l.end()
	t.Logf("%d requests answered, %d failed with one replica killed: %v", ok, failed, failures)
	if failed > workers {
		t.Fatalf("%d requests failed when a replica was killed; at most %d (one in flight per client) may: %v", failed, workers, failures)
	}
	b.replicas = b.replicas[:len(b.replicas)-1]
}

// testRedisOutage: Redis killed under load. The replicas fail closed (the
// default): requests are refused 503 RegistryUnavailable, never accepted
// unchecked, and /readyz says not ready; a replica set to fail open keeps
// answering from its own memory and says so. Redis started again, empty,
// the replicas recover without a restart, and a request seen before or
// during the outage is refused on every replica after it.
func (b *balanced) testRedisOutage(t *testing.T) {
	open := b.startReplica(t, "CUSTOS_SHARED_STORE_FAILURE=open")
	eo := &env{url: open.URL, clock: &clock{}}
	openSess := b.exchange(t, open.URL, b.account(t, "fail-open@example.com"))

	// A request answered before the outage, to be replayed after it.
	before := b.captureWhoami(t)

	l := b.startLoad(t, 4, 0)
	l.waitRequests(t, 200)
	b.redis.Stop()

	for i, r := range b.replicas {
		waitFor(t, 10*time.Second, fmt.Sprintf("replica %d to report the shared store down", i), func() error {
			return wantMetric(r.URL, "custos_shared_store_up", 0)
		})
		resp, err := http.Get(r.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("failing closed with Redis down, replica %d's /readyz answered %d, want 503", i, resp.StatusCode)
		}
	}
	// Failing closed: what the load saw since is refusals, 503 with the
	// SPEC's code, and no request answered unchecked.
	answered := l.ok.Load()
	waitFor(t, 10*time.Second, "refusals during the outage", func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		for what, n := range l.failures {
			if n > 0 && outageRefusal(what) {
				return nil
			}
		}
		return fmt.Errorf("failures so far: %v", l.failures)
	})

	// Failing open: the replica answers, refuses a replay to itself, and
	// says what it is doing.
	resp, body := eo.send(t, openSess, request{method: "GET", path: "/v1/whoami"})
	if resp.StatusCode != 200 {
		t.Fatalf("failing open with Redis down: %d %s", resp.StatusCode, body)
	}
	during := b.captureVia(t, open.URL, "during@example.com")
	if status, body := resend(t, open.URL, during); status != http.StatusUnauthorized {
		t.Errorf("failing open, a replay to the same replica during the outage: %d %s, want 401", status, body)
	}
	rr, err := http.Get(open.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	note, _ := io.ReadAll(rr.Body)
	rr.Body.Close()
	if rr.StatusCode != 200 || !strings.Contains(string(note), "this replica alone") {
		t.Errorf("failing open with Redis down, /readyz answered %d %q; want 200 with a note", rr.StatusCode, note)
	}
	if !strings.Contains(open.Logs(), "shared store unreachable") {
		t.Errorf("failing open, the replica did not log that the shared store is unreachable:\n%s", open.Logs())
	}

	if got := l.ok.Load(); got != answered {
		t.Errorf("failing closed, %d requests were answered 200 while every replica reported Redis down", got-answered)
	}
	if err := b.redis.Start(); err != nil {
		t.Fatal(err)
	}
	for i, r := range append(b.replicas, open) {
		waitFor(t, 10*time.Second, fmt.Sprintf("replica %d to use the shared store again", i), func() error {
			return wantMetric(r.URL, "custos_shared_store_up", 1)
		})
	}
	l.waitRequests(t, 200)
	ok, failed, failures := l.end()
	for what := range failures {
		if !outageRefusal(what) {
			t.Errorf("during the outage a request failed otherwise than 503 RegistryUnavailable or the balancer's 503: %s", what)
		}
	}
	t.Logf("Redis stopped under load: %d requests answered before it stopped and after it returned, none while it was down, %d refused 503", ok, failed)

	// The outage is logged once per replica, not once per refusal.
	for i, r := range b.replicas {
		logs := r.Logs()
		if n := strings.Count(logs, "shared store unreachable"); n != 1 || strings.Contains(logs, "code=RegistryUnavailable") {
			t.Errorf("replica %d logged the outage %d times, and its refusals one by one: %v; want once, and no line per refusal", i, n, strings.Contains(logs, "code=RegistryUnavailable"))
		}
	}

	// Nothing wrongly accepted after: Redis came back empty, and still
	// every replica refuses a request seen before or during the outage.
	for i, r := range append(b.replicas, open) {
		for what, c := range map[string]*capture{"before the outage": before, "during the outage (on the fail-open replica)": during} {
			if status, body := resend(t, r.URL, c); status != http.StatusUnauthorized {
				t.Errorf("a request seen %s, replayed to replica %d after Redis returned empty: %d %s, want 401", what, i, status, body)
			}
		}
	}
}

// outageRefusal reports whether a failure of the load is what failing
// closed answers while Redis is down: the replica's 503
// RegistryUnavailable, or, once every replica's /readyz says it cannot
// serve, the balancer's own 503.
func outageRefusal(what string) bool {
	return strings.HasPrefix(what, "503") && (strings.Contains(what, "RegistryUnavailable") || strings.Contains(what, "No server is available"))
}

// captureWhoami sends a whoami through the balancer and returns it as
// sent, for replaying.
func (b *balanced) captureWhoami(t *testing.T) *capture {
	return b.captureVia(t, b.lb.URL, "capture-"+t.Name()+"@example.com")
}

// captureVia sends a whoami for a new account through an on-path relay to
// target and returns the request as it crossed.
func (b *balanced) captureVia(t *testing.T, target, account string) *capture {
	t.Helper()
	key := b.account(t, account)
	rl := newRelay(t, target)
	hc := &http.Client{Transport: &client.Transport{Key: key, PinnedKID: b.kid}}
	resp, err := hc.Get(rl.url + "/v1/whoami")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("whoami via %s: %d", target, resp.StatusCode)
	}
	rl.mu.Lock()
	defer rl.mu.Unlock()
	for _, c := range rl.seen {
		if c.Path == "/v1/whoami" {
			return c
		}
	}
	t.Fatal("the relay saw no whoami")
	return nil
}

func wantMetric(url, name string, want float64) error {
	v, err := metric(url, name)
	if err != nil {
		return err
	}
	if v != want {
		return errors.New(name + " is " + fmt.Sprint(v))
	}
	return nil
}
