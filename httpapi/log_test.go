package httpapi

import (
	"bytes"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

// TestRequestLogAndID: one line per authenticated request, naming the
// account, credential, method, path, status, duration, client and request
// id; the id is the client's when its signature covers it, else made, and
// the answer carries it. Refusals are logged even when answered requests
// are not.
func TestRequestLogAndID(t *testing.T) {
	var logs bytes.Buffer
	f := newFixture(t, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })

	rec := f.serve(f.whoami(t))
	made := rec.Header().Get("X-Request-Id")
	if rec.Code != 200 || len(made) != 24 {
		t.Fatalf("whoami: %d, request id %q", rec.Code, made)
	}
	line := lastLine(logs.String())
	for _, want := range []string{"msg=request", "account=" + alice, "kid=" + f.key.Public().KeyID(), "method=GET", "path=/v1/whoami",
		"status=200", "result=ok", "duration_ms=", "client=", "request_id=" + made} {
		if !strings.Contains(line, want) {
			t.Errorf("the request's log line lacks %s: %s", want, line)
		}
	}

	h := http.Header{"X-Request-Id": {"trace-42"}}
	out, err := f.sess.SignRequest(http.MethodGet, "/v1/whoami", h, nil, false, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	r := newRequest(http.MethodGet, "/v1/whoami", nil, out.Authorization, "")
	r.Header.Set("X-Request-Id", "trace-42")
	rec = f.serve(r)
	if got := rec.Header().Get("X-Request-Id"); rec.Code != 200 || got != "trace-42" || !strings.Contains(lastLine(logs.String()), "request_id=trace-42") {
		t.Fatalf("a signed request id: %d, answered %q, logged %s", rec.Code, got, lastLine(logs.String()))
	}

	f.svc.cfg.RequestLogOff = true
	before := logs.Len()
	f.serve(f.whoami(t))
	if logs.Len() != before {
		t.Fatalf("an answered request was logged with the request log off: %s", logs.String()[before:])
	}
	rec = f.serve(newRequest(http.MethodGet, "/v1/whoami", nil, "JWC garbage", ""))
	line = lastLine(logs.String())
	if !strings.Contains(line, "status=401") || !strings.Contains(line, "result=BadAuthentication") {
		t.Fatalf("a refusal was not logged: %s", line)
	}
	// A refusal has an id of its own too, in its line and its answer.
	if id := rec.Header().Get("X-Request-Id"); len(id) != 24 || !strings.Contains(line, "request_id="+id) {
		t.Fatalf("a refusal answered with request id %q, logged %s", id, line)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
