// Package softhsm makes throwaway SoftHSM2 tokens for tests. The same
// setup.sh beside it makes the token `make run` uses.
package softhsm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
)

// PIN is the user PIN of test tokens.
const PIN = "custos-test-pin"

// Token is a SoftHSM2 token made for one test.
type Token struct {
	Dir    string // holds softhsm2.conf and the token files
	Conf   string // the SOFTHSM2_CONF path
	Module string // the PKCS#11 library
	Label  string
	PIN    string
}

var counter atomic.Int64

// New creates a token in t.TempDir() and points SOFTHSM2_CONF at it for
// the rest of the test (so tests using it cannot run in parallel). SoftHSM2
// is installed if missing; if that is impossible the test is skipped with a
// loud message, except under CI, where it fails.
func New(t testing.TB) *Token {
	t.Helper()
	label := fmt.Sprintf("custos-test-%d-%d", os.Getpid(), counter.Add(1))
	tok, err := Create(t.TempDir(), label)
	if errors.Is(err, ErrUnavailable) {
		missing(t, "SoftHSM2", err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	return tok
}

// missing ends a test that cannot find the token it needs: loudly skipped
// on a developer's machine, failed under CI, which installs every token.
func missing(t testing.TB, token, why string) {
	t.Helper()
	msg := fmt.Sprintf("!!! %s is not available, so this test cannot run against it: %s", token, why)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// ErrUnavailable means SoftHSM2 is not installed and could not be.
var ErrUnavailable = errors.New("softhsm: SoftHSM2 is not available")

// Create makes a token labelled label, with user PIN PIN, in dir. The
// caller points SOFTHSM2_CONF at tok.Conf before loading the module.
func Create(dir, label string) (*Token, error) {
	out, err := exec.Command("bash", Script(), dir, label, PIN).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%w: %v\n%s", ErrUnavailable, err, out)
	}
	tok := &Token{Dir: dir, Label: label, PIN: PIN}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "export SOFTHSM2_CONF="); ok {
			tok.Conf = unquote(v)
		}
		if v, ok := strings.CutPrefix(line, "export CUSTOS_PKCS11_MODULE="); ok {
			tok.Module = unquote(v)
		}
	}
	if tok.Conf == "" || tok.Module == "" {
		return nil, fmt.Errorf("softhsm/setup.sh printed no environment:\n%s", out)
	}
	return tok, nil
}

// unquote undoes the backslashes of bash's printf %q, which setup.sh uses
// so that its output can be eval'd: a test's temporary directory is named
// after the test and may hold spaces or commas.
func unquote(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

// Script returns the path of setup.sh.
func Script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "setup.sh")
}
