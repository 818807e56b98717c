// Package metrics holds what Custos's Prometheus metrics share.
package metrics

// LatencyBuckets are the histogram buckets of every latency metric: round
// 1-2.5-5 steps from 50 µs (SoftHSM in process) to 10 s (a network HSM on
// a bad day), so that SLO edges such as 10 ms are bucket bounds and labels
// carry no float noise.
var LatencyBuckets = []float64{
	50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
	1, 2.5, 5, 10,
}
