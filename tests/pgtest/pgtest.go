// Package pgtest starts a throwaway PostgreSQL cluster for a test, with the
// server binaries of the machine (initdb and pg_ctl), as the postgres user
// when the test runs as root.
package pgtest

import (
	"errors"
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
	if !Installed() {
		msg := "!!! PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql to run the PostgreSQL tests"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	c, err := Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c.DSN
}

// Installed reports whether the server binaries are.
func Installed() bool { return binary("initdb") != "" && binary("pg_ctl") != "" }

// Cluster is a running throwaway cluster.
type Cluster struct {
	DSN  string
	stop func()
}

// Stop stops the cluster and removes its files.
func (c *Cluster) Stop() { c.stop() }

// Run starts a cluster in a new temporary directory, on a free loopback
// port, until Stop.
func Run() (*Cluster, error) {
	initdb, pgctl := binary("initdb"), binary("pg_ctl")
	// Not a test's TempDir: the postgres user must be able to enter it.
	dir, err := os.MkdirTemp("", "custos-pg-")
	if err != nil {
		return nil, err
	}
	var asUser []string
	if os.Geteuid() == 0 {
		pg, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, errors.New("running as root and there is no postgres user to run the cluster as")
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	run := func(args ...string) error {
		cmd := append(append([]string{}, asUser...), args...)
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %v\n%s", args, err, out)
		}
		return nil
	}
	data := filepath.Join(dir, "data")
	stop := func() {
		cmd := append(append([]string{}, asUser...), pgctl, "-D", data, "-m", "immediate", "-w", "stop")
		exec.Command(cmd[0], cmd[1:]...).Run()
		os.RemoveAll(dir)
	}
	if err := run(initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := run(pgctl, "-D", data, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "start",
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off", port, dir)); err != nil {
		stop()
		return nil, err
	}
	return &Cluster{DSN: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port), stop: stop}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
