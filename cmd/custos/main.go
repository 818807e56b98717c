// Command custos is the Custos client: it makes credentials, exchanges keys
// with a Custos service, calls the service under the session, and inspects
// jwcexchange messages.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/alecthomas/kong"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/client/bench"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/version"
)

// options is the command line of custos.
type options struct {
	Key     string `name:"key" env:"CUSTOS_KEY" placeholder:"FILE" help:"credential file"`
	State   string `name:"state" env:"CUSTOS_STATE" default:"${defaultState}" placeholder:"DIR" help:"directory keeping pins and sessions"`
	Pin     string `name:"pin" placeholder:"KID" help:"the service credential's kid to insist on (default: pin the first one seen)"`
	Encrypt bool   `name:"encrypt" help:"encrypt request and response bodies under the session"`
	// Srv finds the service by DNS (SPEC §8) instead of by the URL.
	Srv       string `name:"srv" env:"CUSTOS_SRV" placeholder:"DOMAIN" help:"find the service's host and port by the DNS SRV record _jwcexchange._tcp.DOMAIN; URL is then only a path (default /)"`
	SrvScheme string `name:"srv-scheme" enum:"https,http" default:"https" help:"the scheme of the service found with --srv: https, or http for a test service on loopback"`

	Keygen struct {
		Out     string `name:"out" required:"" placeholder:"FILE" help:"where to write the credential (mode 0600)"`
		Profile string `name:"profile" enum:"modp2048,p256" default:"modp2048" help:"the key agreement: modp2048 (RFC 3526 group 14, the seed's) or p256 (NIST P-256, faster, for HSMs without finite-field DH)"`
	} `cmd:"" help:"Make a credential and print its public key to register."`
	Exchange target `cmd:"" help:"Run a key exchange with the service at URL and keep the session."`
	Get      target `cmd:"" help:"GET URL under the session (exchanging first if needed)."`
	Post     struct {
		target
		Data string `name:"data" placeholder:"STRING" help:"the request body"`
	} `cmd:"" help:"POST the --data to URL under the session."`
	Rekey   target `cmd:"" help:"Renew the session with the service at URL."`
	Inspect struct {
		File string `arg:"" help:"a jwcexchange message (- reads stdin)"`
	} `cmd:"" help:"Check the keys of a jwcexchange message."`
	Bench struct {
		Exchange struct {
			benchFlags
			Precompute bool `name:"precompute" help:"make nonce keys and requests before the clock starts; verify a sample of responses after"`
		} `cmd:"" help:"Load the service with full exchanges."`
		Requests benchFlags `cmd:"" help:"Load the service with authenticated GETs of URL (default path /v1/whoami) on one session."`
	} `cmd:"" help:"Load the service and report throughput and latency."`
	Help struct {
		Command []string `arg:"" optional:"" help:"the command to explain"`
	} `cmd:"" help:"Show the help of a command."`
	Version kong.VersionFlag `name:"version" help:"Print the version and exit."`
}

type target struct {
	URL string `arg:"" optional:"" name:"url" help:"the service's URL; with --srv, only a path"`
}

type benchFlags struct {
	target
	Concurrency int           `name:"concurrency" short:"c" default:"8" help:"requests in flight"`
	Duration    time.Duration `name:"duration" short:"d" default:"10s" help:"how long to run"`
	JSON        bool          `name:"json" help:"print the result as one JSON object"`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// exit is a request to end with this status having run no command: after
// -h, help or --version, which have printed what was asked.
type exit int

func (e exit) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o, cmd, err := parse(args, stdout, stderr)
	var e exit
	if errors.As(err, &e) {
		return int(e)
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "custos:", err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	if err != nil {
		return fail(err)
	}
	switch cmd[0] {
	case "inspect":
		return cmdInspect(o.Inspect.File, stdin, stdout, stderr)
	case "keygen":
		p, err := exchange.ParseProfile(o.Keygen.Profile)
		if err != nil {
			return fail(err)
		}
		k, err := client.GenerateKey(o.Keygen.Out, p)
		if err != nil {
			return fail(err)
		}
		pub, _ := client.PublicKeyJSON(k)
		fmt.Fprintf(stdout, "%s\n", pub)
		fmt.Fprintf(stderr, "custos: wrote the credential %s to %s; register the public key above with the service\n", k.Public().KeyID(), o.Keygen.Out)
		return 0
	case "exchange", "rekey", "get", "post":
		rawURL := map[string]string{"exchange": o.Exchange.URL, "rekey": o.Rekey.URL, "get": o.Get.URL, "post": o.Post.URL}[cmd[0]]
		if err := call(o, cmd[0], rawURL, stdout, stderr); err != nil {
			return fail(err)
		}
		return 0
	case "bench":
		b, precompute := o.Bench.Requests, false
		if cmd[1] == bench.Exchange {
			b, precompute = o.Bench.Exchange.benchFlags, o.Bench.Exchange.Precompute
		}
		if err := cmdBench(o, cmd[1], b, precompute, stdout, stderr); err != nil {
			return fail(err)
		}
		return 0
	}
	return 0
}

// parse reads the command line into options, and returns the command's
// words. After -h, help or --version it returns an exit; any other error
// is a usageError.
func parse(args []string, stdout, stderr io.Writer) (o *options, cmd []string, err error) {
	o = new(options)
	parser, err := kong.New(o,
		kong.Name("custos"),
		kong.Description("The Custos client. Response bodies go to stdout, diagnostics to stderr; the exit status is 0 only on success."),
		kong.Vars{"defaultState": defaultState(), "version": "custos " + version.String() + " " + runtime.Version()},
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { panic(exit(code)) }),
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
			o, cmd, err = nil, nil, e
		}
	}()
	kctx, err := parser.Parse(args)
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			return nil, nil, ue
		}
		help := "custos -h"
		var pe *kong.ParseError
		if errors.As(err, &pe) && pe.Context != nil && pe.Context.Selected() != nil {
			help = "custos " + pe.Context.Selected().Path() + " -h"
		}
		return nil, nil, usageError(fmt.Sprintf("%v (%s for help)", err, help))
	}
	cmd = strings.Fields(kctx.Command())
	if cmd[0] == "help" {
		hctx, err := kong.Trace(parser, o.Help.Command)
		if err == nil {
			err = hctx.Error
		}
		if err != nil {
			return nil, nil, usageError(fmt.Sprintf("there is no command %q (custos -h lists the commands)", strings.Join(o.Help.Command, " ")))
		}
		hctx.PrintUsage(false)
		return nil, nil, exit(0)
	}
	return o, cmd, nil
}

// Validate runs before kong checks that required flags were given, and
// so can say more than "missing flags".
func (o *options) Validate(kctx *kong.Context) error {
	if strings.HasPrefix(kctx.Command(), "keygen") && o.Keygen.Out == "" {
		return usageError("keygen needs --out FILE, where to write the credential with its private key (mode 0600); the public key, for the service's operator to register, goes to standard output:\n" +
			"    custos keygen --out alice.key > alice.pub")
	}
	return nil
}

type usageError string

func (e usageError) Error() string { return string(e) }

func defaultState() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return ".custos"
	}
	return filepath.Join(dir, "custos")
}

// resolver answers the --srv lookups. It is a variable so that tests can
// point it at a DNS server of their own.
var resolver = net.DefaultResolver

// target parses a command's URL, finds the service with --srv, and loads
// the credential it needs. The DNS lookup comes after every check that
// needs no network.
func (o *options) target(rawURL string) (*url.URL, *exchange.ClientKey, error) {
	u, err := url.Parse(rawURL)
	switch {
	case o.Srv == "" && rawURL == "":
		return nil, nil, usageError("no service: give its URL, or --srv DOMAIN to find it by DNS")
	case o.Srv == "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == ""):
		return nil, nil, usageError(fmt.Sprintf("%q is not an http or https URL", rawURL))
	case o.Srv != "" && strings.ContainsAny(o.Srv, "/:@"):
		return nil, nil, usageError(fmt.Sprintf("--srv takes a domain, like example.com, not %q", o.Srv))
	case o.Srv != "" && (err != nil || u.Scheme != "" || u.Host != ""):
		return nil, nil, usageError(fmt.Sprintf("with --srv (or CUSTOS_SRV) the host and port come from DNS: give only a path, like /v1/whoami, not %q", rawURL))
	}
	if o.Key == "" {
		return nil, nil, usageError("no credential: give --key FILE (make one with custos keygen --out FILE, and register it with the service)")
	}
	if o.Srv != "" {
		lookup := &client.ServiceLookup{Resolver: resolver, PlainHTTP: o.SrvScheme == "http"}
		origin, err := lookup.Origin(context.Background(), o.Srv)
		if err != nil {
			return nil, nil, err
		}
		base, _ := url.Parse(origin) // well-formed: Origin built it
		u.Scheme, u.Host = base.Scheme, base.Host
		if !strings.HasPrefix(u.Path, "/") {
			u.Path = "/" + u.Path
			if u.RawPath != "" {
				u.RawPath = "/" + u.RawPath
			}
		}
	}
	key, err := client.LoadKey(o.Key)
	return u, key, err
}

func call(o *options, cmd, rawURL string, stdout, stderr io.Writer) error {
	u, key, err := o.target(rawURL)
	if err != nil {
		return err
	}
	defer key.Zero()
	tr := &client.Transport{Key: key, State: &client.State{Dir: o.State}, PinnedKID: o.Pin, Encrypt: o.Encrypt}
	ctx := context.Background()
	origin := u.Scheme + "://" + u.Host
	switch cmd {
	case "exchange":
		if err := tr.Exchange(ctx, origin); err != nil {
			return err
		}
		kid, _ := tr.State.Pin(origin, key.Profile())
		fmt.Fprintf(stderr, "custos: session established with %s (service credential %s)\n", origin, kid)
		return nil
	case "rekey":
		if err := tr.Rekey(ctx, origin); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "custos: session with %s renewed\n", origin)
		return nil
	}
	var body io.Reader
	method := http.MethodGet
	if cmd == "post" {
		method, body = http.MethodPost, strings.NewReader(o.Post.Data)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return err
	}
	if cmd == "post" {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 400 {
		return describe(resp.StatusCode, b)
	}
	stdout.Write(b)
	if len(b) > 0 && b[len(b)-1] != '\n' {
		fmt.Fprintln(stdout)
	}
	return nil
}

// describe turns an error response into a sentence.
func describe(status int, body []byte) error {
	var m struct {
		ExchangeResponse struct {
			Error             string
			StatusDescription string
		}
	}
	if json.Unmarshal(body, &m) == nil && m.ExchangeResponse.Error != "" {
		return &client.ServiceError{Status: status, Code: m.ExchangeResponse.Error, Description: m.ExchangeResponse.StatusDescription}
	}
	return &client.ServiceError{Status: status, Description: strings.TrimSpace(string(body))}
}
