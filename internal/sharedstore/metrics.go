package sharedstore

import "github.com/prometheus/client_golang/prometheus"

var (
	storeUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "custos_shared_store_up",
		Help: "1 while the shared store (Redis) answers and holds what this replica remembers; 0 while replays and rate limits fall back to this replica or are refused (see --shared-store-failure).",
	})
	storeFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "custos_shared_store_failures_total",
		Help: "Times the shared store stopped answering.",
	})
	restored = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "custos_shared_store_restored_total",
		Help: "Requests seen that this replica wrote back to the shared store after it came back or lost its data.",
	})
)

// Collectors are the shared store's metrics, for a Prometheus registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{storeUp, storeFailures, restored}
}
