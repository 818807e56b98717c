package exchange

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"time"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/wire"
	"github.com/custos-kx/custos/keystore"
)

// Default session lifetimes (SPEC §5).
const (
	DefaultSessionLifetime = time.Hour
	DefaultRekeyWindow     = 7 * 24 * time.Hour
)

// Server is the service side of the exchange. It holds no session state:
// everything a session needs is in its ticket.
type Server struct {
	Keystore keystore.Keystore
	// SessionLifetime is how long a session's keys authenticate requests.
	SessionLifetime time.Duration
	// RekeyWindow is how long after the exchange a session can be rekeyed;
	// after it the client must exchange again with its credential.
	RekeyWindow time.Duration
	// Now and Rand default to time.Now and crypto/rand.
	Now  func() time.Time
	Rand io.Reader
}

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
	x, err := s.Keystore.Credential(ctx)
	if err != nil {
		return nil, err
	}
	r, err := group.GenerateScalar(s.rand())
	if err != nil {
		return nil, err
	}
	defer r.Zero()
	rPub := r.Public()

	sigma, th, err := serverAgree(ctx, s.Keystore, req.Credential, req.Nonce, x, rPub, r)
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
		AK:             k.ak, EK: k.ek, RK: k.rk,
	}
	defer sess.Zero()
	t, err := s.seal(ctx, sess)
	if err != nil {
		return nil, err
	}
	resp := success(t, witness(k.wk[:], t, req.Suite, req.offer), rPub, req.Suite)
	resp.ServerCredential = EncodeKey(x)
	return resp, nil
}

// Rekey answers a validated rekey request for the session in old, whose
// ticket was oldTicket. The caller has checked the request's signature under
// old.RK and that the rekey window is open. It costs one seal.
func (s *Server) Rekey(ctx context.Context, req *RekeyRequest, old *ticket.Session, oldTicket []byte) (*wire.ExchangeResponse, error) {
	r, err := group.GenerateScalar(s.rand())
	if err != nil {
		return nil, err
	}
	defer r.Zero()
	rPub := r.Public()
	th := rekeyTranscript(req.Nonce, rPub, oldTicket)
	sigma, err := rekeyAgree(req.Nonce, r)
	if err != nil {
		return nil, err
	}
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
		AK:             k.ak, EK: k.ek, RK: k.rk,
	}
	defer sess.Zero()
	t, err := s.seal(ctx, sess)
	if err != nil {
		return nil, err
	}
	return success(t, witness(k.wk[:], t, req.Suite, req.offer), rPub, req.Suite), nil
}

func (s *Server) seal(ctx context.Context, sess *ticket.Session) ([]byte, error) {
	pt, err := sess.MarshalBinary()
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	return s.Keystore.Seal(ctx, pt)
}

func success(t, w []byte, rPub *group.Element, suite Suite) *wire.ExchangeResponse {
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

// OpenTicket opens a ticket and returns its session. It does not check
// expiry: that depends on what the ticket is used for. A ticket that does not
// open is BadAuthentication; a keystore failure is returned as it is.
func (s *Server) OpenTicket(ctx context.Context, t []byte) (*ticket.Session, error) {
	pt, err := s.Keystore.Open(ctx, t)
	if errors.Is(err, ticket.ErrInvalid) {
		return nil, Errorf(BadAuthentication, "The session ticket is not valid for this service; run a new exchange.")
	}
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	sess := new(ticket.Session)
	if err := sess.UnmarshalBinary(pt); err != nil {
		return nil, Errorf(BadAuthentication, "The session ticket is not valid for this service; run a new exchange.")
	}
	return sess, nil
}
