package httpapi

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/custos-kx/custos/exchange"
)

var (
	exchangesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_exchanges_total",
		Help: "Exchanges and rekeys answered, by result (ok or the SPEC error code).",
	}, []string{"kind", "result"})
	exchangeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "custos_exchange_duration_seconds",
		Help:    "Time to answer an exchange or rekey, token operations included.",
		Buckets: prometheus.ExponentialBucketsRange(100e-6, 10, 18),
	}, []string{"kind"})
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

// Collectors returns the service's own metrics.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{exchangesTotal, exchangeDuration, authRequests, ticketCacheHits, ticketCacheMisses, ticketCacheSessions}
}
