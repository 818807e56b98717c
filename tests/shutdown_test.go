package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/client/bench"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/jwc"
	"github.com/custos-kx/custos/softhsm"
)

// TestRotationUnderLoad rotates the ticket-sealing key three times and the
// service credential once while exchanges, authenticated requests and
// rekeys run: not one may fail.
func TestRotationUnderLoad(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	key := e.register(t, "alice@example.com")
	tr := &client.Transport{Key: key}
	if err := tr.Exchange(context.Background(), e.url); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var ex, rq *bench.Result
	var exErr, rqErr error
	wg.Go(func() {
		ex, exErr = bench.Run(ctx, bench.Config{Kind: bench.Exchange, URL: e.url, Concurrency: 3, Duration: time.Minute, Key: key})
	})
	wg.Go(func() {
		rq, rqErr = bench.Run(ctx, bench.Config{Kind: bench.Requests, URL: e.url + "/v1/whoami", Concurrency: 3, Duration: time.Minute, Key: key})
	})
	defer func() { stop(); wg.Wait() }() // a failure below ends the load before the test ends
	rekeys, rekeyFailures := 0, 0
	wg.Go(func() {
		for ctx.Err() == nil {
			if err := tr.Rekey(context.Background(), e.url); err != nil {
				t.Errorf("rekey: %v", err)
				rekeyFailures++
			}
			resp, err := (&http.Client{Transport: tr}).Get(e.url + "/v1/whoami")
			if err != nil || resp.StatusCode != 200 {
				t.Errorf("request after a rekey: %v %v", err, resp)
			} else {
				resp.Body.Close()
			}
			rekeys++
			time.Sleep(20 * time.Millisecond)
		}
	})
	// Every rotation happens under load: the service has answered
	// exchanges, rekeys and requests since the one before (and after the
	// last, before the load stops).
	underLoad := func(stage string) {
		t.Helper()
		since, err := readServed(e.url)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "10 exchanges, 3 rekeys and 30 requests answered "+stage,
			servedAtLeast(e.url, since, served{exchanges: 10, rekeys: 3, requests: 30}))
	}
	underLoad("before the first rotation")
	for i := range 4 {
		if i > 0 {
			underLoad(fmt.Sprintf("after rotation %d", i))
		}
		if i == 2 {
			if _, err := e.ks.RotateCredential(context.Background(), exchange.ModP2048); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := e.ks.RotateTicketKey(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	underLoad("after the last rotation")
	stop()
	wg.Wait()
	if exErr != nil || rqErr != nil {
		t.Fatal(exErr, rqErr)
	}
	t.Logf("during 3 ticket-key rotations and 1 credential rotation: %d exchanges (errors %v), %d requests (errors %v), %d rekeys (%d failed)",
		ex.Completed, ex.Errors, rq.Completed, rq.Errors, rekeys, rekeyFailures)
	if len(ex.Errors)+len(rq.Errors) > 0 || ex.Completed == 0 || rq.Completed == 0 || rekeys == 0 {
		t.Error("the load lost requests to the rotations")
	}
	keys, _ := e.ks.Keys(context.Background())
	if len(keys) != 7 {
		t.Errorf("expected 3 credentials (two group-14, one P-256) and 4 ticket keys, have %d", len(keys))
	}
}

// TestShutdownUnderLoad sends SIGTERM to custosd while a slow request is
// in flight and load runs: the slow request must be answered in full, new
// connections refused, and nothing answered wrongly; a restarted custosd
// must accept the sessions issued before.
func TestShutdownUnderLoad(t *testing.T) {
	st := softhsm.New(t)
	env := custosdEnv(st, sqliteDSN(t))
	runCustosd(t, env, "init")
	r := startReplica(t, env)
	keyFile, pubFile := t.TempDir()+"/alice.key", t.TempDir()+"/alice.pub"
	key, err := client.GenerateKey(keyFile, exchange.ModP2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := client.PublicKeyJSON(key)
	os.WriteFile(pubFile, pub, 0o644)
	runCustosd(t, env, "account", "add", "alice@example.com", "--credential", pubFile)
	state := &client.State{Dir: t.TempDir()}
	tr := &client.Transport{Key: key, State: state}
	if err := tr.Exchange(context.Background(), r.url); err != nil {
		t.Fatal(err)
	}
	sess := rawExchange(t, r.url, key) // a second session, whose keys sign by hand

	// A slow echo: its body trickles in over two seconds.
	body := bytes.Repeat([]byte("x"), 20)
	pr, pw := io.Pipe()
	tok, _ := jwc.SignOnce(sess.AK[:], sess.Ticket, jwc.TypeRequest, covered(&jwc.Claims{Method: "POST", Target: "/v1/echo", IssuedAt: time.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(body)}, nil))
	slow, _ := http.NewRequest("POST", r.url+"/v1/echo", pr)
	slow.ContentLength = int64(len(body))
	slow.Header.Set("Authorization", "JWC "+tok)
	type answer struct {
		status int
		body   string
		sig    string
		err    error
	}
	slowDone := make(chan answer, 1)
	go func() {
		resp, err := http.DefaultClient.Do(slow)
		if err != nil {
			slowDone <- answer{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slowDone <- answer{resp.StatusCode, string(b), resp.Header.Get("JWC-Signature"), nil}
	}()
	var sent atomic.Int64 // bytes of the slow body the client has taken
	go func() {
		for _, c := range body {
			pw.Write([]byte{c})
			sent.Add(1)
			time.Sleep(100 * time.Millisecond)
		}
		pw.Close()
	}()

	before, err := readServed(r.url)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var ex, rq *bench.Result
	wg.Go(func() {
		ex, _ = bench.Run(context.Background(), bench.Config{Kind: bench.Exchange, URL: r.url, Concurrency: 2, Duration: 1500 * time.Millisecond, Key: key})
	})
	wg.Go(func() {
		rq, _ = bench.Run(context.Background(), bench.Config{Kind: bench.Requests, URL: r.url + "/v1/whoami", Concurrency: 4, Duration: 1500 * time.Millisecond, Key: key, State: state})
	})
	// SIGTERM once the slow request is in flight and the load is being
	// served. The client takes the first byte of the body only after it
	// has flushed the request's headers, so custosd has the connection in
	// its accept queue; answers to /metrics on connections made after
	// that show custosd has accepted it (it accepts in order).
	waitFor(t, 10*time.Second, "the client to start sending the slow request's body", func() error {
		if sent.Load() == 0 {
			return errors.New("no byte of the body taken yet")
		}
		return nil
	})
	waitFor(t, 10*time.Second, "custosd to answer 4 exchanges and 20 requests of the load",
		servedAtLeast(r.url, before, served{exchanges: 4, requests: 20}))
	if n := sent.Load(); n == int64(len(body)) {
		t.Fatalf("the slow request was sent in full (%d bytes) before SIGTERM: nothing was in flight", n)
	}
	if err := r.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(r.url, "http://")
	waitFor(t, 10*time.Second, "custosd to refuse new connections after SIGTERM", func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return errors.New("a new connection was accepted")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("dial: %v", err)
		}
		return nil
	})
	if n := sent.Load(); n == int64(len(body)) {
		t.Errorf("custosd refused new connections only once the request in flight at SIGTERM was sent in full")
	}
	wg.Wait()
	a := <-slowDone
	if a.err != nil || a.status != 200 || a.body != string(body) || a.sig == "" {
		t.Fatalf("the request in flight at SIGTERM: %+v", a)
	}
	if err := r.Wait(); err != nil {
		t.Fatalf("custosd exited with %v:\n%s", err, r.Logs())
	}
	t.Logf("around SIGTERM: %d exchanges (errors %v), %d requests (errors %v); the request in flight was answered in full",
		ex.Completed, ex.Errors, rq.Completed, rq.Errors)
	for code := range ex.Errors {
		if code != "transport" {
			t.Errorf("an exchange got %s around SIGTERM", code)
		}
	}
	for code := range rq.Errors {
		if code != "transport" {
			t.Errorf("a request got %s around SIGTERM", code)
		}
	}

	// A new process on the same address accepts the sessions of the old one.
	r2 := startReplicaAt(t, env, strings.TrimPrefix(r.url, "http://"))
	resp, err := (&http.Client{Transport: tr}).Get(r2.url + "/v1/whoami")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("a session from before the restart: %v %v", err, resp)
	}
	resp.Body.Close()
	tok2, _ := jwc.SignOnce(sess.AK[:], sess.Ticket, jwc.TypeRequest, covered(&jwc.Claims{Method: "GET", Target: "/v1/whoami", IssuedAt: time.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(nil)}, nil))
	req, _ := http.NewRequest("GET", r2.url+"/v1/whoami", nil)
	req.Header.Set("Authorization", "JWC "+tok2)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("a ticket issued before the restart: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}
}
