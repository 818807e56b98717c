package p11

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"encoding/json"
	"errors"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/keystore"
	"github.com/custos-kx/custos/softhsm"
)

type fixture struct {
	cfg hsm.Config // the token, without Wrap
	tok *hsm.Token
	ks  *Keystore
	// ck is the module's calls as the pool makes them: the tests use it
	// as any other program on the machine could, on sessions of their own.
	ck hsm.Cryptoki
	// sealing is how the token's ticket keys seal, by its self-test.
	sealing ticket.Scheme
	// profiles are those the token serves (all, unless forEachToken says).
	profiles []exchange.Profile
	// slow tokens run a tenth of the load tests' operations: NSS's
	// database takes about 10 ms for each here.
	slow bool
}

func openTok(t *testing.T, st *softhsm.Token) *hsm.Token {
	t.Helper()
	return openTokWith(t, st, nil)
}

func openTokWith(t *testing.T, st *softhsm.Token, wrap func(hsm.Cryptoki) hsm.Cryptoki) *hsm.Token {
	t.Helper()
	return openCfg(t, hsm.Config{Module: st.Module, TokenLabel: st.Label, PIN: st.PIN}, wrap)
}

func openCfg(t *testing.T, cfg hsm.Config, wrap func(hsm.Cryptoki) hsm.Cryptoki) *hsm.Token {
	t.Helper()
	cfg.Wrap = wrap
	tok, err := hsm.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	return tok
}

// testTokens are the PKCS#11 implementations the keystore's tests run on:
// each makes a fresh token for one test and says how it seals.
var testTokens = []struct {
	name     string
	make     func(t *testing.T) hsm.Config
	sealing  ticket.Scheme
	slow     bool
	profiles []exchange.Profile // what the token serves
}{
	{"softhsm", func(t *testing.T) hsm.Config {
		st := softhsm.New(t)
		return hsm.Config{Module: st.Module, TokenLabel: st.Label, PIN: st.PIN}
	}, ticket.GCM, false, exchange.Profiles},
	{"nss", func(t *testing.T) hsm.Config {
		n := softhsm.NewNSS(t)
		return hsm.Config{Module: n.Module, InitArgs: n.InitArgs, TokenLabel: n.Label, PIN: n.PIN}
	}, ticket.CBCHMAC, true, exchange.Profiles},
	// opencryptoki's soft token has DH but no EC and no AES-GCM.
	{"opencryptoki", func(t *testing.T) hsm.Config {
		o := softhsm.NewOpenCryptoki(t)
		return hsm.Config{Module: o.Module, TokenLabel: o.Label, PIN: o.PIN}
	}, ticket.CBCHMAC, true, []exchange.Profile{exchange.ModP2048}},
}

// forEachToken runs test on a fresh, initialised keystore of each
// implementation.
func forEachToken(t *testing.T, test func(t *testing.T, f *fixture)) {
	for _, tk := range testTokens {
		t.Run(tk.name, func(t *testing.T) {
			f := newFixtureOn(t, tk.make(t), tk.sealing)
			f.slow, f.profiles = tk.slow, tk.profiles
			test(t, f)
		})
	}
}

// serves reports whether the fixture's token serves p.
func (f *fixture) serves(p exchange.Profile) bool {
	return f.profiles == nil || slices.Contains(f.profiles, p)
}

// servedProfiles are the profiles the fixture's token serves.
func (f *fixture) servedProfiles() []exchange.Profile {
	if f.profiles == nil {
		return exchange.Profiles
	}
	return f.profiles
}

// refuses reports whether the fixture's token lacks the mechanisms of p,
// having checked that the keystore then refuses p as not served.
func (f *fixture) refuses(t *testing.T, p exchange.Profile) bool {
	t.Helper()
	if f.serves(p) {
		return false
	}
	if _, err := f.ks.Credential(context.Background(), p); !errors.Is(err, exchange.ErrProfileNotServed) {
		t.Fatalf("a token without the mechanisms of %s: its credential is %v, want ErrProfileNotServed", p, err)
	}
	return true
}

// newFixture is an initialised keystore on a SoftHSM token.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureOn(t, testTokens[0].make(t), testTokens[0].sealing)
}

func newFixtureOn(t *testing.T, cfg hsm.Config, sealing ticket.Scheme) *fixture {
	t.Helper()
	f := &fixture{cfg: cfg, sealing: sealing}
	f.tok = openCfg(t, cfg, func(ck hsm.Cryptoki) hsm.Cryptoki { f.ck = ck; return ck })
	ks, err := Open(context.Background(), f.tok)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.ks = ks
	return f
}

// session opens a logged-in session of the test's own on the token, as a
// program other than Custos holding the PIN would.
func (f *fixture) session(t *testing.T) pkcs11.SessionHandle {
	t.Helper()
	sh, err := f.ck.OpenSession(f.tok.Slot(), pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ck.Login(sh, pkcs11.CKU_USER, f.cfg.PIN); err != nil && !hsm.Is(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		t.Fatal(err)
	}
	return sh
}

func TestInitIsIdempotent(t *testing.T) { forEachToken(t, testInitIsIdempotent) }

func testInitIsIdempotent(t *testing.T, f *fixture) {
	ctx := context.Background()
	x1, _ := f.ks.Credential(ctx, exchange.ModP2048)
	active, err := f.ks.Init(ctx)
	if err != nil || len(active) != len(f.servedProfiles()) || active[0].ID != x1.KeyID() {
		t.Fatalf("second Init: %+v err %v, want %s first", active, err, x1.KeyID())
	}
	if !f.serves(exchange.P256) {
		keys, _ := f.ks.Keys(ctx)
		if len(keys) != 2 || keys[0].Profile != exchange.ModP2048 || keys[1].Kind != keystore.KindTicket {
			t.Fatalf("inventory after two Inits on a token without EC: %+v", keys)
		}
		return
	}
	e1, _ := f.ks.Credential(ctx, exchange.P256)
	if active[1].ID != e1.KeyID() {
		t.Fatalf("second Init: %+v, want %s second", active, e1.KeyID())
	}
	// A fresh process (here: a fresh keystore on the same token) sees the same keys.
	ks2, err := Open(ctx, f.tok)
	if err != nil {
		t.Fatal(err)
	}
	x2, _ := ks2.Credential(ctx, exchange.ModP2048)
	e2, _ := ks2.Credential(ctx, exchange.P256)
	if !x1.Equal(x2) || !e1.Equal(e2) {
		t.Fatal("credential changed across reopen")
	}
	keys, _ := ks2.Keys(ctx)
	if len(keys) != 3 || !keys[0].Active || !keys[1].Active || !keys[2].Active || keys[0].Profile != exchange.ModP2048 || keys[1].Profile != exchange.P256 {
		t.Fatalf("inventory after two Inits: %+v", keys)
	}
}

func TestEmptyTokenSaysToInit(t *testing.T) {
	st := softhsm.New(t)
	ks, err := Open(context.Background(), openTok(t, st))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Credential(context.Background(), exchange.ModP2048); !errors.Is(err, ErrNoKeys) || !errors.Is(err, exchange.ErrKeystoreUnavailable) {
		t.Fatalf("err = %v", err)
	}
	if _, err := ticket.Seal(context.Background(), ks, rand.Reader, []byte("x")); !errors.Is(err, ErrNoKeys) {
		t.Fatalf("err = %v", err)
	}
}

func TestDeriveMatchesPublicKey(t *testing.T) { forEachToken(t, testDeriveMatchesPublicKey) }

func testDeriveMatchesPublicKey(t *testing.T, f *fixture) {
	ctx := context.Background()
	X, _ := f.ks.Credential(ctx, exchange.ModP2048)
	p := group.P()
	for i := 0; i < 200; i++ {
		k, _ := group.GenerateScalar(rand.Reader)
		peer := exchange.DHKey(k.Public())
		got, err := f.ks.Derive(ctx, X.KeyID(), peer)
		if err != nil {
			t.Fatal(err)
		}
		want := new(big.Int).Exp(X.DH().Int(), new(big.Int).SetBytes(k.Bytes()), p).FillBytes(make([]byte, 256))
		if !bytes.Equal(got, want) {
			t.Fatalf("peer %d: derive differs from math/big", i)
		}
	}
	if _, err := f.ks.Derive(ctx, "MAAAA-AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", X); err == nil || errors.Is(err, exchange.ErrKeystoreUnavailable) {
		t.Fatalf("unknown kid: %v", err)
	}
	E, err := f.ks.Credential(ctx, exchange.P256)
	if err != nil {
		return // a token without EC
	}
	for i := 0; i < 100; i++ {
		k, _ := ecdh.P256().GenerateKey(rand.Reader)
		pt, _ := p256.FromECDH(k.PublicKey())
		got, err := f.ks.Derive(ctx, E.KeyID(), exchange.ECDHKey(pt))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := k.ECDH(E.Point().ECDH())
		if !bytes.Equal(got, want) {
			t.Fatalf("peer %d: P-256 derive differs from crypto/ecdh", i)
		}
	}
	if _, err := f.ks.Derive(ctx, E.KeyID(), X); err == nil || errors.Is(err, exchange.ErrKeystoreUnavailable) {
		t.Fatalf("a group-14 peer for the P-256 credential: %v", err)
	}
}

// TestEngineOnToken runs whole exchanges and rekeys with the service's keys
// in the token and checks both sides agree.
func TestEngineOnToken(t *testing.T) { forEachToken(t, testEngineOnToken) }

func testEngineOnToken(t *testing.T, f *fixture) {
	ctx := context.Background()
	srv := &exchange.Server{Keystore: f.ks, Accounts: enabledAccounts{}}
	var served []exchange.Profile // both, but for a token without EC
	for _, p := range exchange.Profiles {
		if _, err := f.ks.Credential(ctx, p); err == nil {
			served = append(served, p)
		}
	}
	for i := 0; i < 40; i++ {
		key, _ := exchange.GenerateClientKey(rand.Reader, served[i%len(served)])
		pending, msg, _ := key.NewExchange(rand.Reader, nil)
		req, err := exchange.ParseRequest(msg)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Exchange(ctx, req, "alice@example.com")
		if err != nil {
			t.Fatal(err)
		}
		sess, err := pending.Finish(resp)
		if err != nil {
			t.Fatal(err)
		}
		st := openSession(t, f.ks, sess.Ticket)
		if !hmac.Equal(st.AK[:], sess.AK[:]) || !hmac.Equal(st.RK[:], sess.RK[:]) || st.Profile != uint8(key.Profile()) {
			t.Fatalf("client and token-backed server disagree (%s)", key.Profile())
		}
		pr, rmsg, _ := sess.NewRekey(rand.Reader, nil)
		body, _ := json.Marshal(rmsg)
		auth, _ := sess.SignRekey(body, time.Now())
		rresp, _, err := srv.Rekey(ctx, &exchange.SignedRequest{Method: "POST", Target: exchange.WellKnown, Authorization: auth, Header: exchange.RekeyHeader, Body: body}, nil)
		if err != nil {
			t.Fatal(err)
		}
		next, err := pr.Finish(rresp)
		if err != nil {
			t.Fatal(err)
		}
		st2 := openSession(t, f.ks, next.Ticket)
		if !hmac.Equal(st2.EK[:], next.EK[:]) || st2.Generation != 1 || st2.Profile != st.Profile {
			t.Fatal("rekey through the token disagrees")
		}
	}
}

// enabledAccounts is a registry in which every credential belongs to the
// enabled account alice@example.com.
type enabledAccounts struct{}

func (enabledAccounts) Owner(context.Context, string) (string, bool, error) {
	return "alice@example.com", false, nil
}

// MarkRenewed lets every ticket be renewed: these tests rekey each once.
func (enabledAccounts) MarkRenewed(context.Context, []byte, time.Time) (bool, error) {
	return true, nil
}

// openSession opens a ticket with the token's key and decodes it.
func openSession(t *testing.T, ks *Keystore, tk []byte) *ticket.Session {
	t.Helper()
	pt, err := ticket.Open(context.Background(), ks, tk)
	if err != nil {
		t.Fatal(err)
	}
	st := new(ticket.Session)
	if err := st.UnmarshalBinary(pt); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestTicketTamper(t *testing.T) { forEachToken(t, testTicketTamper) }

func testTicketTamper(t *testing.T, f *fixture) {
	ctx := context.Background()
	pt := []byte("account, kid, times and session keys")
	tk, err := ticket.Seal(ctx, f.ks, rand.Reader, pt)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ticket.Open(ctx, f.ks, tk); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("open: %v", err)
	}
	for i := range tk {
		bad := bytes.Clone(tk)
		bad[i] ^= 0x80
		if _, err := ticket.Open(ctx, f.ks, bad); !errors.Is(err, ticket.ErrInvalid) {
			t.Fatalf("byte %d flipped: %v", i, err)
		}
	}
	if err := f.tok.Healthy(ctx); err != nil {
		t.Fatal("forged tickets took the token down")
	}
}

func TestRotationAndPrune(t *testing.T) { forEachToken(t, testRotationAndPrune) }

func testRotationAndPrune(t *testing.T, f *fixture) {
	ctx := context.Background()
	now := time.Now()
	f.ks.Now = func() time.Time { return now }
	oldTicket, _ := ticket.Seal(ctx, f.ks, rand.Reader, []byte("old"))
	oldCred, _ := f.ks.Credential(ctx, exchange.ModP2048)

	now = now.Add(2 * time.Hour)
	info, err := f.ks.RotateTicketKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	newTicket, _ := ticket.Seal(ctx, f.ks, rand.Reader, []byte("new"))
	if bytes.Equal(oldTicket[1:9], newTicket[1:9]) || info.ID == "" {
		t.Fatal("rotation did not change the sealing key")
	}
	if _, err := ticket.Open(ctx, f.ks, oldTicket); err != nil {
		t.Fatalf("old ticket after rotation: %v", err)
	}
	cinfo, err := f.ks.RotateCredential(ctx, exchange.ModP2048)
	if err != nil {
		t.Fatal(err)
	}
	newCred, _ := f.ks.Credential(ctx, exchange.ModP2048)
	if newCred.Equal(oldCred) || cinfo.ID != newCred.KeyID() {
		t.Fatal("credential rotation did not change the credential")
	}
	// The old credential still derives until it is pruned.
	if _, err := f.ks.Derive(ctx, oldCred.KeyID(), newCred); err != nil {
		t.Fatal(err)
	}

	// Keys are pruned by the time they stopped being active, not by their
	// age: made two hours ago, retired just now, they stay.
	pruned, err := f.ks.Prune(ctx, time.Hour, false)
	if err != nil || len(pruned) != 0 {
		t.Fatalf("pruned keys retired a moment ago: %+v, %v", pruned, err)
	}
	now = now.Add(2 * time.Hour) // retired two hours ago
	if pruned, err = f.ks.Prune(ctx, 3*time.Hour, false); err != nil || len(pruned) != 0 {
		t.Fatalf("pruned %v, %v", pruned, err)
	}
	// A dry run names what would go and deletes nothing.
	if pruned, err = f.ks.Prune(ctx, time.Hour, true); err != nil || len(pruned) != 2 {
		t.Fatalf("dry run: %+v, %v", pruned, err)
	}
	if _, err := ticket.Open(ctx, f.ks, oldTicket); err != nil {
		t.Fatalf("a dry run deleted a key: %v", err)
	}
	pruned, err = f.ks.Prune(ctx, time.Hour, false)
	if err != nil || len(pruned) != 2 || pruned[0].Retired.IsZero() {
		t.Fatalf("pruned %+v, %v; want the old credential and ticket key", pruned, err)
	}
	if _, err := ticket.Open(ctx, f.ks, oldTicket); !errors.Is(err, ticket.ErrInvalid) {
		t.Fatalf("ticket of a pruned key: %v", err)
	}
	if _, err := ticket.Open(ctx, f.ks, newTicket); err != nil {
		t.Fatalf("ticket of the active key: %v", err)
	}
	if _, err := f.ks.Derive(ctx, oldCred.KeyID(), newCred); err == nil || errors.Is(err, exchange.ErrKeystoreUnavailable) {
		t.Fatalf("pruned credential: %v", err)
	}
	keys, _ := f.ks.Keys(ctx)
	if len(keys) != len(f.servedProfiles())+1 {
		t.Fatalf("inventory after prune: %+v", keys)
	}
	// The active keys are never pruned, however old.
	if pruned, _ := f.ks.Prune(ctx, 0, false); len(pruned) != 0 {
		t.Fatalf("pruned active keys: %+v", pruned)
	}
}

// TestReplicasShareToken: a ticket sealed after one keystore rotated opens
// on another that has not refreshed yet.
func TestReplicasShareToken(t *testing.T) { forEachToken(t, testReplicasShareToken) }

func testReplicasShareToken(t *testing.T, f *fixture) {
	ctx := context.Background()
	other, err := Open(ctx, openCfg(t, f.cfg, nil))
	if err != nil {
		t.Fatal(err)
	}
	other.RefreshInterval = time.Hour
	if _, err := f.ks.RotateTicketKey(ctx); err != nil {
		t.Fatal(err)
	}
	tk, _ := ticket.Seal(ctx, f.ks, rand.Reader, []byte("from replica one"))
	other.mu.Lock()
	other.refreshedAt = time.Now().Add(-2 * time.Second)
	other.mu.Unlock()
	if got, err := ticket.Open(ctx, other, tk); err != nil || string(got) != "from replica one" {
		t.Fatalf("replica two: %v", err)
	}
}

func TestConcurrentKeystore(t *testing.T) { forEachToken(t, testConcurrentKeystore) }

func testConcurrentKeystore(t *testing.T, f *fixture) {
	ctx := context.Background()
	X, _ := f.ks.Credential(ctx, exchange.ModP2048)
	peer := X
	E, _ := f.ks.Credential(ctx, exchange.P256)
	ops := 500
	if testing.Short() || f.slow {
		ops = 50
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < ops; i++ {
				var err error
				switch (g + i) % 4 {
				case 0:
					_, err = f.ks.Derive(ctx, X.KeyID(), peer)
				case 3:
					if f.serves(exchange.P256) {
						_, err = f.ks.Derive(ctx, E.KeyID(), E)
					} else {
						_, err = f.ks.Derive(ctx, X.KeyID(), peer)
					}
				case 1:
					_, err = ticket.Seal(ctx, f.ks, rand.Reader, []byte("t"))
				default:
					var tk []byte
					if tk, err = ticket.Seal(ctx, f.ks, rand.Reader, []byte("t")); err == nil {
						_, err = ticket.Open(ctx, f.ks, tk)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestFaults checks the keystore's cached handles survive each recovery of
// the pool: sessions closed, a logout, the module finalized.
func TestFaults(t *testing.T) {
	faults := map[string]func(f *fixture) error{
		"close all sessions": func(f *fixture) error {
			return f.ck.CloseAllSessions(f.tok.Slot())
		},
		"logout": func(f *fixture) error {
			sh, err := f.ck.OpenSession(f.tok.Slot(), pkcs11.CKF_SERIAL_SESSION)
			if err != nil {
				return err
			}
			return f.ck.Logout(sh)
		},
		"finalize": func(f *fixture) error {
			return f.ck.Finalize()
		},
	}
	for name, fault := range faults {
		t.Run(name, func(t *testing.T) {
			forEachToken(t, func(t *testing.T, f *fixture) {
				ctx := context.Background()
				X, _ := f.ks.Credential(ctx, exchange.ModP2048)
				tk, _ := ticket.Seal(ctx, f.ks, rand.Reader, []byte("before"))
				if _, err := f.ks.Derive(ctx, X.KeyID(), X); err != nil {
					t.Fatal(err)
				}
				fault(f) // its own error is irrelevant: the session it ran on may be gone
				for i := 0; i < 10; i++ {
					if _, err := f.ks.Derive(ctx, X.KeyID(), X); err != nil {
						t.Fatalf("derive %d after %s: %v", i, name, err)
					}
					if _, err := ticket.Open(ctx, f.ks, tk); err != nil {
						t.Fatalf("open %d after %s: %v", i, name, err)
					}
					if _, err := ticket.Seal(ctx, f.ks, rand.Reader, []byte("after")); err != nil {
						t.Fatalf("seal %d after %s: %v", i, name, err)
					}
				}
			})
		})
	}
}

func TestKeysCreatedByKeystoreStayInside(t *testing.T) {
	forEachToken(t, testKeysCreatedByKeystoreStayInside)
}

func testKeysCreatedByKeystoreStayInside(t *testing.T, f *fixture) {
	sh := f.session(t)
	// The group-14 and P-256 credentials, and the ticket key.
	for _, kind := range []struct {
		class, keyType uint
		secret         uint // the attribute holding the secret
	}{
		{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_DH, pkcs11.CKA_VALUE},
		{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_EC, pkcs11.CKA_VALUE},
		{pkcs11.CKO_SECRET_KEY, pkcs11.CKK_AES, pkcs11.CKA_VALUE},
	} {
		if kind.keyType == pkcs11.CKK_EC && !f.serves(exchange.P256) {
			continue
		}
		if err := f.ck.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, kind.class), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kind.keyType)}); err != nil {
			t.Fatal(err)
		}
		hs, _, err := f.ck.FindObjects(sh, 10)
		f.ck.FindObjectsFinal(sh)
		if err != nil || len(hs) != 1 {
			t.Fatalf("key type %d: %d objects, %v", kind.keyType, len(hs), err)
		}
		for attr, want := range map[uint]byte{pkcs11.CKA_SENSITIVE: 1, pkcs11.CKA_EXTRACTABLE: 0, pkcs11.CKA_TOKEN: 1, pkcs11.CKA_PRIVATE: 1} {
			a, err := f.ck.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(attr, nil)})
			if err != nil || len(a[0].Value) != 1 || a[0].Value[0] != want {
				t.Errorf("key type %d attribute 0x%x = %v (%v)", kind.keyType, attr, a, err)
			}
		}
		if _, err := f.ck.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(kind.secret, nil)}); !hsm.Is(err, pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
			t.Errorf("key type %d: its secret is readable: %v", kind.keyType, err)
		}
	}
}

// TestPruneByRetirement: the operator's case from issue 16. A ticket key
// made 31 days ago and active until a second ago is not "older than 30
// days": pruning with a 30-day window keeps it, and the ticket it sealed
// still opens.
func TestPruneByRetirement(t *testing.T) { forEachToken(t, testPruneByRetirement) }

func testPruneByRetirement(t *testing.T, f *fixture) {
	ctx := context.Background()
	day := 24 * time.Hour
	base := time.Now()
	now := base.Add(time.Hour)
	f.ks.Now = func() time.Time { return now }
	if _, err := f.ks.RotateTicketKey(ctx); err != nil { // key A, active from here
		t.Fatal(err)
	}
	sealed, _ := ticket.Seal(ctx, f.ks, rand.Reader, []byte("a live session"))
	now = base.Add(31*day + time.Hour - time.Second)
	if _, err := f.ks.RotateTicketKey(ctx); err != nil { // A retires, 31 days after it was made
		t.Fatal(err)
	}
	now = base.Add(31*day + time.Hour)
	pruned, err := f.ks.Prune(ctx, 30*day, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range pruned {
		if k.Kind == keystore.KindTicket && now.Sub(k.Retired) < 30*day {
			t.Errorf("pruned a ticket key retired %s ago", now.Sub(k.Retired))
		}
	}
	if _, err := ticket.Open(ctx, f.ks, sealed); err != nil {
		t.Fatalf("the ticket of a key made 31 days ago and retired a second ago no longer opens: %v", err)
	}
}

// TestRotateAndPruneP256: the P-256 credential rotates and is pruned like
// the group-14 one, each profile on its own.
func TestRotateAndPruneP256(t *testing.T) { forEachToken(t, testRotateAndPruneP256) }

func testRotateAndPruneP256(t *testing.T, f *fixture) {
	if f.refuses(t, exchange.P256) {
		return
	}
	ctx := context.Background()
	now := time.Now()
	f.ks.Now = func() time.Time { return now }
	oldE, _ := f.ks.Credential(ctx, exchange.P256)
	dh, _ := f.ks.Credential(ctx, exchange.ModP2048)
	now = now.Add(time.Hour)
	info, err := f.ks.RotateCredential(ctx, exchange.P256)
	if err != nil {
		t.Fatal(err)
	}
	newE, _ := f.ks.Credential(ctx, exchange.P256)
	if newE.Equal(oldE) || info.ID != newE.KeyID() || info.Profile != exchange.P256 {
		t.Fatalf("rotation: %+v", info)
	}
	if again, _ := f.ks.Credential(ctx, exchange.ModP2048); !again.Equal(dh) {
		t.Fatal("rotating the P-256 credential changed the group-14 one")
	}
	if _, err := f.ks.Derive(ctx, oldE.KeyID(), newE); err != nil {
		t.Fatalf("the retired P-256 credential no longer derives before pruning: %v", err)
	}
	now = now.Add(2 * time.Hour)
	pruned, err := f.ks.Prune(ctx, time.Hour, false)
	if err != nil || len(pruned) != 1 || pruned[0].ID != oldE.KeyID() || pruned[0].Profile != exchange.P256 {
		t.Fatalf("pruned %+v, %v; want the old P-256 credential only", pruned, err)
	}
	if _, err := f.ks.Derive(ctx, oldE.KeyID(), newE); err == nil {
		t.Fatal("a pruned P-256 credential still derives")
	}
	if _, err := f.ks.Derive(ctx, dh.KeyID(), dh); err != nil {
		t.Fatalf("the group-14 credential after pruning: %v", err)
	}
}

// TestCBCHMACSealing: tickets sealed with AES-CBC-PAD and HMAC-SHA-256
// (forced here; chosen by itself on tokens without a working GCM) open,
// refuse every flipped byte, live beside GCM tickets across a rotation,
// and go with both their keys when pruned.
func TestCBCHMACSealing(t *testing.T) {
	f := newFixture(t) // its first ticket key is GCM
	ctx := context.Background()
	now := time.Now()
	f.ks.Now = func() time.Time { return now }
	gcmTicket, _ := ticket.Seal(ctx, f.ks, rand.Reader, []byte("sealed with GCM"))
	f.ks.Sealing = ticket.CBCHMAC
	now = now.Add(time.Hour)
	info, err := f.ks.RotateTicketKey(ctx)
	if err != nil || info.Scheme != ticket.CBCHMAC {
		t.Fatalf("rotation to CBC-HMAC: %+v, %v", info, err)
	}
	for _, n := range []int{0, 1, 15, 16, 17, 260} {
		pt := bytes.Repeat([]byte{byte(n)}, n)
		tk, err := ticket.Seal(ctx, f.ks, rand.Reader, pt)
		if err != nil {
			t.Fatal(err)
		}
		if tk[0] != byte(ticket.CBCHMAC) || len(tk) != 1+8+16+(n/16+1)*16+32 {
			t.Fatalf("%d bytes: frame %x", n, tk[:9])
		}
		if got, err := ticket.Open(ctx, f.ks, tk); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("%d bytes: open %v", n, err)
		}
		if n != 260 {
			continue
		}
		for i := range tk {
			bad := bytes.Clone(tk)
			bad[i] ^= 0x01
			if _, err := ticket.Open(ctx, f.ks, bad); !errors.Is(err, ticket.ErrInvalid) {
				t.Fatalf("byte %d flipped: %v", i, err)
			}
		}
		// The same bytes under the other version byte are refused, too.
		bad := bytes.Clone(tk)
		bad[0] = byte(ticket.GCM)
		if _, err := ticket.Open(ctx, f.ks, bad); !errors.Is(err, ticket.ErrInvalid) {
			t.Fatalf("CBC ticket relabelled GCM: %v", err)
		}
	}
	if got, err := ticket.Open(ctx, f.ks, gcmTicket); err != nil || string(got) != "sealed with GCM" {
		t.Fatalf("the GCM ticket after rotating to CBC-HMAC: %v", err)
	}
	if err := f.tok.Healthy(ctx); err != nil {
		t.Fatal("forged tickets took the token down")
	}
	// Back to GCM; then the CBC key retires and is pruned with its MAC key.
	f.ks.Sealing = ticket.GCM
	now = now.Add(time.Hour)
	f.ks.RotateTicketKey(ctx)
	now = now.Add(2 * time.Hour)
	pruned, err := f.ks.Prune(ctx, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	sh := f.session(t)
	if err := f.ck.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}); err != nil {
		t.Fatal(err)
	}
	left, _, _ := f.ck.FindObjects(sh, 10)
	f.ck.FindObjectsFinal(sh)
	if len(pruned) != 2 || len(left) != 0 {
		t.Fatalf("pruned %+v; %d HMAC keys left", pruned, len(left))
	}
}

// TestHMACKeyStaysInside: the MAC key of CBC sealing is sensitive, not
// extractable, and may only sign.
func TestHMACKeyStaysInside(t *testing.T) {
	f := newFixture(t)
	f.ks.Sealing = ticket.CBCHMAC
	if _, err := f.ks.RotateTicketKey(context.Background()); err != nil {
		t.Fatal(err)
	}
	sh := f.session(t)
	if err := f.ck.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}); err != nil {
		t.Fatal(err)
	}
	hs, _, _ := f.ck.FindObjects(sh, 10)
	f.ck.FindObjectsFinal(sh)
	if len(hs) != 1 {
		t.Fatalf("%d HMAC keys", len(hs))
	}
	for attr, want := range map[uint]byte{pkcs11.CKA_SENSITIVE: 1, pkcs11.CKA_EXTRACTABLE: 0, pkcs11.CKA_SIGN: 1, pkcs11.CKA_VERIFY: 0, pkcs11.CKA_ENCRYPT: 0, pkcs11.CKA_DECRYPT: 0, pkcs11.CKA_WRAP: 0, pkcs11.CKA_DERIVE: 0} {
		a, err := f.ck.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(attr, nil)})
		if err != nil || len(a[0].Value) != 1 || a[0].Value[0] != want {
			t.Errorf("HMAC key attribute 0x%x = %v (%v), want %d", attr, a, err, want)
		}
	}
	if _, err := f.ck.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); !hsm.Is(err, pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
		t.Errorf("the HMAC key's value is readable: %v", err)
	}
}

// TestEngineOnNSS runs exchanges and rekeys of both profiles with the
// service's keys in NSS softokn, loaded directly with its initialisation
// arguments. NSS lists AES-GCM but its seal fails (its size query leaves
// out the tag): the self-test catches that and tickets are sealed with
// AES-CBC-PAD and HMAC-SHA-256.
func TestEngineOnNSS(t *testing.T) {
	nss := softhsm.NewNSS(t)
	tok, err := hsm.Open(context.Background(), hsm.Config{Module: nss.Module, InitArgs: nss.InitArgs, TokenLabel: nss.Label, PIN: nss.PIN})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	ctx := context.Background()
	ks, err := Open(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	active, err := ks.Init(ctx)
	if err != nil || len(active) != 2 {
		t.Fatalf("Init on NSS: %+v, %v", active, err)
	}
	if _, scheme, err := ks.SealingKey(ctx); scheme != ticket.CBCHMAC {
		keys, _ := ks.Keys(ctx)
		t.Fatalf("NSS seals with %s (%v); its GCM seal fails, so CBC-HMAC was expected; keys %+v", scheme, err, keys)
	}
	if r, err := ks.SelfTest(ctx); err != nil || len(r.Profiles) != 2 || r.Sealing != ticket.CBCHMAC {
		t.Fatalf("self-test on NSS: %+v, %v", r, err)
	}
	srv := &exchange.Server{Keystore: ks, Accounts: enabledAccounts{}}
	for i := 0; i < 6; i++ {
		key, _ := exchange.GenerateClientKey(rand.Reader, exchange.Profiles[i%2])
		pending, msg, _ := key.NewExchange(rand.Reader, nil)
		req, err := exchange.ParseRequest(msg)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Exchange(ctx, req, "alice@example.com")
		if err != nil {
			t.Fatalf("%s exchange on NSS: %v", key.Profile(), err)
		}
		sess, err := pending.Finish(resp)
		if err != nil {
			t.Fatal(err)
		}
		st := openSession(t, ks, sess.Ticket)
		if !hmac.Equal(st.AK[:], sess.AK[:]) {
			t.Fatal("client and NSS-backed server disagree")
		}
		bad := bytes.Clone(sess.Ticket)
		bad[len(bad)-1] ^= 1
		if _, err := ticket.Open(ctx, ks, bad); !errors.Is(err, ticket.ErrInvalid) {
			t.Fatalf("a tampered ticket on NSS: %v", err)
		}
	}
}

func TestSelfTest(t *testing.T) { forEachToken(t, testSelfTest) }

func testSelfTest(t *testing.T, f *fixture) {
	r, err := f.ks.SelfTest(context.Background())
	served := f.servedProfiles()
	if err != nil || !slices.Equal(r.Profiles, served) || r.Sealing != f.sealing || len(r.Refused) != len(exchange.Profiles)-len(served) {
		t.Fatalf("report %+v, %v", r, err)
	}
	want := "serves modp2048 and p256; seals tickets with " + f.sealing.String()
	if !f.serves(exchange.P256) {
		want = "serves modp2048; seals tickets with " + f.sealing.String()
	}
	if s := r.String(); !strings.HasPrefix(s, want) {
		t.Fatalf("report line %q, want %q", s, want)
	}
}

// wrongECDH is a token that lists CKM_ECDH1_DERIVE and gets it wrong: it
// hands back a 32-byte derived value with one bit flipped.
type wrongECDH struct{ hsm.Cryptoki }

func (w wrongECDH) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	out, err := w.Cryptoki.GetAttributeValue(sh, o, a)
	if err == nil && len(out) == 1 && out[0].Type == pkcs11.CKA_VALUE && len(out[0].Value) == 32 {
		out[0].Value[0] ^= 1
	}
	return out, err
}

// TestSelfTestCatchesWrongDerive: the self-test stops a profile whose
// derive is wrong from being offered, before any client sees it, and the
// other profile goes on.
func TestSelfTestCatchesWrongDerive(t *testing.T) {
	st := softhsm.New(t)
	ctx := context.Background()
	good, _ := Open(ctx, openTok(t, st))
	if _, err := good.Init(ctx); err != nil {
		t.Fatal(err)
	}
	ks, err := Open(ctx, openTokWith(t, st, func(ck hsm.Cryptoki) hsm.Cryptoki { return wrongECDH{ck} }))
	if err != nil {
		t.Fatal(err)
	}
	r, err := ks.SelfTest(ctx)
	if err != nil || len(r.Profiles) != 1 || r.Profiles[0] != exchange.ModP2048 || !strings.Contains(r.Refused[exchange.P256], "fails the self-test") {
		t.Fatalf("report %+v, %v", r, err)
	}
	if _, err := ks.Credential(ctx, exchange.P256); !errors.Is(err, exchange.ErrProfileNotServed) {
		t.Fatalf("the refused profile is still offered: %v", err)
	}
	srv := &exchange.Server{Keystore: ks, Accounts: enabledAccounts{}}
	d, err := srv.Describe(ctx)
	if err != nil || len(d.Credentials) != 1 {
		t.Fatalf("discovery offers %d credentials (%v), want the group-14 one", len(d.Credentials), err)
	}
}

// TestEngineOnOpenCryptoki runs the keystore on opencryptoki's soft
// token, the third implementation: it has DH but no EC and no AES-GCM, so
// the token serves group 14 only and seals tickets with CBC and HMAC.
// Exchanges and rekeys, a tampered ticket, both rotations and a prune, the
// keys staying inside, and recovery from all sessions closed.
func TestEngineOnOpenCryptoki(t *testing.T) {
	ock := softhsm.NewOpenCryptoki(t)
	f := newFixtureOn(t, hsm.Config{Module: ock.Module, TokenLabel: ock.Label, PIN: ock.PIN}, ticket.CBCHMAC)
	ctx := context.Background()
	r, err := f.ks.SelfTest(ctx)
	if err != nil || len(r.Profiles) != 1 || r.Profiles[0] != exchange.ModP2048 || r.Sealing != ticket.CBCHMAC || !strings.Contains(r.Refused[exchange.P256], "CKM_EC_KEY_PAIR_GEN") {
		t.Fatalf("self-test on opencryptoki: %+v, %v", r, err)
	}
	testEngineOnToken(t, f)
	testTicketTamper(t, f)
	testDeriveMatchesPublicKey(t, f)
	// Rotations and a prune: the old ticket key and credential go.
	now := time.Now()
	f.ks.Now = func() time.Time { return now }
	old, _ := ticket.Seal(ctx, f.ks, rand.Reader, []byte("old"))
	oldCred, _ := f.ks.Credential(ctx, exchange.ModP2048)
	now = now.Add(time.Hour)
	if _, err := f.ks.RotateTicketKey(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ks.RotateCredential(ctx, exchange.ModP2048); err != nil {
		t.Fatal(err)
	}
	if _, err := ticket.Open(ctx, f.ks, old); err != nil {
		t.Fatalf("a ticket of the retired key: %v", err)
	}
	now = now.Add(2 * time.Hour)
	pruned, err := f.ks.Prune(ctx, time.Hour, false)
	if err != nil || len(pruned) != 2 {
		t.Fatalf("prune: %+v, %v", pruned, err)
	}
	if _, err := ticket.Open(ctx, f.ks, old); !errors.Is(err, ticket.ErrInvalid) {
		t.Fatalf("a ticket of a pruned key: %v", err)
	}
	if _, err := f.ks.Derive(ctx, oldCred.KeyID(), oldCred); err == nil {
		t.Fatal("a pruned credential still derives")
	}
	// The keys stay inside: the DH private key's value cannot be read.
	sh := f.session(t)
	if err := f.ck.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}); err != nil {
		t.Fatal(err)
	}
	hs, _, _ := f.ck.FindObjects(sh, 10)
	f.ck.FindObjectsFinal(sh)
	for _, h := range hs {
		if _, err := f.ck.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); !hsm.Is(err, pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
			t.Errorf("a private key's value is readable on opencryptoki: %v", err)
		}
	}
	// All sessions closed behind the pool's back: it recovers.
	f.ck.CloseAllSessions(f.tok.Slot())
	if _, err := ticket.Seal(ctx, f.ks, rand.Reader, []byte("after")); err != nil {
		t.Fatalf("seal after all sessions closed: %v", err)
	}
}
