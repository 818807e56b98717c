package softhsm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// NSSToken is an NSS softokn database made for one test: the second
// PKCS#11 implementation the tests run on, loaded directly
// (libsoftokn3.so) with its database named in the module's
// initialisation string.
type NSSToken struct {
	Dir      string // the sql: database directory
	Module   string // libsoftokn3.so
	InitArgs string // for C_Initialize's reserved pointer
	Label    string // NSS's persistent token
	PIN      string // the database password
}

// nssModules are where Debian and Fedora put NSS softokn.
var nssModules = []string{
	"/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
	"/usr/lib/aarch64-linux-gnu/libsoftokn3.so",
	"/usr/lib64/libsoftokn3.so",
}

// NewNSS creates an NSS database with password PIN in t.TempDir(). It
// needs libnss3 and certutil (Debian: libnss3-tools); without them the
// test is skipped with a loud message, except under CI, where it fails.
func NewNSS(t testing.TB) *NSSToken {
	t.Helper()
	skip := func(why string) { missing(t, "NSS softokn", why) }
	var module string
	for _, m := range nssModules {
		if _, err := os.Stat(m); err == nil {
			module = m
			break
		}
	}
	if module == "" {
		skip("libsoftokn3.so not found (install libnss3)")
	}
	certutil, err := exec.LookPath("certutil")
	if err != nil {
		skip("certutil not found (install libnss3-tools)")
	}
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "password")
	if err := os.WriteFile(pwFile, []byte(PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(certutil, "-N", "-d", "sql:"+dir, "-f", pwFile).CombinedOutput(); err != nil {
		t.Fatalf("certutil -N: %v\n%s", err, out)
	}
	return &NSSToken{
		Dir:      dir,
		Module:   module,
		InitArgs: fmt.Sprintf("configdir='sql:%s' certPrefix='' keyPrefix='' secmod='secmod.db' flags=", dir),
		Label:    "NSS Certificate DB",
		PIN:      PIN,
	}
}
