// Command custosd is the Custos service and its administration: it serves
// the jwcexchange key exchange with its keys in a PKCS#11 token, and manages
// those keys and the account registry.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/keystore/p11"
)

// config is every setting of custosd, and its command line: kong reads a
// flag, else its environment variable, else the --config file's key of the
// flag's name (see configFile).
type config struct {
	Config  kong.ConfigFlag  `name:"config" env:"CUSTOS_CONFIG" placeholder:"FILE" help:"JSON config file of settings keyed by flag name"`
	Version kong.VersionFlag `name:"version" help:"Print the version and exit."`

	settings `embed:"" group:"settings"`

	Init    struct{}   `cmd:"" help:"Create a service credential of each profile the token supports, and a ticket key, where absent; print the credentials."`
	Serve   struct{}   `cmd:"" help:"Serve the jwcexchange endpoint and authenticated requests."`
	Account accountCmd `cmd:"" help:"Manage the account registry."`
	Keys    keysCmd    `cmd:"" help:"Manage the token's keys."`
	Audit   struct {
		Since time.Duration `name:"since" placeholder:"D" help:"only the entries of the last D (e.g. 24h)"`
	} `cmd:"" help:"The administrators' trail: who did what, when."`
	Help struct {
		Command []string `arg:"" optional:"" help:"the command to explain"`
	} `cmd:"" help:"Show the help of a command."`

	pinFileFlag   bool // --pin-file was given on the command line: it wins over CUSTOS_PIN
	tokenLabelSet bool // --token-label or CUSTOS_TOKEN_LABEL was given
}

// settings are the flags every command takes, each with an environment
// variable and a config file key.
type settings struct {
	Module           string        `name:"pkcs11-module" env:"CUSTOS_PKCS11_MODULE" placeholder:"FILE" help:"path of the PKCS#11 library"`
	URI              string        `name:"pkcs11-uri" env:"CUSTOS_PKCS11_URI" placeholder:"URI" help:"RFC 7512 URI naming module, token and PIN source (instead of the three flags)"`
	TokenLabel       string        `name:"token-label" env:"CUSTOS_TOKEN_LABEL" default:"custos" help:"label of the token holding the keys"`
	PINFile          string        `name:"pin-file" env:"CUSTOS_PIN_FILE" placeholder:"FILE" help:"file holding the token's user PIN (or set CUSTOS_PIN)"`
	MaxSessions      int           `name:"max-sessions" env:"CUSTOS_MAX_SESSIONS" default:"16" help:"PKCS#11 sessions in the pool (operations on the token at once)"`
	DB               string        `name:"db" env:"CUSTOS_DB" default:"${defaultDB}" help:"account registry: a SQLite file (the default is relative to the working directory; only its directory var is created) or a postgres:// DSN"`
	Listen           string        `name:"listen" env:"CUSTOS_LISTEN" default:"127.0.0.1:8443" help:"address to serve on"`
	MetricsListen    string        `name:"metrics-listen" env:"CUSTOS_METRICS_LISTEN" placeholder:"ADDR" help:"serve /metrics on this address only, not beside the API (e.g. 127.0.0.1:9464)"`
	TLSCert          string        `name:"tls-cert" env:"CUSTOS_TLS_CERT" placeholder:"FILE" help:"TLS certificate file (PEM)"`
	TLSKey           string        `name:"tls-key" env:"CUSTOS_TLS_KEY" placeholder:"FILE" help:"TLS private key file (PEM)"`
	Insecure         bool          `name:"insecure-http" env:"CUSTOS_INSECURE_HTTP" help:"serve plain HTTP on an address other than loopback"`
	Upstream         string        `name:"upstream" env:"CUSTOS_UPSTREAM" placeholder:"URL" help:"URL to forward authenticated requests to, with the account in Custos-Account"`
	Session          time.Duration `name:"session-lifetime" env:"CUSTOS_SESSION_LIFETIME" default:"1h" help:"how long a session's keys authenticate requests"`
	RekeyWindow      time.Duration `name:"rekey-window" env:"CUSTOS_REKEY_WINDOW" default:"168h" help:"how long after an exchange a session may be rekeyed"`
	PruneWindow      time.Duration `name:"prune-window" env:"CUSTOS_PRUNE_WINDOW" placeholder:"D" help:"keys prune deletes keys retired longer ago than this (default and least: rekey window + session lifetime)"`
	KeyRefresh       time.Duration `name:"key-refresh" env:"CUSTOS_KEY_REFRESH" default:"30s" help:"how often serve re-reads the token's keys to pick up rotations by other processes (SIGHUP: now)"`
	RatePerAddr      string        `name:"rate-per-address" env:"CUSTOS_RATE_PER_ADDRESS" default:"20/50" help:"exchanges and rekeys a second from one client address, and the burst allowed (0: no limit)"`
	RatePerAcct      string        `name:"rate-per-account" env:"CUSTOS_RATE_PER_ACCOUNT" default:"5/20" help:"exchanges and rekeys a second for one account, and the burst allowed (0: no limit)"`
	MaxExch          int           `name:"max-exchanges" env:"CUSTOS_MAX_EXCHANGES" default:"0" help:"exchanges and rekeys computed at once; the rest queue in arrival order (0: twice the CPUs)"`
	LogFormat        string        `name:"log-format" env:"CUSTOS_LOG_FORMAT" default:"text" enum:"text,json" help:"log format: text or json"`
	RequestLog       string        `name:"request-log" env:"CUSTOS_REQUEST_LOG" default:"info" enum:"debug,info,warn,off" help:"level of the line per answered authenticated request: debug, info, warn or off (refusals are always logged)"`
	RequestLogSample int           `name:"request-log-sample" env:"CUSTOS_REQUEST_LOG_SAMPLE" default:"1" help:"log one answered authenticated request in this many"`
}

type accountCmd struct {
	Add struct {
		Account    string `arg:""`
		Credential string `name:"credential" required:"" placeholder:"FILE" help:"file holding the credential's {\"PublicKeyDH\":…} that custos keygen printed"`
	} `cmd:"" help:"Bind the credential in FILE to the account."`
	List    struct{} `cmd:"" help:"List the accounts and their credentials."`
	Disable struct {
		Account string `arg:""`
	} `cmd:"" help:"Refuse the account's exchanges and sessions."`
	Enable struct {
		Account string `arg:""`
	} `cmd:"" help:"Let a disabled account in again."`
	Remove struct {
		Account string `arg:""`
	} `cmd:"" help:"Delete the account and its credentials."`
	RemoveCredential struct {
		Account string `arg:""`
		KID     string `arg:""`
	} `cmd:"" name:"remove-credential" help:"Unbind the credential kid from the account."`
}

type keysCmd struct {
	List            struct{} `cmd:"" help:"List the token's keys."`
	RotateTicketKey struct{} `cmd:"" name:"rotate-ticket-key" help:"Make a new ticket key the active one."`
	RotateCred      struct {
		Profile string `name:"profile" enum:"modp2048,p256," default:"" help:"rotate only this profile's credential (modp2048 or p256); default every profile served"`
	} `cmd:"" name:"rotate-credential" help:"Make a new service credential the active one, for each profile served."`
	Prune struct {
		Window time.Duration `name:"window" placeholder:"D" help:"delete keys retired longer ago than this (at least session lifetime + rekey window; default --prune-window)"`
		DryRun bool          `name:"dry-run" help:"print what would be deleted, delete nothing"`
	} `cmd:"" help:"Delete retired keys no live ticket can need."`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// exit carries kong's request to exit (after -h or --version) out of Parse.
type exit int

func run(args []string, stdout, stderr io.Writer) (code int) {
	var c config
	parser, err := kong.New(&c,
		kong.Name("custosd"),
		kong.Description("The Custos service and its administration."),
		kong.Vars{"defaultDB": defaultDB, "version": "custosd " + version() + " " + runtime.Version()},
		kong.Configuration(configFile),
		kong.KindMapper(reflect.Bool, strictBool{}),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { panic(exit(code)) }),
		kong.ExplicitGroups([]kong.Group{{Key: "settings", Title: "Settings (a flag, else its $CUSTOS_ variable, else its --config key):"}}),
	)
	if err != nil {
		panic(err) // the grammar above is wrong
	}
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(exit)
			if !ok {
				panic(r)
			}
			code = int(e)
		}
	}()
	kctx, err := parser.Parse(args)
	if err != nil {
		fmt.Fprintf(stderr, "custosd: %v (custosd -h for help)\n", err)
		return 2
	}
	for _, p := range kctx.Path {
		if p.Flag != nil && !p.Resolved { // on the command line, not from the config file
			c.pinFileFlag = c.pinFileFlag || p.Flag.Name == "pin-file"
			c.tokenLabelSet = c.tokenLabelSet || p.Flag.Name == "token-label"
		}
	}
	if os.Getenv("CUSTOS_TOKEN_LABEL") != "" {
		c.tokenLabelSet = true
	}
	cmd := strings.Fields(kctx.Command())
	if cmd[0] == "help" {
		hctx, err := kong.Trace(parser, c.Help.Command)
		if err == nil {
			err = hctx.Error
		}
		if err != nil {
			fmt.Fprintf(stderr, "custosd: %v (custosd -h for help)\n", err)
			return 2
		}
		hctx.PrintUsage(false)
		return 0
	}
	if err := c.check(); err != nil {
		fmt.Fprintln(stderr, "custosd:", err)
		return 2
	}
	log := newLogger(c.LogFormat, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var runErr error
	switch cmd[0] {
	case "init":
		runErr = cmdInit(ctx, &c, log, stdout)
	case "serve":
		runErr = cmdServe(ctx, &c, log)
	case "account":
		runErr = cmdAccount(ctx, &c, log, cmd[1], stdout)
	case "audit":
		runErr = cmdAudit(ctx, &c, stdout)
	case "keys":
		runErr = cmdKeys(ctx, &c, log, cmd[1], stdout)
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

// strictBool reads a boolean as strconv.ParseBool does, refusing the "yes"
// and "no" kong would take: --insecure-http=yse must not quietly mean false.
type strictBool struct{}

func (strictBool) IsBool() bool { return true }

func (strictBool) Decode(ctx *kong.DecodeContext, target reflect.Value) error {
	if ctx.Scan.Peek().Type != kong.FlagValueToken {
		target.SetBool(true) // a bare --flag
		return nil
	}
	switch v := ctx.Scan.Pop().Value.(type) {
	case bool: // from the config file
		target.SetBool(v)
		return nil
	case string:
		if b, err := strconv.ParseBool(v); err == nil {
			target.SetBool(b)
			return nil
		}
		return fmt.Errorf("%q is not true or false", v)
	default:
		return fmt.Errorf("%v is not true or false", v)
	}
}

// configFile reads the --config file: a JSON object keyed by the names of
// the settings, the flags that have an environment variable. It may name
// a PIN file, never hold a PIN.
func configFile(r io.Reader) (kong.Resolver, error) {
	name := "the config file"
	if f, ok := r.(interface{ Name() string }); ok {
		name += " " + f.Name()
	}
	var values map[string]any
	if err := json.NewDecoder(r).Decode(&values); err != nil {
		return nil, fmt.Errorf("%s is not a JSON object: %v", name, err)
	}
	for k := range values {
		if strings.Contains(k, "pin") && k != "pin-file" {
			return nil, fmt.Errorf("%s has a setting %q: it may name a PIN file (pin-file), never hold a PIN", name, k)
		}
	}
	return fileSettings{name, values}, nil
}

type fileSettings struct {
	name   string
	values map[string]any
}

func isSetting(f *kong.Flag) bool { return len(f.Envs) > 0 && f.Name != "config" }

// Resolve gives a setting from the file only if its environment variable
// is unset: kong by itself would let the file override the environment.
func (s fileSettings) Resolve(_ *kong.Context, _ *kong.Path, f *kong.Flag) (any, error) {
	if !isSetting(f) {
		return nil, nil
	}
	for _, env := range f.Envs {
		if _, ok := os.LookupEnv(env); ok {
			return nil, nil
		}
	}
	return s.values[f.Name], nil
}

// Validate refuses a key that is no setting, which would otherwise be
// ignored without a word.
func (s fileSettings) Validate(app *kong.Application) error {
	known := map[string]bool{}
	for _, f := range app.Flags {
		known[f.Name] = isSetting(f)
	}
	for k := range s.values {
		if !known[k] {
			return fmt.Errorf("%s has an unknown setting %q", s.name, k)
		}
	}
	return nil
}

type usageError string

func (e usageError) Error() string { return string(e) }

// check refuses what kong cannot: two ways of naming the token, and
// numbers out of their range.
func (c *config) check() error {
	if c.URI != "" && (c.Module != "" || c.tokenLabelSet) {
		return usageError("give the token either as --pkcs11-uri or as --pkcs11-module and --token-label, not both")
	}
	for _, d := range []struct {
		name      string
		d         time.Duration
		zeroUnset bool // 0 is "not given"
	}{
		{"session-lifetime", c.Session, false}, {"rekey-window", c.RekeyWindow, false}, {"key-refresh", c.KeyRefresh, false},
		{"prune-window", c.PruneWindow, true}, {"window", c.Keys.Prune.Window, true}, {"since", c.Audit.Since, true},
	} {
		if d.d < 0 || d.d == 0 && !d.zeroUnset {
			return usageError(fmt.Sprintf("--%s %s is not a positive duration (like 1h or 30m)", d.name, d.d))
		}
	}
	for _, n := range []struct {
		name     string
		n, least int
	}{{"max-sessions", c.MaxSessions, 1}, {"max-exchanges", c.MaxExch, 0}, {"request-log-sample", c.RequestLogSample, 1}} {
		if n.n < n.least {
			return usageError(fmt.Sprintf("--%s %d is less than %d", n.name, n.n, n.least))
		}
	}
	return nil
}

func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// hsmConfig assembles the token configuration. The PIN comes from, in
// this order: the URI's pin-source; an explicit --pin-file; CUSTOS_PIN; the PIN file of
// CUSTOS_PIN_FILE or the config file; the URI's pin-source — never from
// argv. A URI holding the PIN itself (pin-value) is accepted only from
// the environment.
func (c *config) hsmConfig(log *slog.Logger) (hsm.Config, error) {
	var hc hsm.Config
	if c.URI != "" {
		if hsm.URIHoldsPIN(c.URI) && os.Getenv("CUSTOS_PKCS11_URI") != c.URI {
			return hc, errors.New("the pkcs11-uri holds the PIN (pin-value=), which custosd accepts only from the environment (CUSTOS_PKCS11_URI), never from the command line or the config file; use pin-source=file:PATH instead")
		}
		var err error
		if hc, err = hsm.ParseURI(c.URI); err != nil {
			return hc, err
		}
	}
	if hc.Module == "" {
		hc.Module = c.Module
	}
	if hc.TokenLabel == "" {
		hc.TokenLabel = c.TokenLabel
	}
	switch {
	case hc.PIN != "": // the URI's pin-source (or, from the environment, pin-value)
	case c.pinFileFlag:
		pin, err := hsm.ReadPINFile(c.PINFile)
		if err != nil {
			return hc, err
		}
		hc.PIN = pin
	case os.Getenv("CUSTOS_PIN") != "":
		hc.PIN = os.Getenv("CUSTOS_PIN")
	case c.PINFile != "":
		pin, err := hsm.ReadPINFile(c.PINFile)
		if err != nil {
			return hc, err
		}
		hc.PIN = pin
	default:
		return hc, errors.New("no token PIN: set CUSTOS_PIN or CUSTOS_PIN_FILE (or --pin-file)")
	}
	hc.MaxSessions = c.MaxSessions
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

// requestLogging reads --request-log (kong has checked it is one of
// debug, info, warn, off).
func (c *config) requestLogging() (level slog.Level, off bool) {
	if c.RequestLog == "off" {
		return 0, true
	}
	level.UnmarshalText([]byte(c.RequestLog))
	return level, false
}

// count parses a whole number of at least least, the burst of a rate.
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
	if c.DB == defaultDB {
		if err := os.MkdirAll(filepath.Dir(defaultDB), 0o700); err != nil {
			return nil, fmt.Errorf("creating the registry's directory %s: %w", c.registryName(), err)
		}
	}
	return accounts.Open(ctx, c.DB)
}

// registryName says where the registry is: a SQLite path made absolute
// (the default is relative to the working directory), or the database
// host of a PostgreSQL DSN, never its password.
func (c *config) registryName() string {
	if u, err := url.Parse(c.DB); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		return u.Scheme + "://" + u.Host + u.Path
	}
	if abs, err := filepath.Abs(c.DB); err == nil {
		return abs
	}
	return c.DB
}
