package exchange

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"testing"

	"github.com/custos-kx/custos/internal/wire"
)

// FuzzDecodeRequest feeds arbitrary bodies through what the service does
// before any token operation. It must never panic, and every refusal must
// carry a SPEC code with a 4xx status.
func FuzzDecodeRequest(f *testing.F) {
	for _, body := range seedMessages(f) {
		f.Add([]byte(body))
	}
	good, _ := json.Marshal(validRequest(f))
	f.Add(good)
	f.Add([]byte(`{"ExchangeRequest":{"ClientNonce":{"PublicKeyDH":{"kid":"","Domain":"","Public":"AA"}}}}`))
	f.Add([]byte(`{"ExchangeRequest":{"Offer":[]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var m wire.ExchangeRequest
		err := wire.Unmarshal(body, &m)
		if err == nil {
			if _, err = ParseRequest(&m); err != nil {
				_, err = ParseRekeyRequest(&m)
			}
		}
		if err != nil {
			e := AsError(err)
			if s := e.Code.Status(); s < 400 || s >= 500 {
				t.Fatalf("input refused with %d %s: %v", s, e.Code, err)
			}
			_ = e.Response()
		}
	})
}

// FuzzClientFinish feeds arbitrary responses to a pending client exchange.
func FuzzClientFinish(f *testing.F) {
	srv, _ := newServer(f)
	key, _ := GenerateClientKey(rand.Reader, ModP2048)
	_, reqMsg, _ := key.NewExchange(rand.Reader, nil)
	req, _ := ParseRequest(reqMsg)
	resp, _ := srv.Exchange(context.Background(), req, "a")
	good, _ := json.Marshal(resp)
	f.Add(good)
	f.Add([]byte(seedMessages(f)[1]))
	f.Fuzz(func(t *testing.T, body []byte) {
		var m wire.ExchangeResponse
		if wire.Unmarshal(body, &m) != nil {
			return
		}
		pending, _, _ := key.NewExchange(rand.Reader, nil)
		if _, err := pending.Finish(&m); err == nil {
			t.Fatal("a response not made for this exchange was accepted")
		}
	})
}

// FuzzOpenTicket feeds arbitrary tickets to OpenTicket with a software
// sealer (the token's framing and AES-GCM checks are the same code path
// up to the keystore). It must never panic; only tickets the service
// sealed may open, and whatever does not open is BadAuthentication.
func FuzzOpenTicket(f *testing.F) {
	srv, _ := newServer(f)
	key, _ := GenerateClientKey(rand.Reader, ModP2048)
	_, resp := exchangeOnce(f, srv, key, nil)
	f.Add([]byte(resp.Ticket))
	f.Add([]byte{1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, tkt []byte) {
		s, err := srv.openTicket(context.Background(), tkt)
		if err == nil {
			if string(tkt) != string(resp.Ticket) || s.Account == "" {
				t.Fatalf("a ticket the service did not seal opened: %x", tkt)
			}
			return
		}
		if e := AsError(err); e.Code != BadAuthentication {
			t.Fatalf("ticket refused as %s: %v", e.Code, err)
		}
	})
}
