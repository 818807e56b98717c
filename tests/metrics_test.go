package tests

import (
	"io"
	"net/http"
	"path/filepath"
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
}
