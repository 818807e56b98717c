package tests

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/softhsm"
)

// TestParallelAdminCommands: twenty `custosd account …` commands at once
// against the SQLite registry that a serving custosd is using under load
// all succeed (a transaction that reads before it writes used to get
// "database is locked" at once), and the service keeps serving.
func TestParallelAdminCommands(t *testing.T) {
	dir := t.TempDir()
	env, key := initialised(t, dir, "load@example.com")
	r := startReplica(t, env)

	// Load: exchanges and requests, each exchange reading the registry.
	stop := make(chan struct{})
	var served, failed atomic.Int64
	var load sync.WaitGroup
	for range 2 {
		load.Add(1)
		go func() {
			defer load.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				tr := &client.Transport{Key: key}
				resp, err := (&http.Client{Transport: tr}).Get(r.url + "/v1/whoami")
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
				} else {
					served.Add(1)
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
		}()
	}
	waitFor(t, 10*time.Second, "the load to be served", func() error {
		if n := served.Load(); n < 5 {
			return fmt.Errorf("%d served", n)
		}
		return nil
	})

	var cmds sync.WaitGroup
	errs := make(chan string, 20)
	for i := range 20 {
		cred, _ := exchange.GenerateClientKey(rand.Reader, exchange.ModP2048)
		pub, _ := json.Marshal(exchange.EncodeKey(cred.Public()))
		file := filepath.Join(dir, fmt.Sprintf("cred-%d.pub", i))
		os.WriteFile(file, pub, 0o600)
		account := fmt.Sprintf("user-%d@example.com", i)
		args := []string{"account", "add", account, "--credential", file}
		switch i % 4 {
		case 1:
			args = []string{"account", "list"}
		case 2:
			args = []string{"account", "disable", "load-neighbour@example.com"}
		}
		cmds.Add(1)
		go func() {
			defer cmds.Done()
			cmd := exec.Command(bin(t, "custosd"), args...)
			cmd.Env = env
			if out, err := cmd.CombinedOutput(); err != nil && !strings.Contains(string(out), "no account") {
				errs <- fmt.Sprintf("custosd %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}()
	}
	cmds.Wait()
	close(stop)
	load.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if failed.Load() > 0 {
		t.Errorf("%d requests failed while admin commands ran (%d served)", failed.Load(), served.Load())
	}
	list := runCustosd(t, env, "account", "list")
	for i := 0; i < 20; i += 4 {
		if !strings.Contains(list, fmt.Sprintf("user-%d@example.com", i)) {
			t.Errorf("user-%d was not added:\n%s", i, list)
		}
	}
}

// TestPruneIsSafe: `keys prune` refuses a window shorter than a ticket can
// live, and --dry-run deletes nothing.
func TestPruneIsSafe(t *testing.T) {
	st := softhsm.New(t)
	env := custosdEnv(st, filepath.Join(t.TempDir(), "custos.db"))
	runCustosd(t, env, "init")
	runCustosd(t, env, "keys", "rotate-ticket-key")
	cmd := exec.Command(bin(t, "custosd"), "keys", "prune", "--window", "1h")
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "shorter than a ticket can live") {
		t.Fatalf("prune with a 1h window: %v\n%s", err, out)
	}
	before := runCustosd(t, env, "keys", "list")
	out := runCustosd(t, env, "keys", "prune", "--dry-run", "--window", "200h")
	if after := runCustosd(t, env, "keys", "list"); after != before || !strings.Contains(out, "no key was retired") {
		t.Fatalf("a dry run changed the keys or said %q:\n%s\n%s", out, before, after)
	}
}

// TestStartupErrorsNameWhatToFix: a registry in a directory that does not
// exist is refused, naming it, not created empty; a missing TLS
// certificate stops serve before it says "serving".
func TestStartupErrorsNameWhatToFix(t *testing.T) {
	st := softhsm.New(t)
	dir := t.TempDir()
	env := custosdEnv(st, filepath.Join(dir, "custos.db"))
	runCustosd(t, env, "init")
	try := func(env []string, args ...string) (string, error) { return tryCustosd(t, env, args...) }
	typo := filepath.Join(dir, "nonexistent", "custos.db")
	if out, err := try(env, "account", "list", "--db", typo); err == nil || !strings.Contains(out, filepath.Dir(typo)) || !strings.Contains(out, "does not exist") {
		t.Fatalf("a registry in a missing directory: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Dir(typo)); err == nil {
		t.Fatal("custosd created the mistyped directory")
	}
	out, err := try(append(env, "CUSTOS_LISTEN="+freeAddr(t)), "serve", "--tls-cert", filepath.Join(dir, "missing.pem"), "--tls-key", filepath.Join(dir, "missing.key"))
	if err == nil || !strings.Contains(out, "missing.pem") || strings.Contains(out, "msg=serving") {
		t.Fatalf("serve with a missing certificate: %v\n%s", err, out)
	}
}

// TestAuditTrail: each administrative action is recorded in the registry
// with who did it, and `custosd audit` lists them.
func TestAuditTrail(t *testing.T) {
	st := softhsm.New(t)
	dir := t.TempDir()
	env := custosdEnv(st, filepath.Join(dir, "custos.db"))
	runCustosd(t, env, "init")
	cred, _ := exchange.GenerateClientKey(rand.Reader, exchange.ModP2048)
	pub, _ := json.Marshal(exchange.EncodeKey(cred.Public()))
	file := filepath.Join(dir, "cred.pub")
	os.WriteFile(file, pub, 0o600)
	runCustosd(t, env, "account", "add", "carol@example.com", "--credential", file)
	runCustosd(t, env, "account", "disable", "carol@example.com")
	runCustosd(t, env, "account", "remove-credential", "carol@example.com", cred.Public().KeyID())
	runCustosd(t, env, "keys", "rotate-ticket-key")
	trail := runCustosd(t, env, "audit", "--since", "1h")
	for _, want := range []string{"account add", "account disable", "account remove-credential", cred.Public().KeyID(), "keys rotate-ticket-key", "carol@example.com"} {
		if !strings.Contains(trail, want) {
			t.Errorf("the audit trail lacks %q:\n%s", want, trail)
		}
	}
	if n := strings.Count(trail, "\n"); n != 5 {
		t.Errorf("the trail has %d lines, want a header and 4 actions:\n%s", n, trail)
	}
}

// TestCommandLineSaysWhatItRead: help exits 0; a setting that would be read
// as something else is refused, not taken silently; a config file's whole
// numbers are read as written, and a duration must carry its unit; a
// config key holding a PIN gets its own message; a flag given to the wrong
// command, or one missing, is named with what to do (cmd/custosd's tests
// have the rest).
func TestCommandLineSaysWhatItRead(t *testing.T) {
	st := softhsm.New(t)
	dir := t.TempDir()
	env := custosdEnv(st, filepath.Join(dir, "custos.db"))
	run := func(args ...string) (string, int) {
		cmd := exec.Command(bin(t, "custosd"), args...)
		cmd.Env = env
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	if out, code := run("-h"); code != 0 || !strings.Contains(out, "Commands:") {
		t.Errorf("custosd -h: exit %d\n%s", code, out)
	}
	if out, code := run("--version"); code != 0 || !strings.Contains(out, "custosd") {
		t.Errorf("custosd --version: exit %d\n%s", code, out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"keys", "list", "--insecure-http=yes"}, `--insecure-http: "yes" is not true or false`},
		{[]string{"keys", "list", "--log-format", "yaml"}, `--log-format must be one of "text","json" but got "yaml"`},
		{[]string{"keys", "list", "--window", "200h"}, "--window belongs to keys prune only"},
		{[]string{"account", "add", "alice@example.com"}, "custos keygen --out alice.key > alice.pub"},
	} {
		if out, code := run(c.args...); code != 2 || !strings.Contains(out, c.want) {
			t.Errorf("custosd %v: exit %d, want 2 saying %q\n%s", c.args, code, c.want, out)
		}
	}
	cfg := filepath.Join(dir, "c.json")
	os.WriteFile(cfg, []byte(`{"max-sessions": 1000000}`), 0o600)
	runCustosd(t, env, "init")
	if out, code := run("keys", "list", "--config", cfg); code != 0 {
		t.Errorf("a config file with \"max-sessions\": 1000000: exit %d\n%s", code, out)
	}
	os.WriteFile(cfg, []byte(`{"session-lifetime": 3600}`), 0o600)
	if out, code := run("keys", "list", "--config", cfg); code != 2 || !strings.Contains(out, "not a duration") {
		t.Errorf("a config file with a duration without its unit: exit %d\n%s", code, out)
	}
	os.WriteFile(cfg, []byte(`{"pin": "1234"}`), 0o600)
	if out, code := run("keys", "list", "--config", cfg); code != 2 || !strings.Contains(out, "never hold a PIN") {
		t.Errorf("a config file holding a PIN: exit %d\n%s", code, out)
	}
}
