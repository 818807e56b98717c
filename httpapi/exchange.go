package httpapi

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/wire"
)

func readAll(r io.Reader) ([]byte, error) {
	var buf bytes.Buffer
	_, err := buf.ReadFrom(r)
	return buf.Bytes(), err
}

// handleExchange answers POST /.well-known/jwcexchange/: an exchange, or a
// rekey when the request carries a session's Authorization.
func (s *Service) handleExchange(w http.ResponseWriter, r *http.Request) {
	start := s.cfg.Now()
	kind := "exchange"
	if r.Header.Get("Authorization") != "" {
		kind = "rekey"
	}
	var (
		who party
		e   *exchange.Error
	)
	var body []byte
	if e = s.take(r.Context(), s.byAddress, s.clientAddress(r), "your address"); e != nil {
		// refused before reading the body
	} else if body, e = s.readExchangeBody(w, r); e != nil {
		// refused before taking a turn: a slow upload holds no slot
	} else if e = s.takeTurn(r); e == nil {
		defer func() { <-s.exchanges; queueRunning.Dec() }()
		if kind == "rekey" {
			who, e = s.rekey(w, r, body)
		} else {
			who, e = s.exchange(w, r, body)
		}
	}
	result := "ok"
	switch {
	case e != nil && r.Context().Err() != nil:
		result = abandoned // no one reads the answer
	case e != nil:
		result = string(e.Code)
		writeError(w, e, 0)
	}
	d := s.cfg.Now().Sub(start)
	exchangesTotal.WithLabelValues(who.profileLabel(), kind, result).Inc()
	exchangeDuration.WithLabelValues(kind).Observe(d.Seconds())
	s.log.Info(kind, "account", who.account, "kid", who.kid, "profile", who.profileLabel(), "result", result, "duration_ms", ms(d), "client", s.clientAddress(r))
}

// party is who an exchange or rekey was from, as far as it got: the
// account and credential once known, and the profile of its keys.
type party struct {
	account, kid string
	profile      exchange.Profile
}

// profileLabel names the profile in metrics and logs, "unknown" for a
// request refused before its keys were read.
func (p party) profileLabel() string {
	if p.profile == 0 {
		return "unknown"
	}
	return p.profile.String()
}

// ms is a duration in milliseconds, as logs give durations.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// bodyDeadline bounds how long an exchange's body may take to arrive. The
// body is read before the exchange takes its turn, so that slow uploads
// hold no exchange slot (attack 6 of the security review).
const bodyDeadline = 5 * time.Second

func (s *Service) readExchangeBody(w http.ResponseWriter, r *http.Request) ([]byte, *exchange.Error) {
	// Not every ResponseWriter supports deadlines (httptest's does not);
	// the server's own ReadTimeout still bounds those.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyDeadline))
	body, e := s.readBody(w, r, "application/json")
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
	return body, e
}

// takeTurn waits, in arrival order, for one of the MaxExchanges places to
// compute an exchange; the caller gives it back. When too many are
// waiting already it refuses at once, so a flood queues nowhere.
func (s *Service) takeTurn(r *http.Request) *exchange.Error {
	if s.queued.Add(1) > int64(s.cfg.Limits.MaxQueued) {
		s.queued.Add(-1)
		return exchange.Errorf(exchange.RateLimited, "The service has too many exchanges waiting; retry in a second.")
	}
	defer s.queued.Add(-1)
	queueWaiting.Inc()
	defer queueWaiting.Dec()
	select {
	case s.exchanges <- struct{}{}:
		queueRunning.Inc()
		return nil
	case <-r.Context().Done():
		return exchange.Errorf(exchange.KeystoreUnavailable, "The request ended while waiting for its turn.")
	}
}

// accountTurn applies the per-account limit.
func (s *Service) accountTurn(ctx context.Context, account string) *exchange.Error {
	return s.take(ctx, s.byAccount, account, "account "+account)
}

// exchange follows the SPEC's order of work: parse, validate both keys,
// look up the credential, and only then spend token time.
func (s *Service) exchange(w http.ResponseWriter, r *http.Request, body []byte) (party, *exchange.Error) {
	var msg wire.ExchangeRequest
	if err := wire.Unmarshal(body, &msg); err != nil {
		return party{}, s.refusal("exchange", err)
	}
	if msg.ClientCredential == nil && msg.ClientNonce != nil {
		// SPEC §7: a request with only a nonce is a rekey, unsigned.
		return party{}, exchange.Errorf(exchange.BadAuthentication, "A request without ClientCredential is a rekey, which needs an Authorization: JWC header signed under the session's rekey key; send ClientCredential to exchange.")
	}
	req, err := exchange.ParseRequest(&msg)
	if err != nil {
		return party{}, s.refusal("exchange", err)
	}
	who := party{kid: req.CredentialKID(), profile: req.Profile()}
	account, disabled, err := s.cfg.Engine.Account(r.Context(), who.kid)
	switch {
	case err != nil:
		return who, s.refusal("exchange", err)
	case account == "":
		return who, exchange.Errorf(exchange.UnknownCredential, "The credential %s is not registered with this service; ask its operator to add it to your account.", who.kid)
	}
	who.account = account
	if disabled {
		return who, exchange.Errorf(exchange.AccountDisabled, "The account %s is disabled.", account)
	}
	if e := s.accountTurn(r.Context(), account); e != nil {
		return who, e
	}
	resp, err := s.cfg.Engine.Exchange(r.Context(), req, account)
	if err != nil {
		return who, s.refusal("exchange", err)
	}
	writeJSON(w, http.StatusOK, resp)
	return who, nil
}

// rekey renews a session: the engine verifies the request, signed under
// the old session's RK (typ jwc-rekey), and answers it.
func (s *Service) rekey(w http.ResponseWriter, r *http.Request, body []byte) (party, *exchange.Error) {
	resp, sess, err := s.cfg.Engine.Rekey(r.Context(), s.signedRequest(r, body), func(account string) error {
		if e := s.accountTurn(r.Context(), account); e != nil {
			return e
		}
		return nil
	})
	who := party{account: sess.Account, kid: sess.CredentialKID, profile: sess.Profile}
	if err != nil {
		return who, s.refusal("rekey", err)
	}
	writeJSON(w, http.StatusOK, resp)
	return who, nil
}
