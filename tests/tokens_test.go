package tests

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/softhsm"
)

// TestServeOnNSS runs custosd on NSS softokn, the second token the tests
// run on: loaded directly with --pkcs11-init-args, its self-test finds
// that NSS's AES-GCM seal fails and seals tickets with AES-CBC-PAD and
// HMAC-SHA-256, and clients of both profiles exchange, call whoami, echo
// encrypted and rekey.
func TestServeOnNSS(t *testing.T) {
	nss := softhsm.NewNSS(t)
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte(nss.PIN), 0o600); err != nil {
		t.Fatal(err)
	}
	dsn := filepath.Join(dir, "custos.db")
	env := append(os.Environ(),
		"CUSTOS_PKCS11_MODULE="+nss.Module,
		"CUSTOS_PKCS11_INIT_ARGS="+nss.InitArgs,
		"CUSTOS_TOKEN_LABEL="+nss.Label,
		"CUSTOS_PIN_FILE="+pinFile,
		"CUSTOS_DB="+dsn,
		"CUSTOS_RATE_PER_ADDRESS=0", "CUSTOS_RATE_PER_ACCOUNT=0",
	)
	// Without its initialisation arguments NSS refuses to start, and
	// custosd says so.
	if out, err := tryCustosd(t, append(env, "CUSTOS_PKCS11_INIT_ARGS="), "init"); err == nil || !strings.Contains(out, "CKR_ARGUMENTS_BAD") {
		t.Fatalf("NSS without init args: %v\n%s", err, out)
	}
	out := runCustosd(t, env, "init")
	if !strings.Contains(out, "serves modp2048 and p256; seals tickets with AES-256-CBC-PAD + HMAC-SHA-256") {
		t.Fatalf("custosd init on NSS:\n%s", out)
	}
	reg, err := accounts.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[exchange.Profile]*exchange.ClientKey{}
	for _, p := range exchange.Profiles {
		keys[p], _ = exchange.GenerateClientKey(rand.Reader, p)
		if err := reg.Add(context.Background(), "alice@example.com", keys[p].Public()); err != nil {
			t.Fatal(err)
		}
	}
	reg.Close()
	r := startReplica(t, env)
	for _, p := range exchange.Profiles {
		tr := &client.Transport{Key: keys[p], State: &client.State{Dir: t.TempDir()}}
		hc := &http.Client{Transport: tr}
		if who := whoami(t, hc, r.url); who["credential_kid"] != keys[p].Public().KeyID() {
			t.Fatalf("%s: whoami %v", p, who)
		}
		enc := &http.Client{Transport: &client.Transport{Key: keys[p], State: tr.State, Encrypt: true}}
		resp, err := enc.Post(r.url+"/v1/echo", "text/plain", strings.NewReader("over NSS"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "over NSS" {
			t.Fatalf("%s: encrypted echo %d %q", p, resp.StatusCode, b)
		}
		if err := tr.Rekey(context.Background(), r.url); err != nil {
			t.Fatalf("%s: rekey on NSS: %v", p, err)
		}
		if who := whoami(t, hc, r.url); who["generation"] != float64(1) {
			t.Fatalf("%s: whoami after rekey %v", p, who)
		}
	}
	resp, err := http.Get(r.url + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/readyz on NSS: %v %v", resp, err)
	}
}

// TestServeOnOpenCryptoki runs custosd on opencryptoki's soft token, the
// third implementation: no EC and no AES-GCM, so it serves group 14 only,
// seals with CBC and HMAC, says so, and refuses a P-256 exchange 422.
func TestServeOnOpenCryptoki(t *testing.T) {
	ock := softhsm.NewOpenCryptoki(t)
	dir := t.TempDir()
	dsn := filepath.Join(dir, "custos.db")
	env := append(os.Environ(),
		"CUSTOS_PKCS11_MODULE="+ock.Module,
		"CUSTOS_TOKEN_LABEL="+ock.Label,
		"CUSTOS_PIN="+ock.PIN,
		"CUSTOS_DB="+dsn,
		"CUSTOS_RATE_PER_ADDRESS=0", "CUSTOS_RATE_PER_ACCOUNT=0",
	)
	out := runCustosd(t, env, "init")
	if !strings.Contains(out, "serves modp2048; seals tickets with AES-256-CBC-PAD + HMAC-SHA-256; not p256: the token lacks CKM_EC_KEY_PAIR_GEN") {
		t.Fatalf("custosd init on opencryptoki:\n%s", out)
	}
	reg, err := accounts.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := exchange.GenerateClientKey(rand.Reader, exchange.ModP2048)
	ec, _ := exchange.GenerateClientKey(rand.Reader, exchange.P256)
	for _, k := range []*exchange.ClientKey{key, ec} {
		if err := reg.Add(context.Background(), "alice@example.com", k.Public()); err != nil {
			t.Fatal(err)
		}
	}
	reg.Close()
	r := startReplica(t, env)
	tr := &client.Transport{Key: key, State: &client.State{Dir: t.TempDir()}}
	hc := &http.Client{Transport: tr}
	if who := whoami(t, hc, r.url); who["credential_kid"] != key.Public().KeyID() {
		t.Fatalf("whoami %v", who)
	}
	enc := &http.Client{Transport: &client.Transport{Key: key, State: tr.State, Encrypt: true}}
	resp, err := enc.Post(r.url+"/v1/echo", "text/plain", strings.NewReader("over opencryptoki"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "over opencryptoki" {
		t.Fatalf("encrypted echo %d %q", resp.StatusCode, b)
	}
	if err := tr.Rekey(context.Background(), r.url); err != nil {
		t.Fatalf("rekey on opencryptoki: %v", err)
	}
	// A P-256 client is told the profile is not served.
	_, msg, _ := ec.NewExchange(rand.Reader, nil)
	body, _ := json.Marshal(msg)
	status, m, _ := post(t, r.url, body, "")
	if status != 422 || m.Error != string(exchange.UnsupportedDomain) || !strings.Contains(m.StatusDescription, "modp2048") {
		t.Fatalf("a P-256 exchange on a token without EC: %d %+v", status, m)
	}
}
