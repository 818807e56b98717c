package main

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/exchange"
)

// The command line of custosd, parsed in-process: no token, no registry.

// cleanEnv unsets every CUSTOS_ variable for the rest of the test (t.Setenv
// restores them after it), so that the environment the tests run in
// cannot leak into what they parse; then sets env.
func cleanEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "CUSTOS_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
}

// parseWith parses args under env alone.
func parseWith(t *testing.T, env map[string]string, args ...string) (*config, error) {
	t.Helper()
	cleanEnv(t, env)
	var stdout, stderr bytes.Buffer
	c, err := parse(args, &stdout, &stderr)
	if stdout.Len() > 0 || stderr.Len() > 0 {
		t.Errorf("parsing %q printed %q and %q", args, stdout.String(), stderr.String())
	}
	return c, err
}

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "custos.json")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

type parseCase struct {
	name  string
	env   map[string]string
	args  []string
	check func(*config) bool // for a command line that parses
	want  string             // for one that is refused: part of the error
}

func (pc parseCase) run(t *testing.T) {
	t.Helper()
	c, err := parseWith(t, pc.env, pc.args...)
	switch {
	case pc.want != "":
		if err == nil {
			t.Errorf("%s: %q was accepted, want an error saying %q", pc.name, pc.args, pc.want)
		} else if _, ok := err.(usageError); !ok || !strings.Contains(err.Error(), pc.want) {
			t.Errorf("%s: %q: got %T %q, want a usage error saying %q", pc.name, pc.args, err, err, pc.want)
		}
	case err != nil:
		t.Errorf("%s: %q: %v", pc.name, pc.args, err)
	case !pc.check(c):
		t.Errorf("%s: %q parsed as command %q, settings %+v, account %+v, keys %+v, audit %+v", pc.name, pc.args, c.command, c.settings, c.Account, c.Keys, c.Audit)
	}
}

func TestParseDefaults(t *testing.T) {
	c, err := parseWith(t, nil, "keys", "list")
	if err != nil {
		t.Fatal(err)
	}
	want := settings{
		TokenLabel: "custos", MaxSessions: 0, DB: defaultDB, Listen: "127.0.0.1:8443",
		Session: time.Hour, RekeyWindow: 168 * time.Hour, KeyRefresh: 30 * time.Second, KeepAlive: 15 * time.Second,
		RatePerAddr: "20/50", RatePerAcct: "5/20", LogFormat: "text", RequestLog: "info", RequestLogSample: 1,
		SharedFailure: "closed",
	}
	if c.settings != want {
		t.Errorf("defaults:\n got %+v\nwant %+v", c.settings, want)
	}
	if strings.Join(c.command, " ") != "keys list" || len(c.origin) != 0 {
		t.Errorf("command %q, origins %v", c.command, c.origin)
	}
	if c.Keys.RotateCred.Profile != "all" {
		t.Errorf("rotate-credential's --profile defaults to %q", c.Keys.RotateCred.Profile)
	}
}

func TestParseTypedValues(t *testing.T) {
	for _, pc := range []parseCase{
		{name: "duration", args: []string{"serve", "--session-lifetime", "90m", "--rekey-window=24h"},
			check: func(c *config) bool { return c.Session == 90*time.Minute && c.RekeyWindow == 24*time.Hour }},
		{name: "duration without unit", args: []string{"serve", "--session-lifetime", "5"}, want: `--session-lifetime: expected duration but got "5"`},
		{name: "zero duration", args: []string{"serve", "--key-refresh", "0s"}, want: "--key-refresh 0s is not a positive duration"},
		{name: "negative duration", args: []string{"serve", "--session-lifetime=-1h"}, want: "--session-lifetime -1h0m0s is not a positive duration"},
		{name: "int", args: []string{"serve", "--max-sessions", "64", "--max-exchanges", "3"},
			check: func(c *config) bool { return c.MaxSessions == 64 && c.MaxExch == 3 }},
		{name: "int not a number", args: []string{"serve", "--max-sessions", "many"}, want: `--max-sessions: expected a valid 64 bit int but got "many"`},
		{name: "int out of range", args: []string{"serve", "--max-sessions=-1"}, want: "--max-sessions -1 is less than 0"},
		{name: "bare bool", args: []string{"serve", "--insecure-http"}, check: func(c *config) bool { return c.Insecure }},
		{name: "bool true", args: []string{"serve", "--insecure-http=true"}, check: func(c *config) bool { return c.Insecure }},
		{name: "bool false", args: []string{"serve", "--insecure-http=false"}, check: func(c *config) bool { return !c.Insecure }},
		{name: "bool yes", args: []string{"serve", "--insecure-http=yes"}, want: `--insecure-http: "yes" is not true or false`},
		{name: "bool typo", args: []string{"serve", "--insecure-http=ture"}, want: `--insecure-http: "ture" is not true or false`},
		{name: "enum", args: []string{"serve", "--log-format", "json", "--request-log", "off"},
			check: func(c *config) bool { return c.LogFormat == "json" && c.RequestLog == "off" }},
		{name: "enum refused", args: []string{"serve", "--log-format", "yaml"}, want: `--log-format must be one of "text","json" but got "yaml"`},
		{name: "request log level refused", args: []string{"serve", "--request-log", "loud"}, want: `--request-log must be one of`},
		{name: "setting before the command", args: []string{"--db", "/srv/custos.db", "account", "list"},
			check: func(c *config) bool {
				return c.DB == "/srv/custos.db" && strings.Join(c.command, " ") == "account list"
			}},
		{name: "unknown flag", args: []string{"serve", "--lisen", "127.0.0.1:1"}, want: `unknown flag --lisen, did you mean "--listen"? (custosd serve -h for help)`},
		{name: "no command", args: nil, want: `expected one of "init", "serve"`},
		{name: "no subcommand", args: []string{"keys"}, want: `expected one of "list", "rotate-ticket-key"`},
	} {
		pc.run(t)
	}
}

func TestParseCommandFlags(t *testing.T) {
	for _, pc := range []parseCase{
		{name: "account add", args: []string{"account", "add", "alice@example.com", "--credential", "alice.pub"},
			check: func(c *config) bool {
				return c.Account.Add.Account == "alice@example.com" && c.Account.Add.Credential == "alice.pub" &&
					strings.Join(c.command, " ") == "account add <account>"
			}},
		{name: "account remove-credential", args: []string{"account", "remove-credential", "alice@example.com", "MBUTV"},
			check: func(c *config) bool {
				return c.Account.RemoveCredential.Account == "alice@example.com" && c.Account.RemoveCredential.KID == "MBUTV"
			}},
		{name: "--credential elsewhere", args: []string{"keys", "list", "--credential", "alice.pub"}, want: "--credential belongs to account add only (custosd account add -h shows its flags)"},
		{name: "prune", args: []string{"keys", "prune", "--window", "200h", "--dry-run"},
			check: func(c *config) bool { return c.Keys.Prune.Window == 200*time.Hour && c.Keys.Prune.DryRun }},
		{name: "prune defaults", args: []string{"keys", "prune"},
			check: func(c *config) bool {
				return c.Keys.Prune.Window == 0 && !c.Keys.Prune.DryRun && c.pruneDuration() == 169*time.Hour
			}},
		{name: "prune --prune-window", args: []string{"keys", "prune", "--prune-window", "300h"},
			check: func(c *config) bool { return c.pruneDuration() == 300*time.Hour }},
		{name: "prune --window over --prune-window", args: []string{"keys", "prune", "--prune-window", "300h", "--window", "400h"},
			check: func(c *config) bool { return c.pruneDuration() == 400*time.Hour }},
		{name: "explicit zero window", args: []string{"keys", "prune", "--window", "0s"}, want: "--window 0s is not a positive duration"},
		{name: "--window elsewhere", args: []string{"keys", "list", "--window", "200h"}, want: "--window belongs to keys prune only"},
		{name: "--window before the command", args: []string{"--window", "200h", "keys", "prune"}, want: "--window belongs to keys prune only"},
		{name: "--dry-run elsewhere", args: []string{"keys", "rotate-ticket-key", "--dry-run"}, want: "--dry-run belongs to keys prune only"},
		{name: "audit --since", args: []string{"audit", "--since", "24h"}, check: func(c *config) bool { return c.Audit.Since == 24*time.Hour }},
		{name: "audit, all of it", args: []string{"audit"}, check: func(c *config) bool { return c.Audit.Since == 0 }},
		{name: "--since elsewhere", args: []string{"keys", "prune", "--since", "24h"}, want: "--since belongs to audit only"},
		{name: "--since 0", args: []string{"audit", "--since", "0s"}, want: "--since 0s is not a positive duration"},
		{name: "profile p256", args: []string{"keys", "rotate-credential", "--profile", "p256"},
			check: func(c *config) bool { return c.Keys.RotateCred.Profile == "p256" }},
		{name: "profile modp2048", args: []string{"keys", "rotate-credential", "--profile=modp2048"},
			check: func(c *config) bool { return c.Keys.RotateCred.Profile == "modp2048" }},
		{name: "profile all", args: []string{"keys", "rotate-credential"}, check: func(c *config) bool { return c.Keys.RotateCred.Profile == "all" }},
		{name: "profile refused", args: []string{"keys", "rotate-credential", "--profile", "x448"},
			want: `--profile must be one of "all","modp2048","p256" but got "x448" (custosd keys rotate-credential -h for help)`},
		{name: "--profile elsewhere", args: []string{"keys", "rotate-ticket-key", "--profile", "p256"}, want: "--profile belongs to keys rotate-credential only"},
		{name: "missing argument", args: []string{"account", "disable"}, want: `expected "<account>" (custosd account disable -h for help)`},
	} {
		pc.run(t)
	}
}

// TestAccountAddWithoutCredential: the message says what the file is and
// gives the commands that make and register it, with the account named.
func TestAccountAddWithoutCredential(t *testing.T) {
	for account, want := range map[string][]string{
		"alice@example.com":  {"custos keygen --out alice.key > alice.pub", "custosd account add alice@example.com --credential alice.pub"},
		"bob@example.org":    {"custos keygen --out bob.key > bob.pub", "custosd account add bob@example.org --credential bob.pub"},
		"o'neil@example.com": {"custos keygen --out oneil.key > oneil.pub", `custosd account add 'o'\''neil@example.com' --credential oneil.pub`},
	} {
		cleanEnv(t, nil)
		var stdout, stderr bytes.Buffer
		code := run([]string{"account", "add", account}, &stdout, &stderr)
		out := stderr.String()
		want = append(want, "custosd: account add needs --credential FILE", `{"PublicKeyDH":…} or {"PublicKeyECDH":…}`, "custos keygen printed")
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("account add %s: the message lacks %q:\n%s", account, w, out)
			}
		}
		if code != 2 || stdout.Len() > 0 || strings.Contains(out, "missing flags") {
			t.Errorf("account add %s: exit %d, stdout %q, stderr:\n%s", account, code, stdout.String(), out)
		}
	}
}

func TestParseLayering(t *testing.T) {
	cfg := writeConfig(t, `{"listen": "127.0.0.1:1001", "db": "file.db", "max-sessions": 3, "session-lifetime": "3h", "log-format": "json"}`)
	for _, pc := range []parseCase{
		{name: "file alone", args: []string{"serve", "--config", cfg},
			check: func(c *config) bool {
				return c.Listen == "127.0.0.1:1001" && c.DB == "file.db" && c.MaxSessions == 3 && c.Session == 3*time.Hour &&
					c.LogFormat == "json" && c.RekeyWindow == 168*time.Hour &&
					strings.HasPrefix(c.origin["max-sessions"], `"max-sessions" in the config file`) && c.origin["rekey-window"] == ""
			}},
		{name: "CUSTOS_CONFIG names the file", env: map[string]string{"CUSTOS_CONFIG": cfg}, args: []string{"serve"},
			check: func(c *config) bool { return c.Listen == "127.0.0.1:1001" && c.MaxSessions == 3 }},
		{name: "env over file", env: map[string]string{"CUSTOS_LISTEN": "127.0.0.1:2002", "CUSTOS_SESSION_LIFETIME": "2h", "CUSTOS_MAX_SESSIONS": "7"},
			args: []string{"serve", "--config", cfg},
			check: func(c *config) bool {
				return c.Listen == "127.0.0.1:2002" && c.Session == 2*time.Hour && c.MaxSessions == 7 && c.DB == "file.db" &&
					c.origin["listen"] == "$CUSTOS_LISTEN"
			}},
		{name: "flag over env over file", env: map[string]string{"CUSTOS_LISTEN": "127.0.0.1:2002", "CUSTOS_DB": "env.db"},
			args: []string{"serve", "--config", cfg, "--db", "flag.db", "--max-sessions", "9"},
			check: func(c *config) bool {
				return c.DB == "flag.db" && c.MaxSessions == 9 && c.Listen == "127.0.0.1:2002" && c.Session == 3*time.Hour &&
					c.origin["db"] == "--db" && c.origin["listen"] == "$CUSTOS_LISTEN"
			}},
		{name: "env alone", env: map[string]string{"CUSTOS_INSECURE_HTTP": "true", "CUSTOS_PRUNE_WINDOW": "500h", "CUSTOS_REQUEST_LOG_SAMPLE": "10"},
			args: []string{"keys", "prune"},
			check: func(c *config) bool {
				return c.Insecure && c.pruneDuration() == 500*time.Hour && c.RequestLogSample == 10
			}},
		{name: "env bool yes", env: map[string]string{"CUSTOS_INSECURE_HTTP": "yes"}, args: []string{"serve"},
			want: `--insecure-http: "yes" is not true or false (from envar CUSTOS_INSECURE_HTTP="yes")`},
		{name: "env int", env: map[string]string{"CUSTOS_MAX_SESSIONS": "lots"}, args: []string{"serve"},
			want: `(from envar CUSTOS_MAX_SESSIONS="lots")`},
		{name: "env enum", env: map[string]string{"CUSTOS_LOG_FORMAT": "yaml"}, args: []string{"serve"},
			want: `--log-format must be one of "text","json" but got "yaml"`},
		{name: "env duration refused before the file is read", env: map[string]string{"CUSTOS_SESSION_LIFETIME": "3600"}, args: []string{"serve", "--config", cfg},
			want: `missing unit in duration "3600"`},
		{name: "missing config file", args: []string{"serve", "--config", filepath.Join(t.TempDir(), "absent.json")}, want: "absent.json: no such file or directory"},
	} {
		pc.run(t)
	}
}

func TestConfigFile(t *testing.T) {
	for _, fc := range []struct {
		content string
		check   func(*config) bool
		want    string
	}{
		{content: `{"max-sessions": 1000000}`, check: func(c *config) bool { return c.MaxSessions == 1000000 }},
		{content: `{"max-sessions": 1e6}`, check: func(c *config) bool { return c.MaxSessions == 1000000 }},
		{content: `{"max-sessions": "32"}`, check: func(c *config) bool { return c.MaxSessions == 32 }},
		{content: `{"max-sessions": 1.5}`, want: `--max-sessions: the config file ` /* …path… */},
		{content: `{"max-sessions": 1.5}`, want: `gives 1.5, not a whole number`},
		{content: `{"max-sessions": true}`, want: `gives true, not a whole number`},
		{content: `{"max-sessions": -2}`, want: `--max-sessions -2 is less than 0`},
		{content: `{"session-lifetime": "2h"}`, check: func(c *config) bool { return c.Session == 2*time.Hour }},
		{content: `{"session-lifetime": 3600}`, want: `gives 3600, not a duration: write it as a string with its unit, like "1h"`},
		{content: `{"session-lifetime": "3600"}`, want: `missing unit in duration "3600"`},
		{content: `{"insecure-http": true}`, check: func(c *config) bool { return c.Insecure }},
		{content: `{"insecure-http": "false"}`, check: func(c *config) bool { return !c.Insecure }},
		{content: `{"insecure-http": "yes"}`, want: `--insecure-http: "yes" is not true or false`},
		{content: `{"insecure-http": 1}`, want: `gives 1, not true or false`},
		{content: `{"listen": 8443}`, want: `--listen: the config file`},
		{content: `{"listen": 8443}`, want: `gives 8443, not a string`},
		{content: `{"log-format": "yaml"}`, want: `--log-format must be one of "text","json" but got "yaml"`},
		{content: `{"db": null}`, check: func(c *config) bool { return c.DB == defaultDB }},
		{content: `{"pin-file": "/etc/custos/pin"}`, check: func(c *config) bool {
			return c.PINFile == "/etc/custos/pin" && strings.Contains(c.origin["pin-file"], "in the config file")
		}},
		{content: `{"pin": "1234"}`, want: `has a setting "pin": it may name a PIN file (pin-file), never hold a PIN`},
		{content: `{"PIN": "1234"}`, want: `has a setting "PIN": it may name a PIN file (pin-file), never hold a PIN`},
		{content: `{"user-pin": "1234"}`, want: `never hold a PIN`},
		{content: `{"lisen": "127.0.0.1:1"}`, want: `has an unknown setting "lisen"`},
		{content: `{"config": "other.json"}`, want: `has an unknown setting "config"`},
		{content: `{"window": "200h"}`, want: `has "window", which is a flag of keys prune only, not a setting`},
		{content: `{"credential": "alice.pub"}`, want: `has "credential", which is a flag of account add only`},
		{content: `[{"listen": "127.0.0.1:1"}]`, want: `holds a JSON array, not an object of settings`},
		{content: `null`, want: `holds null, not an object of settings`},
		{content: `{"listen": "127.0.0.1:1"`, want: `is not valid JSON`},
		{content: `{"db": "a.db"} {"db": "b.db"}`, want: `goes on after its JSON object`},
	} {
		cfg := writeConfig(t, fc.content)
		parseCase{name: fc.content, args: []string{"serve", "--config", cfg}, check: fc.check, want: fc.want}.run(t)
	}
}

func TestParseTokenNamedTwice(t *testing.T) {
	const uri = "pkcs11:token=custos?module-path=/usr/lib/softhsm/libsofthsm2.so"
	for _, pc := range []parseCase{
		{name: "the URI alone", args: []string{"keys", "list", "--pkcs11-uri", uri}, check: func(c *config) bool { return c.URI == uri }},
		{name: "the module and label alone", args: []string{"keys", "list", "--pkcs11-module", "/lib/p11.so", "--token-label", "hsm1"},
			check: func(c *config) bool { return c.Module == "/lib/p11.so" && c.TokenLabel == "hsm1" }},
		{name: "two flags", args: []string{"keys", "list", "--pkcs11-uri", uri, "--pkcs11-module", "/lib/p11.so"},
			want: "give the token either as --pkcs11-uri or as --pkcs11-module and --token-label, not both: the URI comes from --pkcs11-uri, the pkcs11-module from --pkcs11-module"},
		{name: "a flag and the environment", env: map[string]string{"CUSTOS_PKCS11_MODULE": "/lib/p11.so"}, args: []string{"keys", "list", "--pkcs11-uri", uri},
			want: "the pkcs11-module from $CUSTOS_PKCS11_MODULE"},
		{name: "the label from the environment", env: map[string]string{"CUSTOS_TOKEN_LABEL": "custos", "CUSTOS_PKCS11_URI": uri}, args: []string{"keys", "list"},
			want: "the URI comes from $CUSTOS_PKCS11_URI, the token-label from $CUSTOS_TOKEN_LABEL"},
		{name: "the label from the file", args: []string{"keys", "list", "--pkcs11-uri", uri, "--config", writeConfig(t, `{"token-label": "custos"}`)},
			want: `the token-label from "token-label" in the config file`},
	} {
		pc.run(t)
	}
}

// TestPINSources: an explicit --pin-file wins over CUSTOS_PIN, which wins
// over CUSTOS_PIN_FILE and the config file's pin-file.
func TestPINSources(t *testing.T) {
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, `{"pin-file": "`+pinFile+`"}`)
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, pc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"CUSTOS_PIN": "from-env"}, []string{"keys", "list", "--pin-file", pinFile}, "from-file"},
		{map[string]string{"CUSTOS_PIN": "from-env", "CUSTOS_PIN_FILE": pinFile}, []string{"keys", "list"}, "from-env"},
		{map[string]string{"CUSTOS_PIN": "from-env"}, []string{"keys", "list", "--config", cfg}, "from-env"},
		{nil, []string{"keys", "list", "--config", cfg}, "from-file"},
		{map[string]string{"CUSTOS_PIN_FILE": pinFile}, []string{"keys", "list"}, "from-file"},
	} {
		c, err := parseWith(t, pc.env, pc.args...)
		if err != nil {
			t.Fatalf("%q: %v", pc.args, err)
		}
		hc, err := c.hsmConfig(discard)
		if err != nil || hc.PIN != pc.want {
			t.Errorf("%q under %v: PIN %q (%v), want %q", pc.args, pc.env, hc.PIN, err, pc.want)
		}
	}
	c, _ := parseWith(t, nil, "keys", "list")
	if _, err := c.hsmConfig(discard); err == nil || !strings.Contains(err.Error(), "no token PIN: set CUSTOS_PIN or CUSTOS_PIN_FILE") {
		t.Errorf("no PIN at all: %v", err)
	}
}

// TestHelpAndVersion: -h, help COMMAND and --version print to stdout and
// exit 0; each command's help shows its own flags.
func TestHelpAndVersion(t *testing.T) {
	cleanEnv(t, nil)
	runOut := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	for _, hc := range []struct {
		args        []string
		want, never []string
	}{
		{[]string{"-h"}, []string{"Usage: custosd <command>", "Commands:", "account add --credential=FILE <account>", "keys prune", "audit", "--pkcs11-uri", "$CUSTOS_LISTEN"}, []string{"--dry-run"}},
		{[]string{"--help"}, []string{"Usage: custosd <command>"}, nil},
		{[]string{"help"}, []string{"Usage: custosd <command>"}, nil},
		{[]string{"init", "-h"}, []string{"Usage: custosd init", "Create a service credential"}, []string{"--window", "--credential"}},
		{[]string{"serve", "--help"}, []string{"Usage: custosd serve", "--listen", "--tls-cert"}, []string{"--window"}},
		{[]string{"keys", "-h"}, []string{"Usage: custosd keys <command>", "rotate-credential"}, nil},
		{[]string{"keys", "prune", "-h"}, []string{"Usage: custosd keys prune", "--window=D", "--dry-run"}, []string{"--credential", "--since"}},
		{[]string{"help", "keys", "prune"}, []string{"Usage: custosd keys prune", "--window=D", "--dry-run"}, []string{"--credential"}},
		{[]string{"help", "keys", "rotate-credential"}, []string{"--profile=\"all\"", "modp2048, p256"}, []string{"--window"}},
		{[]string{"account", "add", "-h"}, []string{"Usage: custosd account add --credential=FILE <account>", `{"PublicKeyDH":…} or`}, []string{"--window"}},
		{[]string{"help", "audit"}, []string{"Usage: custosd audit", "--since=D"}, []string{"--window"}},
	} {
		code, stdout, stderr := runOut(hc.args...)
		if code != 0 || stderr != "" {
			t.Errorf("custosd %q: exit %d, stderr %q", hc.args, code, stderr)
		}
		for _, w := range hc.want {
			if !strings.Contains(stdout, w) {
				t.Errorf("custosd %q lacks %q:\n%s", hc.args, w, stdout)
			}
		}
		for _, n := range hc.never {
			if strings.Contains(stdout, n) {
				t.Errorf("custosd %q shows %q, another command's flag:\n%s", hc.args, n, stdout)
			}
		}
	}
	if _, a, _ := runOut("keys", "prune", "-h"); true {
		if _, b, _ := runOut("help", "keys", "prune"); a != b {
			t.Errorf("keys prune -h and help keys prune differ:\n%s\n%s", a, b)
		}
	}
	code, stdout, stderr := runOut("--version")
	if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "custosd ") || !strings.Contains(stdout, runtime.Version()) {
		t.Errorf("custosd --version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	for _, args := range [][]string{{"help", "nosuch"}, {"help", "keys", "nosuch"}} {
		code, stdout, stderr := runOut(args...)
		if want := "there is no command \"" + strings.Join(args[1:], " ") + "\" (custosd -h lists the commands)"; code != 2 || stdout != "" || !strings.Contains(stderr, want) {
			t.Errorf("custosd %q: exit %d, stdout %q, stderr %q; want 2 saying %q", args, code, stdout, stderr, want)
		}
	}
}

// TestUsageErrorsExit2: a command line that is refused exits 2, prints
// nothing on stdout and one "custosd: " sentence on stderr, and runs no
// command (nothing here opens a token or a registry).
func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"nosuch"},
		{"keys", "list", "--insecure-http=yes"},
		{"keys", "list", "--log-format", "yaml"},
		{"keys", "list", "--window", "1h"},
		{"account", "add", "alice@example.com"},
		{"keys", "list", "--pkcs11-uri", "pkcs11:token=a", "--pkcs11-module", "/lib/p11.so"},
		{"serve", "--listen", "nonsense", "--db", filepath.Join(t.TempDir(), "never", "custos.db")},
	} {
		cleanEnv(t, nil)
		var stdout, stderr bytes.Buffer
		code := run(args, &stdout, &stderr)
		if code != 2 || stdout.Len() > 0 || !strings.HasPrefix(stderr.String(), "custosd: ") {
			t.Errorf("custosd %q: exit %d, stdout %q, stderr %q", args, code, stdout.String(), stderr.String())
		}
	}
}

// TestAccountAddCredentialFile: account add on a SQLite registry (no token
// needed) takes a public key of either profile, and refuses anything else
// saying what the file should hold; a new registry is announced; the audit
// trail names the administrator behind sudo.
func TestAccountAddCredentialFile(t *testing.T) {
	dir := t.TempDir()
	cleanEnv(t, map[string]string{"CUSTOS_DB": filepath.Join(dir, "custos.db")})
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	t.Setenv("SUDO_USER", "custos-test-admin")
	var created bytes.Buffer
	if code := run([]string{"account", "list"}, io.Discard, &created); code != 0 || !strings.Contains(created.String(), `msg="created an empty account registry" registry=`+filepath.Join(dir, "custos.db")) {
		t.Errorf("the first account list: exit %d\n%s", code, created.String())
	}
	created.Reset()
	if code := run([]string{"account", "list"}, io.Discard, &created); code != 0 || created.Len() > 0 {
		t.Errorf("the second account list: exit %d\n%s", code, created.String())
	}
	add := func(account, file string) (int, string) {
		var stdout, stderr bytes.Buffer
		code := run([]string{"account", "add", account, "--credential", file}, &stdout, &stderr)
		return code, stdout.String() + stderr.String()
	}
	for _, p := range exchange.Profiles {
		keyFile := filepath.Join(dir, p.String()+".key")
		k, err := client.GenerateKey(keyFile, p)
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := client.PublicKeyJSON(k)
		account := p.String() + "@example.com"
		if code, out := add(account, write(p.String()+".pub", string(pub)+"\n")); code != 0 || !strings.Contains(out, account+" may now exchange with credential "+k.Public().KeyID()) {
			t.Errorf("a %s public key: exit %d\n%s", p, code, out)
		}
		if code, out := add("other@example.com", keyFile); code != 1 || !strings.Contains(out, "is a credential with its private key, which stays with its owner") {
			t.Errorf("the %s private key file: exit %d\n%s", p, code, out)
		}
	}
	both := `{"PublicKeyDH":…} or {"PublicKeyECDH":…} object that custos keygen printed`
	for content, want := range map[string]string{
		`{}`:                            "does not hold a public key: it should hold the " + both,
		`{"ExchangeRequest": {}}`:       "does not hold a public key: it should hold the " + both,
		`not json`:                      "does not hold a public key, the " + both,
		`{"PublicKeyECDH":{"kid":"x"}}`: "does not hold a public key, the " + both + ": the PublicKeyECDH key has no crv member",
	} {
		if code, out := add("other@example.com", write("bad.pub", content)); code != 1 || !strings.Contains(out, want) || strings.Contains(out, `expected an object tagged "PublicKeyDH"`) {
			t.Errorf("a credential file holding %s: exit %d, want 1 saying %q\n%s", content, code, want, out)
		}
	}
	if code, out := add("other@example.com", filepath.Join(dir, "absent.pub")); code != 1 || !strings.Contains(out, "reading the credential: open ") {
		t.Errorf("a missing credential file: exit %d\n%s", code, out)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"account", "list"}, &stdout, &stderr); code != 0 || strings.Count(stdout.String(), "@example.com") != 2 || strings.Contains(stdout.String(), "other@") {
		t.Errorf("account list: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}
	stdout.Reset()
	if code := run([]string{"audit"}, &stdout, &stderr); code != 0 || strings.Count(stdout.String(), "account add") != 2 || strings.Count(stdout.String(), "(sudo by custos-test-admin)") != 2 {
		t.Errorf("audit: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}
}

// TestServeRefusesBeforeTheToken: serve checks its own settings before it
// opens the token (none is configured here, which would exit 1 saying so).
func TestServeRefusesBeforeTheToken(t *testing.T) {
	dir := t.TempDir()
	for _, sc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--listen", "nonsense"}, `--listen "nonsense" is not HOST:PORT, like 127.0.0.1:8443`},
		{[]string{"serve", "--metrics-listen", "9464"}, `--metrics-listen "9464" is not HOST:PORT`},
		{[]string{"serve", "--listen", "0.0.0.0:8443"}, "refusing plain HTTP on 0.0.0.0:8443, which is not a loopback address"},
		{[]string{"serve", "--upstream", "localhost:9000"}, `--upstream "localhost:9000" is not an absolute URL`},
		{[]string{"serve", "--rate-per-address", "fast"}, `--rate-per-address "fast" is not RATE/BURST`},
		{[]string{"serve", "--rate-per-account", "5/0"}, `--rate-per-account "0" is not a whole number of at least 1`},
		{[]string{"serve", "--tls-cert", filepath.Join(dir, "cert.pem")}, "give both --tls-cert and --tls-key"},
	} {
		cleanEnv(t, nil)
		var stdout, stderr bytes.Buffer
		code := run(sc.args, &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), sc.want) || strings.Contains(stderr.String(), "msg=serving") {
			t.Errorf("custosd %q: exit %d, want 2 saying %q\n%s%s", sc.args, code, sc.want, stdout.String(), stderr.String())
		}
	}
}

// TestTrustedProxies: addresses and prefixes, and a sentence for what is
// neither.
func TestTrustedProxies(t *testing.T) {
	got, err := trustedProxies(" 10.0.0.0/8, 127.0.0.1,::1 ,192.0.2.7/24")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "127.0.0.1/32", "::1/128", "192.0.2.0/24"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range got {
		if got[i].String() != want[i] {
			t.Errorf("entry %d: %s, want %s", i, got[i], want[i])
		}
	}
	if _, err := trustedProxies("10.0.0.0/8,haproxy"); err == nil || !strings.Contains(err.Error(), `"haproxy" is neither an address nor a CIDR prefix`) {
		t.Errorf("a host name was answered %v", err)
	}
}
