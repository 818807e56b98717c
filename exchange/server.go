package exchange

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/custos-kx/custos/internal/jwc"
	"github.com/custos-kx/custos/internal/replay"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/wire"
)

// Default session lifetimes (SPEC §5).
const (
	DefaultSessionLifetime = time.Hour
	DefaultRekeyWindow     = 7 * 24 * time.Hour
)

// Server is the service side of the protocol: the exchange, rekeys, the
// verification of requests made under a session, and discovery.
// Everything a session needs is in its ticket, and what the Server holds
// in memory (opened tickets, account status) is a cache; the one thing
// replicas must share is the requests seen within the skew window, which
// Replays keeps.
type Server struct {
	Keystore Keystore
	// Accounts is checked by every verified request and rekey.
	Accounts Accounts
	// SessionLifetime is how long a session's keys authenticate requests.
	SessionLifetime time.Duration
	// RekeyWindow is how long after the exchange a session can be rekeyed;
	// after it the client must exchange again with its credential.
	RekeyWindow time.Duration
	// TicketCacheSize bounds the opened tickets held in memory (default
	// 100,000; negative holds none).
	TicketCacheSize int
	// StatusTTL is how long an account's enabled/disabled status is
	// trusted (default 10 s).
	StatusTTL time.Duration
	// Replays records the requests seen (default: in this process's
	// memory, which does not reach other replicas).
	Replays Replays
	// CPUs bounds the exchanges and rekeys computing in Go at once
	// (default GOMAXPROCS): one per CPU.
	CPUs int
	// Now and Rand default to time.Now and crypto/rand.
	Now  func() time.Time
	Rand io.Reader

	once    sync.Once
	cpu     cpuSlots
	tickets *ticketCache
	status  *statusCache
}

func (s *Server) init() {
	s.once.Do(func() {
		size := s.TicketCacheSize
		if size == 0 {
			size = 100_000
		}
		ttl := s.StatusTTL
		if ttl <= 0 {
			ttl = 10 * time.Second
		}
		s.cpu = newCPUSlots(s.CPUs)
		s.tickets = newTicketCache(size)
		if s.Replays == nil {
			s.Replays = memoryReplays{replay.New()}
		}
		s.status = &statusCache{ttl: ttl, entries: map[string]statusEntry{}}
	})
}

var errNoAccounts = errors.New("exchange: Server.Accounts is not set")

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Server) rand() io.Reader {
	if s.Rand != nil {
		return s.Rand
	}
	return rand.Reader
}

func (s *Server) lifetimes() (session, rekey time.Duration) {
	session, rekey = s.SessionLifetime, s.RekeyWindow
	if session <= 0 {
		session = DefaultSessionLifetime
	}
	if rekey <= 0 {
		rekey = DefaultRekeyWindow
	}
	return session, rekey
}

// Exchange answers a validated request from a known account. It costs one
// keystore derivation and one seal.
func (s *Server) Exchange(ctx context.Context, req *Request, account string) (*wire.ExchangeResponse, error) {
	x, err := s.credential(ctx, req.Profile())
	if err != nil {
		return nil, err
	}
	s.init()
	var r *privateKey
	if err := s.cpu.run(ctx, func() (err error) { r, err = generateKey(req.Profile(), s.rand()); return err }); err != nil {
		return nil, err
	}
	defer r.zero()

	sigma, th, err := serverAgree(ctx, s.cpu, s.Keystore, req.Credential, req.Nonce, x, r)
	if err != nil {
		return nil, err
	}
	k := schedule(zeroSalt, sigma, th)
	clear(sigma)
	defer k.zero()

	now := s.now()
	life, window := s.lifetimes()
	sess := &ticket.Session{
		Account:        account,
		CredentialKID:  req.CredentialKID(),
		IssuedAt:       now,
		Expires:        now.Add(life),
		RekeyExpires:   now.Add(window),
		Encryption:     req.Suite.Encryption,
		Authentication: req.Suite.Authentication,
		Profile:        uint8(req.Profile()),
		AK:             k.ak, EK: k.ek, RK: k.rk,
	}
	defer sess.Zero()
	t, err := s.seal(ctx, sess)
	if err != nil {
		return nil, err
	}
	resp := success(t, witness(k.wk[:], t, req.Suite, req.offer), r.pub, req.Suite)
	resp.ServerCredential = EncodeKey(x)
	return resp, nil
}

// Rekey answers a rekey request (SPEC §7): it verifies the request's
// token under the old session's RK, that the rekey window is open and that
// the account may still use it, then admit(account) (a rate limit, say;
// nil admits all), then parses the body. It costs one seal. The session
// names the account and credential once the old ticket opened, also when
// the rekey is refused after that.
func (s *Server) Rekey(ctx context.Context, r *SignedRequest, admit func(account string) error) (*wire.ExchangeResponse, SessionInfo, error) {
	v, err := s.verify(ctx, r, jwc.TypeRekey)
	if v == nil {
		return nil, SessionInfo{}, err
	}
	defer v.Done() // refusals of a rekey are unsigned (SPEC §7)
	info := v.Session()
	if err != nil {
		return nil, info, err
	}
	if admit != nil {
		if err := admit(info.Account); err != nil {
			return nil, info, err
		}
	}
	var msg wire.ExchangeRequest
	if err := wire.Unmarshal(r.Body, &msg); err != nil {
		return nil, info, err
	}
	req, err := ParseRekeyRequest(&msg)
	if err != nil {
		return nil, info, err
	}
	old := v.sessionTicket()
	resp, err := s.rekey(ctx, req, v.entry.sess, old)
	if err != nil {
		return nil, info, err
	}
	// The decision to answer is made: record it, atomically for every
	// replica, before the answer leaves (SPEC §7, renewed at most once).
	h := sha256.Sum256(old)
	first, err := s.Accounts.MarkRenewed(ctx, h[:], v.entry.sess.RekeyExpires)
	switch {
	case err != nil:
		return nil, info, RegistryError(err)
	case !first:
		return nil, info, badAuth("This session was already renewed by an earlier rekey; a ticket is renewed once. Use the session that rekey made, or run a new exchange.")
	}
	return resp, info, nil
}

// rekey answers a validated rekey request for the session in old, whose
// ticket was oldTicket and whose RK signed the request.
func (s *Server) rekey(ctx context.Context, req *RekeyRequest, old *ticket.Session, oldTicket []byte) (*wire.ExchangeResponse, error) {
	if p := Profile(old.Profile); req.Nonce.Profile() != p {
		return nil, Errorf(Malformed, "This session is of the %s profile and the rekey's ClientNonce is a %s key; a rekey keeps its session's profile.", p, req.Nonce.Profile())
	}
	s.init()
	var (
		r     *privateKey
		sigma []byte
	)
	err := s.cpu.run(ctx, func() (err error) {
		if r, err = generateKey(req.Nonce.Profile(), s.rand()); err != nil {
			return err
		}
		if sigma, err = rekeyAgree(req.Nonce, r); err != nil {
			r.zero()
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	defer r.zero()
	th := rekeyTranscript(req.Nonce, r.pub, oldTicket)
	k := schedule(old.RK[:], sigma, th)
	clear(sigma)
	defer k.zero()

	now := s.now()
	life, _ := s.lifetimes()
	sess := &ticket.Session{
		Account:        old.Account,
		CredentialKID:  old.CredentialKID,
		IssuedAt:       now,
		Expires:        now.Add(life),
		RekeyExpires:   old.RekeyExpires, // the window runs from the exchange, not the last rekey
		Encryption:     req.Suite.Encryption,
		Authentication: req.Suite.Authentication,
		Generation:     old.Generation + 1,
		Profile:        old.Profile,
		AK:             k.ak, EK: k.ek, RK: k.rk,
	}
	defer sess.Zero()
	t, err := s.seal(ctx, sess)
	if err != nil {
		return nil, err
	}
	return success(t, witness(k.wk[:], t, req.Suite, req.offer), r.pub, req.Suite), nil
}

func (s *Server) seal(ctx context.Context, sess *ticket.Session) ([]byte, error) {
	pt, err := sess.MarshalBinary()
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	return ticket.Seal(ctx, s.Keystore, s.rand(), pt)
}

func success(t, w []byte, rPub *PublicKey, suite Suite) *wire.ExchangeResponse {
	return &wire.ExchangeResponse{
		Status:            201,
		StatusDescription: "Operation completed successfully",
		Ticket:            t,
		Witness:           w,
		ServerNonce:       EncodeKey(rPub),
		Encryption:        []string{suite.Encryption},
		Authentication:    []string{suite.Authentication},
	}
}

// credential returns the active service credential of profile p; a
// profile the keystore does not serve is the client's to change.
func (s *Server) credential(ctx context.Context, p Profile) (*PublicKey, error) {
	x, err := s.Keystore.Credential(ctx, p)
	if errors.Is(err, ErrProfileNotServed) {
		return nil, Errorf(UnsupportedDomain, "This service does not serve the %s profile; it serves %s (see GET %s).", p, s.served(ctx), WellKnown)
	}
	return x, err
}

// served names the profiles the keystore has credentials for.
func (s *Server) served(ctx context.Context) string {
	var names []string
	for _, p := range Profiles {
		if _, err := s.Keystore.Credential(ctx, p); err == nil {
			names = append(names, p.String())
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, " and ")
}

// Describe returns the discovery document (SPEC §8): every profile's
// credential in Credentials, the group-14 one also as ServerCredential.
func (s *Server) Describe(ctx context.Context) (*wire.ServiceDescription, error) {
	d := &wire.ServiceDescription{
		Encryption:     Supported.Encryption,
		Authentication: Supported.Authentication,
		Credentials:    []wire.PublicKey{},
	}
	for _, p := range Profiles {
		x, err := s.Keystore.Credential(ctx, p)
		switch {
		case errors.Is(err, ErrProfileNotServed):
			continue
		case err != nil:
			return nil, err
		}
		k := EncodeKey(x)
		d.Credentials = append(d.Credentials, *k)
		if p == ModP2048 {
			d.ServerCredential, d.Domain = k, k.Domain
		}
	}
	if len(d.Credentials) == 0 {
		return nil, fmt.Errorf("%w: the keystore serves no profile", ErrKeystoreUnavailable)
	}
	return d, nil
}
