package client

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/jwc"
)

// echoSigner answers every request as the service would: 200, a small
// body, and a JWC-Signature over it under the session's AK.
type echoSigner struct{ ak *jwc.MACKey }

func (e echoSigner) RoundTrip(r *http.Request) (*http.Response, error) {
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "JWC ")
	req, _ := jwc.Parse(tok)
	c, _ := req.Verify(e.ak)
	body := []byte(`{"account":"a"}`)
	h := http.Header{"Content-Type": {"application/json"}}
	hdh, _ := jwc.HeaderHash([]string{"content-type"}, h)
	sig, _ := jwc.SignResponse(e.ak, &jwc.ResponseClaims{ID: c.ID, Method: c.Method, Target: c.Target, Status: 200,
		BodyHash: jwc.BodyHash(body), Headers: []string{"content-type"}, HeaderHash: hdh})
	h.Set("JWC-Signature", sig)
	return &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(bytes.NewReader(body)), Request: r}, nil
}

func BenchmarkTransportRoundTrip(b *testing.B) {
	key, _ := exchange.GenerateClientKey(rand.Reader, exchange.ModP2048)
	s := &exchange.Session{Ticket: bytes.Repeat([]byte{7}, 200), Suite: exchange.DefaultSuite, ServerCredential: key.Public()}
	rand.Read(s.AK[:])
	st := &State{}
	tr := &Transport{Key: key, State: st, Base: echoSigner{jwc.NewMACKey(s.AK[:], "")}}
	tr.init()
	sess := newSession(s, tr.Now(), tr.Now())
	st.setSession("http://x", key.Public().KeyID(), sess)
	hc := &http.Client{Transport: tr}
	b.ReportAllocs()
	for b.Loop() {
		resp, err := hc.Get("http://x/v1/whoami")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
