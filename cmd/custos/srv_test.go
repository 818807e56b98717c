package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/custos-kx/custos/internal/dnstest"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/httpapi"
	"github.com/custos-kx/custos/keystore"
)

// custos --srv against a DNS server on loopback that the test starts and
// points resolver at; nothing reaches the network.

// useTestDNS starts a DNS server on 127.0.0.1 and makes it the one custos
// asks for the rest of the test.
func useTestDNS(t *testing.T) *dnstest.Server {
	t.Helper()
	d := dnstest.Start(t)
	saved := resolver
	resolver = d.Resolver
	t.Cleanup(func() { resolver = saved })
	return d
}

// custos runs the command line args and returns its exit status, stdout
// and stderr.
func custos(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, nil, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestSrvExchange finds a real service on loopback by SRV, exchanges with
// it, and calls it with a path only.
func TestSrvExchange(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	reg, err := accounts.Open(ctx, filepath.Join(dir, "custos.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	ks, err := keystore.NewSoftware(nil)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "alice.key")
	key, err := client.GenerateKey(keyFile, exchange.ModP2048)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Add(ctx, "alice@example.com", key.Public()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		Engine: &exchange.Server{Keystore: ks, Accounts: reg},
		Logger: slog.New(slog.DiscardHandler),
		Limits: httpapi.Limits{PerAddress: -1, PerAccount: -1},
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())

	z := useTestDNS(t)
	// localhost comes from /etc/hosts, not from DNS; nothing listens on
	// port 1, so the test fails if it picks the priority-20 record.
	z.Set("example.test",
		net.SRV{Priority: 20, Weight: 1, Port: 1, Target: "localhost."},
		net.SRV{Priority: 10, Weight: 1, Port: uint16(port), Target: "localhost."},
	)
	origin := "http://localhost:" + u.Port()
	common := []string{"--key", keyFile, "--state", filepath.Join(dir, "state"), "--srv-scheme", "http"}

	code, _, stderr := custos(t, append(common, "--srv", "example.test", "exchange")...)
	if code != 0 || !strings.Contains(stderr, "session established with "+origin) {
		t.Fatalf("exchange: exit %d:\n%s", code, stderr)
	}
	t.Setenv("CUSTOS_SRV", "example.test")
	code, stdout, stderr := custos(t, append(common, "get", "/v1/whoami")...)
	if code != 0 || !strings.Contains(stdout, `"account":"alice@example.com"`) {
		t.Fatalf("get: exit %d:\n%s%s", code, stdout, stderr)
	}
}

func TestSrvErrors(t *testing.T) {
	z := useTestDNS(t)
	z.Set("closed.test", net.SRV{Target: "."})
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "alice.key")
	if _, err := client.GenerateKey(keyFile, exchange.P256); err != nil {
		t.Fatal(err)
	}
	common := []string{"--key", keyFile, "--state", filepath.Join(dir, "state")}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--srv", "nowhere.test", "exchange"}, 1,
			"custos: client: nowhere.test has no DNS SRV record _jwcexchange._tcp.nowhere.test: publish one, or give the service's URL instead\n"},
		{[]string{"--srv", "closed.test", "get", "/v1/whoami"}, 1,
			"the DNS SRV record _jwcexchange._tcp.closed.test says the service is not available at closed.test"},
		{[]string{"--srv", "example.test", "get", "https://api.example.test/v1/whoami"}, 2,
			`give only a path, like /v1/whoami, not "https://api.example.test/v1/whoami"`},
		{[]string{"--srv", "https://example.test", "rekey"}, 2,
			`--srv takes a domain, like example.com, not "https://example.test"`},
		{[]string{"exchange"}, 2,
			"no service: give its URL, or --srv DOMAIN to find it by DNS"},
		{[]string{"--srv", "example.test", "--srv-scheme", "ftp", "exchange"}, 2,
			"--srv-scheme"},
	} {
		code, _, stderr := custos(t, append(common, c.args...)...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("custos %s: exit %d, stderr:\n%s\nwant exit %d and %q", strings.Join(c.args, " "), code, stderr, c.code, c.want)
		}
	}
}
