package exchange

import (
	"context"
	"crypto/subtle"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/custos-kx/custos/internal/jwc"
	"github.com/custos-kx/custos/internal/replay"
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
	// Header holds the request's headers by canonical name, each name's
	// field lines in the order received (an http.Header).
	Header map[string][]string
	Body   []byte
	// Remote is the peer's address (an http.Request's RemoteAddr), and
	// Opens, if set, what limits the ticket opens the request may cost.
	Remote string
	Opens  OpenBudget
}

// OpenBudget limits what strangers spend on the token: each ticket not in
// memory costs one open, and a forged one costs it for nothing.
type OpenBudget interface {
	// BeforeOpen is asked before the keystore opens the ticket of r; an
	// error refuses the request with it.
	BeforeOpen(ctx context.Context, r *SignedRequest) error
	// OpenFailed is told that the ticket of r did not open.
	OpenFailed(ctx context.Context, r *SignedRequest)
}

// Accounts is what verification needs of the account registry.
type Accounts interface {
	// Owner returns the account the credential kid is registered to ("" if
	// none) and whether that account is disabled.
	Owner(ctx context.Context, kid string) (account string, disabled bool, err error)
	// MarkRenewed records that the ticket whose SHA-256 is ticketHash has
	// been renewed by a rekey, until its rekey window closes; first is
	// false when it had been recorded before, by this replica or another
	// (SPEC §7: a ticket is renewed at most once).
	MarkRenewed(ctx context.Context, ticketHash []byte, until time.Time) (first bool, err error)
}

// Verified is a request whose MAC verified, with the session it was made
// under. It holds the session's keys until Done.
type Verified struct {
	srv            *Server
	entry          *cacheEntry
	claims         *jwc.Claims
	method, target string // as received
	token          string
	ticket         []byte // nil until sessionTicket, for a token recognised by its header
}

// SessionInfo is what a handler may learn of the session a request was
// made under.
type SessionInfo struct {
	Account       string
	CredentialKID string
	Expires       time.Time
	Generation    uint32
	Profile       Profile
}

// Session describes the request's session.
func (v *Verified) Session() SessionInfo {
	s := v.entry.sess
	return SessionInfo{Account: s.Account, CredentialKID: s.CredentialKID, Expires: s.Expires, Generation: s.Generation, Profile: Profile(s.Profile)}
}

// Done ends the request's hold on its session's keys.
func (v *Verified) Done() { v.srv.tickets.release(v.entry) }

// Encrypted reports whether the request carried the enc claim: its body,
// if any, is a JWE, and the response is to be encrypted (SPEC §6).
func (v *Verified) Encrypted() bool { return v.claims != nil && v.claims.Encryption != "" }

// Covered lists the request headers the signature covers (hds), lowercase.
func (v *Verified) Covered() []string {
	if v.claims == nil {
		return nil
	}
	return v.claims.Headers
}

// Decrypt opens a JWE body under the session's EK and returns the
// plaintext and its media type (the JWE's cty).
func (v *Verified) Decrypt(body []byte) ([]byte, string, error) {
	pt, cty, err := jwc.Decrypt(v.entry.sess.EK[:], v.sessionTicket(), string(body))
	if err != nil {
		return nil, "", badAuth("The encrypted body was refused: %v.", err)
	}
	return pt, cty, nil
}

// Encrypt seals a response body of media type cty as a JWE under the
// session's EK.
func (v *Verified) Encrypt(body []byte, cty string) ([]byte, error) {
	enc, err := jwc.Encrypt(v.entry.sess.EK[:], v.sessionTicket(), body, cty)
	return []byte(enc), err
}

// SignResponse returns the JWC-Signature of a response with this status,
// headers and body (as sent): it covers every header but Content-Length,
// Date, JWC-Signature and the hop-by-hop ones, and names the request's
// method and target as received. encrypted says the body is a JWE.
func (v *Verified) SignResponse(status int, header map[string][]string, body []byte, encrypted bool) (string, error) {
	hds := coveredNames(header, responseUncovered)
	hdh, _ := jwc.HeaderHash(hds, header)
	rc := &jwc.ResponseClaims{ID: v.claims.ID, Method: v.method, Target: v.target, Status: status,
		BodyHash: jwc.BodyHash(body), Headers: hds, HeaderHash: hdh}
	if encrypted {
		rc.Encryption = jwc.A256CBCHS512
	}
	return jwc.SignResponse(v.entry.ak, rc)
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

// Verify checks a request made under a session (SPEC §6), in the SPEC's
// order: the token parses, the ticket opens (from memory after the first
// time), the token is a request token and its MAC verifies under AK — a
// refusal up to here returns no Verified and is sent unsigned — then the
// session is open, method and target match, iat is within the skew, jti
// is new, the body hash matches, the covered headers are present and
// match hdh, and the credential is still registered to the enabled
// account. A refusal from there on comes with the Verified that signs it.
// The caller calls Done whenever a Verified is returned.
func (s *Server) Verify(ctx context.Context, r *SignedRequest) (*Verified, error) {
	return s.verify(ctx, r, jwc.TypeRequest)
}

func (s *Server) verify(ctx context.Context, r *SignedRequest, typ string) (*Verified, error) {
	s.init()
	token, ok := authToken(r.Authorization)
	if !ok {
		return nil, badAuth("This endpoint needs an Authorization: JWC header; run an exchange first.")
	}
	entry, req, err := s.session(ctx, token, r)
	if err != nil {
		return nil, err
	}
	if req.Type != typ {
		s.tickets.release(entry)
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
		s.tickets.release(entry)
		return nil, badAuth("The Authorization token was refused: %v.", err)
	}
	v := &Verified{srv: s, entry: entry, token: token, ticket: req.Ticket, claims: claims, method: r.Method, target: r.Target}
	return v, s.checkClaims(ctx, v, r, deadline, what, typ)
}

// checkClaims checks what a request claims once its MAC verified.
func (s *Server) checkClaims(ctx context.Context, v *Verified, r *SignedRequest, deadline time.Time, what, typ string) error {
	claims, now := v.claims, s.now()
	if now.After(deadline) {
		return Errorf(TicketExpired, "The %s ended at %s; %s.", what, deadline.UTC().Format(time.RFC3339), renewHint(typ))
	}
	if claims.Method != r.Method {
		return badAuth("The token was made for method %s, not %s.", wire.Clip(claims.Method), wire.Clip(r.Method))
	}
	if subtle.ConstantTimeCompare([]byte(claims.Target), []byte(r.Target)) != 1 {
		return badAuth("The token was made for %q, not %q.", wire.Clip(claims.Target), wire.Clip(r.Target))
	}
	iat := time.Unix(claims.IssuedAt, 0)
	if skew := now.Sub(iat); skew > jwc.MaxSkew || skew < -jwc.MaxSkew {
		return badAuth("The token's iat is %s away from the service's clock; the limit is %s. Check the client's clock.", skew.Round(time.Second), jwc.MaxSkew)
	}
	first, err := s.Replays.FirstSeen(ctx, replay.NewKey(v.entry.key, claims.ID), iat.Add(2*jwc.MaxSkew), now)
	if err != nil {
		return SharedStoreError(err)
	}
	if !first {
		return badAuth("This request (jti %s) was already received; sign each request afresh.", wire.Clip(claims.ID))
	}
	if subtle.ConstantTimeCompare([]byte(claims.BodyHash), []byte(jwc.BodyHash(r.Body))) != 1 {
		return badAuth("The body does not match the token's bdh.")
	}
	if err := checkHeaderNames(claims.Headers); err != nil {
		return err
	}
	hdh, present := jwc.HeaderHash(claims.Headers, r.Header)
	if !present {
		return badAuth("A header the token covers (hds) is missing from the request.")
	}
	if subtle.ConstantTimeCompare([]byte(claims.HeaderHash), []byte(hdh)) != 1 {
		return badAuth("The request's headers do not match the token's hdh: a covered header was changed on the way.")
	}
	return s.checkAccount(ctx, v.entry.sess, now)
}

// checkHeaderNames checks hds: lowercase names, each at most once.
func checkHeaderNames(names []string) error {
	for i, n := range names {
		if n == "" || n != strings.ToLower(n) {
			return badAuth("The token's hds names %q; header names in hds are lowercase.", wire.Clip(n))
		}
		if slices.Contains(names[:i], n) {
			return badAuth("The token's hds names %q twice.", wire.Clip(n))
		}
	}
	return nil
}

// Headers not covered by signatures (SPEC §6): the hop-by-hop ones, and
// those the HTTP stack sets or the signature itself is.
var (
	requestUncovered  = []string{"authorization", "host", "content-length"}
	responseUncovered = []string{"content-length", "date", "jwc-signature"}
	hopByHop          = []string{"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)

// uncoveredFold reports, without regard to case, whether a header is one
// a signature does not cover: the hop-by-hop ones and extra.
func uncoveredFold(name string, extra []string) bool {
	return containsFold(extra, name) || containsFold(hopByHop, name) ||
		len(name) >= 6 && strings.EqualFold(name[:6], "proxy-")
}

// containsFold reports whether list holds name, without regard to case
// (and without allocating: it runs on every header of every response).
func containsFold(list []string, name string) bool {
	for _, l := range list {
		if strings.EqualFold(l, name) {
			return true
		}
	}
	return false
}

// coveredNames lists, lowercase and sorted, the headers of h a signature
// covers.
func coveredNames(h map[string][]string, extra []string) []string {
	names := make([]string, 0, len(h))
	for k := range h {
		if !uncoveredFold(k, extra) && !containsFold(names, k) {
			names = append(names, strings.ToLower(k))
		}
	}
	slices.Sort(names)
	return names
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
func (s *Server) session(ctx context.Context, token string, r *SignedRequest) (*cacheEntry, *jwc.Request, error) {
	now := s.now()
	if entry := s.cached(headerKey(jwc.HeaderPart(token)), now); entry != nil {
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
	if entry := s.cached(key, now); entry != nil {
		return entry, req, nil
	}
	cacheStats.misses.Add(1)
	if r.Opens != nil {
		if err := r.Opens.BeforeOpen(ctx, r); err != nil {
			return nil, nil, err
		}
	}
	sess, err := s.openTicket(ctx, req.Ticket)
	if err != nil {
		if r.Opens != nil && AsError(err).Code == BadAuthentication {
			r.Opens.OpenFailed(ctx, r)
		}
		return nil, nil, err
	}
	sealedBy, _ := ticket.SealedBy(req.Ticket)
	return s.tickets.put(key, hdr, sealedBy, sess), req, nil
}

// cached returns the session cached under key, held, if the key that
// sealed its ticket is still held: a ticket whose key was pruned (on any
// replica) is refused within the keystore's refresh, cached or not.
func (s *Server) cached(key [32]byte, now time.Time) *cacheEntry {
	entry := s.tickets.get(key, now)
	if entry == nil {
		return nil
	}
	if !s.Keystore.Holds(entry.sealedBy) {
		s.tickets.drop(entry)
		s.tickets.release(entry)
		return nil // then parsed in full, and its ticket no longer opens
	}
	cacheStats.hits.Add(1)
	return entry
}

func renewHint(typ string) string {
	if typ == jwc.TypeRekey {
		return "run a new exchange with your credential"
	}
	return "rekey or run a new exchange"
}

// Account returns the account the credential kid is registered to ("" if
// it is registered to none) and whether that account is disabled, as every
// exchange, rekey and request checks it: from the registry, trusted for
// StatusTTL, so that a busy credential costs one registry query per StatusTTL
// and a change reaches it within that time. That a credential is registered
// to no account is not remembered: one registered a moment ago exchanges at
// once.
func (s *Server) Account(ctx context.Context, kid string) (account string, disabled bool, err error) {
	s.init()
	return s.account(ctx, kid, s.now())
}

// account is Account at the clock reading now, which a request's
// verification has made already.
func (s *Server) account(ctx context.Context, kid string, now time.Time) (string, bool, error) {
	if st, ok := s.status.get(kid, now); ok {
		return st.owner, st.disabled, nil
	}
	if s.Accounts == nil {
		return "", false, &Error{Code: Internal, Description: "The service has no account registry to check sessions against.", cause: errNoAccounts}
	}
	owner, disabled, err := s.Accounts.Owner(ctx, kid)
	if err != nil {
		return "", false, RegistryError(err)
	}
	if owner != "" {
		s.status.put(kid, statusEntry{owner: owner, disabled: disabled, at: now})
	}
	return owner, disabled, nil
}

// checkAccount checks that the session's credential is still registered
// to its account and that the account is enabled (SPEC §6): a removed
// account, or a removed credential, stops its sessions even if the account
// is added again with another key.
func (s *Server) checkAccount(ctx context.Context, sess *ticket.Session, now time.Time) error {
	owner, disabled, err := s.account(ctx, sess.CredentialKID, now)
	switch {
	case err != nil:
		return err
	case owner != sess.Account:
		return Errorf(UnknownCredential, "The credential %s is no longer registered to the account %s; ask the service's operator to register it again, then run a new exchange.", sess.CredentialKID, sess.Account)
	case disabled:
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
