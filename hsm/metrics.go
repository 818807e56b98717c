package hsm

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/custos-kx/custos/internal/metrics"
)

// Metrics are process-wide, like the module: every Token adds to them.
var (
	opDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "custos_hsm_operation_duration_seconds",
		Help:    "Time for one token operation, including the wait for a session.",
		Buckets: metrics.LatencyBuckets,
	}, []string{"op"})
	opErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_hsm_operation_errors_total",
		Help: "Token operations that failed, by operation and PKCS#11 return value or cause.",
	}, []string{"op", "reason"})
	sessionsGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "custos_hsm_sessions",
		Help: "PKCS#11 sessions held by the pool: idle or in use.",
	}, []string{"state"})
	reconnects = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "custos_hsm_reconnects_total",
		Help: "Recoveries from a lost token: module re-initialised, re-login, or reconnection after an outage.",
	})
	upGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "custos_hsm_up",
		Help: "1 while the token answers, 0 while it is unreachable.",
	})
	sessionsMax = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "custos_hsm_sessions_max",
		Help: "The pool's bound on PKCS#11 sessions (--max-sessions): busy sessions at this value mean token operations wait.",
	})
)

func init() {
	// Error series exist at zero, so that rate() and alerts see them
	// before the first error.
	for _, op := range []string{"derive", "seal", "open"} {
		opErrors.WithLabelValues(op, "unavailable")
	}
	for _, state := range []string{"idle", "busy"} {
		sessionsGauge.WithLabelValues(state)
	}
}

// Collectors returns the HSM metrics, for registration on the service's registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{opDuration, opErrors, sessionsGauge, sessionsMax, reconnects, upGauge}
}
