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
	reconnects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_hsm_reconnects_total",
		Help: "Recoveries from a lost token, by reason: logout (logged in again), finalized (the module was finalized behind the pool's back), sessions-failing (new sessions failed too: the module was re-initialised), outage (reached again after being unreachable).",
	}, []string{"reason"})
	upGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "custos_hsm_up",
		Help: "1 while the token can serve an exchange (it answers and passes the keystore's self-test), 0 otherwise.",
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
	for _, r := range []string{reasonLogout, reasonFinalized, reasonSessionsFailing, reasonOutage} {
		reconnects.WithLabelValues(r)
	}
}

// Collectors returns the HSM metrics, for registration on the service's registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{opDuration, opErrors, sessionsGauge, sessionsMax, reconnects, upGauge}
}

// Reasons for custos_hsm_reconnects_total; each series exists from zero.
const (
	reasonLogout          = "logout"
	reasonFinalized       = "finalized"
	reasonSessionsFailing = "sessions-failing"
	reasonOutage          = "outage"
)
