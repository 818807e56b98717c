package tests

import (
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/custos-kx/custos/softhsm"
)

// TestMetricsListen: with --metrics-listen, /metrics is served on its own
// address and not beside the API, which clients reach.
func TestMetricsListen(t *testing.T) {
	st := softhsm.New(t)
	env := custosdEnv(st, filepath.Join(t.TempDir(), "custos.db"))
	runCustosd(t, env, "init")
	metricsAddr := freeAddr(t)
	r := startReplica(t, append(env, "CUSTOS_METRICS_LISTEN="+metricsAddr))
	resp, err := http.Get(r.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == 200 {
		t.Fatal("/metrics is still served beside the API")
	}
	resp, err = http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "custos_hsm_up") {
		t.Fatalf("/metrics on --metrics-listen: %d\n%.300s", resp.StatusCode, b)
	}
	// What an operator watches for saturation, health and key age exists
	// from the start; error series exist at zero; latency buckets are round.
	for _, want := range []string{
		`custos_build_info{goversion="go`,
		// SoftHSM's slot is a software one: the session of its call thread.
		"custos_hsm_sessions_max 1",
		`custos_exchange_queue{state="waiting"} 0`,
		`custos_exchange_queue{state="running"} 0`,
		`custos_key_age_seconds{kind="credential"}`,
		`custos_key_age_seconds{kind="ticket"}`,
		"custos_registry_up 1",
		`custos_exchanges_total{kind="exchange",profile="modp2048",result="KeystoreUnavailable"} 0`,
		`custos_authenticated_requests_total{result="BadAuthentication"} 0`,
		`custos_hsm_operation_errors_total{op="derive",reason="unavailable"} 0`,
		`le="0.01"`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, m := range regexp.MustCompile(`custos_[a-z_]+_bucket\{[^}]*le="([^"+]+)"`).FindAllSubmatch(b, -1) {
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		if round, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'g', 2, 64), 64); round != v {
			t.Errorf("a bucket bound is not round: %s", m[0])
			break
		}
	}
}
