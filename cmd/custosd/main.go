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
	"io/fs"
	"log/slog"
	"math"
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
	"github.com/custos-kx/custos/internal/version"
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

	command []string          // the command's words, as kong spells them: "account", "add", "<account>"
	origin  map[string]string // where each flag given came from: "--db", "$CUSTOS_DB" or "\"db\" in the config file F"
}

// settings are the flags every command takes, each with an environment
// variable and a config file key.
type settings struct {
	Module           string        `name:"pkcs11-module" env:"CUSTOS_PKCS11_MODULE" placeholder:"FILE" help:"path of the PKCS#11 library"`
	InitArgs         string        `name:"pkcs11-init-args" env:"CUSTOS_PKCS11_INIT_ARGS" placeholder:"STRING" help:"the module's initialisation string, passed to C_Initialize (NSS softokn: configdir='sql:DIR' certPrefix='' keyPrefix='' secmod='secmod.db' flags=)"`
	KeepAlive        time.Duration `name:"hsm-keepalive" env:"CUSTOS_HSM_KEEPALIVE" default:"15s" help:"a cheap call on each idle PKCS#11 session this often, so that HSMs which close idle connections keep them (0: none)"`
	URI              string        `name:"pkcs11-uri" env:"CUSTOS_PKCS11_URI" placeholder:"URI" help:"RFC 7512 URI naming module, token and PIN source (instead of the three flags)"`
	TokenLabel       string        `name:"token-label" env:"CUSTOS_TOKEN_LABEL" default:"custos" help:"label of the token holding the keys"`
	PINFile          string        `name:"pin-file" env:"CUSTOS_PIN_FILE" placeholder:"FILE" help:"file holding the token's user PIN (or set CUSTOS_PIN)"`
	MaxSessions      int           `name:"max-sessions" env:"CUSTOS_MAX_SESSIONS" default:"0" help:"PKCS#11 sessions in the pool (operations on the token at once; 0: one per token thread, or 16 for a hardware slot without them)"`
	TokenThreads     int           `name:"token-threads" env:"CUSTOS_TOKEN_THREADS" default:"0" help:"OS threads of their own that make the token's calls, one after another each (0: one for a software token such as SoftHSM; none for a hardware slot, whose calls the requests' own threads make)"`
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
	SharedStore      string        `name:"shared-store" env:"CUSTOS_SHARED_STORE" placeholder:"URL" help:"Redis the replicas share requests seen and rate limits through: redis://HOST:PORT, rediss://… (TLS) or unix:///PATH (a password belongs in the env or config file, not argv; default: each replica alone)"`
	SharedStoreCA    string        `name:"shared-store-ca" env:"CUSTOS_SHARED_STORE_CA" placeholder:"FILE" help:"PEM file of the authorities a rediss:// shared store's certificate must chain to (default: the system's)"`
	SharedFailure    string        `name:"shared-store-failure" env:"CUSTOS_SHARED_STORE_FAILURE" default:"closed" enum:"closed,open" help:"when the shared store cannot be reached: closed refuses authenticated requests, exchanges and rekeys (503); open checks them against this replica alone, loudly (docs/security.md)"`
	TrustedProxies   string        `name:"trusted-proxies" env:"CUSTOS_TRUSTED_PROXIES" placeholder:"CIDR,..." help:"load balancers and proxies in front of the service, whose X-Forwarded-For names the client the per-address limits count"`
	MaxExch          int           `name:"max-exchanges" env:"CUSTOS_MAX_EXCHANGES" default:"0" help:"exchanges and rekeys computed at once; the rest queue in arrival order (0: eight per CPU for a software token, the session pool for a hardware slot)"`
	LogFormat        string        `name:"log-format" env:"CUSTOS_LOG_FORMAT" default:"text" enum:"text,json" help:"log format: text or json"`
	RequestLog       string        `name:"request-log" env:"CUSTOS_REQUEST_LOG" default:"info" enum:"debug,info,warn,off" help:"level of the line per answered authenticated request: debug, info, warn or off (refusals are always logged)"`
	RequestLogSample int           `name:"request-log-sample" env:"CUSTOS_REQUEST_LOG_SAMPLE" default:"1" help:"log one answered authenticated request in this many"`
}

type accountCmd struct {
	Add struct {
		Account    string `arg:""`
		Credential string `name:"credential" required:"" placeholder:"FILE" help:"file holding the account's public key, the {\"PublicKeyDH\":…} or {\"PublicKeyECDH\":…} object that custos keygen printed"`
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
		Profile string `name:"profile" enum:"all,modp2048,p256" default:"all" help:"the profile whose credential to rotate: modp2048, p256, or all those the token serves"`
	} `cmd:"" name:"rotate-credential" help:"Make a new service credential the active one, for each profile served."`
	Prune struct {
		Window time.Duration `name:"window" placeholder:"D" help:"delete keys retired longer ago than this (at least session lifetime + rekey window; default --prune-window)"`
		DryRun bool          `name:"dry-run" help:"print what would be deleted, delete nothing"`
	} `cmd:"" help:"Delete retired keys no live ticket can need."`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// exit is a request to end with this status having run no command: after
// -h, help or --version, which have printed what was asked.
type exit int

func (e exit) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func run(args []string, stdout, stderr io.Writer) int {
	c, err := parse(args, stdout, stderr)
	var e exit
	if errors.As(err, &e) {
		return int(e)
	}
	if err != nil {
		fmt.Fprintln(stderr, "custosd:", err)
		return 2
	}
	log := newLogger(c.LogFormat, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var runErr error
	switch cmd := c.command; cmd[0] {
	case "init":
		runErr = cmdInit(ctx, c, log, stdout)
	case "serve":
		runErr = cmdServe(ctx, c, log)
	case "account":
		runErr = cmdAccount(ctx, c, log, cmd[1], stdout)
	case "audit":
		runErr = cmdAudit(ctx, c, log, stdout)
	case "keys":
		runErr = cmdKeys(ctx, c, log, cmd[1], stdout)
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

// parse reads the command line into a config, each setting from its flag,
// else its environment variable, else the --config file. After -h, help or
// --version it returns an exit; any other error is a usageError.
func parse(args []string, stdout, stderr io.Writer) (c *config, err error) {
	c = new(config)
	parser, err := kong.New(c,
		kong.Name("custosd"),
		kong.Description("The Custos service and its administration."),
		kong.Vars{"defaultDB": defaultDB, "version": "custosd " + version.String() + " " + runtime.Version()},
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
			c, err = nil, e
		}
	}()
	kctx, err := parser.Parse(args)
	if err != nil {
		return nil, usage(parser, err)
	}
	c.command = strings.Fields(kctx.Command())
	c.origin = origins(kctx, string(c.Config))
	if c.command[0] == "help" {
		hctx, err := kong.Trace(parser, c.Help.Command)
		if err == nil {
			err = hctx.Error
		}
		if err != nil {
			return nil, usageError(fmt.Sprintf("there is no command %q (custosd -h lists the commands)", strings.Join(c.Help.Command, " ")))
		}
		hctx.PrintUsage(false)
		return nil, exit(0)
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// usage rewords an error of kong's: a flag given to a command it does not
// belong to names the command it belongs to, and every other error points
// at the help of the command it was parsing.
func usage(parser *kong.Kong, err error) error {
	var ue usageError
	if errors.As(err, &ue) {
		return ue // one of ours, which says what to do
	}
	help := "custosd -h"
	var pe *kong.ParseError
	if errors.As(err, &pe) && pe.Context != nil {
		if n := pe.Context.Selected(); n != nil {
			help = "custosd " + n.Path() + " -h"
		}
	}
	if name, ok := strings.CutPrefix(err.Error(), "unknown flag --"); ok {
		name, _, _ = strings.Cut(name, ",") // kong may go on with ", did you mean …?"
		if owners := flagOwners(parser.Model.Node, name); len(owners) > 0 {
			return usageError(fmt.Sprintf("--%s belongs to %s only (custosd %s -h shows its flags)", name, strings.Join(owners, " and "), owners[0]))
		}
	}
	return usageError(fmt.Sprintf("%v (%s for help)", err, help))
}

// flagOwners lists the commands under n that have the flag name.
func flagOwners(n *kong.Node, name string) []string {
	var owners []string
	for _, child := range n.Children {
		for _, f := range child.Flags {
			if f.Name == name {
				owners = append(owners, child.Path())
			}
		}
		owners = append(owners, flagOwners(child, name)...)
	}
	return owners
}

// origins says where each flag that was given came from: its flag, its
// environment variable or the config file.
func origins(kctx *kong.Context, configFile string) map[string]string {
	origin := map[string]string{}
	for _, p := range kctx.Path {
		switch {
		case p.Flag == nil:
		case p.Resolved:
			origin[p.Flag.Name] = fmt.Sprintf("%q in the config file %s", p.Flag.Name, configFile)
		default:
			origin[p.Flag.Name] = "--" + p.Flag.Name
		}
	}
	for _, f := range kctx.Flags() {
		if _, ok := origin[f.Name]; ok {
			continue
		}
		for _, env := range f.Envs {
			if _, ok := os.LookupEnv(env); ok {
				origin[f.Name] = "$" + env
				break
			}
		}
	}
	return origin
}

// Validate runs before kong checks that required flags were given, and
// so can say more than "missing flags".
func (c *config) Validate(kctx *kong.Context) error {
	if strings.HasPrefix(kctx.Command(), "account add") && c.Account.Add.Credential == "" {
		return usageError(missingCredential(c.Account.Add.Account))
	}
	return nil
}

// missingCredential says what account add needs, with the commands that
// make it and register it.
func missingCredential(account string) string {
	if account == "" {
		account = "alice@example.com"
	}
	name, _, _ := strings.Cut(account, "@")
	name = strings.Map(func(r rune) rune {
		if 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '_' || r == '-' {
			return r
		}
		return -1
	}, name)
	if name == "" || name[0] == '.' || name[0] == '-' {
		name = "credential"
	}
	return fmt.Sprintf("account add needs --credential FILE, the file holding the account's public key: %s. Its owner makes one with\n"+
		"    custos keygen --out %s.key > %[2]s.pub\n"+
		"and you register it with\n"+
		"    custosd account add %s --credential %[2]s.pub", credentialShape, name, shellQuote(account))
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	for _, r := range s {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("@%+=:,./_-", r)) {
			return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
	}
	return s
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
	dec := json.NewDecoder(r)
	dec.UseNumber() // 1000000 stays a whole number, not 1e+06
	err := dec.Decode(&values)
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te):
		return nil, fmt.Errorf("%s holds a JSON %s, not an object of settings like {\"listen\": \"127.0.0.1:8443\"}", name, te.Value)
	case err == nil && values == nil: // null
		return nil, fmt.Errorf("%s holds null, not an object of settings like {\"listen\": \"127.0.0.1:8443\"}", name)
	case err != nil:
		return nil, fmt.Errorf("%s is not valid JSON: %v", name, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%s goes on after its JSON object", name)
	}
	for k := range values {
		if lk := strings.ToLower(k); strings.Contains(lk, "pin") && lk != "pin-file" {
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
	v, ok := s.values[f.Name]
	if !ok || v == nil {
		return nil, nil
	}
	return s.typed(f, v)
}

// typed checks a value from the file against the setting's type. A string
// is read as the flag's text would be; a number only where a whole number
// is wanted, and true or false only where a boolean is. Kong by itself
// would take 3600 as a duration of 3600 ns and round 1.5 sessions to 2.
func (s fileSettings) typed(f *kong.Flag, v any) (any, error) {
	if str, ok := v.(string); ok {
		return str, nil
	}
	text, _ := json.Marshal(v)
	t := f.Target.Type()
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return nil, fmt.Errorf("%s gives %s, not a duration: write it as a string with its unit, like \"1h\" or \"30s\"", s.name, text)
	case t.Kind() == reflect.Int:
		if n, ok := v.(json.Number); ok {
			if i, err := n.Int64(); err == nil {
				return strconv.FormatInt(i, 10), nil
			}
			// 1e6 is a whole number too.
			if x, err := n.Float64(); err == nil && x == math.Trunc(x) && math.Abs(x) <= 1<<53 {
				return strconv.FormatInt(int64(x), 10), nil
			}
		}
		return nil, fmt.Errorf("%s gives %s, not a whole number", s.name, text)
	case t.Kind() == reflect.Bool:
		if b, ok := v.(bool); ok {
			return b, nil
		}
		return nil, fmt.Errorf("%s gives %s, not true or false", s.name, text)
	default:
		return nil, fmt.Errorf("%s gives %s, not a string", s.name, text)
	}
}

// Validate refuses a key that is no setting, which would otherwise be
// ignored without a word.
func (s fileSettings) Validate(app *kong.Application) error {
	known := map[string]bool{}
	for _, f := range app.Flags {
		known[f.Name] = isSetting(f)
	}
	for k := range s.values {
		switch owners := flagOwners(app.Node, k); {
		case known[k]:
		case len(owners) > 0:
			return fmt.Errorf("%s has %q, which is a flag of %s only, not a setting", s.name, k, strings.Join(owners, " and "))
		default:
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
	if c.URI != "" && (c.Module != "" || c.origin["token-label"] != "") {
		other := "pkcs11-module"
		if c.Module == "" {
			other = "token-label"
		}
		return usageError(fmt.Sprintf("give the token either as --pkcs11-uri or as --pkcs11-module and --token-label, not both: the URI comes from %s, the %s from %s", c.origin["pkcs11-uri"], other, c.origin[other]))
	}
	for _, d := range []struct {
		name      string
		d         time.Duration
		zeroUnset bool // 0 is "not given", unless it was
	}{
		{"session-lifetime", c.Session, false}, {"rekey-window", c.RekeyWindow, false}, {"key-refresh", c.KeyRefresh, false},
		{"prune-window", c.PruneWindow, true}, {"window", c.Keys.Prune.Window, true}, {"since", c.Audit.Since, true},
	} {
		if d.d < 0 || d.d == 0 && (!d.zeroUnset || c.origin[d.name] != "") {
			return usageError(fmt.Sprintf("--%s %s is not a positive duration (like 1h or 30m)", d.name, d.d))
		}
	}
	for _, n := range []struct {
		name     string
		n, least int
	}{{"max-sessions", c.MaxSessions, 0}, {"token-threads", c.TokenThreads, 0}, {"max-exchanges", c.MaxExch, 0}, {"request-log-sample", c.RequestLogSample, 1}} {
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
	hc.InitArgs = c.InitArgs
	hc.KeepAlive = c.KeepAlive
	if c.KeepAlive == 0 {
		hc.KeepAlive = -1 // none; hsm's zero means its default
	}
	switch {
	case hc.PIN != "": // the URI's pin-source (or, from the environment, pin-value)
	case c.origin["pin-file"] == "--pin-file":
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
	hc.MaxSessions, hc.CallThreads = c.MaxSessions, c.TokenThreads
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

// openRegistry opens the account registry, saying so when it is a new,
// empty SQLite file: an administrative command run from another directory
// than the service's, or with a mistyped --db, would otherwise quietly
// show no accounts.
func (c *config) openRegistry(ctx context.Context, log *slog.Logger) (*accounts.Registry, error) {
	postgres := strings.HasPrefix(c.DB, "postgres://") || strings.HasPrefix(c.DB, "postgresql://")
	if c.DB == defaultDB {
		if err := os.MkdirAll(filepath.Dir(defaultDB), 0o700); err != nil {
			return nil, fmt.Errorf("creating the registry's directory %s: %w", filepath.Dir(c.registryName()), err)
		}
	}
	_, err := os.Stat(c.DB)
	fresh := !postgres && errors.Is(err, fs.ErrNotExist)
	reg, err := accounts.Open(ctx, c.DB)
	if err == nil && fresh {
		log.Info("created an empty account registry", "registry", c.registryName())
	}
	return reg, err
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
