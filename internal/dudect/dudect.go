// Package dudect tests whether an operation's running time depends on its
// secret input, after Reparaz, Balasch and Verbauwhede, "Dude, is my code
// constant time?" (2017): time the operation on two classes of inputs —
// one fixed, one random — interleaved at random, crop the slow tail that
// interrupts and the scheduler add, and compare the classes' means with
// Welch's t-test. |t| above 4.5 means the classes are told apart with
// overwhelming confidence: the time leaks the input.
//
// `make ct` runs it on the secret-dependent steps of an exchange and on a
// deliberately variable-time control, which must fail.
package dudect

import (
	"crypto/rand"
	"math"
	"runtime"
	"runtime/debug"
	"slices"
	"time"
)

// Threshold is the |t| above which an operation is considered to leak.
const Threshold = 4.5

// Result is one test's outcome.
type Result struct {
	T       float64 // Welch's t over the cropped measurements
	Samples int     // measurements kept per class (about)
	// Detectable is the smallest difference of means, as a fraction of the
	// mean, that these samples would show with |t| ≥ Threshold.
	Detectable float64
	Mean       time.Duration
}

// Leaks reports whether the classes' times differ.
func (r Result) Leaks() bool { return math.Abs(r.T) > Threshold }

// MaxScale bounds the input indexes a test's prepare and op are given:
// they stay below 2·MaxScale·n for the n given to Measure.
const MaxScale = 1

// Budget is how long Measure keeps sampling one operation before it gives
// up on showing the target difference: a busy machine means a longer run,
// not a weaker claim, up to this; past it the result says how much could
// be shown, and the test fails on it.
var Budget = 3 * time.Minute

// Measure measures op in rounds of n inputs per class and pools the
// rounds, until the samples can show a difference of target (a fraction of
// the mean) or Budget has passed.
func Measure(target float64, n, repeat int, prepare func(class, i int), op func(i int)) Result {
	var p pool
	deadline := time.Now().Add(Budget)
	for {
		p.round(n, repeat, prepare, op)
		if r := p.result(); r.Detectable <= target || time.Now().After(deadline) {
			return r
		}
	}
}

// Run measures op on n inputs of each class once. prepare(class, i) makes
// input i of class 0 (fixed) or 1 (random) before any timing; op(i) runs
// the operation on input i, repeat times per measurement.
func Run(n, repeat int, prepare func(class, i int), op func(i int)) Result {
	var p pool
	p.round(n, repeat, prepare, op)
	return p.result()
}

// pool holds the measurements of every round so far, by class.
type pool struct {
	times [2][]float64
}

func (p *pool) round(n, repeat int, prepare func(class, i int), op func(i int)) {
	classes := make([]int, 2*n)
	coin := make([]byte, 2*n)
	rand.Read(coin)
	for i := range classes {
		classes[i] = int(coin[i] & 1)
	}
	for i, c := range classes {
		prepare(c, i)
	}
	for i := range min(len(classes), 32) { // warm the caches and the branch predictors
		op(i)
	}
	times := make([]float64, len(classes))
	old := debug.SetGCPercent(-1)
	runtime.GC()
	for i := range classes {
		start := time.Now()
		for range repeat {
			op(i)
		}
		times[i] = float64(time.Since(start)) / float64(repeat)
	}
	debug.SetGCPercent(old)
	for i, t := range times {
		p.times[classes[i]] = append(p.times[classes[i]], t)
	}
}

func (p *pool) result() Result {
	// Crop at the 90th percentile of all measurements: the tail is the
	// machine's, not the operation's.
	sorted := slices.Concat(p.times[0], p.times[1])
	slices.Sort(sorted)
	limit := sorted[len(sorted)*9/10]
	var sum, sumSq, count [2]float64
	for c := range 2 {
		for _, t := range p.times[c] {
			if t > limit {
				continue
			}
			sum[c] += t
			sumSq[c] += t * t
			count[c]++
		}
	}
	var mean, variance [2]float64
	for c := range 2 {
		mean[c] = sum[c] / count[c]
		variance[c] = (sumSq[c] - count[c]*mean[c]*mean[c]) / (count[c] - 1)
	}
	se := math.Sqrt(variance[0]/count[0] + variance[1]/count[1])
	all := (sum[0] + sum[1]) / (count[0] + count[1])
	return Result{
		T:          (mean[0] - mean[1]) / se,
		Samples:    int(math.Min(count[0], count[1])),
		Detectable: Threshold * se / all,
		Mean:       time.Duration(all),
	}
}
