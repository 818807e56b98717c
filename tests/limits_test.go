package tests

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/httpapi"
	"github.com/custos-kx/custos/softhsm"
)

// exchangeStatus runs one exchange for key and returns the HTTP status,
// the SPEC code and the Retry-After header.
func exchangeStatus(t *testing.T, url string, key *exchange.ClientKey) (int, string, string) {
	t.Helper()
	_, msg, _ := key.NewExchange(rand.Reader, nil)
	body, _ := json.Marshal(msg)
	status, resp, h := post(t, url, body, "")
	return status, resp.Error, h.Get("Retry-After")
}

func TestRateLimits(t *testing.T) {
	t.Run("per address", func(t *testing.T) {
		e := newEnv(t, sqliteDSN(t), func(c *httpapi.Config) {
			c.Limits = httpapi.Limits{PerAddress: 1, AddressBurst: 3, PerAccount: -1}
		})
		key := e.register(t, "alice@example.com")
		sess := rawExchange(t, e.url, key) // 1 of 3
		for i := 0; i < 2; i++ {
			if st, code, _ := exchangeStatus(t, e.url, key); st != 200 {
				t.Fatalf("exchange %d within the burst: %d %s", i+2, st, code)
			}
		}
		st, code, retry := exchangeStatus(t, e.url, key)
		if st != http.StatusTooManyRequests || code != string(exchange.RateLimited) || retry != "1" {
			t.Fatalf("beyond the burst: %d %s Retry-After %q", st, code, retry)
		}
		// A rekey from the same address is counted too.
		if st, _, _ := exchangeStatus(t, e.url, key); st != http.StatusTooManyRequests {
			t.Fatalf("still limited: %d", st)
		}
		// Authenticated requests are not exchanges: they go on.
		resp, body := e.send(t, sess, request{method: "GET", path: "/v1/whoami"})
		if resp.StatusCode != 200 {
			t.Fatalf("whoami while limited: %d %s", resp.StatusCode, body)
		}
		e.clock.Advance(time.Second)
		if st, code, _ := exchangeStatus(t, e.url, key); st != 200 {
			t.Fatalf("a second later: %d %s", st, code)
		}
	})
	t.Run("per account", func(t *testing.T) {
		e := newEnv(t, sqliteDSN(t), func(c *httpapi.Config) {
			c.Limits = httpapi.Limits{PerAddress: -1, PerAccount: 0.5, AccountBurst: 2}
		})
		alice, alice2 := e.register(t, "alice@example.com"), e.register(t, "alice@example.com")
		bob := e.register(t, "bob@example.com")
		exchangeStatus(t, e.url, alice)
		exchangeStatus(t, e.url, alice2)
		st, code, retry := exchangeStatus(t, e.url, alice)
		if st != http.StatusTooManyRequests || code != string(exchange.RateLimited) || retry != "2" {
			t.Fatalf("third exchange of the account: %d %s Retry-After %q", st, code, retry)
		}
		if st, code, _ := exchangeStatus(t, e.url, bob); st != 200 {
			t.Fatalf("another account: %d %s", st, code)
		}
	})
	t.Run("queue bound", func(t *testing.T) {
		e := newEnv(t, sqliteDSN(t), func(c *httpapi.Config) {
			c.MaxExchanges = 1
			c.Limits = httpapi.Limits{PerAddress: -1, PerAccount: -1, MaxQueued: 2}
		})
		key := e.register(t, "alice@example.com")
		var mu sync.Mutex
		counts := map[string]int{}
		var wg sync.WaitGroup
		for range 24 {
			wg.Go(func() {
				st, code, _ := exchangeStatus(t, e.url, key)
				mu.Lock()
				counts[strconv.Itoa(st)+" "+code]++
				mu.Unlock()
			})
		}
		wg.Wait()
		if counts["200 "] == 0 || counts["429 RateLimited"] == 0 || counts["200 "]+counts["429 RateLimited"] != 24 {
			t.Fatalf("24 exchanges at once with one place and two queued: %v", counts)
		}
		if st, code, _ := exchangeStatus(t, e.url, key); st != 200 {
			t.Fatalf("after the burst: %d %s", st, code)
		}
		t.Logf("24 at once: %v", counts)
	})
}

// TestExchangeFloodDoesNotStarveRequests floods the service with exchanges
// (more in flight than the token has sessions) and checks that
// authenticated requests, cached and not, are all served meanwhile, in
// much less time than an exchange waits.
func TestExchangeFloodDoesNotStarveRequests(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	key := e.register(t, "alice@example.com")
	cached := rawExchange(t, e.url, key)
	var fresh []*exchange.Session // tickets the service has not opened yet
	for range 20 {
		fresh = append(fresh, rawExchange(t, e.url, key))
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var exchangeTimes []time.Duration
	defer func() { stop(); wg.Wait() }() // a failure below ends the flood before the test ends
	for range 48 {
		wg.Go(func() {
			for ctx.Err() == nil {
				start := time.Now()
				if st, code, _ := exchangeStatus(t, e.url, key); st != 200 {
					t.Errorf("exchange during the flood: %d %s", st, code)
					return
				}
				mu.Lock()
				exchangeTimes = append(exchangeTimes, time.Since(start))
				mu.Unlock()
			}
		})
	}
	// Measure once the flood is running: it has completed as many
	// exchanges as it has workers, so every worker is looping and the
	// exchanges queue for the service's MaxExchanges places.
	waitFor(t, 10*time.Second, "the flood to complete 48 exchanges", func() error {
		mu.Lock()
		n := len(exchangeTimes)
		mu.Unlock()
		if n < 48 {
			return fmt.Errorf("%d exchanges completed", n)
		}
		return nil
	})
	var requestTimes []time.Duration
	for i := range 100 {
		s := cached
		if i%5 == 0 {
			s = fresh[i/5]
		}
		start := time.Now()
		resp, body := e.send(t, s, request{method: "GET", path: "/v1/whoami"})
		requestTimes = append(requestTimes, time.Since(start))
		if resp.StatusCode != 200 {
			t.Fatalf("request %d during the flood: %d %s", i, resp.StatusCode, body)
		}
	}
	stop()
	wg.Wait()
	med := func(d []time.Duration) time.Duration {
		s := append([]time.Duration(nil), d...)
		for i := range s {
			for j := i + 1; j < len(s); j++ {
				if s[j] < s[i] {
					s[i], s[j] = s[j], s[i]
				}
			}
		}
		return s[len(s)/2]
	}
	rq, ex := med(requestTimes), med(exchangeTimes)
	t.Logf("during the flood: median request %s, median exchange %s (%d exchanges)", rq, ex, len(exchangeTimes))
	// Requests queued behind the flood would take as long as an exchange
	// waits. They take well under a millisecond (0.1–0.9 ms in eight runs
	// here, against the exchanges' 55–70 ms); before exchanges computed
	// in at most GOMAXPROCS CPU slots (exchange/cpu.go), one run in four
	// had them wait 40–70 ms behind sixteen computing exchanges.
	if !raceEnabled && rq > ex/4 {
		t.Errorf("authenticated requests (median %s) are not served well ahead of the flood (median exchange %s)", rq, ex)
	}
}

// TestSlowClientsAreCutOff holds a connection open with half a request
// and checks custosd closes it once the header timeout passes, and still
// serves others meanwhile.
func TestSlowClientsAreCutOff(t *testing.T) {
	st := softhsm.New(t)
	env := custosdEnv(st, sqliteDSN(t))
	runCustosd(t, env, "init")
	r := startReplica(t, env)
	conn, err := net.Dial("tcp", r.url[len("http://"):])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("POST /.well-known/jwcexchange/ HTTP/1.1\r\nHost: x\r\nContent-"))
	start := time.Now()
	if resp, err := http.Get(r.url + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz while a slow client waits: %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	buf := make([]byte, 512)
	for {
		if _, err := conn.Read(buf); err != nil {
			break
		}
	}
	if waited := time.Since(start); waited < 4*time.Second || waited > 10*time.Second {
		t.Fatalf("the slow connection was closed after %s; the header timeout is 5 s", waited)
	}
}

// TestSlowUploadsHoldNoExchangeSlot performs attack 6 of the security
// review: with two exchange slots, two clients that send their headers and
// then trickle their bodies made a normal exchange wait for their timeouts.
// The body is read before a slot is taken, so the exchange is answered at
// once while the slow uploads still hang.
func TestSlowUploadsHoldNoExchangeSlot(t *testing.T) {
	e := newEnv(t, sqliteDSN(t), func(c *httpapi.Config) { c.MaxExchanges = 2 })
	key := e.register(t, "alice@example.com")
	host := strings.TrimPrefix(e.url, "http://")
	for range 2 {
		conn, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("POST /.well-known/jwcexchange/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{\"Exch")); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	_, msg, _ := key.NewExchange(rand.Reader, nil)
	body, _ := json.Marshal(msg)
	status, m, _ := post(t, e.url, body, "")
	if status != 200 || m.Status != 201 {
		t.Fatalf("an exchange beside two slow uploads: %d %+v", status, m)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("an exchange beside two slow uploads took %s", waited)
	}
}
