// Package hsm is Custos's access to a PKCS#11 token: it loads the module
// once per process, finds the token by label, logs in, and lends each
// operation a session of its own from a bounded pool — SoftHSM crashes the
// process when two goroutines share a session.
//
// The pool heals itself without a restart. A session that dies is replaced;
// a logout triggers a login; a finalized module is initialised again and
// object handles are found again. While the token does not answer, calls fail
// at once with an error wrapping exchange.ErrKeystoreUnavailable, and one call at a time probes it again.
//
// This is the only package that talks to PKCS#11 (through cgo).
package hsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/custos-kx/custos/exchange"
)

// Config says which token to use and how.
type Config struct {
	// Module is the path of the PKCS#11 library.
	Module string
	// InitArgs is the module's initialisation string, passed to
	// C_Initialize in its reserved pointer: NSS softokn takes its database
	// there ("configdir='sql:/path' certPrefix='' keyPrefix=''
	// secmod='secmod.db' flags="). Most modules take none.
	InitArgs string
	// TokenLabel finds the token. Slot ids change between runs; labels do not.
	TokenLabel string
	// PIN is the user PIN. Read it from the environment or a file, never argv.
	PIN string
	// MaxSessions bounds the pool: at most this many operations run on the
	// token at once; more wait for a session (or their context). Zero
	// sizes it by the calls' threads: one session each, or, with none,
	// DefaultMaxSessions.
	MaxSessions int
	// CallThreads is how many OS threads of the Token's own make Do's
	// calls, each one call after another (callThreads). Zero means one for
	// a software slot and none for a hardware slot, whose calls are made
	// by their callers' goroutines, since there they mostly wait on the
	// device; negative means none.
	CallThreads int
	// RetryInterval is how often an unreachable token is probed again.
	RetryInterval time.Duration
	// KeepAlive is how often each idle pooled session makes a cheap call,
	// so that a module whose device closes idle connections (YubiHSM 2
	// after ~30 s) keeps them open. Zero means DefaultKeepAlive; negative,
	// none.
	KeepAlive time.Duration
	// Wrap, if set, wraps the module's calls for this token. Fault tests use
	// it to make a real token fail on cue.
	Wrap func(Cryptoki) Cryptoki
	// Logger receives recoveries and outages; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultMaxSessions is the pool for a hardware slot (CKF_HW_SLOT): a
// network HSM's operation mostly waits on its round trip, so sessions
// rather than CPUs bound the operations in flight, and 16 is within every
// vendor's default partition limits. A software token (SoftHSM, NSS
// softokn, opencryptoki's soft token) computes in this process instead,
// on its call thread, with the one session the thread uses.
const DefaultMaxSessions = 16

// softwareSlot reports whether the token labelled label is in a software
// slot (no CKF_HW_SLOT); a token it cannot find yet (Open reports that)
// counts as hardware.
func softwareSlot(ck Cryptoki, label string) bool {
	s, _, err := slotOf(ck, label)
	if err != nil {
		return false
	}
	slot, err := ck.GetSlotInfo(s)
	return err == nil && slot.Flags&pkcs11.CKF_HW_SLOT == 0
}

// DefaultKeepAlive is the idle sessions' keep-alive interval.
const DefaultKeepAlive = 15 * time.Second

// Token is a logged-in PKCS#11 token and its session pool.
type Token struct {
	cfg      Config
	mod      *module
	ck       Cryptoki
	log      *slog.Logger
	software bool         // in a software slot (SoftwareSlot)
	threads  *callThreads // make Do's calls, if not nil

	slots chan struct{} // one per session that may exist
	idle  chan *session // sessions ready for use
	epoch atomic.Uint64 // bumped whenever object handles may have gone stale

	mu       sync.Mutex
	slot     uint
	modGen   uint64 // module initialisation the slot and sessions belong to
	poolGen  uint64 // bumped to retire every idle session at once
	up       bool
	probing  bool
	nextTry  time.Time
	lastDown error
	closed   bool
	selfTest func(context.Context) error // what "able to serve" means; see SetSelfTest
	tested   time.Time                   // when selfTest last ran, and what it said
	testErr  error
	// lastEscalation is when new sessions failing last made the pool
	// re-initialise the module.
	lastEscalation time.Time
	escalating     sync.Mutex    // held by the one caller re-initialising for sessions that failed
	stopKeepAlive  chan struct{} // closed by Close
	keepAliveDone  chan struct{} // closed when keepAlive has returned
}

type session struct {
	h       pkcs11.SessionHandle
	modGen  uint64
	poolGen uint64
	// fresh is true until the session's first operation succeeds: a fresh
	// session that fails as a dead one does means the module's own
	// connection is gone, not the session.
	fresh bool
}

// Open loads the module, finds the token and logs in. Errors name the token
// and say what to fix.
func Open(ctx context.Context, cfg Config) (*Token, error) {
	if cfg.Module == "" {
		return nil, errors.New("hsm: no PKCS#11 module configured (set CUSTOS_PKCS11_MODULE or --pkcs11-module)")
	}
	if cfg.TokenLabel == "" {
		return nil, errors.New("hsm: no token label configured (set CUSTOS_TOKEN_LABEL or --token-label)")
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 250 * time.Millisecond
	}
	mod, err := loadModule(cfg.Module, cfg.InitArgs)
	if err != nil {
		return nil, err
	}
	software := softwareSlot(Intercept(mod.ck, mod.guard), cfg.TokenLabel)
	if cfg.CallThreads == 0 && software {
		cfg.CallThreads = 1
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
		if cfg.CallThreads > 0 {
			cfg.MaxSessions = cfg.CallThreads // a thread makes one call at a time
		}
	}
	sessionsMax.Set(float64(cfg.MaxSessions))
	t := &Token{
		cfg:      cfg,
		mod:      mod,
		software: software,
		ck:       mod.ck,
		log:      cfg.Logger,
		slots:    make(chan struct{}, cfg.MaxSessions),
		idle:     make(chan *session, cfg.MaxSessions),
	}
	if cfg.Wrap != nil {
		t.ck = cfg.Wrap(mod.ck)
	}
	t.ck = Intercept(t.ck, mod.guard)
	if t.log == nil {
		t.log = slog.Default()
	}
	if err := t.connect(); err != nil {
		mod.release()
		return nil, err
	}
	t.up = true
	upGauge.Set(1)
	if cfg.CallThreads > 0 {
		t.threads = startCallThreads(cfg.CallThreads)
	}
	if t.cfg.KeepAlive == 0 {
		t.cfg.KeepAlive = DefaultKeepAlive
	}
	if t.cfg.KeepAlive > 0 {
		t.stopKeepAlive, t.keepAliveDone = make(chan struct{}), make(chan struct{})
		go t.keepAlive()
	}
	return t, nil
}

// SoftwareSlot reports whether the token is in a software slot (no
// CKF_HW_SLOT): one that computes in this process's threads, as SoftHSM,
// NSS softokn and opencryptoki's soft token do, rather than over a
// network or bus.
func (t *Token) SoftwareSlot() bool { return t.software }

// MaxSessions returns the size of the session pool: the most operations
// that run on the token at once.
func (t *Token) MaxSessions() int { return t.cfg.MaxSessions }

// CallThreads returns how many threads of the Token's own make its calls;
// zero means its callers make them.
func (t *Token) CallThreads() int { return max(t.cfg.CallThreads, 0) }

// Label returns the token's label.
func (t *Token) Label() string { return t.cfg.TokenLabel }

// connect finds the slot by label and logs in on a fresh session, which it
// leaves in the pool. It re-initialises the module once if the token is not
// visible, since tokens created after C_Initialize are not.
func (t *Token) connect() error {
	if err := t.reconnect(); err != nil {
		if !errors.Is(err, errNoToken) && classify(err) != reinit {
			return err
		}
		if rerr := t.reinitialise(t.mod.generation()); rerr != nil {
			return rerr
		}
		if err := t.reconnect(); err != nil {
			return err
		}
	}
	t.slots <- struct{}{}
	s, err := t.newSession()
	if err != nil {
		<-t.slots
		return err
	}
	t.idle <- s
	sessionsGauge.WithLabelValues("idle").Inc()
	return nil
}

// reconnect finds the slot again under the module's current initialisation
// and retires every pooled session.
func (t *Token) reconnect() error {
	gen := t.mod.generation()
	slot, err := t.findSlot()
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.slot, t.modGen = slot, gen
	t.poolGen++
	t.mu.Unlock()
	t.epoch.Add(1)
	return nil
}

// Reread re-initialises the module, so that what is read next comes from
// the token rather than from the module's memory of it: an administrative
// command checks with it that a key it made was kept (keystore/p11). Calls
// in flight finish first; sessions and object handles are made again.
func (t *Token) Reread(ctx context.Context) error {
	if err := t.reinitialise(t.mod.generation()); err != nil {
		return err
	}
	return t.reconnect()
}

// reinitialise re-initialises the module unless that happened since
// generation seen, once no session is in use.
func (t *Token) reinitialise(seen uint64) error {
	t.mod.ops.Lock()
	defer t.mod.ops.Unlock()
	return t.mod.reinitialise(seen, t.ck)
}

var errNoToken = errors.New("no such token")

func (t *Token) findSlot() (uint, error) {
	s, labels, err := slotOf(t.ck, t.cfg.TokenLabel)
	if errors.Is(err, errNoToken) {
		return 0, fmt.Errorf("hsm: %w: no token labelled %q in %s (tokens present: %s)",
			errNoToken, t.cfg.TokenLabel, t.cfg.Module, strings.Join(append(labels, "none")[:max(len(labels), 1)], ", "))
	}
	return s, err
}

// slotOf returns the slot of the token labelled label or, if no present
// token has that label, errNoToken and the labels there are, quoted.
func slotOf(ck Cryptoki, label string) (slot uint, labels []string, err error) {
	slots, err := ck.GetSlotList(true)
	if err != nil {
		return 0, nil, err
	}
	for _, s := range slots {
		info, err := ck.GetTokenInfo(s)
		if err != nil {
			continue
		}
		l := strings.TrimRight(info.Label, " \x00")
		if l == label {
			return s, nil, nil
		}
		if l != "" {
			labels = append(labels, fmt.Sprintf("%q", l))
		}
	}
	return 0, labels, errNoToken
}

// newSession opens a session on the current slot and makes sure the
// application is logged in. Closing all sessions logs an application out
// without telling anyone, so this checks instead of assuming.
func (t *Token) newSession() (*session, error) {
	// The module's own generation, read before the session is opened: a
	// session opened across a re-initialisation is then taken for stale,
	// the safe side, where the pool's record of it (modGen, set once the
	// slot is found again) lags and would let an old session's handle be
	// lent out after it was numbered anew for another.
	gen := t.mod.generation()
	t.mu.Lock()
	s := &session{modGen: gen, poolGen: t.poolGen, fresh: true}
	slot := t.slot
	t.mu.Unlock()
	t.mod.ops.RLock()
	defer t.mod.ops.RUnlock()
	h, err := t.ck.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, err
	}
	if _, err := t.ensureLogin(h); err != nil {
		t.ck.CloseSession(h)
		return nil, err
	}
	s.h = h
	return s, nil
}

// ensureLogin logs the application in unless the session shows it already
// is. It reports whether it logged in.
func (t *Token) ensureLogin(h pkcs11.SessionHandle) (bool, error) {
	info, err := t.ck.GetSessionInfo(h)
	if err != nil {
		return false, err
	}
	if info.State == pkcs11.CKS_RW_USER_FUNCTIONS || info.State == pkcs11.CKS_RO_USER_FUNCTIONS {
		return false, nil
	}
	// Handles of private objects do not survive a logout on every token
	// (SoftHSM renumbers them): they are found again. The epoch moves
	// before the login, so that no caller can see the application logged
	// in again and still hold the epoch of the old handles.
	t.epoch.Add(1)
	err = t.ck.Login(h, pkcs11.CKU_USER, t.cfg.PIN)
	switch {
	case err == nil:
		return true, nil
	case Is(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN):
		return false, nil
	case Is(err, pkcs11.CKR_PIN_INCORRECT), Is(err, pkcs11.CKR_PIN_LEN_RANGE), Is(err, pkcs11.CKR_PIN_INVALID):
		return false, fmt.Errorf("hsm: logging in to token %q: the PIN was refused (%s); check CUSTOS_PIN or CUSTOS_PIN_FILE", t.cfg.TokenLabel, reason(err))
	case Is(err, pkcs11.CKR_PIN_LOCKED):
		return false, fmt.Errorf("hsm: logging in to token %q: the PIN is locked after too many wrong attempts; the token's security officer must unlock it", t.cfg.TokenLabel)
	}
	return false, fmt.Errorf("hsm: logging in to token %q: %w", t.cfg.TokenLabel, err)
}

// Session is a PKCS#11 session lent to one operation. It must not be kept
// or shared after the operation returns.
type Session struct {
	t *Token
	s *session
}

// Epoch identifies the period in which object handles stay valid: it
// changes when the module is initialised again or a handle was found stale.
// Callers that cache handles key them by it.
func (s *Session) Epoch() uint64 { return s.t.epoch.Load() }

// Do runs fn on a session of its own and records its duration and errors
// under op. Failures of the session, the login or the module are recovered
// from and fn is tried again, up to twice; errors that belong to the
// operation itself are returned as they are. If the token cannot be
// reached, Do returns an error wrapping exchange.ErrKeystoreUnavailable
// without waiting.
//
// fn must not call Do: it would wait for the call thread it runs on, or
// hold two sessions, and a full pool deadlocks.
func (t *Token) Do(ctx context.Context, op string, fn func(*Session) error) error {
	start := time.Now()
	var err error
	if t.threads != nil {
		err = t.threads.do(ctx, func() error { return t.do(ctx, fn) })
	} else {
		err = t.do(ctx, fn)
	}
	opDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil {
		opErrors.WithLabelValues(op, reason(err)).Inc()
	}
	return err
}

func (t *Token) do(ctx context.Context, fn func(*Session) error) error {
	var err error
	retried := false // a transient failure was tried again already
	// One fault can take several recoveries, met one at a time by callers
	// racing each other: C_CloseAllSessions kills the sessions, logs the
	// application out and, on SoftHSM, renumbers every object handle.
	attempts := 3
	for attempt := 0; attempt < attempts; attempt++ {
		var s *session
		if s, err = t.acquire(ctx); err != nil {
			return err
		}
		ran, ferr := t.run(s, fn)
		if !ran {
			// The module was re-initialised since the session was lent,
			// by a caller that met a fault or re-read the token: its
			// handle now names nothing, or another caller's new session.
			// Once more, on a new one.
			t.discard(s)
			err = errStaleSession
			attempts = min(attempts+1, 6)
			continue
		}
		if err = ferr; err == nil {
			s.fresh = false
			t.release(s)
			return nil
		}
		switch classify(err) {
		case keep:
			t.release(s)
			return err
		case newSession:
			if s.fresh {
				// A session opened for this very call is dead already:
				// the module's connection to the device is gone (YubiHSM
				// 2 closes its device session after ~30 s idle; a remote
				// module's server restarted), and only re-initialising
				// the module makes sessions that work.
				t.discard(s)
				if rerr := t.escalate(s.modGen, err); rerr != nil {
					return t.markDown(rerr)
				}
				// The sessions of before the re-initialisation may still
				// meet this caller once each: one more try for it.
				attempts = min(attempts+1, 6)
				continue
			}
			t.retire(s)
		case transient:
			// Tried once more; a second failure is the operation's own:
			// retrying it more would let one bad request cost the token
			// many calls. The session is kept: if it is gone, its next
			// call says so, and closing the last one would log the
			// application out.
			t.release(s)
			if retried {
				return err
			}
			retried = true
		case relogin, refind:
			// A logged-out application sees its private objects vanish
			// rather than being refused, so a missing object is also a
			// reason to check the login before finding handles again.
			t.epoch.Add(1)
			var loggedIn bool
			ran, lerr := t.onSession(s, func() (err error) {
				loggedIn, err = t.ensureLogin(s.h)
				return err
			})
			switch {
			case !ran || classify(lerr) == newSession:
				t.retire(s) // closed while we looked
				continue
			case lerr != nil:
				t.release(s)
				return t.markDown(lerr)
			}
			t.release(s)
			if loggedIn {
				reconnects.WithLabelValues(reasonLogout).Inc()
				t.log.Warn("hsm: the application was logged out; logged in again", "token", t.cfg.TokenLabel)
			}
		case reinit:
			t.discard(s)
			if rerr := t.reinitialise(s.modGen); rerr != nil {
				return t.markDown(rerr)
			}
			if rerr := t.reconnect(); rerr != nil {
				return t.markDown(rerr)
			}
			reconnects.WithLabelValues(reasonFinalized).Inc()
			t.log.Warn("hsm: the module was finalized; initialised it again", "token", t.cfg.TokenLabel)
		case down:
			t.discard(s)
			// A module finalized behind the pool's back can answer so too
			// (NSS softokn: CKR_SLOT_ID_INVALID): re-initialising it once
			// tells that from an outage. Not for the device codes of an
			// outage: calls in flight would hold the re-initialisation,
			// and everyone behind it, until they time out.
			if !Is(err, pkcs11.CKR_SLOT_ID_INVALID) {
				return t.markDown(err)
			}
			if rerr := t.escalate(s.modGen, err); rerr == nil {
				attempts = min(attempts+1, 6)
				continue
			}
			return t.markDown(err)
		}
	}
	if c := classify(err); c == refind || c == transient {
		return err // the object is really not there, or the call really fails
	}
	return t.markDown(err)
}

// escalate re-initialises the module because new sessions die as old ones
// did, at most once per RetryInterval: a module that keeps failing after
// that is down, and the probe takes it from there.
func (t *Token) escalate(gen uint64, cause error) error {
	// One caller re-initialises; the others that met the same dead
	// generation meanwhile wait for it, then find the generation moved on
	// and only reconnect. Without the wait they saw the re-initialisation
	// of a moment ago, took it for a module that keeps failing, and
	// marked the token down.
	t.escalating.Lock()
	defer t.escalating.Unlock()
	if t.mod.generation() != gen {
		return t.reconnect() // re-initialised since this failure began: just try again
	}
	t.mu.Lock()
	if !t.lastEscalation.IsZero() && time.Since(t.lastEscalation) < t.cfg.RetryInterval {
		t.mu.Unlock()
		return fmt.Errorf("hsm: new sessions keep failing (%w) though the module was re-initialised a moment ago", cause)
	}
	t.lastEscalation = time.Now()
	t.mu.Unlock()
	if err := t.reinitialise(gen); err != nil {
		return err
	}
	if err := t.reconnect(); err != nil {
		return err
	}
	reconnects.WithLabelValues(reasonSessionsFailing).Inc()
	t.log.Warn("hsm: new sessions failed as the old ones did; re-initialised the module", "token", t.cfg.TokenLabel, "reason", reason(cause))
	return nil
}

// retire drops a session that is gone. Sessions die together
// (C_CloseAllSessions, a token reset), so the idle ones are retired too
// rather than met one by one, and so are the handles seen through them.
func (t *Token) retire(s *session) {
	t.discard(s)
	t.mu.Lock()
	t.poolGen++
	t.mu.Unlock()
	t.epoch.Add(1)
}

// acquire lends a session: an idle one, a new one if the bound allows, or
// the next one released. It fails at once while the token is down, except
// for the one caller allowed to probe it.
func (t *Token) acquire(ctx context.Context) (*session, error) {
	if err := t.admit(); err != nil {
		return nil, err
	}
	for {
		var s *session
		select {
		case s = <-t.idle: // an idle session first, before opening another
		default:
			select {
			case s = <-t.idle:
			case t.slots <- struct{}{}:
				s, err := t.openSession()
				if err != nil {
					<-t.slots
					return nil, err
				}
				sessionsGauge.WithLabelValues("busy").Inc()
				return s, nil
			case <-ctx.Done():
				return nil, fmt.Errorf("%w: no session free in time: %w", exchange.ErrKeystoreUnavailable, ctx.Err())
			}
		}
		sessionsGauge.WithLabelValues("idle").Dec()
		if t.stale(s) {
			t.closeSession(s)
			<-t.slots
			continue
		}
		sessionsGauge.WithLabelValues("busy").Inc()
		return s, nil
	}
}

func (t *Token) stale(s *session) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return s.modGen != t.mod.generation() || s.poolGen != t.poolGen
}

// openSession opens a pool session, initialising the module again first if
// it was finalized behind the pool's back.
func (t *Token) openSession() (*session, error) {
	t.mu.Lock()
	gen := t.modGen // what the sessions about to fail belong to
	t.mu.Unlock()
	s, err := t.newSession()
	switch classify(err) {
	case newSession, relogin:
		// Sessions closed all at once (or a logout) can catch one opened
		// a moment before, between its opening and its login check.
		s, err = t.newSession()
		if classify(err) == newSession {
			// New sessions die as soon as they are made.
			if rerr := t.escalate(gen, err); rerr != nil {
				return nil, t.markDown(rerr)
			}
			s, err = t.newSession()
		}
	case reinit:
		if rerr := t.reinitialise(gen); rerr != nil {
			return nil, t.markDown(rerr)
		}
		if rerr := t.reconnect(); rerr != nil {
			return nil, t.markDown(rerr)
		}
		reconnects.WithLabelValues(reasonFinalized).Inc()
		s, err = t.newSession()
	case down:
		// Or the module was finalized behind the pool's back and says so
		// this way (NSS softokn: CKR_SLOT_ID_INVALID).
		if Is(err, pkcs11.CKR_SLOT_ID_INVALID) && t.escalate(gen, err) == nil {
			s, err = t.newSession()
		}
	}
	if err != nil {
		return nil, t.markDown(err)
	}
	return s, nil
}

// admit decides whether a call may use the token now.
func (t *Token) admit() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.closed:
		return unavailable(errClosed)
	case t.up:
		return nil
	case t.probing || time.Now().Before(t.nextTry):
		return unavailable(t.lastDown)
	}
	t.probing = true
	go t.probe()
	return unavailable(t.lastDown)
}

// markDown records an outage: calls fail fast until a probe succeeds.
func (t *Token) markDown(cause error) error {
	t.mu.Lock()
	wasUp := t.up && !t.closed
	t.up = false
	t.lastDown = cause
	t.nextTry = time.Now().Add(t.cfg.RetryInterval)
	t.mu.Unlock()
	if wasUp {
		upGauge.Set(0)
		t.log.Error("hsm: token unavailable", "token", t.cfg.TokenLabel, "reason", reason(cause))
	}
	return unavailable(cause)
}

// probe tries to reach the token again: find the slot and log in on a new
// session, initialising the module again only if that is what it takes.
func (t *Token) probe() {
	err := t.reconnect()
	if err != nil {
		if err = t.reinitialise(t.mod.generation()); err == nil {
			err = t.reconnect()
		}
	}
	var s *session
	if err == nil {
		s, err = t.newSession()
	}
	t.mu.Lock()
	t.probing = false
	if err == nil && t.closed {
		t.closeSession(s)
		err = unavailable(errClosed)
	}
	if err != nil {
		t.lastDown = err
		t.nextTry = time.Now().Add(t.cfg.RetryInterval)
		t.mu.Unlock()
		return
	}
	t.up = true
	t.mu.Unlock()
	// The probe's session takes a pool slot if one is free.
	select {
	case t.slots <- struct{}{}:
		t.idle <- s
		sessionsGauge.WithLabelValues("idle").Inc()
	default:
		t.closeSession(s)
	}
	reconnects.WithLabelValues(reasonOutage).Inc()
	t.log.Info("hsm: token reachable again", "token", t.cfg.TokenLabel)
	// Reachable is not yet able to serve: the self-test says so (a
	// re-initialised module may have come back without a mechanism).
	t.checkServing(context.Background())
}

// SetSelfTest installs what "able to serve" means beyond answering calls:
// Healthy runs it, so does every recovery, and custos_hsm_up is 1 only
// while it passes. The keystore sets it to a derive against a known peer
// and a seal/open round trip.
func (t *Token) SetSelfTest(f func(context.Context) error) {
	t.mu.Lock()
	t.selfTest = f
	t.mu.Unlock()
}

// checkServing runs the self-test, if there is one, and sets custos_hsm_up
// by it.
func (t *Token) checkServing(ctx context.Context) error {
	t.mu.Lock()
	f := t.selfTest
	t.mu.Unlock()
	var err error
	if f != nil {
		if err = f(ctx); err != nil {
			if ctx.Err() != nil {
				// The prober gave up, maybe while the test waited its
				// turn behind the exchanges: that says nothing of the token.
				return err
			}
			err = fmt.Errorf("hsm: the token answers but fails its self-test: %w", err)
		}
	}
	t.mu.Lock()
	t.tested, t.testErr = time.Now(), err
	t.mu.Unlock()
	if err != nil {
		upGauge.Set(0)
	} else {
		upGauge.Set(1)
	}
	return err
}

func (t *Token) release(s *session) {
	sessionsGauge.WithLabelValues("busy").Dec()
	t.idle <- s
	sessionsGauge.WithLabelValues("idle").Inc()
}

// onSession runs f, which uses s's handle, unless the module has been
// initialised again since s was opened: its handle then names nothing, or,
// numbered afresh, another caller's new session, and f would run on that
// session beside its owner (SoftHSM answers CKR_OPERATION_ACTIVE, or
// crashes). The module's ops lock, held shared, keeps a re-initialisation
// out until f returns. It reports whether f ran.
func (t *Token) onSession(s *session, f func() error) (ran bool, err error) {
	t.mod.ops.RLock()
	defer t.mod.ops.RUnlock()
	if s.modGen != t.mod.generation() {
		return false, nil
	}
	return true, f()
}

// run runs fn on s (onSession). A panic in fn goes on to its caller, but
// not with s: an operation may be left active on it, and a pool that lent
// it out forever would, at one session, have none left.
func (t *Token) run(s *session, fn func(*Session) error) (ran bool, err error) {
	returned := false
	defer func() {
		if !returned {
			t.discard(s)
		}
	}()
	ran, err = t.onSession(s, func() error { return fn(&Session{t: t, s: s}) })
	returned = true
	return ran, err
}

// errStaleSession stands for the answer a session of an earlier
// initialisation would get: it is retired, never used.
var errStaleSession error = pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)

// closeSession closes a pool session, unless the module has been
// initialised again since it was opened.
func (t *Token) closeSession(s *session) {
	t.onSession(s, func() error { return t.ck.CloseSession(s.h) })
}

// discard drops a session that failed; its slot frees up for a new one.
func (t *Token) discard(s *session) {
	sessionsGauge.WithLabelValues("busy").Dec()
	t.closeSession(s) // usually already invalid
	<-t.slots
}

// Healthy reports whether the token can serve now, for a readiness probe:
// it answers a cheap call on an idle session, and passes the self-test
// (SetSelfTest) if there is one.
func (t *Token) Healthy(ctx context.Context) error {
	err := t.Do(ctx, "health", func(s *Session) error {
		_, err := s.t.ck.GetSessionInfo(s.s.h)
		return err
	})
	if err != nil {
		return err
	}
	t.mu.Lock()
	at, last := t.tested, t.testErr
	t.mu.Unlock()
	if time.Since(at) < selfTestFresh {
		return last
	}
	return t.checkServing(ctx)
}

// selfTestFresh is how long Healthy trusts the last self-test: balancers
// probe readiness every 100 ms or so, each of them, and a self-test costs
// a derive and a seal/open on the token.
const selfTestFresh = time.Second

// Close closes the pool's sessions and releases the module; the last Token
// of a module finalizes it. Operations in flight must have returned.
func (t *Token) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.mu.Unlock()
	if t.threads != nil {
		close(t.threads.stop)
	}
	if t.stopKeepAlive != nil {
		close(t.stopKeepAlive)
		<-t.keepAliveDone // it may hold an idle session
	}
	for {
		select {
		case s := <-t.idle:
			sessionsGauge.WithLabelValues("idle").Dec()
			t.closeSession(s)
			<-t.slots
			continue
		default:
		}
		break
	}
	return t.mod.release()
}

// keepAlive makes a cheap call on every idle session each KeepAlive, so
// that none stays idle long enough for a device to close it. A session
// found dead is retired, as a failed operation's would be.
func (t *Token) keepAlive() {
	defer close(t.keepAliveDone)
	tick := time.NewTicker(t.cfg.KeepAlive)
	defer tick.Stop()
	for {
		select {
		case <-t.stopKeepAlive:
			return
		case <-tick.C:
		}
		for range len(t.idle) {
			var s *session
			select {
			case s = <-t.idle:
			default:
			}
			if s == nil {
				break // all in use now
			}
			sessionsGauge.WithLabelValues("idle").Dec()
			sessionsGauge.WithLabelValues("busy").Inc()
			err := errStaleSession // its handle may name another's session now
			if !t.stale(s) {
				t.onSession(s, func() error {
					_, err = t.ck.GetSessionInfo(s.h)
					return err
				})
			}
			if err != nil && classify(err) != keep {
				t.retire(s)
				continue
			}
			t.release(s)
		}
	}
}

// Slot returns the token's current slot id, for diagnostics and for fault
// tests; never configure by it.
func (t *Token) Slot() uint {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.slot
}
