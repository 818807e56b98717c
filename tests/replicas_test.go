package tests

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/softhsm"
	"github.com/custos-kx/custos/tests/cluster"
	"github.com/custos-kx/custos/tests/pgtest"
)

// replica is a custosd process a test started.
type replica struct {
	*cluster.Replica
	url string
}

func freeAddr(t *testing.T) string {
	addr, err := cluster.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// custosdEnv is the environment of custosd processes on the token st and database dsn.
func custosdEnv(st *softhsm.Token, dsn string, extra ...string) []string {
	return append(os.Environ(), append([]string{
		"SOFTHSM2_CONF=" + st.Conf,
		"CUSTOS_PKCS11_MODULE=" + st.Module,
		"CUSTOS_TOKEN_LABEL=" + st.Label,
		"CUSTOS_PIN=" + st.PIN,
		"CUSTOS_DB=" + dsn,
		// Tests exchange faster than any client (limits_test.go checks the
		// limits); a later entry in extra overrides these.
		"CUSTOS_RATE_PER_ADDRESS=0", "CUSTOS_RATE_PER_ACCOUNT=0",
	}, extra...)...)
}

func runCustosd(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin(t, "custosd"), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("custosd %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// tryCustosd runs custosd and returns what it printed and its error,
// for tests of its refusals.
func tryCustosd(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin(t, "custosd"), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// initialised returns the environment of custosd processes on a fresh
// token (initialised) and a SQLite registry in dir in which account holds
// a new credential, and that credential.
func initialised(t *testing.T, dir, account string) ([]string, *exchange.ClientKey) {
	t.Helper()
	dsn := filepath.Join(dir, "custos.db")
	env := custosdEnv(softhsm.New(t), dsn)
	runCustosd(t, env, "init")
	reg, err := accounts.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	key, _ := exchange.GenerateClientKey(rand.Reader, exchange.ModP2048)
	if err := reg.Add(context.Background(), account, key.Public()); err != nil {
		t.Fatal(err)
	}
	return env, key
}

func startReplica(t *testing.T, env []string) *replica {
	t.Helper()
	return startReplicaAt(t, env, freeAddr(t))
}

// startReplicaAt starts custosd serving on addr, stopped when the test
// ends, its log shown if the test failed.
func startReplicaAt(t *testing.T, env []string, addr string) *replica {
	t.Helper()
	r, err := cluster.StartReplica(bin(t, "custosd"), addr, append(append([]string{}, env...), "CUSTOS_KEY_REFRESH=200ms"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Stop()
		if t.Failed() {
			t.Logf("custosd %s:\n%s", addr, r.Logs())
		}
	})
	return &replica{Replica: r, url: r.URL}
}

// alternate sends each request to the next replica in turn, as a load
// balancer would; the client believes it talks to one origin.
type alternate struct {
	hosts []string
	n     atomic.Int64
	hits  []atomic.Int64
}

func (a *alternate) RoundTrip(r *http.Request) (*http.Response, error) {
	i := int(a.n.Add(1)) % len(a.hosts)
	a.hits[i].Add(1)
	r = r.Clone(r.Context())
	r.URL.Host = a.hosts[i]
	r.Host = a.hosts[i]
	return http.DefaultTransport.RoundTrip(r)
}

func TestReplicasShareTokenAndDatabase(t *testing.T) {
	st := softhsm.New(t)
	dsn := pgtest.Start(t)
	env := custosdEnv(st, dsn)
	kid := initCredential(t, runCustosd(t, env, "init"), "modp2048")

	ctx := context.Background()
	reg, err := accounts.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	key, _ := exchange.GenerateClientKey(rand.Reader, exchange.ModP2048)
	if err := reg.Add(ctx, "alice@example.com", key.Public()); err != nil {
		t.Fatal(err)
	}

	a, b := startReplica(t, env), startReplica(t, env)
	lb := &alternate{hosts: []string{strings.TrimPrefix(a.url, "http://"), strings.TrimPrefix(b.url, "http://")}, hits: make([]atomic.Int64, 2)}
	tr := &client.Transport{Key: key, Base: lb, PinnedKID: kid}
	hc := &http.Client{Transport: tr}
	origin := a.url // what the client believes; lb decides where each request goes

	check := func(stage string, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			resp, err := hc.Get(origin + "/v1/whoami")
			if err != nil {
				t.Fatalf("%s: request %d: %v", stage, i, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), "alice@example.com") {
				t.Fatalf("%s: request %d: %d %s", stage, i, resp.StatusCode, body)
			}
		}
	}
	// One exchange, then requests alternating between the replicas: each
	// accepts the ticket the other issued.
	if err := tr.Exchange(ctx, origin); err != nil {
		t.Fatal(err)
	}
	check("before rotation", 10)
	for round := 0; round < 4; round++ {
		if err := tr.Rekey(ctx, origin); err != nil { // issued by a or b in turn
			t.Fatal(err)
		}
		check(fmt.Sprintf("after rekey %d", round), 4)
	}

	// So far both replicas seal under the one ticket key init made.
	oldKey := activeTicketKey(t, runCustosd(t, env, "keys", "list"))
	for _, r := range []*replica{a, b} {
		if got := sealingKey(t, rawExchange(t, r.url, key).Ticket); got != oldKey {
			t.Fatalf("before rotation, %s sealed a ticket under %s, not the active key %s", r.url, got, oldKey)
		}
	}

	// Rotate the ticket key from a third process; once the replicas have
	// re-read the token (every CUSTOS_KEY_REFRESH), new tickets are sealed
	// under the new key and both still accept each other's.
	out := runCustosd(t, env, "keys", "rotate-ticket-key")
	m := regexp.MustCompile(`new ticket key ([0-9a-f]{16}) is active`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("keys rotate-ticket-key printed %q", out)
	}
	newKey := m[1]
	if newKey == oldKey {
		t.Fatalf("the rotation made no new ticket key: %s", out)
	}
	for _, r := range []*replica{a, b} {
		waitFor(t, 10*time.Second, r.url+" to seal a new ticket under the new key "+newKey, func() error {
			if got := sealingKey(t, rawExchange(t, r.url, key).Ticket); got != newKey {
				return fmt.Errorf("a ticket sealed under %s", got)
			}
			return nil
		})
	}
	for round := 0; round < 4; round++ {
		if err := tr.Exchange(ctx, origin); err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("after rotation, exchange %d", round), 4)
	}
	if lb.hits[0].Load() < 10 || lb.hits[1].Load() < 10 {
		t.Fatalf("requests did not alternate: %d / %d", lb.hits[0].Load(), lb.hits[1].Load())
	}
	keys := runCustosd(t, env, "keys", "list")
	if strings.Count(keys, "\nticket ") != 2 || activeTicketKey(t, keys) != newKey {
		t.Fatalf("keys list after one rotation to %s:\n%s", newKey, keys)
	}
	// A replica does not go back to the old key.
	for _, r := range []*replica{a, b} {
		if got := sealingKey(t, rawExchange(t, r.url, key).Ticket); got != newKey {
			t.Fatalf("after rotation, %s sealed a ticket under %s, not %s", r.url, got, newKey)
		}
	}
}

// sealingKey is the hex id of the key ticket tk is sealed under. SPEC §5:
// Ticket = 0x01 ‖ KeyID(8) ‖ IV(12) ‖ ciphertext‖tag(16).
func sealingKey(t *testing.T, tk []byte) string {
	t.Helper()
	if len(tk) < 1+8+12+16 || tk[0] != 0x01 {
		t.Fatalf("not a version 1 ticket: %x", tk)
	}
	return hex.EncodeToString(tk[1:9])
}

// activeTicketKey is the id of the one active ticket key in the output of
// `custosd keys list` (columns KIND ID CREATED ACTIVE).
func activeTicketKey(t *testing.T, list string) string {
	t.Helper()
	var active []string
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if len(f) == 5 && f[0] == "ticket" && f[4] == "true" {
			active = append(active, f[2])
		}
	}
	if len(active) != 1 {
		t.Fatalf("keys list shows %d active ticket keys:\n%s", len(active), list)
	}
	return active[0]
}

// initCredential is the kid custosd init printed for a profile's credential.
func initCredential(t *testing.T, out, profile string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == profile && f[1] == "credential" {
			return f[2]
		}
	}
	t.Fatalf("custosd init printed no %s credential:\n%s", profile, out)
	return ""
}
