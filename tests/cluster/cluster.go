// Package cluster runs the parts of a replicated deployment on loopback,
// for the replica tests and the scale-out benchmark: redis-server, custosd
// replicas, and haproxy balancing between them. Every part is a real
// process of the machine's own packages, in a directory of the caller's.
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// FreeAddr is a loopback address with a port nothing listens on now.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Missing says which of the programs the cluster needs are not installed.
func Missing() []string {
	var missing []string
	for _, p := range []string{"redis-server", "haproxy"} {
		if _, err := lookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	return missing
}

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/usr/local/bin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not installed (apt-get install %s)", name, name)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode()&0o111 != 0
}

// process is a child process and what it printed.
type process struct {
	cmd  *exec.Cmd
	Log  // what it printed
	done chan struct{}
	err  error // how it exited, once done is closed
}

// Logs is what the process printed so far.
func (p *process) Logs() string { return p.String() }

// Log is a buffer that several goroutines write to: a process's output, a
// logger's lines.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *Log) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

// String is what was written so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func start(name string, args, env []string) (*process, error) {
	path, err := lookPath(name)
	if err != nil {
		return nil, err
	}
	return startPath(path, args, env)
}

// signal sends sig and waits up to 10 s for the process to end.
func (p *process) signal(sig syscall.Signal) {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitUntil polls ready every 20 ms until it returns nil, the process
// exits, or the deadline passes.
func waitUntil(p *process, what string, d time.Duration, ready func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited before it was ready: %v\n%s", what, err, p.Logs())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %v\n%s", what, d, err, p.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitReady waits until url answers 200.
func waitReady(p *process, what string, d time.Duration, url string) error {
	return waitUntil(p, what, d, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s answered %d", url, resp.StatusCode)
		}
		return nil
	})
}

// Redis is a redis-server on a loopback port, without persistence: a
// restart loses what it held, as a cache node's restart does.
type Redis struct {
	Addr   string
	Socket string // the same server's unix socket
	dir    string
	tls    []string // redis-server's TLS settings; none for plain TCP
	proc   *process
}

// StartRedis starts redis-server with its files in dir.
func StartRedis(dir string) (*Redis, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	r := &Redis{Addr: addr, dir: dir, Socket: filepath.Join(dir, "redis.sock")}
	return r, r.Start()
}

// StartRedisTLS starts redis-server speaking only TLS on its TCP port,
// with the certificate and key in the PEM files given.
func StartRedisTLS(dir, certFile, keyFile string) (*Redis, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	r := &Redis{Addr: addr, dir: dir, Socket: filepath.Join(dir, "redis.sock"),
		tls: []string{"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-auth-clients", "no"}}
	return r, r.Start()
}

// URL is the redis:// (or rediss://) URL custosd's --shared-store takes.
func (r *Redis) URL() string {
	if r.tls != nil {
		return "rediss://" + r.Addr
	}
	return "redis://" + r.Addr
}

// Start starts the server again on its address, empty, after Stop.
func (r *Redis) Start() error {
	_, port, _ := net.SplitHostPort(r.Addr)
	args := []string{"--bind", "127.0.0.1", "--port", port, "--dir", r.dir,
		"--unixsocket", r.Socket, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction", "--protected-mode", "no"}
	if r.tls != nil {
		args = append(append(args, "--port", "0", "--tls-port", port), r.tls...)
	}
	p, err := start("redis-server", args, os.Environ())
	if err != nil {
		return err
	}
	r.proc = p
	return waitUntil(p, "redis-server", 10*time.Second, func() error {
		c, err := net.DialTimeout("unix", r.Socket, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		if err != nil || !strings.HasPrefix(string(buf[:n]), "+PONG") {
			return fmt.Errorf("PING answered %q, %v", buf[:n], err)
		}
		return nil
	})
}

// Stop kills the server at once, as a crash or a lost host would.
func (r *Redis) Stop() { r.proc.signal(syscall.SIGKILL) }

// PID is the server's process id.
func (r *Redis) PID() int { return r.proc.cmd.Process.Pid }

// Replica is a custosd serve process.
type Replica struct {
	Addr string
	URL  string
	proc *process
}

// StartReplica starts `custosd serve` (the binary custosd) on addr with
// env, and waits until its /readyz answers 200.
func StartReplica(custosd, addr string, env []string) (*Replica, error) {
	p, err := startPath(custosd, []string{"serve"}, append(env, "CUSTOS_LISTEN="+addr))
	if err != nil {
		return nil, err
	}
	r := &Replica{Addr: addr, URL: "http://" + addr, proc: p}
	if err := waitReady(p, "custosd on "+addr, 20*time.Second, r.URL+"/readyz"); err != nil {
		r.Kill()
	}
	return r, err
}

func startPath(path string, args, env []string) (*process, error) {
	p := &process{cmd: exec.Command(path, args...), done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

// Logs is what the replica printed so far.
func (r *Replica) Logs() string { return r.proc.Logs() }

// Stop ends the replica as an operator would: SIGTERM, in-flight work finished.
func (r *Replica) Stop() { r.proc.signal(syscall.SIGTERM) }

// Signal sends sig to the replica and returns at once; Wait waits for
// the end it asks for.
func (r *Replica) Signal(sig syscall.Signal) error { return r.proc.cmd.Process.Signal(sig) }

// Wait waits for the replica to exit and says how it did.
func (r *Replica) Wait() error {
	<-r.proc.done
	return r.proc.err
}

// Kill ends the replica at once, as a crash would.
func (r *Replica) Kill() { r.proc.signal(syscall.SIGKILL) }

// PID is the replica's process id.
func (r *Replica) PID() int { return r.proc.cmd.Process.Pid }

// Balancer is haproxy in HTTP mode in front of replicas: round robin, no
// affinity, X-Forwarded-For added, each server health-checked on /readyz
// every checkEvery, and a request whose connection to a server failed sent to
// another. A request a server took and did not answer is not retried: it
// may have been acted on (and, signed, would be refused as a replay).
type Balancer struct {
	Addr string
	URL  string
	proc *process
}

// StartBalancer starts haproxy on a free loopback port, with its
// configuration in dir, balancing between the servers at backends.
func StartBalancer(dir string, backends []string, checkEvery time.Duration) (*Balancer, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	var servers strings.Builder
	for i, b := range backends {
		fmt.Fprintf(&servers, "    server r%d %s check\n", i, b)
	}
	conf := fmt.Sprintf(`global
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    retries 3
    option redispatch 1
    retry-on conn-failure
frontend api
    bind %[1]s
    option forwardfor
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter %[3]dms fastinter %[3]dms downinter %[3]dms fall 1 rise 2 maxconn 1000
%[2]s`, addr, servers.String(), checkEvery.Milliseconds())
	file := filepath.Join(dir, "haproxy-"+strings.ReplaceAll(addr, ":", "-")+".cfg")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	p, err := start("haproxy", []string{"-db", "-f", file}, os.Environ())
	if err != nil {
		return nil, err
	}
	b := &Balancer{Addr: addr, URL: "http://" + addr, proc: p}
	if err := waitReady(p, "haproxy", 10*time.Second, b.URL+"/readyz"); err != nil {
		b.Stop()
	}
	return b, err
}

// Logs is what haproxy printed so far.
func (b *Balancer) Logs() string { return b.proc.Logs() }

// Stop ends haproxy.
func (b *Balancer) Stop() { b.proc.signal(syscall.SIGTERM) }

// PID is haproxy's process id.
func (b *Balancer) PID() int { return b.proc.cmd.Process.Pid }

// Wait polls cond every 20 ms until it returns nil or ctx ends, and
// returns cond's last error then.
func Wait(ctx context.Context, cond func() error) error {
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ProcessCPU is a process's user and system time so far, from
// /proc/PID/stat (in clock ticks of 1/100 s, Linux's USER_HZ).
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("unreadable /proc stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("unreadable /proc stat")
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}
