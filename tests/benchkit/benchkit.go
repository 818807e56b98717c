// Package benchkit holds the measurements behind `make bench`: a rig of
// real parts (a throwaway SoftHSM2 token, the PKCS#11 keystore, a SQLite
// registry and the HTTP service in process) and benchmark bodies that both
// `go test -bench` (tests/bench_test.go) and the table printer
// (tests/benchtable) run.
package benchkit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/httpapi"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/keystore/p11"
	"github.com/custos-kx/custos/softhsm"
)

// Account is the account the rig's client is registered as.
const Account = "bench@example.com"

// Rig is a service on real parts, in process.
type Rig struct {
	Dir      string
	SoftHSM  *softhsm.Token
	Token    *hsm.Token
	Keystore *p11.Keystore
	Registry *accounts.Registry
	DB       string // the registry's SQLite file
	Engine   *exchange.Server
	Key      *exchange.ClientKey // group 14, registered as Account
	KeyP256  *exchange.ClientKey // P-256, registered as Account
	Service  *httpapi.Service
}

// NewRig creates a token in dir, its keys, a registry with one account, and
// the service. It points SOFTHSM2_CONF at the token for the whole process.
func NewRig(dir string) (*Rig, error) {
	ctx := context.Background()
	st, err := softhsm.Create(dir, "custos-bench")
	if err != nil {
		return nil, err
	}
	os.Setenv("SOFTHSM2_CONF", st.Conf)
	r := &Rig{Dir: dir, SoftHSM: st, DB: filepath.Join(dir, "custos.db")}
	// The calls are made by the benchmark's own goroutine, not by a call
	// thread as custosd makes a software token's: the rig measures what an
	// operation and an exchange cost one at a time, and a call thread
	// gains nothing from a lone caller and charges it, on each call, the
	// wake-up of a thread that sleeps between them. The loopback rows run
	// custosd, with its defaults.
	if r.Token, err = hsm.Open(ctx, hsm.Config{Module: st.Module, TokenLabel: st.Label, PIN: st.PIN, CallThreads: -1}); err != nil {
		return nil, err
	}
	if r.Keystore, err = p11.Open(ctx, r.Token); err != nil {
		return nil, err
	}
	if _, err := r.Keystore.Init(ctx); err != nil {
		return nil, err
	}
	if r.Registry, err = accounts.Open(ctx, r.DB); err != nil {
		return nil, err
	}
	if r.Key, err = exchange.GenerateClientKey(rand.Reader, exchange.ModP2048); err != nil {
		return nil, err
	}
	if r.KeyP256, err = exchange.GenerateClientKey(rand.Reader, exchange.P256); err != nil {
		return nil, err
	}
	for _, k := range []*exchange.ClientKey{r.Key, r.KeyP256} {
		if err := r.Registry.Add(ctx, Account, k.Public()); err != nil {
			return nil, err
		}
	}
	r.Service = r.NewService()
	return r, nil
}

// NewService returns a service on the rig's parts with empty caches; it
// becomes the rig's Engine.
func (r *Rig) NewService() *httpapi.Service {
	r.Engine = &exchange.Server{Keystore: r.Keystore, Accounts: r.Registry}
	return httpapi.New(httpapi.Config{
		Engine: r.Engine,
		Ready:  r.Token.Healthy,
		// custosd logs a line per exchange; so does the rig, into nothing.
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// What the protocol costs, not the log (docs/performance.md).
		RequestLogOff: true,
		// One benchmark is one client address and one account.
		Limits: httpapi.Limits{PerAddress: -1, PerAccount: -1},
	})
}

// RemoteService is a service on the rig's token as far away as a network
// HSM: every PKCS#11 call waits delay first. Its calls, session pool and
// exchange limit are custosd's defaults for a hardware slot: the requests'
// goroutines make the calls, on 16 sessions. close releases its token.
func (r *Rig) RemoteService(delay time.Duration) (svc *httpapi.Service, sessions int, close func(), err error) {
	ctx := context.Background()
	tok, err := hsm.Open(ctx, hsm.Config{Module: r.SoftHSM.Module, TokenLabel: r.SoftHSM.Label, PIN: r.SoftHSM.PIN,
		MaxSessions: hsm.DefaultMaxSessions, CallThreads: -1,
		Wrap: func(ck hsm.Cryptoki) hsm.Cryptoki {
			return hsm.Intercept(ck, func(string) func() { time.Sleep(delay); return func() {} })
		}})
	if err != nil {
		return nil, 0, nil, err
	}
	ks, err := p11.Open(ctx, tok)
	if err != nil {
		tok.Close()
		return nil, 0, nil, err
	}
	svc = httpapi.New(httpapi.Config{
		Engine:        &exchange.Server{Keystore: ks, Accounts: r.Registry},
		Ready:         tok.Healthy,
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		RequestLogOff: true,
		Limits:        httpapi.Limits{PerAddress: -1, PerAccount: -1},
		TokenSessions: hsm.DefaultMaxSessions,
	})
	return svc, hsm.DefaultMaxSessions, func() { tok.Close() }, nil
}

// Close releases the token and the registry.
func (r *Rig) Close() {
	r.Registry.Close()
	r.Token.Close()
}

// cpuTime is the process's user and system time so far: token work done in
// SoftHSM's threads and the Go runtime's own work included.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ReportCPU runs fn b.N times and reports the process CPU time per
// operation as "cpu-ns/op" beside Go's wall-clock ns/op.
func ReportCPU(b *testing.B, fn func(i int)) {
	start := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		fn(i)
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// ExchangeBodies pre-builds n ExchangeRequest bodies from the client key,
// each with its own nonce key.
func ExchangeBodies(key *exchange.ClientKey, n int) ([][]byte, error) {
	bodies := make([][]byte, n)
	for i := range bodies {
		_, msg, err := key.NewExchange(rand.Reader, nil)
		if err != nil {
			return nil, err
		}
		if bodies[i], err = json.Marshal(msg); err != nil {
			return nil, err
		}
	}
	return bodies, nil
}

// ExchangeHandler measures full exchanges through the service's HTTP
// handler, token included, with pre-built requests (the client's work is
// not measured).
func (r *Rig) ExchangeHandler(bodies [][]byte) func(b *testing.B) {
	return func(b *testing.B) {
		ReportCPU(b, func(i int) {
			req := httptest.NewRequest(http.MethodPost, httpapi.WellKnown, bytes.NewReader(bodies[i%len(bodies)]))
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			r.Service.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Fatalf("exchange answered %d: %s", rec.Code, rec.Body)
			}
		})
	}
}

// ClientExchange measures the client's side of an exchange with key: a
// nonce key and request, then checking a response (the server's work is
// done beforehand, outside the timing).
func (r *Rig) ClientExchange(key *exchange.ClientKey) func(b *testing.B) {
	return func(b *testing.B) { r.clientExchange(b, key) }
}

func (r *Rig) clientExchange(b *testing.B, key *exchange.ClientKey) {
	for i := 0; i < b.N; i++ {
		pending, msg, err := key.NewExchange(rand.Reader, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		req, err := exchange.ParseRequest(msg)
		if err != nil {
			b.Fatal(err)
		}
		resp, err := r.Engine.Exchange(context.Background(), req, Account)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		s, err := pending.Finish(resp)
		if err != nil {
			b.Fatal(err)
		}
		s.Zero()
	}
}

// Primitive is one of the operations an exchange is made of, measured
// alone. ID names it for the sums the table makes of them.
type Primitive struct {
	ID   string
	Name string
	Run  func(b *testing.B)
}

// Primitives returns the rig's primitive benchmarks.
func (r *Rig) Primitives() ([]Primitive, error) {
	ctx := context.Background()
	x, err := r.Keystore.Credential(ctx, exchange.ModP2048)
	if err != nil {
		return nil, err
	}
	xp, err := r.Keystore.Credential(ctx, exchange.P256)
	if err != nil {
		return nil, err
	}
	s, _ := group.GenerateScalar(rand.Reader)
	t, _ := group.GenerateScalar(rand.Reader)
	base := t.Public()
	sp, _ := p256.GenerateScalar(rand.Reader)
	tp, _ := p256.GenerateScalar(rand.Reader)
	point := tp.Public()
	pointWire := point.Bytes()
	e128 := make([]byte, 16)
	rand.Read(e128)
	session := r.sampleSession()
	pt, _ := session.MarshalBinary()
	sealed, err := ticket.Seal(ctx, r.Keystore, rand.Reader, pt)
	if err != nil {
		return nil, err
	}
	w := base.Wire()
	return []Primitive{
		{"derive", "token DH derive (SoftHSM, CKM_DH_PKCS_DERIVE)", func(b *testing.B) {
			for b.Loop() {
				if _, err := r.Keystore.Derive(ctx, x.KeyID(), exchange.DHKey(base)); err != nil {
					b.Fatal(err)
				}
			}
		}},
		{"exp256", "256-bit constant-time exponentiation (B^r)", func(b *testing.B) {
			for b.Loop() {
				group.ExpScalar(base, s).Zero()
			}
		}},
		{"exp128", "128-bit exponentiation (C^d, B^e)", func(b *testing.B) {
			for b.Loop() {
				group.ExpPublic(base, e128)
			}
		}},
		{"g^r", "fixed-base g^r (comb table, constant time)", func(b *testing.B) {
			for b.Loop() {
				s.Public()
			}
		}},
		{"validation", "public-key validation (decode, range, Jacobi)", func(b *testing.B) {
			for b.Loop() {
				if _, err := group.DecodeWire(w); err != nil {
					b.Fatal(err)
				}
			}
		}},
		{"p256-derive", "P-256: token ECDH derive (SoftHSM, CKM_ECDH1_DERIVE)", func(b *testing.B) {
			for b.Loop() {
				if _, err := r.Keystore.Derive(ctx, xp.KeyID(), exchange.ECDHKey(point)); err != nil {
					b.Fatal(err)
				}
			}
		}},
		{"p256-rG", "P-256: r·G with R's kid (crypto/ecdh)", func(b *testing.B) {
			for b.Loop() {
				k, _ := p256.GenerateScalar(rand.Reader)
				k.Public()
			}
		}},
		{"p256-dh", "P-256: DH(r, ·) (crypto/ecdh)", func(b *testing.B) {
			for b.Loop() {
				if _, err := sp.DH(point); err != nil {
					b.Fatal(err)
				}
			}
		}},
		{"p256-validation", "P-256: point validation and kid", func(b *testing.B) {
			for b.Loop() {
				if _, err := p256.Decode(pointWire); err != nil {
					b.Fatal(err)
				}
			}
		}},
		{"seal", "ticket seal (token AES-256-GCM)", func(b *testing.B) {
			for b.Loop() {
				if _, err := ticket.Seal(ctx, r.Keystore, rand.Reader, pt); err != nil {
					b.Fatal(err)
				}
			}
		}},
		{"open", "ticket open (token AES-256-GCM)", func(b *testing.B) {
			for b.Loop() {
				if _, err := ticket.Open(ctx, r.Keystore, sealed); err != nil {
					b.Fatal(err)
				}
			}
		}},
	}, nil
}

// sampleSession is a session of the rig's registered account and key:
// every request checks the credential is still registered.
func (r *Rig) sampleSession() *ticket.Session {
	now := time.Now()
	s := &ticket.Session{
		Account: Account, CredentialKID: r.Key.Public().KeyID(),
		IssuedAt: now, Expires: now.Add(time.Hour), RekeyExpires: now.Add(7 * 24 * time.Hour),
		Encryption: exchange.DefaultSuite.Encryption, Authentication: exchange.DefaultSuite.Authentication,
	}
	rand.Read(s.AK[:])
	rand.Read(s.EK[:])
	rand.Read(s.RK[:])
	return s
}

// SessionLoad is n live sessions and one signed whoami request for each.
type SessionLoad struct {
	requests []*http.Request
}

// NewSessionLoad seals n sessions with the rig's token and signs one
// request per session. Nothing of it is in the service yet.
func (r *Rig) NewSessionLoad(n int) (*SessionLoad, error) {
	ctx := context.Background()
	l := &SessionLoad{requests: make([]*http.Request, n)}
	for i := range n {
		s := r.sampleSession()
		pt, _ := s.MarshalBinary()
		t, err := ticket.Seal(ctx, r.Keystore, rand.Reader, pt)
		if err != nil {
			return nil, err
		}
		req, err := whoami(s, t)
		if err != nil {
			return nil, err
		}
		l.requests[i] = req
	}
	return l, nil
}

// Serve sends every request of the load to the service once and returns
// the time per request. The first pass opens each ticket with the token;
// a request signed once can be served once (replay protection), so a load
// measures one pass.
func (l *SessionLoad) Serve(svc http.Handler) (time.Duration, error) {
	start := time.Now()
	for _, req := range l.requests {
		rec := httptest.NewRecorder()
		svc.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			return 0, fmt.Errorf("whoami answered %d: %s", rec.Code, rec.Body)
		}
	}
	return time.Since(start) / time.Duration(len(l.requests)), nil
}

// HeapInUse returns the live heap after a full collection.
func HeapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// AuthenticatedHandler measures the service's handling of authenticated
// whoami requests on one session whose ticket is already open, the
// requests signed beforehand; PlainHandler measures /healthz beside it.
func (r *Rig) AuthenticatedHandler(b *testing.B) {
	ctx := context.Background()
	s := r.sampleSession()
	pt, _ := s.MarshalBinary()
	t, err := ticket.Seal(ctx, r.Keystore, rand.Reader, pt)
	if err != nil {
		b.Fatal(err)
	}
	svc := r.NewService()
	reqs := make([]*http.Request, b.N+1)
	for i := range reqs {
		if reqs[i], err = whoami(s, t); err != nil {
			b.Fatal(err)
		}
	}
	serve(b, svc, reqs[0]) // opens the ticket
	ReportCPU(b, func(i int) { serve(b, svc, reqs[i+1]) })
}

// whoami is a GET /v1/whoami signed, as a client signs it, under the
// session s whose ticket is t.
func whoami(s *ticket.Session, t []byte) (*http.Request, error) {
	cs := &exchange.Session{Ticket: t, AK: s.AK, EK: s.EK, RK: s.RK}
	req := httptest.NewRequest(http.MethodGet, "/v1/whoami", nil)
	out, err := cs.SignRequest(http.MethodGet, "/v1/whoami", req.Header, nil, false, time.Now())
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", out.Authorization)
	return req, nil
}

func (r *Rig) PlainHandler(b *testing.B) {
	svc := r.NewService()
	ReportCPU(b, func(int) { serve(b, svc, httptest.NewRequest(http.MethodGet, "/healthz", nil)) })
}

func serve(b *testing.B, h http.Handler, req *http.Request) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		b.Fatalf("%s answered %d: %s", req.URL.Path, rec.Code, rec.Body)
	}
}
