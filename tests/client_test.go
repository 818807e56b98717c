package tests

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/softhsm"
)

func TestClientPinning(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	key := e.register(t, "alice@example.com")
	tr := &client.Transport{Key: key, PinnedKID: "MAAAA-AAAAA-AAAAA-AAAAA-AAAAA-AAAAA"}
	err := tr.Exchange(context.Background(), e.url)
	var pe *client.PinError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("wrong pin: %v", err)
	}
	// Trust on first use, then a rotated credential is refused.
	state := &client.State{Dir: t.TempDir()}
	tofu := &client.Transport{Key: key, State: state}
	if err := tofu.Exchange(context.Background(), e.url); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ks.RotateCredential(context.Background(), exchange.ModP2048); err != nil {
		t.Fatal(err)
	}
	if err := tofu.Exchange(context.Background(), e.url); !errors.As(err, &pe) {
		t.Fatalf("after the credential changed: %v", err)
	}
}

func TestClientRenewsSessions(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	key := e.register(t, "alice@example.com")

	// Reactive: the client believes sessions last a day and the rekey window
	// a month, so only the service's refusals make it renew.
	tr := &client.Transport{Key: key, Now: e.clock.Now, SessionLifetime: 24 * time.Hour, RekeyWindow: 30 * 24 * time.Hour}
	hc := &http.Client{Transport: tr}
	if who := whoami(t, hc, e.url); who["generation"] != float64(0) {
		t.Fatal(who)
	}
	e.clock.Advance(61 * time.Minute) // TicketExpired: the client rekeys and retries
	if who := whoami(t, hc, e.url); who["generation"] != float64(1) {
		t.Fatalf("after the session expired: %v", who)
	}
	e.clock.Advance(8 * 24 * time.Hour) // the rekey is refused too: the client exchanges
	if who := whoami(t, hc, e.url); who["generation"] != float64(0) {
		t.Fatalf("after the rekey window closed: %v", who)
	}

	// Proactive: with the service's lifetimes, the client rekeys a session
	// about to end before the service would refuse it.
	tr2 := &client.Transport{Key: key, Now: e.clock.Now}
	hc2 := &http.Client{Transport: tr2}
	whoami(t, hc2, e.url)
	e.clock.Advance(58 * time.Minute)
	before := e.refusals(t)
	if who := whoami(t, hc2, e.url); who["generation"] != float64(1) {
		t.Fatalf("a session 2 minutes from its end was not rekeyed first: %v", who)
	}
	if e.refusals(t) != before {
		t.Fatal("the client waited for a refusal instead of rekeying first")
	}
}

// TestCLIContract runs the command-line contract of the README against a
// custosd process: keygen, account add, exchange, get, post --encrypt,
// rekey, account disable.
func TestCLIContract(t *testing.T) {
	st := softhsm.New(t)
	env := custosdEnv(st, sqliteDSN(t))
	runCustosd(t, env, "init")
	r := startReplica(t, env)
	dir := t.TempDir()
	custos := func(args ...string) (string, string, error) {
		cmd := exec.Command(bin(t, "custos"), args...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	keyFile := filepath.Join(dir, "alice.key")
	pub, _, err := custos("keygen", "--out", keyFile)
	if err != nil || !strings.HasPrefix(pub, `{"PublicKeyDH":{"kid":"`) {
		t.Fatalf("keygen: %v %s", err, pub)
	}
	if fi, _ := os.Stat(keyFile); fi == nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v", fi)
	}
	pubFile := filepath.Join(dir, "alice.pub")
	os.WriteFile(pubFile, []byte(pub), 0o644)
	common := []string{"--key", keyFile, "--state", filepath.Join(dir, "state")}

	if _, stderr, err := custos(append(common, "exchange", r.url)...); err == nil || !strings.Contains(stderr, "UnknownCredential") {
		t.Fatalf("unregistered exchange: %v %s", err, stderr)
	}
	runCustosd(t, env, "account", "add", "alice@example.com", "--credential", pubFile)
	if _, stderr, err := custos(append(common, "exchange", r.url)...); err != nil {
		t.Fatalf("exchange: %v %s", err, stderr)
	}
	if out, stderr, err := custos(append(common, "get", r.url+"/v1/whoami")...); err != nil || !strings.Contains(out, `"account":"alice@example.com"`) {
		t.Fatalf("get: %v %s %s", err, out, stderr)
	}
	if out, stderr, err := custos(append(common, "post", r.url+"/v1/echo", "--data", "hi there", "--encrypt")...); err != nil || out != "hi there\n" {
		t.Fatalf("post --encrypt: %v %q %s", err, out, stderr)
	}
	if _, stderr, err := custos(append(common, "rekey", r.url)...); err != nil {
		t.Fatalf("rekey: %v %s", err, stderr)
	}
	if out, _, err := custos(append(common, "get", r.url+"/v1/whoami")...); err != nil || !strings.Contains(out, `"generation":1`) {
		t.Fatalf("get after rekey: %v %s", err, out)
	}
	// custos bench --json prints exactly one object of this shape.
	for _, args := range [][]string{
		{"bench", "exchange", r.url, "-c", "2", "-d", "1s", "--precompute", "--json"},
		{"bench", "exchange", r.url, "-c", "2", "-d", "1s", "--json"},
		{"bench", "requests", r.url + "/v1/whoami", "-c", "2", "-d", "1s", "--json"},
		{"bench", "requests", r.url, "-c", "2", "-d", "1s", "--encrypt", "--json"},
	} {
		out, stderr, err := custos(append(common, args...)...)
		if err != nil {
			t.Fatalf("%v: %v %s", args, err, stderr)
		}
		var res struct {
			Kind        string             `json:"kind"`
			Concurrency int                `json:"concurrency"`
			DurationS   float64            `json:"duration_s"`
			Completed   int                `json:"completed"`
			Throughput  float64            `json:"throughput_per_s"`
			Latency     map[string]float64 `json:"latency_ms"`
			Errors      map[string]int     `json:"errors"`
		}
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&res); err != nil || dec.More() {
			t.Fatalf("%v printed %q: %v", args, out, err)
		}
		if res.Kind != args[1] || res.Concurrency != 2 || res.DurationS < 1 || res.Completed == 0 || res.Throughput <= 0 ||
			len(res.Latency) != 4 || res.Latency["p50"] <= 0 || res.Latency["max"] < res.Latency["p99"] || res.Errors == nil || len(res.Errors) != 0 {
			t.Fatalf("%v: %+v", args, res)
		}
	}

	runCustosd(t, env, "account", "disable", "alice@example.com")
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, stderr, err := custos(append(common, "get", r.url+"/v1/whoami")...)
		if err != nil && strings.Contains(stderr, "AccountDisabled") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a disabled account's session still works after 30 s")
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, stderr, err := custos("get", r.url); err == nil || !strings.Contains(stderr, "--key") {
		t.Fatalf("no key: %v %s", err, stderr)
	}
}
