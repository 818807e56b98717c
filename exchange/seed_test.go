package exchange

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/custos-kx/custos/internal/wire"
)

// seedMessages returns the JSON bodies of testdata/jwcexchange-example.md with
// the example's display wrapping undone: its formatter broke long strings
// with raw newlines, which are not valid inside JSON strings. Only this
// harness removes them; the decoder stays strict.
func seedMessages(t testing.TB) []string {
	t.Helper()
	doc, err := os.ReadFile("testdata/jwcexchange-example.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, block := range strings.Split(string(doc), "~~~~")[1:] {
		i := strings.Index(block, "{")
		if i < 0 || !strings.Contains(block, "Exchange") {
			continue
		}
		out = append(out, wire.UnwrapDisplay(block[i:]))
	}
	if len(out) != 2 {
		t.Fatalf("found %d messages in the example, want 2", len(out))
	}
	return out
}

func TestSeedRequest(t *testing.T) {
	body := seedMessages(t)[0]
	var m wire.ExchangeRequest
	if err := wire.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("the example request does not decode: %v", err)
	}
	if m.ClientCredential.KID != "MBPYH-H2LPG-VWBJF-MA7GC-NZG4X-M3G2A" || m.ClientNonce.KID != "MAGDI-IMZJX-3QNLR-62K7E-BBSGW-GKCM6" {
		t.Fatal("kids not read")
	}
	req, err := ParseRequest(&m)
	if err != nil {
		t.Fatalf("the example request is refused: %v", err)
	}
	if req.CredentialKID() != m.ClientCredential.KID || req.Suite != DefaultSuite {
		t.Fatal("parsed request differs from the example")
	}
	roundTrip(t, body, &m, &wire.ExchangeRequest{})
}

func TestSeedResponse(t *testing.T) {
	body := seedMessages(t)[1]
	var m wire.ExchangeResponse
	if err := wire.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("the example response does not decode: %v", err)
	}
	for _, k := range []struct {
		key  *wire.PublicKey
		role string
		kid  string
	}{
		{m.ServerCredential, "ServerCredential", "MC7JQ-NDPOL-QZ6D6-RQMST-AFKOB-YDDYE"},
		{m.ServerNonce, "ServerNonce", "MCETO-ASH24-Z73CX-U33NC-WETKU-57SWJ"},
	} {
		e, err := ParseKey(k.key, k.role)
		if err != nil {
			t.Fatalf("%s refused: %v", k.role, err)
		}
		if e.KeyID() != k.kid {
			t.Errorf("%s kid = %s, want %s", k.role, e.KeyID(), k.kid)
		}
	}
	if m.Status != 201 || len(m.Witness) != 32 || string(m.Ticket) != "Opaque value outside scope of specification" {
		t.Fatalf("response members not read: %+v", m)
	}
	roundTrip(t, body, &m, &wire.ExchangeResponse{})
}

// roundTrip encodes a decoded message, decodes it again, and compares.
func roundTrip[T any](t *testing.T, orig string, m *T, again *T) {
	t.Helper()
	enc, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(string(enc), "\r\n\t") {
		t.Errorf("encoding contains white space: %s", enc)
	}
	if err := wire.Unmarshal(enc, again); err != nil {
		t.Fatalf("re-encoded message does not decode: %v", err)
	}
	enc2, _ := json.Marshal(again)
	if string(enc) != string(enc2) {
		t.Fatalf("round trip changed the message:\n%s\n%s", enc, enc2)
	}
	// Every base64url value of the original appears unchanged (wrapping aside).
	for _, field := range []string{"YE6bnq1MlX5ojaJto6PLP_PEwA", "MBPYH-H2LPG", "uTDCL_X_WOfx0TtwfiF5bNZYBTAco7fcRkxyXpDV9kA"} {
		if strings.Contains(orig, field) && !strings.Contains(string(enc), field) {
			t.Errorf("%s lost in the round trip", field)
		}
	}
}

func TestSeedWrappedIsNotJSON(t *testing.T) {
	doc, _ := os.ReadFile("testdata/jwcexchange-example.md")
	block := strings.Split(string(doc), "~~~~")[1]
	var m wire.ExchangeRequest
	if err := wire.Unmarshal([]byte(block[strings.Index(block, "{"):]), &m); err == nil {
		t.Fatal("the decoder accepted raw newlines inside JSON strings")
	}
}
