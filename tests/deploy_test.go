package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/tests/cluster"
)

// tool finds a program the deployment tests need; .ci/run installs them.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (Debian's prometheus package has promtool and prometheus; systemd has systemd-analyze); .ci/run installs them", name)
	}
	return p
}

// TestAlertRules: the alert rules load and their unit tests pass.
func TestAlertRules(t *testing.T) {
	promtool := tool(t, "promtool")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../deploy/prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestSystemdUnit: the unit passes systemd-analyze verify, the binary
// path pointed at a real custosd.
func TestSystemdUnit(t *testing.T) {
	analyze := tool(t, "systemd-analyze")
	b, err := os.ReadFile("../deploy/systemd/custosd.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), "custosd.service")
	os.WriteFile(unit, bytes.ReplaceAll(b, []byte("/usr/local/bin/custosd"), []byte(bin(t, "custosd"))), 0o644)
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	// Outside a booted systemd, verify also complains about the machine
	// (no /etc/custos, no user custos): only complaints about the unit's
	// own text count.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "custosd.service:") && (strings.Contains(line, "Unknown") || strings.Contains(line, "Invalid") || strings.Contains(line, "Failed to parse")) {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
	if err != nil && !strings.Contains(string(out), "custosd.service") {
		t.Logf("systemd-analyze verify (machine-level complaints only): %v\n%s", err, out)
	}
}

// TestDashboardAgainstPrometheus starts a real Prometheus scraping a
// running custosd under a little load, evaluates every query of every
// dashboard panel through Prometheus's HTTP API (each must succeed and
// return data), and lints /metrics with promtool check metrics.
func TestDashboardAgainstPrometheus(t *testing.T) {
	prom, promtool := tool(t, "prometheus"), tool(t, "promtool")
	dir := t.TempDir()
	env, key := initialised(t, dir, "alice@example.com")
	rd, err := cluster.StartRedis(t.TempDir()) // for the shared store's panel
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rd.Stop)
	r := startReplica(t, append(env, "CUSTOS_SHARED_STORE="+rd.URL()))

	promAddr := freeAddr(t)
	cfg := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n  - job_name: custos\n    static_configs: [{targets: ['%s']}]\n", strings.TrimPrefix(r.url, "http://"))), 0o600)
	cmd := exec.Command(prom, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--web.listen-address="+promAddr)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus:\n%s", logs.String())
		}
	}()

	// A little load: exchanges (token operations) and requests.
	hc := &http.Client{Transport: &client.Transport{Key: key}}
	load := func() {
		for range 3 {
			resp, err := (&http.Client{Transport: &client.Transport{Key: key}}).Get(r.url + "/v1/whoami")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
		if resp, err := hc.Get(r.url + "/v1/whoami"); err == nil {
			resp.Body.Close()
		}
	}
	query := func(q string) ([]json.RawMessage, error) {
		resp, err := http.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var ans struct {
			Status string
			Error  string
			Data   struct{ Result []json.RawMessage }
		}
		if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
			return nil, err
		}
		if ans.Status != "success" {
			return nil, fmt.Errorf("%s", ans.Error)
		}
		return ans.Data.Result, nil
	}
	// Enough scrapes with load between them for rates over a minute.
	waitFor(t, 60*time.Second, "Prometheus to hold 8 scrapes of custosd under load", func() error {
		load()
		res, err := query(`count_over_time(custos_hsm_up[1m])`)
		if err != nil {
			return err
		}
		if len(res) == 0 || !bytes.Contains(res[0], []byte(`"8"`)) && !bytesAbove(res[0], 8) {
			return fmt.Errorf("scrapes so far: %s", res)
		}
		return nil
	})

	b, err := os.ReadFile("../deploy/grafana/custos.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			q := strings.NewReplacer(`{instance=~"$instance"}`, ``, `instance=~"$instance",`, ``, `$__rate_interval`, `1m`).Replace(target.Expr)
			res, err := query(q)
			switch {
			case err != nil:
				t.Errorf("panel %q: %s: %v", p.Title, q, err)
			case len(res) == 0:
				t.Errorf("panel %q: %s returns nothing", p.Title, q)
			}
			n++
		}
	}
	if n < 10 {
		t.Fatalf("the dashboard has %d queries", n)
	}

	resp, err := http.Get(r.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	lint := exec.Command(promtool, "check", "metrics")
	lint.Stdin = bytes.NewReader(body)
	if out, err := lint.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// bytesAbove reports whether a Prometheus vector sample's value is at least n.
func bytesAbove(sample json.RawMessage, n float64) bool {
	var s struct{ Value []any }
	if json.Unmarshal(sample, &s) != nil || len(s.Value) != 2 {
		return false
	}
	var v float64
	fmt.Sscan(fmt.Sprint(s.Value[1]), &v)
	return v >= n
}
