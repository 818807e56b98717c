package hsm

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"math/big"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/custos-kx/custos/exchange"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/softhsm"
)

func openToken(t *testing.T, cfg Config) (*Token, *softhsm.Token) {
	t.Helper()
	st := softhsm.New(t)
	cfg.Module, cfg.TokenLabel, cfg.PIN = st.Module, st.Label, st.PIN
	tok, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	return tok, st
}

var dhParams = DHParams{Prime: group.P().Bytes(), Base: []byte{group.Generator}, PrivateBits: 256}

type dhKey struct {
	public []byte
	pub    Object
	priv   Object
}

func genDH(t *testing.T, tok *Token) dhKey {
	t.Helper()
	var k dhKey
	err := tok.Do(context.Background(), "generate", func(s *Session) (err error) {
		k.public, k.pub, k.priv, err = s.GenerateDHKeyPair(dhParams, "test dh", []byte{1})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func genEC(t *testing.T, tok *Token) dhKey {
	t.Helper()
	var k dhKey
	err := tok.Do(context.Background(), "generate", func(s *Session) (err error) {
		k.public, k.pub, k.priv, err = s.GenerateECKeyPair("test ec", []byte{3})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func genAES(t *testing.T, tok *Token) Object {
	t.Helper()
	var h Object
	err := tok.Do(context.Background(), "generate", func(s *Session) (err error) {
		h, err = s.GenerateAESKey("test aes", []byte{2})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestOpenErrors(t *testing.T) {
	st := softhsm.New(t)
	_, err := Open(context.Background(), Config{Module: st.Module, TokenLabel: st.Label, PIN: "wrong-pin"})
	if err == nil || !strings.Contains(err.Error(), st.Label) || !strings.Contains(err.Error(), "PIN was refused") {
		t.Fatalf("wrong PIN: %v", err)
	}
	_, err = Open(context.Background(), Config{Module: st.Module, TokenLabel: "no-such-token", PIN: st.PIN})
	if err == nil || !strings.Contains(err.Error(), `no token labelled "no-such-token"`) || !strings.Contains(err.Error(), st.Label) {
		t.Fatalf("unknown label: %v", err)
	}
	_, err = Open(context.Background(), Config{Module: "/nonexistent/libpkcs11.so", TokenLabel: "x", PIN: "x"})
	if err == nil || !strings.Contains(err.Error(), "cannot load the PKCS#11 module /nonexistent/libpkcs11.so") || !strings.Contains(err.Error(), "No such file") {
		t.Fatalf("bad module: %v", err)
	}
	// A library that loads but is no PKCS#11 module says so.
	if libc, _ := filepath.Glob("/lib/x86_64-linux-gnu/libz.so.1"); len(libc) == 1 {
		_, err = Open(context.Background(), Config{Module: libc[0], TokenLabel: "x", PIN: "x"})
		if err == nil || !strings.Contains(err.Error(), "no C_GetFunctionList") {
			t.Fatalf("not a module: %v", err)
		}
	}
	// After the failures the right configuration still works.
	tok, err := Open(context.Background(), Config{Module: st.Module, TokenLabel: st.Label, PIN: st.PIN})
	if err != nil {
		t.Fatal(err)
	}
	tok.Close()
}

func TestPrivateKeysStayInside(t *testing.T) {
	tok, _ := openToken(t, Config{})
	dh := genDH(t, tok)
	ec := genEC(t, tok)
	aes := genAES(t, tok)
	ctx := context.Background()
	err := tok.Do(ctx, "test", func(s *Session) error {
		ck := s.t.ck
		// A key that may wrap, to try to take the others out with.
		wrapper, err := ck.GenerateKey(s.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		})
		if err != nil {
			return err
		}
		for name, h := range map[string]Object{"DH private key": dh.priv, "EC private key": ec.priv, "AES key": aes} {
			if _, err := s.attribute(pkcs11.ObjectHandle(h), pkcs11.CKA_VALUE); !Is(err, pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
				t.Errorf("%s: reading CKA_VALUE: %v", name, err)
			}
			for _, a := range []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			} {
				if err := ck.SetAttributeValue(s.s.h, pkcs11.ObjectHandle(h), []*pkcs11.Attribute{a}); err == nil {
					t.Errorf("%s: attribute 0x%x could be changed", name, a.Type)
				}
			}
			for _, mech := range []uint{pkcs11.CKM_AES_KEY_WRAP, pkcs11.CKM_AES_KEY_WRAP_PAD, pkcs11.CKM_AES_CBC_PAD} {
				m := pkcs11.NewMechanism(mech, nil)
				if mech == pkcs11.CKM_AES_CBC_PAD {
					m = pkcs11.NewMechanism(mech, make([]byte, 16))
				}
				if out, err := ck.WrapKey(s.s.h, []*pkcs11.Mechanism{m}, wrapper, pkcs11.ObjectHandle(h)); err == nil {
					t.Errorf("%s: wrapped out with mechanism 0x%x (%d bytes)", name, mech, len(out))
				}
			}
			// The AES key may not wrap either.
			if _, err := ck.WrapKey(s.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}, pkcs11.ObjectHandle(aes), wrapper); err == nil {
				t.Error("the sealing key can wrap")
			}
		}
		for name, priv := range map[string]Object{"DH": dh.priv, "EC": ec.priv} {
			for _, attr := range []uint{pkcs11.CKA_SIGN, pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_EXTRACTABLE} {
				if v, err := s.attribute(pkcs11.ObjectHandle(priv), attr); err != nil || !bytes.Equal(v, []byte{0}) {
					t.Errorf("%s private key attribute 0x%x = %v, %v; want false", name, attr, v, err)
				}
			}
			for _, attr := range []uint{pkcs11.CKA_DERIVE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE} {
				if v, err := s.attribute(pkcs11.ObjectHandle(priv), attr); err != nil || !bytes.Equal(v, []byte{1}) {
					t.Errorf("%s private key attribute 0x%x = %v, %v; want true", name, attr, v, err)
				}
			}
		}
		for _, attr := range []uint{pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_SIGN, pkcs11.CKA_DERIVE, pkcs11.CKA_EXTRACTABLE} {
			if v, err := s.attribute(pkcs11.ObjectHandle(aes), attr); err != nil || !bytes.Equal(v, []byte{0}) {
				t.Errorf("AES key attribute 0x%x = %v, %v; want false", attr, v, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// inSteps hides a module's one-call derive, so that derive goes through
// C_DeriveKey, C_GetAttributeValue and C_DestroyObject one by one.
type inSteps struct{ Cryptoki }

// bothDerives runs test once on the module's one-call derive and once on
// the three calls it replaces, each on a token of its own.
func bothDerives(t *testing.T, test func(t *testing.T, tok *Token)) {
	t.Run("one call", func(t *testing.T) {
		tok, _ := openToken(t, Config{})
		if _, ok := tok.ck.(valueDeriver); !ok {
			t.Fatalf("the module at %s has no one-call derive", tok.cfg.Module)
		}
		test(t, tok)
	})
	t.Run("three calls", func(t *testing.T) {
		tok, _ := openToken(t, Config{Wrap: func(ck Cryptoki) Cryptoki { return inSteps{ck} }})
		if _, ok := tok.ck.(valueDeriver); ok {
			t.Fatal("the wrapped module kept its one-call derive")
		}
		test(t, tok)
	})
}

// TestDeriveECDHMatchesCryptoECDH checks the token's P-256 derive
// against crypto/ecdh: x·(k·G) = k·X.
func TestDeriveECDHMatchesCryptoECDH(t *testing.T) { bothDerives(t, deriveECDHMatchesCryptoECDH) }

func deriveECDHMatchesCryptoECDH(t *testing.T, tok *Token) {
	ec := genEC(t, tok)
	X, err := ecdh.P256().NewPublicKey(ec.public)
	if err != nil {
		t.Fatalf("the token's point is not valid: %v", err)
	}
	for i := 0; i < 100; i++ {
		k, _ := ecdh.P256().GenerateKey(rand.Reader)
		want, _ := k.ECDH(X)
		var got []byte
		err := tok.Do(context.Background(), "derive", func(s *Session) (err error) {
			got, err = s.DeriveECDH(ec.priv, k.PublicKey().Bytes())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("peer %d: derive differs from crypto/ecdh", i)
		}
	}
	tok.Do(context.Background(), "find", func(s *Session) error {
		hs, err := s.findObjects([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET)})
		if err != nil || len(hs) != 0 {
			t.Errorf("%d derived objects left behind (%v)", len(hs), err)
		}
		return nil
	})
}

func TestUnwrapPoint(t *testing.T) {
	pt := append([]byte{4}, make([]byte, 64)...)
	for _, tc := range []struct {
		in []byte
		ok bool
	}{
		{pt, true},
		{append([]byte{0x04, 65}, pt...), true},
		{append([]byte{0x04, 64}, pt[:64]...), false},
		{pt[:33], false},
		{nil, false},
	} {
		got, err := unwrapPoint(tc.in)
		if (err == nil) != tc.ok || (tc.ok && !bytes.Equal(got, pt)) {
			t.Errorf("unwrapPoint(%x) = %x, %v", tc.in, got, err)
		}
	}
}

// TestDeriveMatchesMathBig checks derive against an independent
// computation. x never leaves the token, so the peers are g^k for random k:
// then peer^x = X^k, which math/big computes from the public X.
func TestDeriveMatchesMathBig(t *testing.T) { bothDerives(t, deriveMatchesMathBig) }

func deriveMatchesMathBig(t *testing.T, tok *Token) {
	dh := genDH(t, tok)
	X := new(big.Int).SetBytes(dh.public)
	if _, err := group.NewElementInt(X); err != nil {
		t.Fatalf("the token's public value is not a valid element: %v", err)
	}
	p := group.P()
	for i := 0; i < 200; i++ {
		kb := make([]byte, 32)
		rand.Read(kb)
		k := new(big.Int).SetBytes(kb)
		peer := new(big.Int).Exp(big.NewInt(2), k, p)
		want := new(big.Int).Exp(X, k, p).FillBytes(make([]byte, 256))
		var got []byte
		err := tok.Do(context.Background(), "derive", func(s *Session) (err error) {
			got, err = s.DeriveDH(dh.priv, peer.Bytes(), 256)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("peer %d: derive differs from math/big", i)
		}
	}
	// The derived secrets were session objects and are gone.
	tok.Do(context.Background(), "find", func(s *Session) error {
		hs, err := s.findObjects([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET)})
		if err != nil || len(hs) != 0 {
			t.Errorf("%d derived objects left behind (%v)", len(hs), err)
		}
		return nil
	})
}

func TestGCM(t *testing.T) {
	tok, _ := openToken(t, Config{})
	key := genAES(t, tok)
	ctx := context.Background()
	iv := make([]byte, GCMIVSize)
	rand.Read(iv)
	aad := []byte("aad")
	pt := []byte("the session keys and account of a ticket")
	var sealed []byte
	err := tok.Do(ctx, "seal", func(s *Session) (err error) {
		sealed, err = s.SealGCM(key, iv, aad, pt)
		return err
	})
	if err != nil || len(sealed) != len(pt)+GCMTagSize {
		t.Fatalf("seal: %v (%d bytes)", err, len(sealed))
	}
	open := func(iv, aad, sealed []byte) ([]byte, error) {
		var out []byte
		err := tok.Do(ctx, "open", func(s *Session) (err error) {
			out, err = s.OpenGCM(key, iv, aad, sealed)
			return err
		})
		return out, err
	}
	if got, err := open(iv, aad, sealed); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("open: %v", err)
	}
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x01
		if _, err := open(iv, aad, bad); !errors.Is(err, ErrAuthentication) {
			t.Fatalf("byte %d flipped: %v", i, err)
		}
	}
	for name, c := range map[string]struct{ iv, aad, sealed []byte }{
		"wrong IV":      {append([]byte{iv[0] ^ 1}, iv[1:]...), aad, sealed},
		"empty IV":      {nil, aad, sealed},
		"wrong AAD":     {iv, []byte("aae"), sealed},
		"truncated tag": {iv, aad, sealed[:len(sealed)-1]},
		"tag only":      {iv, aad, sealed[len(sealed)-GCMTagSize:]},
		"nothing":       {iv, aad, nil},
	} {
		if _, err := open(c.iv, c.aad, c.sealed); !errors.Is(err, ErrAuthentication) {
			t.Errorf("%s: %v", name, err)
		}
	}
	err = tok.Do(ctx, "seal", func(s *Session) error {
		_, err := s.SealGCM(key, nil, aad, pt)
		return err
	})
	if err == nil {
		t.Fatal("sealing with an empty IV was allowed")
	}
	// Failed opens did not take the token down.
	if err := tok.Healthy(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentOperations(t *testing.T) {
	tok, _ := openToken(t, Config{MaxSessions: 4})
	dh := genDH(t, tok)
	key := genAES(t, tok)
	peer := new(big.Int).Exp(big.NewInt(2), big.NewInt(123456789), group.P()).Bytes()
	ops := 500
	if testing.Short() {
		ops = 50
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			iv := make([]byte, GCMIVSize)
			for i := 0; i < ops; i++ {
				rand.Read(iv)
				err := tok.Do(context.Background(), "mixed", func(s *Session) error {
					if i%2 == 0 {
						_, err := s.DeriveDH(dh.priv, peer, 256)
						return err
					}
					return sealOpen(s, key, iv)
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := len(tok.idle); n > 4 {
		t.Fatalf("pool holds %d sessions, bound is 4", n)
	}
}

// sealOpen seals a short plaintext under key and opens it again.
func sealOpen(s *Session, key Object, iv []byte) error {
	sealed, err := s.SealGCM(key, iv, nil, []byte("ticket"))
	if err != nil {
		return err
	}
	_, err = s.OpenGCM(key, iv, nil, sealed)
	return err
}

// TestContextDeadlineWhilePoolBusy: an operation whose context ends while
// it waits, for the one session or for the busy call thread, is not run and
// fails with ErrKeystoreUnavailable at once.
func TestContextDeadlineWhilePoolBusy(t *testing.T) {
	for name, cfg := range map[string]Config{
		"session":     {MaxSessions: 1, CallThreads: -1},
		"call thread": {},
	} {
		t.Run(name, func(t *testing.T) {
			tok, _ := openToken(t, cfg)
			hold := make(chan struct{})
			held := make(chan struct{})
			go tok.Do(context.Background(), "hold", func(s *Session) error {
				close(held)
				<-hold
				return nil
			})
			<-held
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			ran := false
			err := tok.Do(ctx, "wait", func(s *Session) error { ran = true; return nil })
			close(hold)
			if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, exchange.ErrKeystoreUnavailable) || ran {
				t.Fatalf("ran %v, err = %v; want it not run, deadline exceeded, the keystore unavailable", ran, err)
			}
		})
	}
}

// faultOps runs a derive and a seal/open, finding the keys by CKA_ID inside
// the operation's own session, as the keystore does.
func faultOps(tok *Token) error {
	peer := new(big.Int).Exp(big.NewInt(2), big.NewInt(987654321), group.P()).Bytes()
	return tok.Do(context.Background(), "fault", func(s *Session) error {
		priv, err := s.FindKey(DHPrivateKey, []byte{1})
		if err != nil {
			return err
		}
		key, err := s.FindKey(AESKey, []byte{2})
		if err != nil {
			return err
		}
		if _, err := s.DeriveDH(priv, peer, 256); err != nil {
			return err
		}
		iv := make([]byte, GCMIVSize)
		sealed, err := s.SealGCM(key, iv, nil, []byte("x"))
		if err != nil {
			return err
		}
		_, err = s.OpenGCM(key, iv, nil, sealed)
		return err
	})
}

func TestRecovery(t *testing.T) {
	for _, fault := range []struct {
		name string
		do   func(t *testing.T, tok *Token)
	}{
		{"close all sessions", func(t *testing.T, tok *Token) {
			if err := tok.mod.ck.CloseAllSessions(tok.Slot()); err != nil {
				t.Fatal(err)
			}
		}},
		{"logout", func(t *testing.T, tok *Token) {
			tok.Do(context.Background(), "logout", func(s *Session) error {
				if err := s.t.ck.Logout(s.s.h); err != nil {
					t.Fatal(err)
				}
				return nil
			})
		}},
		{"finalize", func(t *testing.T, tok *Token) {
			if err := tok.mod.ck.Finalize(); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(fault.name, func(t *testing.T) {
			tok, _ := openToken(t, Config{MaxSessions: 4})
			genDH(t, tok)
			genAES(t, tok)
			// Fill the pool with several sessions first.
			var wg sync.WaitGroup
			for i := 0; i < 4; i++ {
				wg.Add(1)
				go func() { defer wg.Done(); faultOps(tok) }()
			}
			wg.Wait()
			before := reconnectCount()

			fault.do(t, tok)

			for i := 0; i < 20; i++ {
				if err := faultOps(tok); err != nil {
					t.Fatalf("operation %d after the fault: %v", i, err)
				}
			}
			if err := tok.Healthy(context.Background()); err != nil {
				t.Fatal(err)
			}
			if fault.name != "close all sessions" && reconnectCount() <= before {
				t.Error("recovery not counted in custos_hsm_reconnects_total")
			}
		})
	}
}

// downCryptoki makes every call fail as if the token were unplugged while
// down is set.
type downCryptoki struct {
	Cryptoki
	mu   sync.Mutex
	down bool
}

func (d *downCryptoki) isDown() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.down }

func (d *downCryptoki) GetSlotList(present bool) ([]uint, error) {
	if d.isDown() {
		return nil, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)
	}
	return d.Cryptoki.GetSlotList(present)
}

func (d *downCryptoki) OpenSession(slot, flags uint) (pkcs11.SessionHandle, error) {
	if d.isDown() {
		return 0, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)
	}
	return d.Cryptoki.OpenSession(slot, flags)
}

func (d *downCryptoki) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	if d.isDown() {
		return pkcs11.SessionInfo{}, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)
	}
	return d.Cryptoki.GetSessionInfo(sh)
}

func (d *downCryptoki) DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, base pkcs11.ObjectHandle, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if d.isDown() {
		return 0, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)
	}
	return d.Cryptoki.DeriveKey(sh, m, base, a)
}

func TestUnreachableFailsFastAndRecovers(t *testing.T) {
	var wrapper *downCryptoki
	tok, _ := openToken(t, Config{RetryInterval: 20 * time.Millisecond, Wrap: func(c Cryptoki) Cryptoki {
		wrapper = &downCryptoki{Cryptoki: c}
		return wrapper
	}})
	genDH(t, tok)
	peer := big.NewInt(4).Bytes()
	derive := func() error {
		return tok.Do(context.Background(), "derive", func(s *Session) error {
			priv, err := s.FindKey(DHPrivateKey, []byte{1})
			if err != nil {
				return err
			}
			_, err = s.DeriveDH(priv, peer, 256)
			return err
		})
	}
	if err := derive(); err != nil {
		t.Fatal(err)
	}
	wrapper.mu.Lock()
	wrapper.down = true
	wrapper.mu.Unlock()
	if err := derive(); !errors.Is(err, exchange.ErrKeystoreUnavailable) {
		t.Fatalf("while down: %v", err)
	}
	if testutil.ToFloat64(upGauge) != 0 {
		t.Error("custos_hsm_up is not 0 while the token is down")
	}
	start := time.Now()
	for i := 0; i < 100; i++ {
		if err := derive(); !errors.Is(err, exchange.ErrKeystoreUnavailable) {
			t.Fatalf("while down: %v", err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("100 calls while down took %v; they should fail fast", d)
	}
	if tok.Healthy(context.Background()) == nil {
		t.Error("Healthy while down")
	}
	wrapper.mu.Lock()
	wrapper.down = false
	wrapper.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for err := derive(); err != nil; err = derive() {
		if time.Now().After(deadline) {
			t.Fatalf("not recovered within 5 s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if testutil.ToFloat64(upGauge) != 1 {
		t.Error("custos_hsm_up is not 1 after recovery")
	}
}

// scriptedCryptoki fails calls with the errors queued for them, in order,
// then lets them through to the real module.
type scriptedCryptoki struct {
	Cryptoki
	mu          sync.Mutex
	derive      []error
	sessionInfo []error
	derives     int // calls that reached DeriveKey
}

func (c *scriptedCryptoki) next(q *[]error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(*q) == 0 {
		return nil
	}
	err := (*q)[0]
	*q = (*q)[1:]
	return err
}

func (c *scriptedCryptoki) DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, base pkcs11.ObjectHandle, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	c.mu.Lock()
	c.derives++
	c.mu.Unlock()
	if err := c.next(&c.derive); err != nil {
		return 0, err
	}
	return c.Cryptoki.DeriveKey(sh, m, base, a)
}

func (c *scriptedCryptoki) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	if err := c.next(&c.sessionInfo); err != nil {
		return pkcs11.SessionInfo{}, err
	}
	return c.Cryptoki.GetSessionInfo(sh)
}

// TestRecoveryChains gives Do the failures callers racing a
// C_CloseAllSessions meet, several in a row, and checks that it recovers
// from each without taking the token down, and that a call failing twice
// without a reason is returned as its own failure, not retried more.
func TestRecoveryChains(t *testing.T) {
	e := func(code uint) error { return pkcs11.Error(code) }
	for _, c := range []struct {
		name        string
		derive      []error
		sessionInfo []error
		fails       bool // Do returns the injected error
		calls       int  // DeriveKey calls made
	}{
		{"session gone, then a stale handle", []error{e(pkcs11.CKR_SESSION_HANDLE_INVALID), e(pkcs11.CKR_KEY_HANDLE_INVALID)}, nil, false, 3},
		{"session gone, the next one gone before its login check", []error{e(pkcs11.CKR_SESSION_HANDLE_INVALID)}, []error{e(pkcs11.CKR_SESSION_HANDLE_INVALID)}, false, 2},
		{"logged out, session gone while checking the login", []error{e(pkcs11.CKR_USER_NOT_LOGGED_IN)}, []error{e(pkcs11.CKR_SESSION_HANDLE_INVALID)}, false, 2},
		{"stale handle, then logged out", []error{e(pkcs11.CKR_KEY_HANDLE_INVALID), e(pkcs11.CKR_USER_NOT_LOGGED_IN)}, nil, false, 3},
		{"general error once", []error{e(pkcs11.CKR_GENERAL_ERROR)}, nil, false, 2},
		{"function failed once", []error{e(pkcs11.CKR_FUNCTION_FAILED)}, nil, false, 2},
		{"general error twice", []error{e(pkcs11.CKR_GENERAL_ERROR), e(pkcs11.CKR_GENERAL_ERROR)}, nil, true, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			var script *scriptedCryptoki
			tok, _ := openToken(t, Config{MaxSessions: 2, Wrap: func(ck Cryptoki) Cryptoki {
				script = &scriptedCryptoki{Cryptoki: ck}
				return script
			}})
			genDH(t, tok)
			script.mu.Lock()
			script.derive, script.sessionInfo, script.derives = c.derive, c.sessionInfo, 0
			script.mu.Unlock()
			peer := big.NewInt(4).Bytes()
			err := tok.Do(context.Background(), "derive", func(s *Session) error {
				priv, err := s.FindKey(DHPrivateKey, []byte{1})
				if err != nil {
					return err
				}
				_, err = s.DeriveDH(priv, peer, 256)
				return err
			})
			switch {
			case c.fails && !Is(err, pkcs11.CKR_GENERAL_ERROR):
				t.Errorf("Do = %v, want the call's own CKR_GENERAL_ERROR", err)
			case c.fails && errors.Is(err, exchange.ErrKeystoreUnavailable):
				t.Errorf("Do = %v: a failing call took the token down", err)
			case !c.fails && err != nil:
				t.Errorf("Do = %v, want recovery", err)
			}
			if script.derives != c.calls {
				t.Errorf("%d DeriveKey calls, want %d", script.derives, c.calls)
			}
			if err := tok.Healthy(context.Background()); err != nil {
				t.Errorf("token not healthy after the faults: %v", err)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	tok, _ := openToken(t, Config{})
	dh := genDH(t, tok)
	derives := testutil.ToFloat64(opErrors.WithLabelValues("metrics-derive", "CKR_GENERAL_ERROR"))
	countBefore := histCount(t, "metrics-derive")
	for i := 0; i < 5; i++ {
		tok.Do(context.Background(), "metrics-derive", func(s *Session) error {
			_, err := s.DeriveDH(dh.priv, big.NewInt(4).Bytes(), 256)
			return err
		})
	}
	// p itself is refused by SoftHSM with CKR_GENERAL_ERROR.
	tok.Do(context.Background(), "metrics-derive", func(s *Session) error {
		_, err := s.DeriveDH(dh.priv, group.P().Bytes(), 256)
		return err
	})
	if got := histCount(t, "metrics-derive") - countBefore; got != 6 {
		t.Errorf("duration histogram counted %d operations, want 6", got)
	}
	if got := testutil.ToFloat64(opErrors.WithLabelValues("metrics-derive", "CKR_GENERAL_ERROR")) - derives; got != 1 {
		t.Errorf("errors counter = %v, want 1", got)
	}
	if idle := testutil.ToFloat64(sessionsGauge.WithLabelValues("idle")); idle < 1 {
		t.Errorf("idle sessions gauge = %v", idle)
	}
	if busy := testutil.ToFloat64(sessionsGauge.WithLabelValues("busy")); busy != 0 {
		t.Errorf("busy sessions gauge = %v with nothing running", busy)
	}
	if testutil.ToFloat64(upGauge) != 1 {
		t.Error("custos_hsm_up is not 1")
	}
	families := gather(t)
	for _, want := range []string{"custos_hsm_operation_duration_seconds", "custos_hsm_operation_errors_total", "custos_hsm_sessions", "custos_hsm_reconnects_total", "custos_hsm_up"} {
		if families[want] == nil {
			t.Errorf("metric %s not exported", want)
		}
	}
}

// gather scrapes the HSM metrics through a registry, as the service will.
func gather(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// histCount returns how many operations the duration histogram counted for op.
func histCount(t *testing.T, op string) uint64 {
	mf := gather(t)["custos_hsm_operation_duration_seconds"]
	if mf == nil {
		return 0
	}
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "op" && l.GetValue() == op {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

// TestNSSSoftokn loads NSS softokn directly, its database given in the
// initialisation arguments (without them C_Initialize fails
// CKR_ARGUMENTS_BAD), and checks both derivations on it.
func TestNSSSoftokn(t *testing.T) {
	nss := softhsm.NewNSS(t)
	tok, err := Open(context.Background(), Config{Module: nss.Module, InitArgs: nss.InitArgs, TokenLabel: nss.Label, PIN: nss.PIN})
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	if _, ok := tok.ck.(valueDeriver); !ok {
		t.Fatal("NSS's module has no one-call derive")
	}
	for _, c := range []Capability{DH, ECDH} {
		var can bool
		tok.Do(context.Background(), "mechanisms", func(s *Session) (err error) { can, err = s.Can(c); return err })
		if !can {
			t.Fatalf("NSS does not list the mechanisms of capability %d", c)
		}
	}
	dh := genDH(t, tok)
	X := new(big.Int).SetBytes(dh.public)
	if _, err := group.NewElementInt(X); err != nil {
		t.Fatalf("NSS's DH public value is not a valid element: %v", err)
	}
	k := big.NewInt(0).SetBytes([]byte("a peer exponent of some length.."))
	peer := new(big.Int).Exp(big.NewInt(2), k, group.P())
	var got []byte
	if err := tok.Do(context.Background(), "derive", func(s *Session) (err error) {
		got, err = s.DeriveDH(dh.priv, peer.Bytes(), 256)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if want := new(big.Int).Exp(X, k, group.P()).FillBytes(make([]byte, 256)); !bytes.Equal(got, want) {
		t.Fatal("NSS's DH derive differs from math/big")
	}
	ec := genEC(t, tok)
	XE, err := ecdh.P256().NewPublicKey(ec.public)
	if err != nil {
		t.Fatalf("NSS's P-256 point: %v", err)
	}
	pk, _ := ecdh.P256().GenerateKey(rand.Reader)
	want, _ := pk.ECDH(XE)
	if err := tok.Do(context.Background(), "derive", func(s *Session) (err error) {
		got, err = s.DeriveECDH(ec.priv, pk.PublicKey().Bytes())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("NSS's ECDH derive differs from crypto/ecdh")
	}
}

// reconnectCount sums custos_hsm_reconnects_total over its reasons.
func reconnectCount() float64 {
	var n float64
	for _, r := range []string{reasonLogout, reasonFinalized, reasonSessionsFailing, reasonOutage} {
		n += testutil.ToFloat64(reconnects.WithLabelValues(r))
	}
	return n
}

// deviceLink is a module whose connection to its device can drop, as
// YubiHSM 2's does after ~30 s idle and a remote module's does when its
// server restarts: then every session, old or new, fails
// CKR_SESSION_HANDLE_INVALID until the module is initialised again.
type deviceLink struct {
	Cryptoki
	dead      atomic.Bool
	idleLimit time.Duration // the link drops after this long without a call; 0: never
	lastCall  atomic.Int64
	calls     atomic.Int64
}

func (d *deviceLink) use() error {
	now := time.Now().UnixNano()
	if last := d.lastCall.Swap(now); d.idleLimit > 0 && last != 0 && time.Duration(now-last) > d.idleLimit {
		d.dead.Store(true)
	}
	d.calls.Add(1)
	if d.dead.Load() {
		return pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)
	}
	return nil
}

func (d *deviceLink) Initialize(opts ...pkcs11.InitializeOption) error {
	d.dead.Store(false)
	d.lastCall.Store(time.Now().UnixNano())
	return d.Cryptoki.Initialize(opts...)
}

func (d *deviceLink) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	if err := d.use(); err != nil {
		return pkcs11.SessionInfo{}, err
	}
	return d.Cryptoki.GetSessionInfo(sh)
}

func (d *deviceLink) FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error {
	if err := d.use(); err != nil {
		return err
	}
	return d.Cryptoki.FindObjectsInit(sh, temp)
}

// find is a cheap operation through the pool.
func find(tok *Token) error {
	return tok.Do(context.Background(), "find", func(s *Session) error {
		_, err := s.FindKeys(AESKey)
		return err
	})
}

// TestReopenedSessionsFailUntilReinit: when the device link drops under
// load, new sessions fail as the old ones do; the pool re-initialises the
// module by itself, once, and serves again with no restart, and no
// operation fails: each one in flight at the fault meets a dead session,
// retries on a fresh one, and that one works once the module is
// re-initialised.
func TestReopenedSessionsFailUntilReinit(t *testing.T) {
	link := &deviceLink{}
	tok, _ := openToken(t, Config{MaxSessions: 4, KeepAlive: -1, Wrap: func(ck Cryptoki) Cryptoki { link.Cryptoki = ck; return link }})
	before := testutil.ToFloat64(reconnects.WithLabelValues(reasonSessionsFailing))
	const workers = 4
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := find(tok); err != nil {
					if failed.Add(1) == 1 {
						t.Logf("the first failure: %v", err)
					}
				} else {
					ok.Add(1)
				}
			}
		})
	}
	waitFor(t, func() bool { return ok.Load() > 100 })
	link.dead.Store(true)
	atFault := ok.Load()
	waitFor(t, func() bool { return ok.Load() > atFault+100 })
	close(stop)
	wg.Wait()
	t.Logf("%d operations failed around the fault (%d workers)", failed.Load(), workers)
	if n := failed.Load(); n > 0 {
		t.Errorf("%d operations failed across the re-initialisation; none may (each retries on a fresh session)", n)
	}
	if n := testutil.ToFloat64(reconnects.WithLabelValues(reasonSessionsFailing)) - before; n != 1 {
		t.Errorf("the module was re-initialised %v times for one fault, want once", n)
	}
	if err := find(tok); err != nil {
		t.Fatalf("after the recovery: %v", err)
	}
	if testutil.ToFloat64(reconnects.WithLabelValues(reasonSessionsFailing)) <= before {
		t.Error("the re-initialisation is not counted as reason sessions-failing")
	}
}

// TestRereadUnderLoad re-initialises the module fifty times, as an
// administrative command does after making a key, while eight callers seal
// and open on four sessions. A session lent before a re-initialisation and
// used after it runs on whichever new session got its number, beside that
// session's owner (SoftHSM answers one of them CKR_OPERATION_ACTIVE): no
// call may fail.
func TestRereadUnderLoad(t *testing.T) {
	tok, _ := openToken(t, Config{MaxSessions: 4})
	genAES(t, tok)
	var calls atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			iv := make([]byte, GCMIVSize)
			for {
				select {
				case <-stop:
					return
				default:
				}
				rand.Read(iv)
				err := tok.Do(context.Background(), "seal", func(s *Session) error {
					key, err := s.FindKey(AESKey, []byte{2})
					if err != nil {
						return err
					}
					return sealOpen(s, key, iv)
				})
				if err != nil {
					errs <- err
					return
				}
				calls.Add(1)
			}
		})
	}
	for range 50 {
		if err := tok.Reread(context.Background()); err != nil {
			t.Fatal(err)
		}
		at := calls.Load()
		waitFor(t, func() bool { return calls.Load() >= at+8 || len(errs) > 0 })
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a call failed across a re-read: %v", err)
	}
	t.Logf("%d calls across 50 re-reads", calls.Load())
}

// TestKeepAliveKeepsIdleSessionsAlive: with a keep-alive shorter than
// the device's idle limit the link never drops, so an idle pool needs no
// re-initialisation; without one, the link drops and the pool recovers by
// re-initialising, the first operation after the idle spell still
// succeeding.
func TestKeepAliveKeepsIdleSessionsAlive(t *testing.T) {
	for _, c := range []struct {
		name      string
		keepAlive time.Duration
		reinits   bool
	}{{"keep-alive", 40 * time.Millisecond, false}, {"none", -1, true}} {
		t.Run(c.name, func(t *testing.T) {
			link := &deviceLink{idleLimit: 200 * time.Millisecond}
			tok, _ := openToken(t, Config{MaxSessions: 2, KeepAlive: c.keepAlive, Wrap: func(ck Cryptoki) Cryptoki { link.Cryptoki = ck; return link }})
			if err := find(tok); err != nil {
				t.Fatal(err)
			}
			before := testutil.ToFloat64(reconnects.WithLabelValues(reasonSessionsFailing))
			// An idle spell three times the device's limit.
			idleSince := time.Now()
			waitFor(t, func() bool { return time.Since(idleSince) > 3*link.idleLimit })
			if err := find(tok); err != nil {
				t.Fatalf("the first operation after the idle spell: %v", err)
			}
			if reinit := testutil.ToFloat64(reconnects.WithLabelValues(reasonSessionsFailing)) > before; reinit != c.reinits {
				t.Errorf("module re-initialised: %v, want %v (calls %d)", reinit, c.reinits, link.calls.Load())
			}
		})
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("the condition did not come true within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPoolSizedBySlot: SoftHSM's slot is a software one (no CKF_HW_SLOT),
// so its calls get a thread of their own and the pool the one session
// that thread uses, not the hardware default.
func TestPoolSizedBySlot(t *testing.T) {
	tok, _ := openToken(t, Config{})
	if got := tok.MaxSessions(); got != 1 {
		t.Fatalf("the default pool for SoftHSM has %d sessions, want 1 (its call thread's)", got)
	}
	threads, _ := openToken(t, Config{CallThreads: 3})
	if got := threads.MaxSessions(); got != 3 {
		t.Fatalf("a token with 3 call threads has a pool of %d sessions, want 3", got)
	}
	sized, _ := openToken(t, Config{MaxSessions: 7})
	if got := sized.MaxSessions(); got != 7 {
		t.Fatalf("a pool configured for 7 sessions has %d", got)
	}
	callers, _ := openToken(t, Config{CallThreads: -1})
	if got := callers.MaxSessions(); got != DefaultMaxSessions {
		t.Fatalf("a token whose callers make its calls has a pool of %d sessions, want %d", got, DefaultMaxSessions)
	}
}

// callsSeen runs n operations on tok at once and reports on how many OS
// threads they ran and how many ran at the same time at most.
func callsSeen(t *testing.T, tok *Token, n int) (threads, atOnce int) {
	t.Helper()
	var (
		mu      sync.Mutex
		tids    = map[int]bool{}
		running int
		wg      sync.WaitGroup
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := tok.Do(context.Background(), "test", func(s *Session) error {
				mu.Lock()
				tids[syscall.Gettid()] = true
				running++
				atOnce = max(atOnce, running)
				mu.Unlock()
				_, err := s.SignHMAC(0, nil) // a real call, which fails: no such key
				// Held long enough that operations made side by side
				// overlap, which is what atOnce counts.
				time.Sleep(2 * time.Millisecond)
				mu.Lock()
				running--
				mu.Unlock()
				if err == nil {
					return errors.New("an HMAC with no key succeeded")
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	return len(tids), atOnce
}

// TestSoftwareCallsOnOneThread: a software token's operations, asked for
// by many goroutines at once, run one at a time on one OS thread; with
// CallThreads negative they run on their callers' goroutines, side by side.
func TestSoftwareCallsOnOneThread(t *testing.T) {
	tok, _ := openToken(t, Config{})
	if threads, atOnce := callsSeen(t, tok, 16); threads != 1 || atOnce != 1 {
		t.Fatalf("16 operations asked for at once ran on %d threads, %d at a time; want 1 and 1", threads, atOnce)
	}
	callers, _ := openToken(t, Config{CallThreads: -1})
	if _, atOnce := callsSeen(t, callers, 16); atOnce < 2 {
		t.Fatalf("16 operations on their callers' goroutines ran %d at a time; want them side by side", atOnce)
	}
}

// TestCallThreadAfterPanicAndClose: a panic in an operation is its
// caller's, with the stack where it happened, and an operation that ends
// its goroutine (as t.Fatal does) ends its caller's; either way the next
// operation is served. After Close, calls are refused.
func TestCallThreadAfterPanicAndClose(t *testing.T) {
	tok, _ := openToken(t, Config{})
	func() {
		defer func() {
			p, ok := recover().(*threadPanic)
			if !ok || p.value != "in the operation" || !strings.Contains(string(p.stack), "TestCallThreadAfterPanicAndClose") {
				t.Fatalf("the caller of an operation that panicked recovered %v; want its value and the stack where it panicked", p)
			}
		}()
		tok.Do(context.Background(), "test", func(*Session) error { panic("in the operation") })
	}()
	if err := tok.Do(context.Background(), "test", func(*Session) error { return nil }); err != nil {
		t.Fatalf("the operation after a panic: %v", err)
	}
	returned, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		tok.Do(context.Background(), "test", func(*Session) error { runtime.Goexit(); return nil })
		close(returned)
	}()
	<-exited
	select {
	case <-returned:
		t.Fatal("Do returned to the caller of an operation that ended its goroutine")
	default:
	}
	if err := tok.Do(context.Background(), "test", func(*Session) error { return nil }); err != nil {
		t.Fatalf("the operation after one that ended its goroutine: %v", err)
	}

	tok.Close()
	err := tok.Do(context.Background(), "test", func(*Session) error { t.Error("ran after Close"); return nil })
	if !errors.Is(err, exchange.ErrKeystoreUnavailable) {
		t.Fatalf("an operation after Close: %v; want ErrKeystoreUnavailable", err)
	}
}

// TestSelfTestCutShortIsNotAFailure: a readiness probe that gives up while
// the self-test waits behind the token's work gets its context's error,
// and custos_hsm_up and the next probe's answer are not the worse for it.
func TestSelfTestCutShortIsNotAFailure(t *testing.T) {
	tok, _ := openToken(t, Config{})
	var slow atomic.Bool
	slow.Store(true)
	tok.SetSelfTest(func(ctx context.Context) error {
		if slow.Load() {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := tok.Healthy(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a probe that gave up during the self-test: %v, want its deadline", err)
	}
	if got := testutil.ToFloat64(upGauge); got != 1 {
		t.Fatalf("custos_hsm_up is %v after a probe gave up, want 1", got)
	}
	slow.Store(false)
	if err := tok.Healthy(context.Background()); err != nil {
		t.Fatalf("the next probe: %v; the one cut short was remembered", err)
	}
}
