package httpapi

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/metrics"
)

var (
	exchangesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_exchanges_total",
		Help: "Exchanges and rekeys answered, by profile (modp2048, p256, or unknown when refused before the keys were read), kind and result (ok, the SPEC error code, or abandoned when the client went away before the answer).",
	}, []string{"profile", "kind", "result"})
	exchangeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "custos_exchange_duration_seconds",
		Help:    "Time to answer an exchange or rekey, token operations included.",
		Buckets: metrics.LatencyBuckets,
	}, []string{"kind"})
	exchangeQueue = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "custos_exchange_queue",
		Help: "Exchanges and rekeys computing (running, at most --max-exchanges) and waiting their turn (waiting).",
	}, []string{"state"})
	queueRunning = exchangeQueue.WithLabelValues("running")
	queueWaiting = exchangeQueue.WithLabelValues("waiting")
	authRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_authenticated_requests_total",
		Help: "Requests under a session, by result (ok or the SPEC error code).",
	}, []string{"result"})
	// authRequestsOK is the counter of every successful request, looked up once.
	authRequestsOK  = authRequests.WithLabelValues("ok")
	ticketCacheHits = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "custos_ticket_cache_hits_total",
		Help: "Authenticated requests whose ticket was already open in memory (no token operation).",
	}, func() float64 { h, _, _ := exchange.TicketCacheStats(); return float64(h) })
	ticketCacheMisses = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "custos_ticket_cache_misses_total",
		Help: "Authenticated requests whose ticket had to be opened by the token.",
	}, func() float64 { _, m, _ := exchange.TicketCacheStats(); return float64(m) })
	ticketCacheSessions = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "custos_ticket_cache_sessions",
		Help: "Sessions whose opened ticket is held in memory.",
	}, func() float64 { _, _, n := exchange.TicketCacheStats(); return float64(n) })
)

// abandoned is the result of an exchange or rekey whose client went away
// before it was answered: whatever failed then (a registry query, a wait
// for the token) failed because the request's context ended, and counting
// it as that part's outage would raise the outage's alert.
const abandoned = "abandoned"

// refusalCodes are the SPEC codes a request or an exchange can be refused
// with; their series exist at zero from the start.
var refusalCodes = []exchange.Code{
	exchange.Malformed, exchange.NoCommonAlgorithm, exchange.BadAuthentication, exchange.TicketExpired,
	exchange.UnknownCredential, exchange.AccountDisabled, exchange.TooLarge, exchange.UnsupportedMediaType,
	exchange.InvalidPublicKey, exchange.KidMismatch, exchange.UnsupportedDomain, exchange.RateLimited,
	exchange.Internal, exchange.KeystoreUnavailable, exchange.RegistryUnavailable,
}

func init() {
	for _, kind := range []string{"exchange", "rekey"} {
		for _, p := range exchange.Profiles {
			exchangesTotal.WithLabelValues(p.String(), kind, "ok")
			exchangesTotal.WithLabelValues(p.String(), kind, abandoned)
			for _, c := range refusalCodes {
				exchangesTotal.WithLabelValues(p.String(), kind, string(c))
			}
		}
	}
	for _, c := range refusalCodes {
		authRequests.WithLabelValues(string(c))
	}
}

// Collectors returns the service's own metrics.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{exchangesTotal, exchangeDuration, exchangeQueue, authRequests, ticketCacheHits, ticketCacheMisses, ticketCacheSessions}
}
