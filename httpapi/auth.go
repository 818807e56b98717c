package httpapi

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/jwc"
	"github.com/custos-kx/custos/internal/ticket"
)

// authn is an authenticated request: its session and what it claimed. The
// session is held from the ticket cache until done is called.
type authn struct {
	entry     *cacheEntry
	sess      *ticket.Session
	token     string
	ticket    []byte // nil until sessionTicket, for a token recognised by its header
	claims    *jwc.Claims
	expires   time.Time
	encrypted bool
}

type ctxKey struct{}

// Session is what a handler behind the middleware learns of the caller.
type Session struct {
	Account       string
	CredentialKID string
	Expires       time.Time
	Generation    uint32
}

func sessionFrom(ctx context.Context) Session {
	a, _ := ctx.Value(ctxKey{}).(*authn)
	if a == nil {
		return Session{}
	}
	return Session{Account: a.sess.Account, CredentialKID: a.sess.CredentialKID, Expires: a.sess.Expires, Generation: a.sess.Generation}
}

// SessionFrom returns the session of an authenticated request.
func SessionFrom(r *http.Request) Session { return sessionFrom(r.Context()) }

func badAuth(format string, args ...any) *exchange.Error {
	return exchange.Errorf(exchange.BadAuthentication, format, args...)
}

// authenticate checks a request's Authorization (SPEC §6): the ticket opens
// (from memory after the first time), the token is of type typ, its MAC
// verifies under AK (RK for a rekey), the session (or rekey window) is open,
// method and target match, iat is within the skew, jti is new, the body hash
// matches, and the account is enabled.
func (s *Service) authenticate(r *http.Request, body []byte, typ string) (*authn, *exchange.Error) {
	token, ok := authHeader(r)
	if !ok {
		return nil, badAuth("This endpoint needs an Authorization: JWC header; run an exchange first.")
	}
	entry, req, e := s.session(r.Context(), token)
	if e != nil {
		return nil, e
	}
	ok = false
	defer func() {
		if !ok {
			s.tickets.release(entry)
		}
	}()
	if req.Type != typ {
		return nil, badAuth("The Authorization token has typ %q; this request needs %q.", req.Type, typ)
	}
	sess := entry.sess
	key, deadline, what := entry.ak, sess.Expires, "session"
	if typ == jwc.TypeRekey {
		// A rekey token's header is not the session's request header, so
		// the token was parsed in full and its MAC starts from the key.
		key, deadline, what = jwc.NewMACKey(sess.RK[:], ""), sess.RekeyExpires, "rekey window"
		defer key.Zero()
	}
	claims, err := req.Verify(key)
	if err != nil {
		return nil, badAuth("The Authorization token was refused: %v.", err)
	}
	now := s.cfg.Now()
	if now.After(deadline) {
		return nil, exchange.Errorf(exchange.TicketExpired, "The %s ended at %s; %s.", what, deadline.UTC().Format(time.RFC3339), renewHint(typ))
	}
	if claims.Method != r.Method {
		return nil, badAuth("The token was made for method %s, not %s.", clip(claims.Method), r.Method)
	}
	if target := r.URL.RequestURI(); subtle.ConstantTimeCompare([]byte(claims.Target), []byte(target)) != 1 {
		return nil, badAuth("The token was made for %q, not %q.", clip(claims.Target), target)
	}
	iat := time.Unix(claims.IssuedAt, 0)
	if skew := now.Sub(iat); skew > jwc.MaxSkew || skew < -jwc.MaxSkew {
		return nil, badAuth("The token's iat is %s away from the service's clock; the limit is %s. Check the client's clock.", skew.Round(time.Second), jwc.MaxSkew)
	}
	if subtle.ConstantTimeCompare([]byte(claims.BodyHash), []byte(jwc.BodyHash(body))) != 1 {
		return nil, badAuth("The body does not match the token's bdh.")
	}
	if !s.replays.add(newReplayKey(entry.key, claims.ID), iat.Add(2*jwc.MaxSkew), now) {
		return nil, badAuth("This request (jti %s) was already received; sign each request afresh.", clip(claims.ID))
	}
	if e := s.checkAccount(r.Context(), sess.Account, now); e != nil {
		return nil, e
	}
	ok = true
	return &authn{entry: entry, sess: sess, token: token, ticket: req.Ticket, claims: claims}, nil
}

// session finds the session a token names, held for the caller, and parses
// the token. A token whose header part is the one every request of a cached
// session carries (the cache key is its hash) is parsed without decoding
// the header; any other is parsed in full and its ticket looked up, or
// opened by the token.
func (s *Service) session(ctx context.Context, token string) (*cacheEntry, *jwc.Request, *exchange.Error) {
	now := s.cfg.Now()
	if entry := s.tickets.get(headerKey(jwc.HeaderPart(token)), now); entry != nil {
		ticketCacheHits.Inc()
		req, err := jwc.ParseKnown(token, jwc.TypeRequest)
		if err != nil {
			s.tickets.release(entry)
			return nil, nil, badAuth("The Authorization token was refused: %v.", err)
		}
		return entry, req, nil
	}
	req, err := jwc.Parse(token)
	if err != nil {
		return nil, nil, badAuth("The Authorization token was refused: %v.", err)
	}
	hdr := jwc.Header(req.Ticket, jwc.TypeRequest)
	key := headerKey(hdr)
	if entry := s.tickets.get(key, now); entry != nil {
		ticketCacheHits.Inc()
		return entry, req, nil
	}
	ticketCacheMisses.Inc()
	sess, err := s.cfg.Engine.OpenTicket(ctx, req.Ticket)
	if err != nil {
		s.logKeystore("open ticket", err)
		return nil, nil, exchange.AsError(err)
	}
	return s.tickets.put(key, hdr, sess), req, nil
}

// sessionTicket returns the session's ticket, which names it in JWE
// bodies. A request recognised by its header did not decode the ticket;
// the few that need it decode it here.
func (a *authn) sessionTicket() []byte {
	if a.ticket == nil {
		if req, err := jwc.Parse(a.token); err == nil {
			a.ticket = req.Ticket
		}
	}
	return a.ticket
}

// done ends the request's hold on its session.
func (s *Service) done(a *authn) { s.tickets.release(a.entry) }

func renewHint(typ string) string {
	if typ == jwc.TypeRekey {
		return "run a new exchange with your credential"
	}
	return "rekey or run a new exchange"
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

func (s *Service) checkAccount(ctx context.Context, account string, now time.Time) *exchange.Error {
	disabled, ok := s.status.get(account, now)
	if !ok {
		var err error
		if disabled, err = s.cfg.Accounts.Disabled(ctx, account); err != nil {
			s.log.Error("account registry unavailable", "error", err)
			return exchange.Errorf(exchange.KeystoreUnavailable, "The account registry is not available; try again shortly.")
		}
		s.status.put(account, disabled, now)
	}
	if disabled {
		return exchange.Errorf(exchange.AccountDisabled, "The account %s is disabled.", account)
	}
	return nil
}

// authenticated wraps a handler: it authenticates the request, decrypts an
// encrypted body, and signs (and, for an encrypted request, encrypts) the
// response.
func (s *Service) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, e := s.readBody(w, r) // any media type: only application/jose means something here
		var a *authn
		if e == nil {
			if a, e = s.authenticate(r, body, jwc.TypeRequest); a != nil {
				defer s.done(a)
			}
		}
		if e == nil && isJOSE(r) {
			pt, err := jwc.Decrypt(a.sess.EK[:], a.sessionTicket(), string(body))
			if err != nil {
				e = badAuth("The encrypted body was refused: %v.", err)
			} else {
				body, a.encrypted = pt, true
				r.Header.Set("Content-Type", "application/json")
			}
		}
		if e != nil {
			authRequests.WithLabelValues(string(e.Code)).Inc()
			writeError(w, e, 0)
			return
		}
		authRequestsOK.Inc()
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, a))
		r.Body, r.ContentLength = http.NoBody, 0
		if len(body) > 0 {
			r.Body, r.ContentLength = readCloser{bytes.NewReader(body)}, int64(len(body))
		}
		rec := &recorder{header: make(http.Header, 4), status: http.StatusOK}
		rec.body.Grow(512) // most answers fit: one allocation instead of several
		next.ServeHTTP(rec, r)
		s.respond(w, a, rec)
	})
}

func isJOSE(r *http.Request) bool {
	return r.Header.Get("Content-Type") == "application/jose"
}

// respond sends a recorded response, encrypted if the request was, with its
// JWC-Signature.
func (s *Service) respond(w http.ResponseWriter, a *authn, rec *recorder) {
	body := rec.body.Bytes()
	if a.encrypted {
		enc, err := jwc.Encrypt(a.sess.EK[:], a.sessionTicket(), body)
		if err != nil {
			http.Error(w, "encrypting the response failed", http.StatusInternalServerError)
			return
		}
		body = []byte(enc)
		rec.header.Set("Content-Type", "application/jose")
	}
	sig, err := jwc.SignResponse(a.entry.ak, &jwc.ResponseClaims{ID: a.claims.ID, Status: rec.status, BodyHash: jwc.BodyHash(body)})
	if err != nil {
		http.Error(w, "signing the response failed", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	for k, v := range rec.header {
		h[k] = v
	}
	h.Set("JWC-Signature", sig)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(rec.status)
	w.Write(body)
}

// recorder holds a handler's response until it is signed.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
	wrote  bool
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(status int) {
	if !r.wrote {
		r.status, r.wrote = status, true
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	if r.body.Len()+len(b) > maxResponse {
		return 0, errors.New("response too large to sign")
	}
	return r.body.Write(b)
}

// maxResponse bounds a response the middleware buffers to sign.
const maxResponse = 16 << 20

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

func (s *Service) handleWhoami(w http.ResponseWriter, r *http.Request) {
	sess := SessionFrom(r)
	writeJSON(w, http.StatusOK, struct {
		Account       string `json:"account"`
		CredentialKID string `json:"credential_kid"`
		Expires       string `json:"expires"`
		Generation    uint32 `json:"generation"`
	}{sess.Account, sess.CredentialKID, sess.Expires.UTC().Format(time.RFC3339), sess.Generation})
}

func (s *Service) handleEcho(w http.ResponseWriter, r *http.Request) {
	body, _ := readAll(r.Body)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(body)
}

func (s *Service) handleProxy(w http.ResponseWriter, r *http.Request) {
	s.proxy.ServeHTTP(w, r)
}
