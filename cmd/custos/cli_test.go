package main

import (
	"bytes"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The command line of custos, parsed in-process: nothing is run.

// parseWith parses args with only env among the CUSTOS_ variables (t.Setenv
// restores the others after the test).
func parseWith(t *testing.T, env map[string]string, args ...string) (*options, []string, error) {
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
	var stdout, stderr bytes.Buffer
	o, cmd, err := parse(args, &stdout, &stderr)
	if stdout.Len() > 0 || stderr.Len() > 0 {
		t.Errorf("parsing %q printed %q and %q", args, stdout.String(), stderr.String())
	}
	return o, cmd, err
}

func TestParse(t *testing.T) {
	for _, pc := range []struct {
		name  string
		env   map[string]string
		args  []string
		check func(*options, string) bool // the options and the command
		want  string                      // part of the usage error
	}{
		{name: "keygen", args: []string{"keygen", "--out", "alice.key"},
			check: func(o *options, cmd string) bool {
				return cmd == "keygen" && o.Keygen.Out == "alice.key" && o.Keygen.Profile == "modp2048"
			}},
		{name: "keygen p256", args: []string{"keygen", "--out", "alice.key", "--profile", "p256"},
			check: func(o *options, _ string) bool { return o.Keygen.Profile == "p256" }},
		{name: "keygen profile refused", args: []string{"keygen", "--out", "alice.key", "--profile", "x448"},
			want: `--profile must be one of "modp2048","p256" but got "x448" (custos keygen -h for help)`},
		{name: "keygen without --out", args: []string{"keygen"}, want: "keygen needs --out FILE"},
		{name: "--profile elsewhere", args: []string{"exchange", "http://127.0.0.1:8443", "--profile", "p256"}, want: "unknown flag --profile (custos exchange -h for help)"},
		{name: "get", args: []string{"--key", "alice.key", "get", "http://127.0.0.1:8443/v1/whoami", "--encrypt", "--pin", "MBUTV"},
			check: func(o *options, cmd string) bool {
				return cmd == "get <url>" && o.Get.URL == "http://127.0.0.1:8443/v1/whoami" && o.Key == "alice.key" && o.Encrypt && o.Pin == "MBUTV"
			}},
		{name: "post", args: []string{"post", "http://127.0.0.1:8443/v1/echo", "--data", "hi"},
			check: func(o *options, _ string) bool {
				return o.Post.URL == "http://127.0.0.1:8443/v1/echo" && o.Post.Data == "hi"
			}},
		{name: "--data elsewhere", args: []string{"get", "http://127.0.0.1:8443/", "--data", "hi"}, want: "unknown flag --data"},
		{name: "environment", env: map[string]string{"CUSTOS_KEY": "env.key", "CUSTOS_STATE": "/tmp/st", "CUSTOS_SRV": "example.com"}, args: []string{"get", "/v1/whoami"},
			check: func(o *options, _ string) bool {
				return o.Key == "env.key" && o.State == "/tmp/st" && o.Srv == "example.com"
			}},
		{name: "flag over environment", env: map[string]string{"CUSTOS_KEY": "env.key"}, args: []string{"--key", "flag.key", "exchange", "http://127.0.0.1:8443"},
			check: func(o *options, _ string) bool { return o.Key == "flag.key" }},
		{name: "state default", args: []string{"rekey", "http://127.0.0.1:8443"},
			check: func(o *options, _ string) bool { return o.State == defaultState() && o.State != "" }},
		{name: "srv scheme", args: []string{"--srv", "example.com", "--srv-scheme", "http", "get"},
			check: func(o *options, _ string) bool { return o.SrvScheme == "http" && o.Get.URL == "" }},
		{name: "srv scheme refused", args: []string{"--srv-scheme", "ftp", "get"}, want: `--srv-scheme must be one of "https","http" but got "ftp"`},
		{name: "bench", args: []string{"bench", "exchange", "http://127.0.0.1:8443", "-c", "4", "-d", "2s", "--precompute", "--json"},
			check: func(o *options, cmd string) bool {
				b := o.Bench.Exchange
				return cmd == "bench exchange <url>" && b.Concurrency == 4 && b.Duration == 2*time.Second && b.Precompute && b.JSON && b.URL == "http://127.0.0.1:8443"
			}},
		{name: "bench defaults", args: []string{"bench", "requests", "http://127.0.0.1:8443"},
			check: func(o *options, _ string) bool {
				return o.Bench.Requests.Concurrency == 8 && o.Bench.Requests.Duration == 10*time.Second && !o.Bench.Requests.JSON
			}},
		{name: "bench duration without unit", args: []string{"bench", "requests", "-d", "5"}, want: `--duration: expected duration but got "5"`},
		{name: "bench concurrency not a number", args: []string{"bench", "requests", "-c", "many"}, want: `--concurrency: expected a valid 64 bit int but got "many" (custos bench requests -h for help)`},
		{name: "--precompute elsewhere", args: []string{"bench", "requests", "--precompute"}, want: "unknown flag --precompute"},
		{name: "inspect", args: []string{"inspect", "-"}, check: func(o *options, cmd string) bool { return cmd == "inspect <file>" && o.Inspect.File == "-" }},
		{name: "inspect without a file", args: []string{"inspect"}, want: `expected "<file>"`},
		{name: "no command", args: nil, want: `expected one of "keygen", "exchange"`},
	} {
		o, cmd, err := parseWith(t, pc.env, pc.args...)
		switch {
		case pc.want != "":
			if _, ok := err.(usageError); !ok || !strings.Contains(err.Error(), pc.want) {
				t.Errorf("%s: %q: got %T %v, want a usage error saying %q", pc.name, pc.args, err, err, pc.want)
			}
		case err != nil:
			t.Errorf("%s: %q: %v", pc.name, pc.args, err)
		case !pc.check(o, strings.Join(cmd, " ")):
			t.Errorf("%s: %q parsed as %q, %+v", pc.name, pc.args, cmd, o)
		}
	}
}

// TestKeygenWithoutOut: the message says what --out is for and gives the
// command.
func TestKeygenWithoutOut(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"keygen", "--profile", "p256"}, nil, &stdout, &stderr)
	out := stderr.String()
	for _, w := range []string{"custos: keygen needs --out FILE", "private key", "custos keygen --out alice.key > alice.pub"} {
		if !strings.Contains(out, w) {
			t.Errorf("the message lacks %q:\n%s", w, out)
		}
	}
	if code != 2 || stdout.Len() > 0 || strings.Contains(out, "missing flags") {
		t.Errorf("exit %d, stdout %q, stderr:\n%s", code, stdout.String(), out)
	}
}

func TestHelpAndVersion(t *testing.T) {
	runOut := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(args, nil, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	for _, hc := range []struct {
		args        []string
		want, never []string
	}{
		{[]string{"-h"}, []string{"Usage: custos <command>", "Commands:", "keygen --out=FILE", "bench exchange", "$CUSTOS_KEY", "--version"}, []string{"--precompute"}},
		{[]string{"help"}, []string{"Usage: custos <command>"}, nil},
		{[]string{"keygen", "-h"}, []string{"Usage: custos keygen --out=FILE", "--profile=\"modp2048\""}, []string{"--data", "--concurrency"}},
		{[]string{"help", "keygen"}, []string{"Usage: custos keygen --out=FILE", "--profile=\"modp2048\""}, []string{"--data"}},
		{[]string{"help", "post"}, []string{"Usage: custos post", "--data=STRING"}, []string{"--profile"}},
		{[]string{"bench", "exchange", "--help"}, []string{"Usage: custos bench exchange", "--precompute", "-c, --concurrency=8"}, []string{"--data"}},
	} {
		code, stdout, stderr := runOut(hc.args...)
		if code != 0 || stderr != "" {
			t.Errorf("custos %q: exit %d, stderr %q", hc.args, code, stderr)
		}
		for _, w := range hc.want {
			if !strings.Contains(stdout, w) {
				t.Errorf("custos %q lacks %q:\n%s", hc.args, w, stdout)
			}
		}
		for _, n := range hc.never {
			if strings.Contains(stdout, n) {
				t.Errorf("custos %q shows %q, another command's flag:\n%s", hc.args, n, stdout)
			}
		}
	}
	code, stdout, stderr := runOut("--version")
	if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "custos ") || !strings.Contains(stdout, runtime.Version()) {
		t.Errorf("custos --version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, stderr = runOut("help", "nosuch")
	if code != 2 || stdout != "" || !strings.Contains(stderr, `custos: there is no command "nosuch" (custos -h lists the commands)`) {
		t.Errorf("custos help nosuch: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
