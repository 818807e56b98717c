// Command custos is the Custos client: it makes credentials, exchanges keys
// with a Custos service, calls the service under the session, and inspects
// jwcexchange messages.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/cmd/internal/cli"
	"github.com/custos-kx/custos/exchange"
)

const usage = `usage: custos [flags] COMMAND [ARGS]

Commands:
  keygen --out FILE           make a credential (FILE, mode 0600) and print its public key to register
  exchange URL                run a key exchange with the service at URL and keep the session
  get URL                     GET URL under the session (exchanging first if needed)
  post URL --data STRING      POST STRING to URL under the session [--encrypt]
  rekey URL                   renew the session with the service at URL
  inspect FILE                check the keys of a jwcexchange message ("-" reads stdin)
  bench exchange URL -c N -d DURATION [--precompute] [--json]
                              load the service with full exchanges (--precompute: nonce keys made beforehand)
  bench requests URL -c N -d DURATION [--encrypt] [--json]
                              load the service with authenticated GETs of URL (default path /v1/whoami) on one session

Response bodies go to stdout, diagnostics to stderr; the exit status is 0 only on success.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

type options struct {
	key, state, out, data, pin string
	encrypt                    bool
	// bench
	concurrency       int
	duration          time.Duration
	precompute, jsonl bool
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("custos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.key, "key", os.Getenv("CUSTOS_KEY"), "credential file (env CUSTOS_KEY)")
	fs.StringVar(&o.state, "state", defaultState(), "directory keeping pins and sessions (env CUSTOS_STATE)")
	fs.StringVar(&o.out, "out", "", "keygen: where to write the credential")
	fs.StringVar(&o.data, "data", "", "post: the request body")
	fs.BoolVar(&o.encrypt, "encrypt", false, "encrypt request and response bodies under the session")
	fs.StringVar(&o.pin, "pin", "", "the service credential's kid to insist on (default: pin the first one seen)")
	fs.IntVar(&o.concurrency, "c", 8, "bench: requests in flight")
	fs.DurationVar(&o.duration, "d", 10*time.Second, "bench: how long to run")
	fs.BoolVar(&o.precompute, "precompute", false, "bench exchange: make nonce keys and requests before the clock starts; verify a sample of responses after")
	fs.BoolVar(&o.jsonl, "json", false, "bench: print the result as one JSON object")
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	words, err := cli.Parse(fs, args)
	if err != nil {
		return 2
	}
	if len(words) == 0 {
		fs.Usage()
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "custos:", err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	switch cmd := words[0]; cmd {
	case "inspect":
		return cmdInspect(words[1:], stdin, stdout, stderr)
	case "keygen":
		if o.out == "" || len(words) != 1 {
			return fail(usageError("usage: custos keygen --out FILE"))
		}
		k, err := client.GenerateKey(o.out)
		if err != nil {
			return fail(err)
		}
		pub, _ := client.PublicKeyJSON(k)
		fmt.Fprintf(stdout, "%s\n", pub)
		fmt.Fprintf(stderr, "custos: wrote the credential %s to %s; register the public key above with the service\n", k.Public().KeyID(), o.out)
		return 0
	case "exchange", "rekey", "get", "post":
		if len(words) != 2 {
			return fail(usageError(fmt.Sprintf("usage: custos %s URL", cmd)))
		}
		if err := call(&o, cmd, words[1], stdout, stderr); err != nil {
			return fail(err)
		}
		return 0
	case "bench":
		if len(words) != 3 {
			return fail(usageError("usage: custos bench exchange|requests URL -c N -d DURATION"))
		}
		if err := cmdBench(&o, words[1], words[2], stdout, stderr); err != nil {
			return fail(err)
		}
		return 0
	case "help":
		fs.SetOutput(stdout)
		fs.Usage()
		return 0
	default:
		fs.Usage()
		return fail(usageError(fmt.Sprintf("unknown command %q", cmd)))
	}
}

type usageError string

func (e usageError) Error() string { return string(e) }

func defaultState() string {
	if v := os.Getenv("CUSTOS_STATE"); v != "" {
		return v
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return ".custos"
	}
	return filepath.Join(dir, "custos")
}

// target parses a command's URL and loads the credential it needs.
func (o *options) target(rawURL string) (*url.URL, *exchange.ClientKey, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, nil, usageError(fmt.Sprintf("%q is not an http or https URL", rawURL))
	}
	if o.key == "" {
		return nil, nil, usageError("no credential: give --key FILE (make one with custos keygen --out FILE, and register it with the service)")
	}
	key, err := client.LoadKey(o.key)
	return u, key, err
}

func call(o *options, cmd, rawURL string, stdout, stderr io.Writer) error {
	u, key, err := o.target(rawURL)
	if err != nil {
		return err
	}
	defer key.Zero()
	tr := &client.Transport{Key: key, State: &client.State{Dir: o.state}, PinnedKID: o.pin, Encrypt: o.encrypt}
	ctx := context.Background()
	origin := u.Scheme + "://" + u.Host
	switch cmd {
	case "exchange":
		if err := tr.Exchange(ctx, origin); err != nil {
			return err
		}
		kid, _ := tr.State.Pin(origin)
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
		method, body = http.MethodPost, strings.NewReader(o.data)
	}
	req, err := http.NewRequestWithContext(ctx, method, rawURL, body)
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
