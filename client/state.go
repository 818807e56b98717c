package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/wire"
)

// State keeps what a client learns across runs: the service credential it
// pinned for each origin, and its current sessions. On disk it is a
// directory readable by its owner only; session keys are in it.
type State struct {
	// Dir is the directory; empty keeps everything in memory.
	Dir string

	mu       sync.Mutex
	pins     map[string]string
	sessions map[sessionKey]*session
}

// sessionKey names a kept session: sessions are kept per (origin,
// credential), so a program holding two keys never answers with the
// other's session.
type sessionKey struct{ origin, kid string }

// session is a client session with the times the client needs to renew it.
type session struct {
	*exchange.Session
	Renewed   time.Time // last exchange or rekey: the session's start
	Exchanged time.Time // last exchange: the rekey window's start
	serverKID string    // ServerCredential's kid, checked against the pin on every use
}

func newSession(s *exchange.Session, renewed, exchanged time.Time) *session {
	return &session{Session: s, Renewed: renewed, Exchanged: exchanged, serverKID: s.ServerCredential.KeyID()}
}

type storedSession struct {
	Ticket           []byte
	AK, EK, RK       []byte
	Encryption       string
	Authentication   string
	ServerCredential *wire.PublicKey
	Renewed          time.Time
	Exchanged        time.Time
}

func (s *State) load() error {
	if s.pins != nil {
		return nil
	}
	s.pins, s.sessions = map[string]string{}, map[sessionKey]*session{}
	if s.Dir == "" {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(s.Dir, "pins.json"))
	if err == nil {
		if err := json.Unmarshal(b, &s.pins); err != nil {
			return fmt.Errorf("client: %s is damaged: %w", filepath.Join(s.Dir, "pins.json"), err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Pin returns the credential kid pinned for origin and profile p, if any.
// A service has one credential per profile, so each is pinned on its own.
func (s *State) Pin(origin string, p exchange.Profile) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.load(); err != nil {
		return "", err
	}
	return s.pins[pinKey(origin, p)], nil
}

func (s *State) setPin(origin string, p exchange.Profile, kid string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.load(); err != nil {
		return err
	}
	s.pins[pinKey(origin, p)] = kid
	return s.writeJSON("pins.json", s.pins)
}

// pinKey names a pin in pins.json: the origin for the group-14 profile,
// as before there were two, and "origin profile" for the others.
func pinKey(origin string, p exchange.Profile) string {
	if p == exchange.ModP2048 {
		return origin
	}
	return origin + " " + p.String()
}

// session returns the kept session of the credential kid with origin.
func (s *State) session(origin, kid string) (*session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.load(); err != nil {
		return nil, err
	}
	key := sessionKey{origin, kid}
	if sess, ok := s.sessions[key]; ok || s.Dir == "" {
		return sess, nil
	}
	b, err := os.ReadFile(filepath.Join(s.Dir, sessionFile(origin, kid)))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st storedSession
	if err := json.Unmarshal(b, &st); err != nil || len(st.AK) != ticket.KeySize || len(st.EK) != ticket.KeySize || len(st.RK) != ticket.KeySize {
		return nil, nil // a damaged session file only costs an exchange
	}
	x, err := exchange.ParseKey(st.ServerCredential, "ServerCredential")
	if err != nil {
		return nil, nil
	}
	es := &exchange.Session{Ticket: st.Ticket, ServerCredential: x,
		Suite: exchange.Suite{Encryption: st.Encryption, Authentication: st.Authentication}}
	copy(es.AK[:], st.AK)
	copy(es.EK[:], st.EK)
	copy(es.RK[:], st.RK)
	clear(st.AK)
	clear(st.EK)
	clear(st.RK)
	sess := newSession(es, st.Renewed, st.Exchanged)
	s.sessions[key] = sess
	return sess, nil
}

func (s *State) setSession(origin, kid string, sess *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.load(); err != nil {
		return err
	}
	key, name := sessionKey{origin, kid}, sessionFile(origin, kid)
	if old := s.sessions[key]; old != nil && old != sess {
		old.Retire() // zeroed when the last request signed with it is done
	}
	if sess == nil {
		delete(s.sessions, key)
		if s.Dir != "" {
			os.Remove(filepath.Join(s.Dir, name))
		}
		return nil
	}
	s.sessions[key] = sess
	if s.Dir == "" {
		return nil
	}
	st := storedSession{
		Ticket: sess.Ticket, AK: sess.AK[:], EK: sess.EK[:], RK: sess.RK[:],
		Encryption: sess.Suite.Encryption, Authentication: sess.Suite.Authentication,
		ServerCredential: exchange.EncodeKey(sess.ServerCredential), Renewed: sess.Renewed, Exchanged: sess.Exchanged,
	}
	return s.writeJSON(name, st)
}

// sessionFile names the session of credential kid with origin on disk.
func sessionFile(origin, kid string) string {
	return "session-" + url.PathEscape(origin) + "-" + kid + ".json"
}

// writeJSON writes a file atomically with mode 0600.
func (s *State) writeJSON(name string, v any) error {
	if s.Dir == "" {
		return nil
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.Dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	_, werr := tmp.Write(b)
	clear(b)
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return werr
	}
	return os.Rename(tmp.Name(), filepath.Join(s.Dir, name))
}
