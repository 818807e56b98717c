// Package pgtest starts a throwaway PostgreSQL cluster for a test, with the
// server binaries of the machine (initdb and pg_ctl), as the postgres user
// when the test runs as root.
package pgtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
)

// binary finds a PostgreSQL server program on PATH or in Debian's location.
func binary(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	if len(matches) > 0 {
		return matches[len(matches)-1]
	}
	return ""
}

// Start runs a cluster until the test ends and returns a DSN for it. It
// skips the test when PostgreSQL is not installed, except under CI, where
// it fails: the PostgreSQL tests must run there.
func Start(t testing.TB) string {
	t.Helper()
	initdb, pgctl := binary("initdb"), binary("pg_ctl")
	if initdb == "" || pgctl == "" {
		msg := "!!! PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql to run the PostgreSQL tests"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// Not t.TempDir: the postgres user must be able to enter it.
	dir, err := os.MkdirTemp("", "custos-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var asUser []string
	if os.Geteuid() == 0 {
		pg, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal("running as root and there is no postgres user to run the cluster as")
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	run := func(args ...string) {
		t.Helper()
		cmd := append(append([]string{}, asUser...), args...)
		out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	data := filepath.Join(dir, "data")
	run(initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
	port := freePort(t)
	run(pgctl, "-D", data, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "start",
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off", port, dir))
	t.Cleanup(func() {
		cmd := append(append([]string{}, asUser...), pgctl, "-D", data, "-m", "immediate", "-w", "stop")
		exec.Command(cmd[0], cmd[1:]...).Run()
	})
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
