// Command benchreplicas prints the scale-out table `make bench-replicas`
// shows: authenticated requests/s and exchanges/s through haproxy with 1, 2
// and 3 custosd replicas (one SoftHSM token, one PostgreSQL registry), with
// replays and rate limits in each replica's memory and shared through
// Redis, each beside one replica served directly, so that the cost of the
// balancer and of the shared store are ratios from one run. It also counts
// what the figures for more machines depend on: Redis commands per request
// and registry transactions per exchange.
//
// A configuration's authenticated-request throughput is the best of its
// loads at several concurrencies (-request-c): at one concurrency, a
// configuration whose requests each wait a round trip longer (on Redis, or
// on the balancer) has fewer of them being served at once, and the figure
// would measure that latency as well as the capacity the table compares.
// The figures at each concurrency are printed beside.
//
//	go run ./tests/benchreplicas -bin bin [-d 3s] [-c 32] [-request-c 32,128]
package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/client/bench"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/softhsm"
	"github.com/custos-kx/custos/tests/cluster"
	"github.com/custos-kx/custos/tests/pgtest"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding the custosd binary")
	d := flag.Duration("d", 3*time.Second, "how long each load runs")
	c := flag.Int("c", 32, "concurrency of the exchange loads")
	rc := flag.String("request-c", "32,128", "concurrencies of the authenticated-request loads, comma-separated: a configuration's throughput is its best of them")
	roundsFlag = flag.Int("rounds", 5, "rounds of every load, the figures being their medians")
	flag.Parse()
	var requestC []int
	for _, f := range strings.Split(*rc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "benchreplicas: -request-c %q: want positive integers separated by commas\n", *rc)
			os.Exit(2)
		}
		requestC = append(requestC, n)
	}
	if err := run(*bin, *d, *c, requestC); err != nil {
		fmt.Fprintln(os.Stderr, "benchreplicas:", err)
		os.Exit(1)
	}
}

var roundsFlag *int

// figure is one load's outcome, and what it cost the shared parts.
type figure struct {
	concurrency int
	rate, p99   float64
	errors      int
	redisPerOp  float64
	// redisBatch is commands per read Redis made: how many checks travel
	// together.
	redisBatch float64
	// CPU per operation of the replicas, of haproxy, of Redis and of the
	// load generator (this process), in µs.
	cpu           [4]float64
	registryPerOp float64
}

func run(bin string, d time.Duration, concurrency int, requestC []int) error {
	if m := cluster.Missing(); len(m) > 0 {
		return fmt.Errorf("%s not installed", strings.Join(m, " and "))
	}
	if !pgtest.Installed() {
		return fmt.Errorf("the PostgreSQL server (initdb, pg_ctl) is not installed")
	}
	dir, err := os.MkdirTemp("", "custos-bench-replicas-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := softhsm.Create(dir, "custos-bench-replicas")
	if err != nil {
		return err
	}
	pg, err := pgtest.Run()
	if err != nil {
		return err
	}
	defer pg.Stop()
	rd, err := cluster.StartRedis(dir)
	if err != nil {
		return err
	}
	defer rd.Stop()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte(st.PIN), 0o600); err != nil {
		return err
	}
	env := append(os.Environ(),
		"SOFTHSM2_CONF="+st.Conf, "CUSTOS_PKCS11_MODULE="+st.Module, "CUSTOS_TOKEN_LABEL="+st.Label, "CUSTOS_PIN_FILE="+pinFile,
		"CUSTOS_DB="+pg.DSN,
		// One load generator is one address and one account.
		"CUSTOS_RATE_PER_ADDRESS=0", "CUSTOS_RATE_PER_ACCOUNT=0",
		"CUSTOS_REQUEST_LOG=off", "CUSTOS_TRUSTED_PROXIES=127.0.0.1")
	custosd := filepath.Join(bin, "custosd")
	if out, err := cmdOutput(custosd, env, "init"); err != nil {
		return fmt.Errorf("custosd init: %v\n%s", err, out)
	}
	ctx := context.Background()
	reg, err := accounts.Open(ctx, pg.DSN)
	if err != nil {
		return err
	}
	key, err := exchange.GenerateClientKey(rand.Reader, exchange.P256)
	if err != nil {
		return err
	}
	if err := reg.Add(ctx, "bench@example.com", key.Public()); err != nil {
		return err
	}
	reg.Close()
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr})
	defer rdb.Close()
	pgc, err := pgx.Connect(ctx, pg.DSN)
	if err != nil {
		return err
	}
	defer pgc.Close(ctx)

	counters := func() (redisCmds, redisReads, xacts float64) {
		info, _ := rdb.Info(ctx, "stats").Result()
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
				redisCmds, _ = strconv.ParseFloat(v, 64)
			}
			if v, ok := strings.CutPrefix(line, "total_reads_processed:"); ok {
				redisReads, _ = strconv.ParseFloat(v, 64)
			}
		}
		pgc.QueryRow(ctx, "SELECT sum(xact_commit)::float8 FROM pg_stat_database").Scan(&xacts)
		return redisCmds, redisReads, xacts
	}
	measure := func(kind, url string, concurrency int, pids [3][]int) (figure, error) {
		cpu0 := cpuOf(pids)
		r0, rr0, x0 := counters()
		res, err := bench.Run(ctx, bench.Config{Kind: kind, URL: url, Concurrency: concurrency, Duration: d, Key: key, Precompute: true})
		if err != nil {
			return figure{}, err
		}
		r1, rr1, x1 := counters()
		cpu1 := cpuOf(pids)
		f := figure{concurrency: concurrency, rate: res.Throughput, p99: res.Latency.P99}
		for i := range cpu1 {
			if res.Completed > 0 {
				f.cpu[i] = float64((cpu1[i] - cpu0[i]).Microseconds()) / float64(res.Completed)
			}
		}
		for _, n := range res.Errors {
			f.errors += n
		}
		if n := float64(res.Completed); n > 0 {
			// The counters' own queries (one INFO, one SELECT) are taken off.
			f.redisPerOp = max(0, r1-r0-1) / n
			if rr1-rr0 > 1 {
				f.redisBatch = max(0, r1-r0-1) / (rr1 - rr0 - 1)
			}
			f.registryPerOp = max(0, x1-x0-1) / n
		}
		return f, nil
	}

	// Both store settings' replicas and balancers run throughout, and the
	// loads go round them in turn, rounds times, each figure the median of
	// its rounds: on a shared machine the rate drifts by a third from one
	// minute to the next, and a ratio of two loads far apart in time
	// measures the drift.
	type config struct {
		name, base string
		url        string   // the origin
		pids       [3][]int // the replicas, haproxy, Redis
	}
	var configs []config
	for _, store := range []string{"", rd.URL()} {
		storeName := "memory"
		if store != "" {
			storeName = "Redis"
		}
		var reps []*cluster.Replica
		for range 3 {
			addr, err := cluster.FreeAddr()
			if err != nil {
				return err
			}
			r, err := cluster.StartReplica(custosd, addr, append(append([]string{}, env...), "CUSTOS_SHARED_STORE="+store))
			if err != nil {
				return err
			}
			defer r.Stop()
			reps = append(reps, r)
		}
		direct := "1 replica, direct, " + storeName
		var redisPID []int
		if store != "" {
			redisPID = []int{rd.PID()}
		}
		configs = append(configs, config{name: direct, url: reps[0].URL, pids: [3][]int{{reps[0].PID()}, nil, redisPID}})
		for n := 1; n <= 3; n++ {
			var backends []string
			var pids []int
			for _, r := range reps[:n] {
				backends = append(backends, r.Addr)
				pids = append(pids, r.PID())
			}
			lb, err := cluster.StartBalancer(dir, backends, time.Second)
			if err != nil {
				return err
			}
			defer lb.Stop()
			configs = append(configs, config{name: fmt.Sprintf("%d replica%s, haproxy, %s", n, plural(n), storeName), base: direct, url: lb.URL, pids: [3][]int{pids, {lb.PID()}, redisPID}})
		}
	}
	type row struct {
		name, base string
		req, exc   figure
	}
	// Each memory configuration runs next to its Redis twin, first in
	// one round and second in the next, so that the cost of the shared
	// store is a ratio of two loads a few seconds apart, the machine's
	// drift cancelling out.
	half := len(configs) / 2
	rounds := map[string][]figure{}
	// byC holds the request loads at each concurrency, keyed by name and
	// concurrency.
	byC := map[string][]figure{}
	for round := 0; round < *roundsFlag; round++ {
		var pairs [][2]config
		for i := range half {
			pair := [2]config{configs[i], configs[half+i]}
			if round%2 == 1 {
				pair[0], pair[1] = pair[1], pair[0]
			}
			pairs = append(pairs, pair)
		}
		for _, pair := range pairs {
			best := map[string]figure{}
			for _, n := range requestC {
				for _, c := range pair {
					f, err := measure(bench.Requests, c.url+"/v1/whoami", n, c.pids)
					if err != nil {
						return fmt.Errorf("%s, %s at concurrency %d: %w", c.name, bench.Requests, n, err)
					}
					byC[fmt.Sprint(c.name, "\x00", n)] = append(byC[fmt.Sprint(c.name, "\x00", n)], f)
					if f.rate > best[c.name].rate {
						best[c.name] = f
					}
				}
			}
			for name, f := range best {
				rounds[name+"\x00"+bench.Requests] = append(rounds[name+"\x00"+bench.Requests], f)
			}
		}
		for _, pair := range pairs {
			for _, c := range pair {
				f, err := measure(bench.Exchange, c.url, concurrency, c.pids)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", c.name, bench.Exchange, err)
				}
				rounds[c.name+"\x00"+bench.Exchange] = append(rounds[c.name+"\x00"+bench.Exchange], f)
			}
		}
	}
	var rows []row
	for _, c := range configs {
		rows = append(rows, row{name: c.name, base: c.base, req: median(rounds[c.name+"\x00"+bench.Requests]), exc: median(rounds[c.name+"\x00"+bench.Exchange])})
	}

	byName := map[string]row{}
	for _, r := range rows {
		byName[r.name] = r
	}
	fmt.Printf("scale-out on this machine (%d CPUs shared by every process): P-256 exchanges at concurrency %d and authenticated GETs on one session, the best at concurrency %s; medians of %d rounds of %s each\n\n",
		runtime.NumCPU(), concurrency, joinInts(requestC, " or "), *roundsFlag, d)
	fmt.Printf("  %-34s %12s %5s %8s %8s %12s %8s %8s %11s %11s %12s\n", "", "requests/s", "at c", "×", "p99 ms", "exchanges/s", "×", "p99 ms", "Redis/req", "per batch", "registry/exch")
	for _, r := range rows {
		reqRatio, excRatio := "", ""
		if b, ok := byName[r.base]; ok {
			reqRatio = fmt.Sprintf("%.2f", r.req.rate/b.req.rate)
			excRatio = fmt.Sprintf("%.2f", r.exc.rate/b.exc.rate)
		}
		errs := ""
		if r.req.errors+r.exc.errors > 0 {
			errs = fmt.Sprintf("  (%d errors)", r.req.errors+r.exc.errors)
		}
		fmt.Printf("  %-34s %12.0f %5d %8s %8.1f %12.0f %8s %8.1f %11.2f %11.2f %12.2f%s\n", r.name, r.req.rate, r.req.concurrency, reqRatio, r.req.p99, r.exc.rate, excRatio, r.exc.p99, r.req.redisPerOp, r.req.redisBatch, r.exc.registryPerOp, errs)
	}
	fmt.Println()
	fmt.Printf("  CPU per authenticated request, µs (user + system, /proc):\n")
	fmt.Printf("  %-34s %10s %10s %10s %10s %10s\n", "", "custosd", "haproxy", "Redis", "client", "all")
	for _, r := range rows {
		c := r.req.cpu
		fmt.Printf("  %-34s %10.1f %10.1f %10.1f %10.1f %10.1f\n", r.name, c[0], c[1], c[2], c[3], c[0]+c[1]+c[2]+c[3])
	}
	fmt.Println()
	fmt.Printf("  authenticated requests/s at each concurrency:\n")
	fmt.Printf("  %-34s", "")
	for _, n := range requestC {
		fmt.Printf(" %10s", fmt.Sprint("c=", n))
	}
	fmt.Println()
	for _, r := range rows {
		fmt.Printf("  %-34s", r.name)
		for _, n := range requestC {
			fmt.Printf(" %10.0f", median(byC[fmt.Sprint(r.name, "\x00", n)]).rate)
		}
		fmt.Println()
	}
	fmt.Println()
	fmt.Println("  × is the ratio to one replica served directly with the same store setting; \"at c\" the concurrency of the median round's best load.")
	// paired is the shared store's cost of each round (1 − Redis rate ÷
	// memory rate, the two loads run side by side), in %, sorted.
	paired := func(where, kind string) []float64 {
		mem, shared := rounds["1 replica, "+where+", memory\x00"+kind], rounds["1 replica, "+where+", Redis\x00"+kind]
		var v []float64
		for i := range min(len(mem), len(shared)) {
			v = append(v, 100*(1-shared[i].rate/mem[i].rate))
		}
		slices.Sort(v)
		return v
	}
	cost := func(name, kind string) {
		through, direct := paired("haproxy", kind), paired("direct", kind)
		fmt.Printf("  the shared store's cost, %s at one replica: %.1f %% through haproxy, %.1f %% direct (medians of the rounds' pairs; through haproxy %s)\n",
			name, through[len(through)/2], direct[len(direct)/2], percents(through))
	}
	cost("authenticated requests (target ≤ 15 %)", bench.Requests)
	cost("exchanges", bench.Exchange)
	balancer := byName["1 replica, haproxy, memory"].req.rate / byName["1 replica, direct, memory"].req.rate
	fmt.Printf("  the balancer's cost, authenticated requests at one replica: %.1f %%\n", 100*(1-balancer))
	return nil
}

func joinInts(v []int, sep string) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, sep)
}

// percents lists sorted percentages for a line of the table.
func percents(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%.1f", x)
	}
	return strings.Join(s, ", ") + " %"
}

// cpuOf is the CPU time so far of each group of processes, and of this one.
func cpuOf(pids [3][]int) (t [4]time.Duration) {
	for i, group := range pids {
		for _, pid := range group {
			d, _ := cluster.ProcessCPU(pid)
			t[i] += d
		}
	}
	t[3], _ = cluster.ProcessCPU(os.Getpid())
	return t
}

// median is the figure of median rate among fs (and that load's
// concurrency), its other fields each the median of theirs.
func median(fs []figure) figure {
	pick := func(get func(figure) float64) float64 {
		v := make([]float64, len(fs))
		for i, f := range fs {
			v[i] = get(f)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	errors := 0
	for _, f := range fs {
		errors += f.errors
	}
	byRate := slices.SortedFunc(slices.Values(fs), func(a, b figure) int { return cmp.Compare(a.rate, b.rate) })
	return figure{
		concurrency:   byRate[len(byRate)/2].concurrency,
		rate:          pick(func(f figure) float64 { return f.rate }),
		p99:           pick(func(f figure) float64 { return f.p99 }),
		errors:        errors,
		redisPerOp:    pick(func(f figure) float64 { return f.redisPerOp }),
		redisBatch:    pick(func(f figure) float64 { return f.redisBatch }),
		registryPerOp: pick(func(f figure) float64 { return f.registryPerOp }),
		cpu: [4]float64{
			pick(func(f figure) float64 { return f.cpu[0] }), pick(func(f figure) float64 { return f.cpu[1] }),
			pick(func(f figure) float64 { return f.cpu[2] }), pick(func(f figure) float64 { return f.cpu[3] }),
		},
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func cmdOutput(path string, env []string, args ...string) (string, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}
