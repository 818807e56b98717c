package tests

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// relay is an on-path attacker on loopback, between a client and the
// service: it forwards every request and response, records the requests,
// and lets a test rewrite, hold back, replay and forge either way. The
// client talks to relay.url as if it were the service.
type relay struct {
	url    string
	target string

	mu sync.Mutex
	// onRequest may rewrite a request before it is forwarded; a response
	// it returns is sent instead of forwarding (a forgery).
	onRequest func(r *capture) *capture
	// onResponse may rewrite (or replace) the response to a request.
	onResponse func(req, resp *capture) *capture
	seen       []*capture
}

// capture is a request or response as it crossed the relay.
type capture struct {
	Method, Path string // requests
	Status       int    // responses
	Header       http.Header
	Body         []byte
}

func newRelay(t *testing.T, target string) *relay {
	r := &relay{target: target}
	srv := httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

func (r *relay) serve(w http.ResponseWriter, in *http.Request) {
	body, _ := io.ReadAll(in.Body)
	req := &capture{Method: in.Method, Path: in.URL.RequestURI(), Header: in.Header.Clone(), Body: body}
	r.mu.Lock()
	r.seen = append(r.seen, req)
	onRequest, onResponse := r.onRequest, r.onResponse
	r.mu.Unlock()
	var resp *capture
	if onRequest != nil {
		resp = onRequest(req)
	}
	if resp == nil {
		resp = r.forward(req)
	}
	if onResponse != nil {
		resp = onResponse(req, resp)
	}
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.Status)
	w.Write(resp.Body)
}

// forward sends a captured request to the service as it is and returns
// the service's answer.
func (r *relay) forward(req *capture) *capture {
	out, _ := http.NewRequest(req.Method, r.target+req.Path, bytes.NewReader(req.Body))
	out.Header = req.Header.Clone()
	out.Header.Del("Accept-Encoding") // keep the answer as the service wrote it
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		return &capture{Status: http.StatusBadGateway, Header: http.Header{}}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	h := resp.Header.Clone()
	h.Del("Content-Length")
	return &capture{Status: resp.StatusCode, Header: h, Body: b}
}

// requests returns the requests seen so far.
func (r *relay) requests() []*capture {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*capture(nil), r.seen...)
}

func (r *relay) set(onRequest func(*capture) *capture, onResponse func(req, resp *capture) *capture) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onRequest, r.onResponse = onRequest, onResponse
}
