package exchange

import (
	"context"
	"crypto/subtle"
	"errors"
	"strings"
	"time"

	"github.com/custos-kx/custos/internal/jwc"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/wire"
)

// Verification of requests made under a session (SPEC §6) and of rekey
// requests (§7): one place for the token's syntax, its MAC and every claim,
// so that the HTTP layer calls it once and maps its answer.

// WellKnown is the path of the jwcexchange endpoint (SPEC §2), the target
// every exchange and rekey is sent to.
const WellKnown = "/.well-known/jwcexchange/"

// Scheme is the Authorization scheme of requests made under a session.
const Scheme = jwc.Scheme

// SignedRequest is a request as the service received it.
type SignedRequest struct {
	Method string
	// Target is the request target as received: the raw path, then
	// "?query" when there is a query.
	Target string
	// Authorization is the value of the Authorization header.
	Authorization string
	Body          []byte
}

// Accounts is what verification needs of the account registry.
type Accounts interface {
	// Owner returns the account the credential kid is registered to ("" if
	// none) and whether that account is disabled.
	Owner(ctx context.Context, kid string) (account string, disabled bool, err error)
}

// Verified is a request whose token verified, with the session it was made
// under. It holds the session's keys until Done.
type Verified struct {
	srv    *Server
	entry  *cacheEntry
	claims *jwc.Claims
	token  string
	ticket []byte // nil until sessionTicket, for a token recognised by its header
}

// SessionInfo is what a handler may learn of the session a request was
// made under.
type SessionInfo struct {
	Account       string
	CredentialKID string
	Expires       time.Time
	Generation    uint32
}

// Session describes the request's session.
func (v *Verified) Session() SessionInfo {
	s := v.entry.sess
	return SessionInfo{Account: s.Account, CredentialKID: s.CredentialKID, Expires: s.Expires, Generation: s.Generation}
}

// Done ends the request's hold on its session's keys.
func (v *Verified) Done() { v.srv.tickets.release(v.entry) }

// Decrypt opens a JWE body under the session's EK.
func (v *Verified) Decrypt(body []byte) ([]byte, error) {
	pt, err := jwc.Decrypt(v.entry.sess.EK[:], v.sessionTicket(), string(body))
	if err != nil {
		return nil, badAuth("The encrypted body was refused: %v.", err)
	}
	return pt, nil
}

// Encrypt seals a response body as a JWE under the session's EK.
func (v *Verified) Encrypt(body []byte) ([]byte, error) {
	enc, err := jwc.Encrypt(v.entry.sess.EK[:], v.sessionTicket(), body)
	return []byte(enc), err
}

// SignResponse returns the JWC-Signature of a response with this status
// and body (as sent).
func (v *Verified) SignResponse(status int, body []byte) (string, error) {
	return jwc.SignResponse(v.entry.ak, &jwc.ResponseClaims{ID: v.claims.ID, Status: status, BodyHash: jwc.BodyHash(body)})
}

// sessionTicket returns the session's ticket, which names it in JWE
// bodies. A request recognised by its header did not decode the ticket;
// the few that need it decode it here.
func (v *Verified) sessionTicket() []byte {
	if v.ticket == nil {
		if req, err := jwc.Parse(v.token); err == nil {
			v.ticket = req.Ticket
		}
	}
	return v.ticket
}

func badAuth(format string, args ...any) *Error {
	return Errorf(BadAuthentication, format, args...)
}

// Verify checks a request made under a session (SPEC §6): the ticket opens
// (from memory after the first time), the token is a request token, its
// MAC verifies under AK, the session is open, method and target match, iat
// is within the skew, jti is new, the body hash matches, and the account
// is enabled. Refusals are *Error; the caller calls Done on success.
func (s *Server) Verify(ctx context.Context, r *SignedRequest) (*Verified, error) {
	return s.verify(ctx, r, jwc.TypeRequest)
}

func (s *Server) verify(ctx context.Context, r *SignedRequest, typ string) (*Verified, error) {
	s.init()
	token, ok := authToken(r.Authorization)
	if !ok {
		return nil, badAuth("This endpoint needs an Authorization: JWC header; run an exchange first.")
	}
	entry, req, err := s.session(ctx, token)
	if err != nil {
		return nil, err
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
	now := s.now()
	if now.After(deadline) {
		return nil, Errorf(TicketExpired, "The %s ended at %s; %s.", what, deadline.UTC().Format(time.RFC3339), renewHint(typ))
	}
	if claims.Method != r.Method {
		return nil, badAuth("The token was made for method %s, not %s.", wire.Clip(claims.Method), wire.Clip(r.Method))
	}
	if subtle.ConstantTimeCompare([]byte(claims.Target), []byte(r.Target)) != 1 {
		return nil, badAuth("The token was made for %q, not %q.", wire.Clip(claims.Target), wire.Clip(r.Target))
	}
	iat := time.Unix(claims.IssuedAt, 0)
	if skew := now.Sub(iat); skew > jwc.MaxSkew || skew < -jwc.MaxSkew {
		return nil, badAuth("The token's iat is %s away from the service's clock; the limit is %s. Check the client's clock.", skew.Round(time.Second), jwc.MaxSkew)
	}
	if subtle.ConstantTimeCompare([]byte(claims.BodyHash), []byte(jwc.BodyHash(r.Body))) != 1 {
		return nil, badAuth("The body does not match the token's bdh.")
	}
	if !s.replays.add(newReplayKey(entry.key, claims.ID), iat.Add(2*jwc.MaxSkew), now) {
		return nil, badAuth("This request (jti %s) was already received; sign each request afresh.", wire.Clip(claims.ID))
	}
	if err := s.checkAccount(ctx, sess, now); err != nil {
		return nil, err
	}
	ok = true
	return &Verified{srv: s, entry: entry, token: token, ticket: req.Ticket, claims: claims}, nil
}

// authToken returns the token of an "Authorization: JWC …" header value.
func authToken(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, jwc.Scheme) {
		return "", false
	}
	return strings.TrimSpace(token), true
}

// session finds the session a token names, held for the caller, and parses
// the token. A token whose header part is the one every request of a cached
// session carries (the cache key is its hash) is parsed without decoding
// the header; any other is parsed in full and its ticket looked up, or
// opened by the keystore.
func (s *Server) session(ctx context.Context, token string) (*cacheEntry, *jwc.Request, error) {
	now := s.now()
	if entry := s.tickets.get(headerKey(jwc.HeaderPart(token)), now); entry != nil {
		cacheStats.hits.Add(1)
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
		cacheStats.hits.Add(1)
		return entry, req, nil
	}
	cacheStats.misses.Add(1)
	sess, err := s.openTicket(ctx, req.Ticket)
	if err != nil {
		return nil, nil, err
	}
	return s.tickets.put(key, hdr, sess), req, nil
}

func renewHint(typ string) string {
	if typ == jwc.TypeRekey {
		return "run a new exchange with your credential"
	}
	return "rekey or run a new exchange"
}

// checkAccount checks that the session's credential is still registered
// to its account and that the account is enabled (SPEC §6): a removed
// account, or a removed credential, stops its sessions even if the account
// is added again with another key. The answer is trusted for StatusTTL.
func (s *Server) checkAccount(ctx context.Context, sess *ticket.Session, now time.Time) error {
	st, ok := s.status.get(sess.CredentialKID, now)
	if !ok {
		if s.Accounts == nil {
			return &Error{Code: Internal, Description: "The service has no account registry to check sessions against.", cause: errNoAccounts}
		}
		owner, disabled, err := s.Accounts.Owner(ctx, sess.CredentialKID)
		if err != nil {
			return RegistryError(err)
		}
		st = statusEntry{owner: owner, disabled: disabled, at: now}
		s.status.put(sess.CredentialKID, st)
	}
	switch {
	case st.owner != sess.Account:
		return Errorf(UnknownCredential, "The credential %s is no longer registered to the account %s; ask the service's operator to register it again, then run a new exchange.", sess.CredentialKID, sess.Account)
	case st.disabled:
		return Errorf(AccountDisabled, "The account %s is disabled.", sess.Account)
	}
	return nil
}

// openTicket opens a ticket and returns its session. It does not check
// expiry: that depends on what the ticket is used for. A ticket that does
// not open is BadAuthentication; a keystore failure is returned as it is.
func (s *Server) openTicket(ctx context.Context, t []byte) (*ticket.Session, error) {
	pt, err := ticket.Open(ctx, s.Keystore, t)
	if errors.Is(err, ticket.ErrInvalid) {
		return nil, badAuth("The session ticket is not valid for this service; run a new exchange.")
	}
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	sess := new(ticket.Session)
	if err := sess.UnmarshalBinary(pt); err != nil {
		return nil, badAuth("The session ticket is not valid for this service; run a new exchange.")
	}
	return sess, nil
}
