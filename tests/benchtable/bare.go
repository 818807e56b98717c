package main

import (
	"errors"
	"flag"
	"fmt"
	"github.com/custos-kx/custos/tests/cluster"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/tests/benchkit"
)

// wireSizes are the sizes of what an authenticated whoami adds to a plain
// GET on the wire.
type wireSizes struct {
	Authorization int // the request's Authorization header value
	Signature     int // the response's JWC-Signature header value
	Body          int // the response body
}

// probeSizes makes one authenticated whoami (which also establishes the
// session in state) and measures it.
func probeSizes(url string, rig *benchkit.Rig, state *client.State) (wireSizes, error) {
	var s wireSizes
	hc := &http.Client{Transport: &client.Transport{Key: rig.Key, State: state, Base: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		s.Authorization = len(r.Header.Get("Authorization"))
		return http.DefaultTransport.RoundTrip(r)
	})}}
	resp, err := hc.Get(url)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return s, err
	}
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("%s answered %s", url, resp.Status)
	}
	s.Signature, s.Body = len(resp.Header.Get("JWC-Signature")), len(body)
	return s, nil
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// authorize returns base with an Authorization header of s's size added to
// every request.
func (s wireSizes) authorize(base http.RoundTripper) http.RoundTripper {
	v := "JWC " + strings.Repeat("t", max(0, s.Authorization-4))
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", v)
		return base.RoundTrip(r)
	})
}

// The bare server runs as this program in a process of its own (as
// custosd does): -bare ADDR with the sizes whoami's answer has.
var (
	bareAddr      = flag.String("bare", "", "internal: serve the bare net/http server on this address")
	bareSignature = flag.Int("bare-signature", 0, "internal: the bare server's JWC-Signature size")
	bareBody      = flag.Int("bare-body", 0, "internal: the bare server's body size")
)

// serveBare answers GET /plain with "ok" and GET /bytes with a
// JWC-Signature and a body of the given sizes, as whoami would.
func serveBare(addr string, signature, bodySize int) error {
	sig, body := strings.Repeat("s", signature), []byte(strings.Repeat("b", bodySize))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /plain", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("JWC-Signature", sig)
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
	return http.ListenAndServe(addr, mux)
}

type bareServer struct {
	cmd *exec.Cmd
	url string
}

func startBare(s wireSizes) (*bareServer, error) {
	addr, err := cluster.FreeAddr()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-bare", addr, "-bare-signature", strconv.Itoa(s.Signature), "-bare-body", strconv.Itoa(s.Body))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b := &bareServer{cmd: cmd, url: "http://" + addr}
	if !waitOK(b.url + "/plain") {
		b.stop()
		return nil, errors.New("the bare net/http server did not start")
	}
	return b, nil
}

func (b *bareServer) stop() {
	b.cmd.Process.Kill()
	b.cmd.Wait()
}
