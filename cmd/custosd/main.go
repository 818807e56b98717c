// Command custosd is the Custos service and its administration: it serves
// the jwcexchange key exchange with its keys in a PKCS#11 token, and manages
// those keys and the account registry.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/cmd/internal/cli"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/keystore/p11"
)

const usage = `usage: custosd [flags] COMMAND [ARGS]

Commands:
  init                                create the service credential and a ticket key if absent; print the kid
  serve                               serve the jwcexchange endpoint and authenticated requests
  account add ACCOUNT --credential F  bind the credential in F ({"PublicKeyDH":…}) to ACCOUNT
  account list | disable A | enable A | remove A | remove-credential A KID
  keys list | rotate-ticket-key | rotate-credential | prune [--window D] [--dry-run]
  audit [--since D]                   the administrators' trail: who did what, when

Flags (each also an environment variable, and a key of the --config file):
`

// config is every setting of custosd.
type config struct {
	configFile                   string
	module                       string
	uri                          string
	tokenLabel                   string
	pinFile                      string
	metricsListen                string
	dryRun                       bool
	since                        string
	pinFileFlag                  bool // --pin-file was given on the command line: it wins over CUSTOS_PIN
	tokenLabelSet                bool // --token-label or CUSTOS_TOKEN_LABEL was given
	db                           string
	listen                       string
	tlsCert                      string
	tlsKey                       string
	insecure                     string
	upstream                     string
	session                      string
	rekeyWindow                  string
	pruneWindow                  string
	maxSessions                  string
	maxExch                      string
	ratePerAddr                  string
	ratePerAcct                  string
	keyRefresh                   string
	logFormat                    string
	requestLog, requestLogSample string
	credential                   string
	window                       string
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var c config
	fs := flag.NewFlagSet("custosd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	opt := func(flag, env, def, usage string, v *string) cli.Setting {
		return cli.Setting{Flag: flag, Env: env, Default: def, Usage: usage, Value: v}
	}
	settings := []cli.Setting{
		opt("pkcs11-module", "CUSTOS_PKCS11_MODULE", "", "path of the PKCS#11 library", &c.module),
		opt("pkcs11-uri", "CUSTOS_PKCS11_URI", "", "RFC 7512 URI naming module, token and PIN source (instead of the three flags)", &c.uri),
		opt("token-label", "CUSTOS_TOKEN_LABEL", "custos", "label of the token holding the keys", &c.tokenLabel),
		opt("pin-file", "CUSTOS_PIN_FILE", "", "file holding the token's user PIN (or set CUSTOS_PIN)", &c.pinFile),
		opt("db", "CUSTOS_DB", defaultDB, "account registry: a SQLite file (the default is relative to the working directory; only its directory var is created) or a postgres:// DSN", &c.db),
		opt("listen", "CUSTOS_LISTEN", "127.0.0.1:8443", "address to serve on", &c.listen),
		opt("metrics-listen", "CUSTOS_METRICS_LISTEN", "", "serve /metrics on this address only, not beside the API (e.g. 127.0.0.1:9464)", &c.metricsListen),
		opt("tls-cert", "CUSTOS_TLS_CERT", "", "TLS certificate file (PEM)", &c.tlsCert),
		opt("tls-key", "CUSTOS_TLS_KEY", "", "TLS private key file (PEM)", &c.tlsKey),
		opt("insecure-http", "CUSTOS_INSECURE_HTTP", "false", "serve plain HTTP on an address other than loopback", &c.insecure),
		opt("upstream", "CUSTOS_UPSTREAM", "", "URL to forward authenticated requests to, with the account in Custos-Account", &c.upstream),
		opt("session-lifetime", "CUSTOS_SESSION_LIFETIME", "1h", "how long a session's keys authenticate requests", &c.session),
		opt("rekey-window", "CUSTOS_REKEY_WINDOW", "168h", "how long after an exchange a session may be rekeyed", &c.rekeyWindow),
		opt("prune-window", "CUSTOS_PRUNE_WINDOW", "", "keys prune deletes keys retired longer ago than this (default and least: rekey window + session lifetime)", &c.pruneWindow),
		opt("max-sessions", "CUSTOS_MAX_SESSIONS", "16", "PKCS#11 sessions in the pool (operations on the token at once)", &c.maxSessions),
		opt("rate-per-address", "CUSTOS_RATE_PER_ADDRESS", "20/50", "exchanges and rekeys a second from one client address, and the burst allowed (0: no limit)", &c.ratePerAddr),
		opt("rate-per-account", "CUSTOS_RATE_PER_ACCOUNT", "5/20", "exchanges and rekeys a second for one account, and the burst allowed (0: no limit)", &c.ratePerAcct),
		opt("max-exchanges", "CUSTOS_MAX_EXCHANGES", "0", "exchanges and rekeys computed at once; the rest queue in arrival order (0: twice the CPUs)", &c.maxExch),
		opt("log-format", "CUSTOS_LOG_FORMAT", "text", "log format: text or json", &c.logFormat),
		opt("request-log", "CUSTOS_REQUEST_LOG", "info", "level of the line per answered authenticated request: debug, info, warn or off (refusals are always logged)", &c.requestLog),
		opt("request-log-sample", "CUSTOS_REQUEST_LOG_SAMPLE", "1", "log one answered authenticated request in this many", &c.requestLogSample),
		opt("key-refresh", "CUSTOS_KEY_REFRESH", "30s", "how often serve re-reads the token's keys to pick up rotations by other processes (SIGHUP: now)", &c.keyRefresh),
	}
	cli.Define(fs, settings)
	fs.StringVar(&c.configFile, "config", os.Getenv("CUSTOS_CONFIG"), "JSON config file of flag-named settings (env CUSTOS_CONFIG)")
	fs.StringVar(&c.credential, "credential", "", "account add: file holding the credential's {\"PublicKeyDH\":…}")
	fs.StringVar(&c.window, "window", "", "keys prune: delete keys retired longer ago than this (at least session lifetime + rekey window)")
	fs.BoolVar(&c.dryRun, "dry-run", false, "keys prune: print what would be deleted, delete nothing")
	fs.StringVar(&c.since, "since", "", "audit: only the entries of the last D (e.g. 24h)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	words, err := cli.Parse(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0 // -h asked for the usage, which was printed
	}
	if err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "custosd", version(), runtime.Version())
		return 0
	}
	if err := cli.Resolve(fs, settings, c.configFile); err != nil {
		fmt.Fprintln(stderr, "custosd:", err)
		return 2
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "pin-file":
			c.pinFileFlag = true
		case "token-label":
			c.tokenLabelSet = true
		}
	})
	if os.Getenv("CUSTOS_TOKEN_LABEL") != "" {
		c.tokenLabelSet = true
	}
	if len(words) == 0 {
		fs.Usage()
		return 2
	}
	if err := c.check(); err != nil {
		fmt.Fprintln(stderr, "custosd:", err)
		return 2
	}
	log := newLogger(c.logFormat, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var runErr error
	switch words[0] {
	case "init":
		runErr = cmdInit(ctx, &c, log, stdout)
	case "serve":
		runErr = cmdServe(ctx, &c, log)
	case "account":
		runErr = cmdAccount(ctx, &c, log, words[1:], stdout)
	case "audit":
		runErr = cmdAudit(ctx, &c, stdout)
	case "keys":
		runErr = cmdKeys(ctx, &c, log, words[1:], stdout)
	default:
		fmt.Fprintf(stderr, "custosd: unknown command %q\n", words[0])
		fs.Usage()
		return 2
	}
	var ue usageError
	if errors.As(runErr, &ue) {
		fmt.Fprintln(stderr, "custosd:", runErr)
		return 2
	}
	if runErr != nil {
		fmt.Fprintln(stderr, "custosd:", runErr)
		return 1
	}
	return 0
}

type usageError string

func (e usageError) Error() string { return string(e) }

// check refuses settings that would otherwise be read as something else
// without a word: a boolean that is not one, an unknown log format, two
// ways of naming the token.
func (c *config) check() error {
	if _, err := strconv.ParseBool(c.insecure); err != nil {
		return usageError(fmt.Sprintf("--insecure-http %q is not true or false", c.insecure))
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return usageError(fmt.Sprintf("--log-format %q is not text or json", c.logFormat))
	}
	if c.uri != "" && (c.module != "" || c.tokenLabelSet) {
		return usageError("give the token either as --pkcs11-uri or as --pkcs11-module and --token-label, not both")
	}
	return nil
}

func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

func duration(name, v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, usageError(fmt.Sprintf("--%s %q is not a positive duration (like 1h or 30m)", name, v))
	}
	return d, nil
}

// hsmConfig assembles the token configuration. The PIN comes from, in
// this order: the URI's pin-source; an explicit --pin-file; CUSTOS_PIN; the PIN file of
// CUSTOS_PIN_FILE or the config file; the URI's pin-source — never from
// argv. A URI holding the PIN itself (pin-value) is accepted only from
// the environment.
func (c *config) hsmConfig(log *slog.Logger) (hsm.Config, error) {
	var hc hsm.Config
	if c.uri != "" {
		if hsm.URIHoldsPIN(c.uri) && os.Getenv("CUSTOS_PKCS11_URI") != c.uri {
			return hc, errors.New("the pkcs11-uri holds the PIN (pin-value=), which custosd accepts only from the environment (CUSTOS_PKCS11_URI), never from the command line or the config file; use pin-source=file:PATH instead")
		}
		var err error
		if hc, err = hsm.ParseURI(c.uri); err != nil {
			return hc, err
		}
	}
	if hc.Module == "" {
		hc.Module = c.module
	}
	if hc.TokenLabel == "" {
		hc.TokenLabel = c.tokenLabel
	}
	switch {
	case hc.PIN != "": // the URI's pin-source (or, from the environment, pin-value)
	case c.pinFileFlag:
		pin, err := hsm.ReadPINFile(c.pinFile)
		if err != nil {
			return hc, err
		}
		hc.PIN = pin
	case os.Getenv("CUSTOS_PIN") != "":
		hc.PIN = os.Getenv("CUSTOS_PIN")
	case c.pinFile != "":
		pin, err := hsm.ReadPINFile(c.pinFile)
		if err != nil {
			return hc, err
		}
		hc.PIN = pin
	default:
		return hc, errors.New("no token PIN: set CUSTOS_PIN or CUSTOS_PIN_FILE (or --pin-file)")
	}
	n, err := count("max-sessions", c.maxSessions, 1)
	if err != nil {
		return hc, err
	}
	hc.MaxSessions = n
	hc.Logger = log
	return hc, nil
}

// rateSetting parses "RATE/BURST" (or "RATE", burst = rate); 0 is no limit,
// which httpapi spells as a negative rate.
func rateSetting(name, value string) (float64, int, error) {
	r, b, hasBurst := strings.Cut(value, "/")
	perSecond, err := strconv.ParseFloat(r, 64)
	if err != nil || perSecond < 0 {
		return 0, 0, usageError(fmt.Sprintf("--%s %q is not RATE/BURST with RATE a number of requests a second", name, value))
	}
	if perSecond == 0 {
		return -1, 0, nil
	}
	burst := int(max(1, perSecond))
	if hasBurst {
		if burst, err = count(name, b, 1); err != nil {
			return 0, 0, err
		}
	}
	return perSecond, burst, nil
}

// count parses a whole-number setting of at least least.
// requestLogging reads --request-log and --request-log-sample.
func (c *config) requestLogging() (level slog.Level, off bool, sample int, err error) {
	switch c.requestLog {
	case "off":
		off = true
	case "debug", "info", "warn":
		if err := level.UnmarshalText([]byte(c.requestLog)); err != nil {
			return 0, false, 0, err
		}
	default:
		return 0, false, 0, usageError(fmt.Sprintf("--request-log %q is not one of debug, info, warn, off", c.requestLog))
	}
	sample, err = count("request-log-sample", c.requestLogSample, 1)
	return level, off, sample, err
}

func count(name, value string, least int) (int, error) {
	n, err := strconv.Atoi(value)
	if err != nil || n < least {
		return 0, usageError(fmt.Sprintf("--%s %q is not a whole number of at least %d", name, value, least))
	}
	return n, nil
}

// openKeystore opens the token and its keys.
func (c *config) openKeystore(ctx context.Context, log *slog.Logger) (*hsm.Token, *p11.Keystore, error) {
	hc, err := c.hsmConfig(log)
	if err != nil {
		return nil, nil, err
	}
	tok, err := hsm.Open(ctx, hc)
	if err != nil {
		return nil, nil, err
	}
	ks, err := p11.Open(ctx, tok)
	if err != nil {
		tok.Close()
		return nil, nil, err
	}
	ks.Log = log
	return tok, ks, nil
}

// defaultDB is the embedded registry: a SQLite file under ./var, the one
// directory custosd creates by itself.
const defaultDB = "var/custos.db"

func (c *config) openRegistry(ctx context.Context) (*accounts.Registry, error) {
	if c.db == defaultDB {
		if err := os.MkdirAll(filepath.Dir(defaultDB), 0o700); err != nil {
			return nil, fmt.Errorf("creating the registry's directory %s: %w", c.registryName(), err)
		}
	}
	return accounts.Open(ctx, c.db)
}

// registryName says where the registry is: a SQLite path made absolute
// (the default is relative to the working directory), or the database
// host of a PostgreSQL DSN, never its password.
func (c *config) registryName() string {
	if u, err := url.Parse(c.db); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		return u.Scheme + "://" + u.Host + u.Path
	}
	if abs, err := filepath.Abs(c.db); err == nil {
		return abs
	}
	return c.db
}
