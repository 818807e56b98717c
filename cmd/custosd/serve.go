package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/httpapi"
	"github.com/custos-kx/custos/internal/sharedstore"
	"github.com/custos-kx/custos/internal/version"
	"github.com/custos-kx/custos/keystore/p11"
)

func cmdServe(ctx context.Context, c *config, log *slog.Logger) error {
	session, rekey := c.Session, c.RekeyWindow
	for _, l := range []struct{ name, addr string }{{"listen", c.Listen}, {"metrics-listen", c.MetricsListen}} {
		if _, _, err := net.SplitHostPort(l.addr); err != nil && l.addr != "" {
			return usageError(fmt.Sprintf("--%s %q is not HOST:PORT, like 127.0.0.1:8443", l.name, l.addr))
		}
	}
	var upstream *url.URL
	var err error
	if c.Upstream != "" {
		if upstream, err = url.Parse(c.Upstream); err != nil || upstream.Scheme == "" || upstream.Host == "" {
			return usageError(fmt.Sprintf("--upstream %q is not an absolute URL", c.Upstream))
		}
	}
	var limits httpapi.Limits
	if limits.PerAddress, limits.AddressBurst, err = rateSetting("rate-per-address", c.RatePerAddr); err != nil {
		return err
	}
	if limits.PerAccount, limits.AccountBurst, err = rateSetting("rate-per-account", c.RatePerAcct); err != nil {
		return err
	}
	proxies, err := trustedProxies(c.TrustedProxies)
	if err != nil {
		return err
	}
	tlsOn := c.TLSCert != "" || c.TLSKey != ""
	if tlsOn && (c.TLSCert == "" || c.TLSKey == "") {
		return usageError("give both --tls-cert and --tls-key")
	}
	var certs *certificate
	if tlsOn {
		// Loaded and checked before anything says "serving".
		if certs, err = loadCertificate(c.TLSCert, c.TLSKey); err != nil {
			return err
		}
	}
	if !tlsOn && !c.Insecure && !loopback(c.Listen) {
		return usageError(fmt.Sprintf("refusing plain HTTP on %s, which is not a loopback address: give --tls-cert and --tls-key, or --insecure-http=true behind a TLS-terminating proxy", c.Listen))
	}

	cpus, gcPercent := runtime.GOMAXPROCS(0), gcSetting()
	tok, ks, err := c.openKeystore(ctx, log)
	if err != nil {
		return err
	}
	defer tok.Close()
	ks.RefreshInterval = c.KeyRefresh
	// What the token can serve, found by probing and a self-test rather
	// than assumed; /readyz and custos_hsm_up run the same test from now on.
	report, err := ks.SelfTest(ctx)
	if err != nil {
		return fmt.Errorf("token %q: %w", tok.Label(), err)
	}
	exchanges := exchangesAtOnce(c.MaxExch, tok, cpus)
	procs := schedulerProcs(tok, cpus)
	log.Info("token", "label", tok.Label(), "sessions", tok.MaxSessions(), "software_slot", tok.SoftwareSlot(),
		"call_threads", tok.CallThreads(), "exchanges_at_once", exchanges, "gomaxprocs", procs, "gogc", gcPercent, "can", report.String())
	tok.SetSelfTest(func(ctx context.Context) error { _, err := ks.SelfTest(ctx); return err })
	go refreshOnHangup(ctx, ks, certs, log)
	var served []slog.Attr
	for _, p := range exchange.Profiles {
		x, err := ks.Credential(ctx, p)
		switch {
		case errors.Is(err, exchange.ErrProfileNotServed):
			continue
		case err != nil:
			return fmt.Errorf("token %q: %w", tok.Label(), err)
		}
		served = append(served, slog.String(p.String(), x.KeyID()))
	}
	reg, err := c.openRegistry(ctx, log)
	if err != nil {
		return err
	}
	defer reg.Close()

	var shared *sharedstore.Store
	if c.SharedStore != "" {
		opts := sharedstore.Options{FailOpen: c.SharedFailure == "open", Logger: log}
		if c.SharedStoreCA != "" {
			pem, err := os.ReadFile(c.SharedStoreCA)
			if err != nil {
				return fmt.Errorf("--shared-store-ca: %w", err)
			}
			opts.RootCAs = x509.NewCertPool()
			if !opts.RootCAs.AppendCertsFromPEM(pem) {
				return usageError(fmt.Sprintf("--shared-store-ca %s holds no PEM certificate", c.SharedStoreCA))
			}
		}
		shared, err = sharedstore.Open(ctx, c.SharedStore, opts)
		if err != nil {
			return err
		}
		defer shared.Close()
	}

	metrics := prometheus.NewRegistry()
	metrics.MustRegister(hsm.Collectors()...)
	metrics.MustRegister(httpapi.Collectors()...)
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics.MustRegister(serviceCollectors(ks, reg)...)
	if shared != nil {
		metrics.MustRegister(sharedstore.Collectors()...)
	}
	// With --metrics-listen, /metrics is served there alone (an address
	// operators reach and clients do not), not beside the API.
	apiMetrics := metrics
	if c.MetricsListen != "" {
		apiMetrics = nil
		mln, err := net.Listen("tcp", c.MetricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
		msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go msrv.Serve(mln)
		defer msrv.Close()
		log.Info("serving metrics", "url", "http://"+mln.Addr().String()+"/metrics")
	}

	reqLevel, reqOff := c.requestLogging()
	cfg := httpapi.Config{
		RequestLog: reqLevel, RequestLogOff: reqOff, RequestLogSample: c.RequestLogSample,
		MaxExchanges:   exchanges,
		TokenSessions:  tok.MaxSessions(),
		Limits:         limits,
		TrustedProxies: proxies,
		Engine:         &exchange.Server{Keystore: ks, Accounts: reg, SessionLifetime: session, RekeyWindow: rekey, CPUs: cpus},
		Ready:          tok.Healthy,
		Upstream:       upstream,
		Metrics:        apiMetrics,
		Logger:         log,
	}
	if shared != nil {
		cfg.Engine.Replays = shared
		cfg.Limiter = func(name string, perSecond float64, burst int) httpapi.Limiter {
			return shared.Limiter(name, perSecond, burst)
		}
		cfg.Ready = func(ctx context.Context) error {
			if err := shared.Ready(ctx); err != nil {
				return err
			}
			return tok.Healthy(ctx)
		}
		cfg.ReadyNote = func() string {
			if !shared.Up() {
				return "the shared store does not answer: replays and rate limits are checked by this replica alone"
			}
			return ""
		}
	}
	svc := httpapi.New(cfg)
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           svc,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10, // above httpapi.MaxHeaderBytes, which answers 413 in SPEC form
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	scheme := "http"
	if tlsOn {
		scheme = "https"
	}
	log.Info("serving", "url", scheme+"://"+ln.Addr().String()+httpapi.WellKnown, "credentials", slog.GroupValue(served...), "token", tok.Label(), "registry", c.registryName(), "shared_store", c.sharedStoreName(), "upstream", c.Upstream)
	errc := make(chan error, 1)
	go func() {
		if tlsOn {
			srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get}
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Finish what is in flight; refuse what is new.
	log.Info("shutting down")
	shutdown, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// sharedStoreName says, for the log, what replays and rate limits are
// shared through.
func (c *config) sharedStoreName() string {
	if c.SharedStore == "" {
		return "none (this replica alone)"
	}
	u, err := url.Parse(c.SharedStore)
	if err != nil {
		return "redis"
	}
	return u.Redacted() + " (on failure: " + c.SharedFailure + ")"
}

// trustedProxies parses --trusted-proxies: addresses or CIDR prefixes,
// separated by commas.
func trustedProxies(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
		} else if a, err := netip.ParseAddr(f); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		} else {
			return nil, usageError(fmt.Sprintf("--trusted-proxies %q: %q is neither an address nor a CIDR prefix, like 10.0.0.0/8", list, f))
		}
	}
	return out, nil
}

// loopback reports whether addr (host:port) is on a loopback interface.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// refreshOnHangup re-reads the token's keys on SIGHUP, so that an operator
// who rotated keys from another process need not wait for --key-refresh,
// and the TLS certificate, which new connections then get (open ones keep
// theirs; a certificate that does not load leaves the old one serving).
func refreshOnHangup(ctx context.Context, ks *p11.Keystore, certs *certificate, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := ks.Refresh(ctx); err != nil {
				log.Error("refreshing keys", "error", err)
			} else {
				log.Info("keys refreshed")
			}
			if certs != nil {
				if err := certs.reload(); err != nil {
					log.Error("reloading the TLS certificate; the old one still serves", "error", err)
				} else {
					log.Info("TLS certificate reloaded", "file", certs.certFile)
				}
			}
		}
	}
}

// certificate is the TLS certificate being served, reloadable.
type certificate struct {
	certFile, keyFile string
	current           atomic.Pointer[tls.Certificate]
}

func loadCertificate(certFile, keyFile string) (*certificate, error) {
	c := &certificate{certFile: certFile, keyFile: keyFile}
	return c, c.reload()
}

func (c *certificate) reload() error {
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("loading the TLS certificate %s and key %s: %w", c.certFile, c.keyFile, err)
	}
	c.current.Store(&cert)
	return nil
}

func (c *certificate) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.current.Load(), nil
}

// serviceCollectors are the metrics of this process's own parts: build,
// key ages and the registry's health.
func serviceCollectors(ks *p11.Keystore, reg *accounts.Registry) []prometheus.Collector {
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "custos_build_info",
		Help: "Always 1; the labels say which build serves.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(version.String(), runtime.Version()).Set(1)
	keyAge := func(kind string, pick func(cred, tk time.Time) time.Time) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "custos_key_age_seconds",
			Help:        "Age of the active key of each kind; rotate before it grows past policy.",
			ConstLabels: prometheus.Labels{"kind": kind},
		}, func() float64 {
			if t := pick(ks.ActiveSince()); !t.IsZero() {
				return time.Since(t).Seconds()
			}
			return 0
		})
	}
	registryUp := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "custos_registry_up",
		Help: "1 while the account registry answers a ping, 0 while it does not.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if reg.Ping(ctx) != nil {
			return 0
		}
		return 1
	})
	return []prometheus.Collector{build,
		keyAge("credential", func(cred, _ time.Time) time.Time { return cred }),
		keyAge("ticket", func(_, tk time.Time) time.Time { return tk }),
		registryUp}
}

// exchangesAtOnce is --max-exchanges, or its default: as many as the
// pool's sessions for a hardware slot, where an exchange mostly waits on
// the HSM's round trips, and, when the token's calls are made by threads
// of their own (a software token), eight per CPU: enough that a thread
// finishing one call finds the next waiting while the other exchanges
// compute (the engine lets one per CPU compute in Go at a time,
// exchange.Server.CPUs). Measured, P-256 at concurrency 32 on 2 CPUs with
// SoftHSM on one thread: 4, 8, 16 and 32 at once did 3,595–3,641,
// 3,913–3,980, 4,357–4,360 and 4,283–4,437 exchanges a second
// (docs/performance.md).
func exchangesAtOnce(flag int, tok *hsm.Token, cpus int) int {
	switch {
	case flag > 0:
		return flag
	case tok.CallThreads() > 0:
		return 8 * cpus
	}
	return tok.MaxSessions()
}

// schedulerProcs gives the Go scheduler, unless GOMAXPROCS is set, one
// processor per token call thread beyond the CPUs, and returns the
// processor count. A call thread in a cgo call keeps its processor until
// the scheduler notices and takes it back, which for a long call, such as
// a group-14 derive (0.5 ms), left Go's own work one CPU's worth short.
// Measured at concurrency 32 on 2 CPUs with SoftHSM on one thread
// (GOMAXPROCS 2, 3): group-14 962–971 and 1,139–1,152 exchanges a second,
// p99 62–65 and 48–49 ms; P-256 4,208–4,403 and 4,551–4,610 a second
// (docs/performance.md).
func schedulerProcs(tok *hsm.Token, cpus int) int {
	if n := tok.CallThreads(); n > 0 && os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(cpus + n)
	}
	return runtime.GOMAXPROCS(0)
}

// gcSetting sets the collector's GOGC to 400 unless GOGC is set, and
// returns the percentage in force. The live heap is small (about a
// megabyte, and 500 bytes a cached session) and an exchange allocates
// about 30 KB, so at Go's default the collector runs some 35 times a
// second at 3,000 exchanges a second, each time waking processors; at 400,
// P-256 exchanges took 6–10 % less CPU. The heap may grow to five times
// what is live: 240 MB with 100,000 cached sessions (docs/performance.md).
func gcSetting() int {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
		return 400
	}
	p := debug.SetGCPercent(100) // reads GOGC's setting back
	debug.SetGCPercent(p)
	return p
}
