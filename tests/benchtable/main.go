// Command benchtable prints the table `make bench` shows: the primitives of
// an exchange, the server-cost bound they add up to, the measured cost of a
// whole exchange through the real handler and token, throughput and tail
// latency against a running custosd at several concurrencies, the cost of
// an authenticated request beside a plain one, token operations per
// exchange and per request (from the service's metrics), memory per cached
// session, and OpenSSL's ffdh2048 speed on the same machine, each beside
// its target. Everything comes from one run on real parts.
//
//	go run ./tests/benchtable -bin bin [-d 4s]
package main

import (
	"bufio"
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/client/bench"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/tests/benchkit"
	"github.com/custos-kx/custos/tests/cluster"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding the custosd binary")
	d := flag.Duration("d", 4*time.Second, "how long each load runs")
	flag.StringVar(&svgFile, "svg", "docs/bench.svg", "where to draw throughput and p99 against concurrency (empty: nowhere)")
	flag.Parse()
	if *bareAddr != "" {
		fmt.Fprintln(os.Stderr, "benchtable:", serveBare(*bareAddr, *bareSignature, *bareBody))
		os.Exit(1)
	}
	if *mtlsAddr != "" {
		fmt.Fprintln(os.Stderr, "benchtable:", serveMTLS(*mtlsAddr, *mtlsKey, *mtlsDir))
		os.Exit(1)
	}
	if err := run(*bin, *d); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

// table collects rows and prints them aligned.
type table struct{ rows [][3]string }

func (t *table) section(name string) {
	t.rows = append(t.rows, [3]string{"", "", ""}, [3]string{name, "", ""})
}
func (t *table) row(name, value, target string) {
	t.rows = append(t.rows, [3]string{"  " + name, value, target})
}

func (t *table) print(w io.Writer) {
	width := [2]int{}
	for _, r := range t.rows {
		if r[1] != "" || r[2] != "" {
			width[0] = max(width[0], len([]rune(r[0])))
			width[1] = max(width[1], len([]rune(r[1])))
		}
	}
	pad := func(s string, n int) string { return s + strings.Repeat(" ", max(0, n-len([]rune(s)))) }
	for _, r := range t.rows {
		if r[1] == "" && r[2] == "" {
			fmt.Fprintln(w, r[0])
			continue
		}
		fmt.Fprintln(w, strings.TrimRight(pad(r[0], width[0])+"  "+pad(r[1], width[1])+"  "+r[2], " "))
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/1e6) }

func verdict(ok bool, target string) string {
	if ok {
		return "meets " + target
	}
	return "MISSES " + target
}

// perOp is a benchmark's time per operation; a benchmark that failed
// (testing.Benchmark reports no iterations) stops the table.
func perOp(r testing.BenchmarkResult) time.Duration {
	if r.N == 0 {
		fmt.Fprintln(os.Stderr, "\nbenchtable: a benchmark failed; run `make bench-micro` to see why")
		os.Exit(1)
	}
	return time.Duration(r.NsPerOp())
}

func run(bin string, d time.Duration) error {
	testing.Init()
	dir, err := os.MkdirTemp("", "custos-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	progress("setting up a SoftHSM2 token, its keys and a registry in %s", dir)
	rig, err := benchkit.NewRig(dir)
	if err != nil {
		return err
	}
	defer rig.Close()

	t := &table{}
	host, _ := os.Hostname()
	t.rows = append(t.rows, [3]string{fmt.Sprintf("Custos benchmark, %s, %s, %d CPUs, %s, SoftHSM2 in process",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, runtime.NumCPU(), runtime.Version()), "", ""})

	// Primitives.
	t.section("primitives (one goroutine)")
	prims, err := rig.Primitives()
	if err != nil {
		return err
	}
	cost := map[string]time.Duration{}
	for _, p := range prims {
		progress("primitive: %s", p.Name)
		cost[p.ID] = perOp(testing.Benchmark(p.Run))
		t.row(p.Name, ms(cost[p.ID]), "")
	}
	derive := cost["derive"]
	bounds := map[exchange.Profile]time.Duration{
		exchange.ModP2048: cost["derive"] + cost["seal"] + 2*cost["exp256"] + 2*cost["exp128"] + 2*cost["validation"],
		exchange.P256:     cost["p256-derive"] + cost["seal"] + cost["p256-rG"] + 2*cost["p256-dh"] + 2*cost["p256-validation"],
	}
	keys := map[exchange.Profile]*exchange.ClientKey{exchange.ModP2048: rig.Key, exchange.P256: rig.KeyP256}
	names := map[exchange.Profile]string{exchange.ModP2048: "group 14", exchange.P256: "P-256"}
	boundTargets := map[exchange.Profile]float64{exchange.ModP2048: 1.25, exchange.P256: 1.5}
	handlerCPU := map[exchange.Profile]time.Duration{}

	t.section("one exchange, server side, through the HTTP handler in process")
	for _, p := range exchange.Profiles {
		t.row(names[p]+": server-cost bound¹", ms(bounds[p]), "")
		progress("%s: server CPU per exchange through the HTTP handler", names[p])
		bodies, err := benchkit.ExchangeBodies(keys[p], 256)
		if err != nil {
			return err
		}
		runtime.GC() // start from the same heap whatever ran before
		hr := testing.Benchmark(rig.ExchangeHandler(bodies))
		perOp(hr)
		cpu := time.Duration(hr.Extra["cpu-ns/op"])
		handlerCPU[p] = cpu
		ratio := float64(cpu) / float64(bounds[p])
		t.row(names[p]+": server CPU per exchange²", ms(cpu), "")
		t.row("  ratio to the bound", fmt.Sprintf("%.2f ×", ratio), verdict(ratio <= boundTargets[p], fmt.Sprintf("≤ %.2f ×", boundTargets[p])))
		progress("%s: client side of an exchange", names[p])
		clientCPU := perOp(testing.Benchmark(rig.ClientExchange(keys[p])))
		t.row(names[p]+": client CPU per exchange³", ms(clientCPU), verdict(clientCPU <= 1200*time.Microsecond, "≤ 1.2 ms"))
	}

	// Against a running custosd, and the mTLS peer beside it.
	svc, err := startCustosd(bin, rig, dir)
	if err != nil {
		return err
	}
	defer svc.stop()
	id, err := clientIdentity(dir)
	if err != nil {
		return err
	}
	peers := map[string]*mtlsPeer{}
	for _, k := range []string{"ecdsa", "rsa"} {
		progress("starting the mTLS peer with its %s key in the token", k)
		if peers[k], err = startMTLS(rig, dir, k, id); err != nil {
			return err
		}
		defer peers[k].stop()
	}
	before, err := svc.metrics()
	if err != nil {
		return err
	}
	t.section(fmt.Sprintf("on loopback: exchanges against custosd (client side precomputed, keep-alive) and mTLS handshakes (a new connection each), %s each", d))
	series := []*curve{{name: "Custos P-256 exchange"}, {name: "Custos group-14 exchange"}, {name: "mTLS ECDSA P-256 handshake"}, {name: "mTLS RSA-2048 handshake"}}
	for _, c := range []int{1, 2, 8, 32, 128} {
		for i, p := range []exchange.Profile{exchange.P256, exchange.ModP2048} {
			progress("%s exchanges at concurrency %d", names[p], c)
			cpu0, _ := cluster.ProcessCPU(svc.pid())
			res, err := bench.Run(context.Background(), bench.Config{Kind: bench.Exchange, URL: svc.url, Concurrency: c, Duration: d, Key: keys[p], Precompute: true})
			if err != nil {
				return err
			}
			cpu1, _ := cluster.ProcessCPU(svc.pid())
			series[i].add(c, res.Throughput, res.Latency.P50, res.Latency.P99, errorCount(res), (cpu1-cpu0)/time.Duration(max(res.Completed, 1)))
		}
		for i, k := range []string{"ecdsa", "rsa"} {
			progress("mTLS %s handshakes at concurrency %d", k, c)
			cpu0, _ := cluster.ProcessCPU(peers[k].pid())
			res := peers[k].load(c, d)
			cpu1, _ := cluster.ProcessCPU(peers[k].pid())
			series[2+i].add(c, res.throughput, float64(res.p50)/1e6, float64(res.p99)/1e6, res.errors, (cpu1-cpu0)/time.Duration(max(res.completed, 1)))
		}
	}
	for _, s := range series {
		for _, pt := range s.points {
			t.row(fmt.Sprintf("%-27s concurrency %3d", s.name, pt.concurrency), fmt.Sprintf("%6.0f /s  p50 %6.1f ms  p99 %6.1f ms  errors %d  server CPU %.3f ms each⁵", pt.throughput, pt.p50, pt.p99, pt.errors, float64(pt.cpu)/1e6), "")
		}
	}
	p256, g14, ecdsaPeer, rsaPeer := series[0].at(32), series[1].at(32), series[2].at(32), series[3].at(32)
	t.section("at concurrency 32: Custos beside the mTLS peer")
	t.row("P-256 exchanges ÷ mTLS-ECDSA handshakes, per second", fmt.Sprintf("%.2f ×", p256.throughput/ecdsaPeer.throughput), verdict(p256.throughput >= 1.3*ecdsaPeer.throughput, "≥ 1.3 ×"))
	t.row("P-256 p99, errors", fmt.Sprintf("%.1f ms, %d", p256.p99, p256.errors), verdict(p256.p99 <= 25 && p256.errors == 0, "p99 ≤ 25 ms, no errors"))
	t.row("P-256 exchanges ÷ mTLS-RSA handshakes, per second", fmt.Sprintf("%.2f ×", p256.throughput/rsaPeer.throughput), "")
	t.row("P-256 server CPU per exchange ÷ mTLS-ECDSA per handshake", fmt.Sprintf("%.2f ×  (%.3f ms ÷ %.3f ms)", float64(p256.cpu)/float64(ecdsaPeer.cpu), float64(p256.cpu)/1e6, float64(ecdsaPeer.cpu)/1e6), verdict(p256.cpu <= ecdsaPeer.cpu, "≤ 1.0 ×"))
	t.row("P-256 server CPU per exchange ÷ its bound (in process)", fmt.Sprintf("%.2f ×", float64(handlerCPU[exchange.P256])/float64(bounds[exchange.P256])), verdict(handlerCPU[exchange.P256] <= bounds[exchange.P256]*3/2, "≤ 1.5 ×"))
	t.row("group-14 exchanges per second", fmt.Sprintf("%.0f /s, p99 %.1f ms, errors %d", g14.throughput, g14.p99, g14.errors), verdict(g14.throughput >= 1300 && g14.p99 <= 25 && g14.errors == 0, "≥ 1,300 /s, p99 ≤ 25 ms, no errors"))
	t.row("group-14 ÷ mTLS-ECDSA, per second", fmt.Sprintf("%.2f ×", g14.throughput/ecdsaPeer.throughput), "")
	if svgFile != "" {
		progress("drawing %s", svgFile)
		if err := plotCurves(series, svgFile); err != nil {
			return err
		}
	}
	if err := remoteRows(t, rig, d, p256.throughput); err != nil {
		return err
	}
	afterExchanges, err := svc.metrics()
	if err != nil {
		return err
	}

	const rounds = 3
	t.section(fmt.Sprintf("custosd on loopback, requests, concurrency 16, %d rounds of %s each, medians", rounds, d))
	progress("authenticated and plain requests")
	// Each kind runs a second first, unmeasured, so all are compared warm
	// (connections open, heap sized, caches filled). Then they alternate,
	// so that the shared machine's slow and fast spells fall on all; a
	// ratio is the median of each round's.
	//
	// Beside custosd, a bare net/http server answers the same GETs without
	// authentication, once plainly and once carrying the bytes the
	// protocol adds (the Authorization header in, the JWC-Signature and
	// whoami's body out): what net/http and the kernel alone make those
	// bytes cost, and so the most any authentication could reach.
	state := &client.State{}
	wire, err := probeSizes(svc.url+"/v1/whoami", rig, state)
	if err != nil {
		return err
	}
	bare, err := startBare(wire)
	if err != nil {
		return err
	}
	defer bare.stop()
	cfgs := []bench.Config{
		{Kind: bench.Requests, URL: svc.url + "/v1/whoami", Concurrency: 16, Key: rig.Key, State: state},
		{Kind: bench.Plain, URL: svc.url + "/healthz", Concurrency: 16},
		{Kind: bench.Plain, URL: bare.url + "/plain", Concurrency: 16},
		{Kind: bench.Plain, URL: bare.url + "/bytes", Concurrency: 16, Transport: wire.authorize(&http.Transport{
			MaxIdleConns: 32, MaxIdleConnsPerHost: 32, DisableCompression: true})},
	}
	runs := make([][]*bench.Result, len(cfgs))
	for i := -1; i < rounds; i++ {
		for k, cfg := range cfgs {
			cfg.Duration = d
			if i < 0 {
				cfg.Duration = time.Second // the warm-up
			}
			r, err := bench.Run(context.Background(), cfg)
			if err != nil {
				return err
			}
			if i >= 0 {
				runs[k] = append(runs[k], r)
			}
		}
	}
	afterRequests, err := svc.metrics()
	if err != nil {
		return err
	}
	ratioOf := func(a, b int) (median, lo, hi float64) {
		var rs []float64
		for i := range runs[a] {
			rs = append(rs, runs[a][i].Throughput/runs[b][i].Throughput)
		}
		slices.Sort(rs)
		return rs[len(rs)/2], rs[0], rs[len(rs)-1]
	}
	auth, plain, barePlain, bareBytes := medianRun(runs[0]), medianRun(runs[1]), medianRun(runs[2]), medianRun(runs[3])
	authErrors := 0
	for _, a := range runs[0] {
		authErrors += errorCount(a)
	}
	cores := float64(runtime.NumCPU())
	perSec := func(r *bench.Result) string {
		return fmt.Sprintf("%6.0f /s  %5.1f µs CPU each  p99 %5.2f ms", r.Throughput, cores*1e6/r.Throughput, r.Latency.P99)
	}
	t.row("authenticated GET /v1/whoami (ticket cached)", fmt.Sprintf("%s  errors %d", perSec(auth), authErrors),
		verdict(auth.Throughput >= 15000, "≥ 15,000 /s"))
	t.row("plain GET /healthz, same server", perSec(plain), "")
	rr, lo, hi := ratioOf(0, 1)
	t.row("authenticated ÷ plain throughput", fmt.Sprintf("%.2f  (rounds %.2f–%.2f)", rr, lo, hi), verdict(rr >= 0.6, "≥ 0.6"))
	t.row("bare net/http server, plain GET", perSec(barePlain), "")
	t.row("same, carrying the protocol's bytes⁴", perSec(bareBytes), "")
	br, lo, hi := ratioOf(3, 2)
	t.row("bytes ÷ plain: the most authentication could reach", fmt.Sprintf("%.2f  (rounds %.2f–%.2f)", br, lo, hi), "")
	t.row("authenticated ÷ that", fmt.Sprintf("%.2f", rr/br), "")
	bytesNote := fmt.Sprintf("⁴ no authentication: a %d-byte Authorization header in, a %d-byte JWC-Signature and a\n  %d-byte body out, the sizes of the authenticated whoami above.", wire.Authorization, wire.Signature, wire.Body)

	t.section("token operations, from custosd's metrics")
	exOps := hsmOps(afterExchanges, "derive", "seal", "open") - hsmOps(before, "derive", "seal", "open")
	exDerive := hsmOps(afterExchanges, "derive") - hsmOps(before, "derive")
	exSeal := hsmOps(afterExchanges, "seal") - hsmOps(before, "seal")
	exN := counter(afterExchanges, "custos_exchanges_total", map[string]string{"kind": "exchange", "result": "ok"}) -
		counter(before, "custos_exchanges_total", map[string]string{"kind": "exchange", "result": "ok"})
	// An exchange whose client went away when its load ended (abandoned)
	// may have made its derive, or its derive and its seal, and not been
	// answered: those operations are no answered exchange's, and are
	// counted apart.
	abandoned := counter(afterExchanges, "custos_exchanges_total", map[string]string{"kind": "exchange", "result": "abandoned"}) -
		counter(before, "custos_exchanges_total", map[string]string{"kind": "exchange", "result": "abandoned"})
	cutDerives, cutSeals := exDerive-exN, exSeal-exN
	cutOK := cutDerives >= 0 && cutSeals >= 0 && cutSeals <= cutDerives && cutDerives <= abandoned
	// The load starts with one exchange (a derive and a seal) before the
	// clock; after it, the only operation is opening the ticket once.
	reqOps := hsmOps(afterRequests, "open") - hsmOps(afterExchanges, "open")
	reqN := counter(afterRequests, "custos_authenticated_requests_total", map[string]string{"result": "ok"}) -
		counter(afterExchanges, "custos_authenticated_requests_total", map[string]string{"result": "ok"})
	perEx, perReq := (exOps-cutDerives-cutSeals)/exN, reqOps/reqN
	t.row(fmt.Sprintf("per exchange (%.0f exchanges)", exN),
		fmt.Sprintf("%.3f  (derive 1, seal 1; and %.0f derives, %.0f seals of the %.0f exchanges abandoned as loads ended)", perEx, cutDerives, cutSeals, abandoned),
		verdict(cutOK && exOps-cutDerives-cutSeals == 2*exN, "= 2 (derive + seal)"))
	t.row(fmt.Sprintf("per authenticated request (%.0f requests, one session)", reqN), fmt.Sprintf("%.5f", perReq), verdict(reqOps <= 1, "0 on a cache hit (the first opens the ticket)"))

	t.section("memory of the service per cached session (in process, real token)")
	// The sessions are added in batches to one service with an empty cache;
	// the live heap is read after each batch. Every request is signed
	// beforehand, so its own memory is in the baseline.
	sizes := []int{1_000, 10_000, 100_000}
	var loads []*benchkit.SessionLoad
	for i, n := range sizes {
		progress("sealing and signing %d sessions", n)
		prev := 0
		if i > 0 {
			prev = sizes[i-1]
		}
		load, err := rig.NewSessionLoad(n - prev)
		if err != nil {
			return err
		}
		loads = append(loads, load)
	}
	memSvc := rig.NewService()
	base := benchkit.HeapInUse()
	for i, n := range sizes {
		progress("%d live sessions", n)
		perReq, err := loads[i].Serve(memSvc)
		if err != nil {
			return err
		}
		grown := float64(benchkit.HeapInUse()) - float64(base)
		per := grown / float64(n)
		t.row(fmt.Sprintf("%d live sessions", n), fmt.Sprintf("%5.0f B each (%.1f MiB); first request %.0f µs", per, grown/(1<<20), float64(perReq)/1e3),
			verdict(per <= 2048, "≤ 2 KiB"))
	}
	runtime.KeepAlive(memSvc)
	runtime.KeepAlive(loads)

	t.section("OpenSSL on the same machine")
	if speed, err := opensslFFDH(); err != nil {
		t.row("openssl speed ffdh2048", "not measured: "+err.Error(), "")
	} else {
		t.row("openssl speed ffdh2048", fmt.Sprintf("%.0f ops/s (%.3f ms each)", speed, 1e3/speed), "")
		t.row("group-14 server CPU per exchange, in ffdh2048 operations", fmt.Sprintf("%.1f", float64(handlerCPU[exchange.ModP2048])/1e9*speed), "")
		t.row("token derive, in ffdh2048 operations", fmt.Sprintf("%.1f", float64(derive)/1e9*speed), "")
	}
	fmt.Fprintln(os.Stderr)
	t.print(os.Stdout)
	fmt.Println(`
¹ group 14: 1 token derive + 1 seal + 2 × 256-bit exponentiation (g^r, B^r) + 2 × 128-bit
  (C^d, B^e) + 2 validations (C, N): what SPEC §3 makes every exchange do.
  g^r actually uses the fixed-base table, which is why the ratio can be low.
  P-256: 1 token ECDH derive + 1 seal + r·G + 2 DH(r, ·) + 2 validations (SPEC §9).
² process CPU time (all threads, SoftHSM's included) per POST through the
  service's HTTP handler, real token and registry, requests built beforehand,
  one at a time: the handler's goroutine makes the token's calls, as for the
  primitives (custosd, on loopback below, makes them on its call thread).
³ nonce key and request, then the response's checks, σ and the witness.
  CPU per loopback request counts client and server: both run on this machine.`)
	fmt.Println(bytesNote)
	fmt.Println(`⁵ user and system time of the server process during the load (custosd, or the mTLS
  peer with its SoftHSM), divided by the operations completed.`)
	return nil
}

// remoteRows measures P-256 exchanges against a service whose token
// answers each call after 2 ms or 10 ms, as network HSMs do, beside what
// the session pool and Little's law predict: min(concurrency, sessions)
// exchanges in flight, each taking as long as one exchange alone does
// (measured at concurrency 1: its five token round trips, the time a
// sleep really takes, and its own work).
func remoteRows(t *table, rig *benchkit.Rig, d time.Duration, cpuBound float64) error {
	t.section(fmt.Sprintf("a network HSM: every token call 2 ms or 10 ms away, P-256 exchanges, default pool (%d sessions) and limits, %s each", hsm.DefaultMaxSessions, d))
	for _, delay := range []time.Duration{2 * time.Millisecond, 10 * time.Millisecond} {
		svc, sessions, closeTok, err := rig.RemoteService(delay)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			closeTok()
			return err
		}
		srv := &http.Server{Handler: svc}
		go srv.Serve(ln)
		var alone float64 // ms per exchange at concurrency 1
		for _, c := range []int{1, 8, 32, 128} {
			progress("P-256 exchanges with %s per token call at concurrency %d", delay, c)
			res, err := bench.Run(context.Background(), bench.Config{Kind: bench.Exchange, URL: "http://" + ln.Addr().String(), Concurrency: c, Duration: d, Key: rig.KeyP256, Precompute: true})
			if err != nil {
				srv.Close()
				closeTok()
				return err
			}
			name := fmt.Sprintf("%5s per call, concurrency %3d", delay, c)
			if c == 1 {
				alone = res.Latency.P50
				t.row(name, fmt.Sprintf("%6.0f /s  p50 %6.1f ms: one exchange's latency", res.Throughput, alone), "")
				continue
			}
			predicted := float64(min(c, sessions)) / (alone / 1e3)
			want := 0.8 * min(cpuBound, predicted)
			t.row(name,
				fmt.Sprintf("%6.0f /s  p99 %6.1f ms  errors %d  (predicted %5.0f /s = %d in flight ÷ %.1f ms)", res.Throughput, res.Latency.P99, errorCount(res), predicted, min(c, sessions), alone),
				verdict(res.Throughput >= want && errorCount(res) == 0, fmt.Sprintf("≥ %.0f /s (0.8 × min(CPU-bound, predicted))", want)))
		}
		srv.Close()
		closeTok()
	}
	return nil
}

// medianRun returns the run with the median throughput.
func medianRun(runs []*bench.Result) *bench.Result {
	sorted := slices.SortedFunc(slices.Values(runs), func(a, b *bench.Result) int { return cmp.Compare(a.Throughput, b.Throughput) })
	return sorted[len(sorted)/2]
}

func errorCount(r *bench.Result) int {
	n := 0
	for _, v := range r.Errors {
		n += v
	}
	return n
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "\r\033[K… "+format, args...)
}

// custosd is a custosd process serving the rig's token and registry.
type custosd struct {
	cmd *exec.Cmd
	url string
}

func startCustosd(bin string, rig *benchkit.Rig, dir string) (*custosd, error) {
	addr, err := cluster.FreeAddr()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "custosd.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(bin, "custosd"), "serve")
	cmd.Env = append(append(os.Environ(), tokenEnv(rig, dir)...),
		"CUSTOS_DB="+rig.DB,
		"CUSTOS_LISTEN="+addr,
		// One load generator is one address and one account.
		"CUSTOS_RATE_PER_ADDRESS=0", "CUSTOS_RATE_PER_ACCOUNT=0",
		// The table measures the protocol, not the log: a line per
		// request is an operator's choice (docs/performance.md).
		"CUSTOS_REQUEST_LOG=off",
	)
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	c := &custosd{cmd: cmd, url: "http://" + addr}
	if waitOK(c.url + "/readyz") {
		return c, nil
	}
	c.stop()
	log, _ := os.ReadFile(logFile.Name())
	return nil, fmt.Errorf("custosd did not become ready:\n%s", log)
}

// tokenEnv is the environment that opens the rig's token, its PIN in a
// file beside the rig.
func tokenEnv(rig *benchkit.Rig, dir string) []string {
	pinFile := filepath.Join(dir, "pin")
	os.WriteFile(pinFile, []byte(rig.SoftHSM.PIN), 0o600)
	return []string{
		"SOFTHSM2_CONF=" + rig.SoftHSM.Conf,
		"CUSTOS_PKCS11_MODULE=" + rig.SoftHSM.Module,
		"CUSTOS_TOKEN_LABEL=" + rig.SoftHSM.Label,
		"CUSTOS_PIN_FILE=" + pinFile,
	}
}

func (c *custosd) pid() int { return c.cmd.Process.Pid }

// waitOK reports whether url answers 200 within five seconds.
func waitOK(url string) bool {
	for range 100 {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func (c *custosd) stop() {
	c.cmd.Process.Signal(os.Interrupt)
	c.cmd.Wait()
}

func (c *custosd) metrics() (map[string][]sample, error) {
	resp, err := http.Get(c.url + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string][]sample{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			s := sample{labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.Counter != nil:
				s.value = m.GetCounter().GetValue()
			case m.Histogram != nil:
				s.value = float64(m.GetHistogram().GetSampleCount())
			}
			out[name] = append(out[name], s)
		}
	}
	return out, nil
}

type sample struct {
	labels map[string]string
	value  float64
}

// counter sums the samples of name whose labels include want.
func counter(m map[string][]sample, name string, want map[string]string) float64 {
	var n float64
outer:
	for _, s := range m[name] {
		for k, v := range want {
			if s.labels[k] != v {
				continue outer
			}
		}
		n += s.value
	}
	return n
}

// hsmOps counts the token operations of the kinds named.
func hsmOps(m map[string][]sample, ops ...string) float64 {
	var n float64
	for _, op := range ops {
		n += counter(m, "custos_hsm_operation_duration_seconds", map[string]string{"op": op})
	}
	return n
}

// opensslFFDH runs `openssl speed ffdh2048` and returns its operations per second.
func opensslFFDH() (float64, error) {
	path, err := exec.LookPath("openssl")
	if err != nil {
		return 0, fmt.Errorf("openssl is not installed")
	}
	out, err := exec.Command(path, "speed", "-seconds", "2", "ffdh2048").Output()
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 4 && f[0] == "2048" && f[2] == "ffdh" {
			return strconv.ParseFloat(f[len(f)-1], 64)
		}
	}
	return 0, fmt.Errorf("could not read its output")
}
