package softhsm

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// OpenCryptokiToken is opencryptoki's soft token, initialised for one
// test: the third PKCS#11 implementation the tests run on. opencryptoki
// keeps its tokens under /var/lib/opencryptoki and reaches them through
// its pkcsslotd daemon, so the token is the machine's: the test holds a
// lock on it, empties it, starts the daemon afresh, and puts the token
// directory (and the daemon) back as it found them when it ends.
type OpenCryptokiToken struct {
	Module string
	Label  string
	PIN    string // opencryptoki's PINs are 4 to 8 characters
}

const (
	ockModule = "/usr/lib/x86_64-linux-gnu/opencryptoki/libopencryptoki.so.0"
	ockTokens = "/var/lib/opencryptoki/swtok"
	ockLock   = "/tmp/custos-opencryptoki.lock"
	// The soft token's PINs as the harness sets them; its SO PIN starts
	// as opencryptoki's documented default.
	ockDefaultSO = "87654321"
	ockSO        = "12345678"
	ockUserFirst = "11112222"
	ockUser      = "22223333"
)

// NewOpenCryptoki initialises opencryptoki's soft token for the test. It
// needs root and the opencryptoki package (pkcsslotd, pkcsconf); without
// them the test is skipped with a loud message, except under CI, where it
// fails.
func NewOpenCryptoki(t testing.TB) *OpenCryptokiToken {
	t.Helper()
	skip := func(why string) { missing(t, "opencryptoki", why) }
	for _, f := range []string{ockModule, "/usr/sbin/pkcsslotd", "/usr/sbin/pkcsconf"} {
		if _, err := os.Stat(f); err != nil {
			skip(f + " not found (install opencryptoki)")
		}
	}
	if os.Geteuid() != 0 {
		skip("its soft token is the machine's and needs root to reset")
	}
	lock, err := os.OpenFile(ockLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Flock(int(lock.Fd()), syscall.LOCK_UN); lock.Close() })

	// The token directory may hold a token initialised by a run that was
	// killed before it could put it back, with PINs this run cannot know:
	// the test starts from an empty token, as the package installs it.
	saved := filepath.Join(t.TempDir(), "swtok")
	run(t, "", "cp", "-a", ockTokens, saved)
	wasRunning := daemonRunning()
	stopDaemon(t)
	emptyTokenDir(t)
	run(t, "", "/usr/sbin/pkcsslotd")
	waitUntil(t, daemonRunning)
	t.Cleanup(func() {
		stopDaemon(t)
		os.RemoveAll(ockTokens)
		exec.Command("cp", "-a", saved, ockTokens).Run()
		if wasRunning {
			exec.Command("/usr/sbin/pkcsslotd").Run()
		}
	})

	slot := softSlot(t)
	label := fmt.Sprintf("custos-ock-%d", os.Getpid()%100000)
	run(t, label+"\n", "/usr/sbin/pkcsconf", "-I", "-c", slot, "-S", ockDefaultSO)
	run(t, "", "/usr/sbin/pkcsconf", "-P", "-c", slot, "-S", ockDefaultSO, "-n", ockSO)
	run(t, "", "/usr/sbin/pkcsconf", "-u", "-c", slot, "-S", ockSO, "-n", ockUserFirst)
	run(t, "", "/usr/sbin/pkcsconf", "-p", "-c", slot, "-U", ockUserFirst, "-n", ockUser)
	return &OpenCryptokiToken{Module: ockModule, Label: label, PIN: ockUser}
}

// softSlot finds the slot of the soft token ("IBM SoftTok") in pkcsconf's
// listing, never assuming its number.
func softSlot(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("/usr/sbin/pkcsconf", "-t").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcsconf -t: %v\n%s", err, out)
	}
	var slot string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if n, ok := strings.CutPrefix(line, "Token #"); ok {
			slot, _, _ = strings.Cut(n, " ")
		}
		if strings.HasPrefix(line, "Model:") && strings.Contains(line, "SoftTok") {
			return slot
		}
	}
	t.Fatalf("pkcsconf lists no soft token:\n%s", out)
	return ""
}

// stopDaemon stops pkcsslotd and drops the shared memory in which it and
// the module keep the token's state, so that the next start reads the
// token directory afresh.
func stopDaemon(t testing.TB) {
	t.Helper()
	exec.Command("pkill", "-x", "pkcsslotd").Run()
	waitUntil(t, func() bool { return !daemonRunning() })
	removeSharedMemory()
}

func removeSharedMemory() {
	shm, _ := filepath.Glob("/dev/shm/*opencryptoki*")
	for _, f := range shm {
		os.Remove(f)
	}
}

// emptyTokenDir leaves the soft token's directory as the package installs
// it: an empty TOK_OBJ and no token data, so that the token is
// uninitialised and its SO PIN is the default.
func emptyTokenDir(t testing.TB) {
	t.Helper()
	for _, dir := range []string{ockTokens, filepath.Join(ockTokens, "TOK_OBJ")} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if dir == ockTokens && e.Name() == "TOK_OBJ" {
				continue // emptied next; it keeps its owner and mode
			}
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func daemonRunning() bool {
	return exec.Command("pgrep", "-x", "pkcsslotd").Run() == nil
}

func run(t testing.TB, stdin string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// waitUntil polls cond for up to 10 s.
func waitUntil(t testing.TB, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("opencryptoki's daemon did not change state within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
