// Package httpapi is Custos's HTTP face: the jwcexchange endpoint (exchange,
// rekey, discovery), the middleware that authenticates requests made under a
// session, the built-in endpoints and reverse proxy those requests reach,
// and health and metrics for operators.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"mime"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/custos-kx/custos/exchange"
)

// Config configures a Service.
type Config struct {
	Engine *exchange.Server
	// Ready reports whether the service can serve, for /readyz; ReadyNote,
	// if set, adds what an operator should know of a service that can.
	Ready     func(ctx context.Context) error
	ReadyNote func() string
	// Upstream, if set, receives every authenticated request that is not a
	// built-in endpoint, with the account in a Custos-Account header.
	Upstream *url.URL
	// Metrics is the registry /metrics serves; nil serves none.
	Metrics *prometheus.Registry
	Logger  *slog.Logger
	// RequestLog is the level of the line logged per authenticated
	// request (default Info; refusals are logged at Info or above, always);
	// RequestLogOff turns the lines for answered requests off, and
	// RequestLogSample logs one answered request in that many (default 1).
	RequestLog       slog.Level
	RequestLogOff    bool
	RequestLogSample int
	// MaxBody bounds request bodies (SPEC: 64 KiB for the exchange).
	MaxBody int64
	// MaxExchanges bounds the exchanges and rekeys computed at once
	// (default: twice GOMAXPROCS, or TokenSessions if that is more;
	// custosd gives twice the CPUs for a software token). The rest wait their
	// turn in arrival order: a CPU-bound exchange gains nothing from more
	// parallelism than there are cores, and without the queue the Go
	// scheduler serves a backlog unfairly.
	MaxExchanges int
	// TokenSessions is the size of the token's session pool. An exchange
	// waiting on a network HSM's round trip uses no CPU, so as many
	// exchanges as there are sessions run at once by default: fewer would
	// leave sessions, and the HSM, idle (docs/hsm.md).
	TokenSessions int
	// Limits bound exchanges and rekeys per client address and per account.
	Limits Limits
	// TrustedProxies are the load balancers and proxies in front of the
	// service, whose X-Forwarded-For names the client the limits count.
	TrustedProxies []netip.Prefix
	// Limiter makes the limits' buckets (default: in this process's memory).
	Limiter NewLimiter
	Now     func() time.Time
}

// Service serves the Custos HTTP API.
type Service struct {
	cfg   Config
	log   *slog.Logger
	proxy *httputil.ReverseProxy
	mux   *http.ServeMux
	// exchanges holds a token per exchange or rekey being computed; queued
	// counts those waiting for one.
	exchanges chan struct{}
	queued    atomic.Int64
	byAddress Limiter
	byAccount Limiter
	// failedOpens counts, per address, tickets that did not open.
	failedOpens Limiter
	requests    atomic.Uint64 // answered authenticated requests, for log sampling
}

// WellKnown is the jwcexchange endpoint.
const WellKnown = exchange.WellKnown

// AccountHeader carries the authenticated account to an upstream service.
const AccountHeader = "Custos-Account"

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 64 << 10
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxExchanges <= 0 {
		cfg.MaxExchanges = max(2*runtime.GOMAXPROCS(0), cfg.TokenSessions)
	}
	cfg.Limits = cfg.Limits.withDefaults(max(cfg.MaxExchanges, cfg.TokenSessions))
	s := &Service{
		cfg:         cfg,
		exchanges:   make(chan struct{}, cfg.MaxExchanges),
		byAddress:   cfg.newLimiter("address", cfg.Limits.PerAddress, cfg.Limits.AddressBurst),
		byAccount:   cfg.newLimiter("account", cfg.Limits.PerAccount, cfg.Limits.AccountBurst),
		failedOpens: cfg.newLimiter("failed-open", cfg.Limits.FailedOpens, cfg.Limits.FailedOpenBurst),
		log:         cfg.Logger,
		mux:         http.NewServeMux(),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	// The endpoint is exactly these two paths ({$}), not the tree below.
	s.mux.HandleFunc("POST "+WellKnown+"{$}", s.handleExchange)
	s.mux.HandleFunc("POST /.well-known/jwcexchange", s.handleExchange)
	s.mux.HandleFunc("GET "+WellKnown+"{$}", s.handleDiscovery)
	s.mux.HandleFunc("GET /.well-known/jwcexchange", s.handleDiscovery)
	s.mux.HandleFunc(WellKnown+"{$}", s.methodNotAllowed)
	s.mux.HandleFunc("/.well-known/jwcexchange", s.methodNotAllowed)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	s.mux.HandleFunc("GET /readyz", s.handleReady)
	if cfg.Metrics != nil {
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Metrics, promhttp.HandlerOpts{}))
	}
	s.mux.Handle("GET /v1/whoami", s.authenticated(http.HandlerFunc(s.handleWhoami)))
	s.mux.Handle("POST /v1/echo", s.authenticated(http.HandlerFunc(s.handleEcho)))
	if cfg.Upstream != nil {
		s.proxy = &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(cfg.Upstream)
				pr.SetXForwarded()
				pr.Out.Header.Set(AccountHeader, sessionFrom(pr.In.Context()).Account)
			},
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				s.log.Warn("upstream failed", "error", err)
				http.Error(w, "the upstream service did not answer", http.StatusBadGateway)
			},
		}
		s.mux.Handle("/", s.authenticated(http.HandlerFunc(s.handleProxy)))
	}
	return s
}

// ServeHTTP implements http.Handler.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if n := headerSize(r.Header); n > MaxHeaderBytes {
		writeError(w, exchange.Errorf(exchange.TooLarge, "The request's headers are %d bytes; the limit is %d.", n, MaxHeaderBytes), 0)
		return
	}
	if hasDotSegment(r.URL.EscapedPath()) {
		writeError(w, exchange.Errorf(exchange.Malformed, "The request path has a '.' or '..' segment (perhaps percent-encoded); send the path in its normal form."), 0)
		return
	}
	dropUntrusted(r.Header)
	s.mux.ServeHTTP(w, r)
}

// dropUntrusted removes the request headers that nobody outside may set
// for a handler or upstream to read (SPEC §6): names with "_" (some
// servers read "_" as "-", so Custos_Account would pass for
// Custos-Account) and any Custos-* or JWC-* name, in any case.
func dropUntrusted(h http.Header) {
	for name := range h {
		if strings.IndexByte(name, '_') >= 0 || hasPrefixFold(name, "custos-") || hasPrefixFold(name, "jwc-") {
			delete(h, name)
		}
	}
}

// hasPrefixFold is strings.HasPrefix without regard to ASCII case, without
// allocating: it runs on every header of every request.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// hasDotSegment reports whether a raw path has a segment that is "." or
// ".." once percent-decoded, counting "/", "%2F", "\\" and "%5C" as
// separators (SPEC §6): an upstream that decodes them would resolve the
// path above the base it is served under.
func hasDotSegment(raw string) bool {
	if strings.IndexByte(raw, '.') < 0 && strings.IndexByte(raw, '%') < 0 {
		return false // most paths: no dot, raw or encoded
	}
	decoded := raw
	if strings.ContainsRune(raw, '%') {
		var err error
		if decoded, err = url.PathUnescape(raw); err != nil {
			return true // not a path anyone can resolve safely
		}
	}
	for _, seg := range strings.FieldsFunc(decoded, func(r rune) bool { return r == '/' || r == '\\' }) {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

// MaxHeaderBytes bounds a request's headers. Larger headers up to the HTTP
// server's own limit get a 413 TooLarge; beyond it the server answers 431.
const MaxHeaderBytes = 16 << 10

func headerSize(h http.Header) int {
	n := 0
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

func (s *Service) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Allow", "GET, POST")
	writeError(w, exchange.Errorf(exchange.Malformed, "Use POST to exchange or rekey, GET to discover the service credential."), http.StatusMethodNotAllowed)
}

// writeError sends a refusal as an ExchangeResponse. status overrides the
// code's own status when non-zero.
func writeError(w http.ResponseWriter, e *exchange.Error, status int) {
	if status == 0 {
		status = e.Code.Status()
	}
	if e.Code == exchange.KeystoreUnavailable || e.Code == exchange.RegistryUnavailable || e.Code == exchange.RateLimited {
		w.Header().Set("Retry-After", retryAfter(e.RetryAfter))
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `JWC error="`+string(e.Code)+`"`)
	}
	// How a client tells the service's refusals from a handler's answers.
	w.Header().Set("JWC-Error", string(e.Code))
	resp := e.Response()
	resp.Status = status
	writeJSON(w, status, resp)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var b []byte
	var err error
	if m, ok := v.(json.Marshaler); ok {
		// The messages write themselves (package wire); encoding/json
		// would only scan the result again to validate and compact it.
		b, err = m.MarshalJSON()
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// readBody reads a request body within the limit, refusing any media type
// but the ones given (none given: any).
func (s *Service) readBody(w http.ResponseWriter, r *http.Request, mediaTypes ...string) ([]byte, *exchange.Error) {
	if len(mediaTypes) > 0 {
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		ok := false
		for _, want := range mediaTypes {
			ok = ok || (err == nil && mt == want)
		}
		if !ok {
			return nil, exchange.Errorf(exchange.UnsupportedMediaType, "Send the body as %s.", mediaTypes[0])
		}
	}
	if r.Body == http.NoBody { // what net/http gives a request without a body
		return nil, nil
	}
	body, err := readAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, exchange.Errorf(exchange.TooLarge, "The body is larger than %d bytes.", s.cfg.MaxBody)
		}
		return nil, exchange.Errorf(exchange.Malformed, "The body could not be read.")
	}
	return body, nil
}

func (s *Service) handleDiscovery(w http.ResponseWriter, r *http.Request) {
	d, err := s.cfg.Engine.Describe(r.Context())
	if err != nil {
		writeError(w, s.refusal("discovery", err), 0)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Service) handleReady(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.cfg.Ready(ctx); err != nil {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "not ready: a part the service needs (the key store, or the shared store) does not answer; the service log says which", http.StatusServiceUnavailable)
			return
		}
	}
	if s.cfg.ReadyNote != nil {
		if note := s.cfg.ReadyNote(); note != "" {
			w.Write([]byte("ready; " + note + "\n"))
			return
		}
	}
	w.Write([]byte("ready\n"))
}

// refusal turns an error of the engine (or of this package) into the
// refusal to send. A failure of the service or of what it depends on is
// logged here, once, with its cause; the client sees only its code and
// sentence.
func (s *Service) refusal(what string, err error) *exchange.Error {
	e := exchange.AsError(err)
	// A request whose client went away fails wherever it was waiting,
	// with the context's error: not a fault of that part.
	if e.Unexpected() && !errors.Is(err, exchange.ErrSharedStoreUnavailable) && !errors.Is(err, context.Canceled) {
		s.log.Error(what+" failed", "code", string(e.Code), "error", errors.Unwrap(e))
	}
	return e
}
