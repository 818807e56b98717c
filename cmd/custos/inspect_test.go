package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/wire"
)

func seedDoc(t *testing.T) string {
	b, err := os.ReadFile("../../exchange/testdata/jwcexchange-example.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func runInspect(t *testing.T, doc string) (int, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "msg")
	os.WriteFile(path, []byte(doc), 0o644)
	var out, errOut bytes.Buffer
	code := run([]string{"inspect", path}, nil, &out, &errOut)
	return code, out.String() + errOut.String()
}

func TestInspectSeed(t *testing.T) {
	parts := strings.Split(seedDoc(t), "~~~~")
	for i, want := range map[int][]string{
		1: {"ExchangeRequest", "MBPYH-H2LPG-VWBJF-MA7GC-NZG4X-M3G2A", "MAGDI-IMZJX-3QNLR-62K7E-BBSGW-GKCM6", "RFC 3526 group 14"},
		3: {"ExchangeResponse", "MC7JQ-NDPOL-QZ6D6-RQMST-AFKOB-YDDYE", "MCETO-ASH24-Z73CX-U33NC-WETKU-57SWJ"},
	} {
		code, out := runInspect(t, parts[i]) // with its HTTP headers and display wrapping
		if code != 0 || !strings.HasSuffix(out, "OK\n") || strings.Contains(out, "FAIL") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		for _, w := range want {
			if strings.Count(out, w) < 1 {
				t.Errorf("output lacks %s:\n%s", w, out)
			}
		}
	}
}

func TestInspectFailures(t *testing.T) {
	req := strings.Split(seedDoc(t), "~~~~")[1]
	cases := map[string]struct{ doc, want string }{
		"kid":    {strings.Replace(req, "MBPYH-H2LPG", "MBPYH-H2LPA", 1), "kid given      MBPYH-H2LPA"},
		"domain": {strings.Replace(req, "YE6bnq1MlX5ojaJto6PLP_PEwA", "YE7bnq1MlX5ojaJto6PLP_PEwA", 1), "unknown group"},
		"value":  {strings.Replace(req, "nudLU-QNEzb5AWBr2dWOBw", "nudLU-QNEzb5AWBr2dWOBA", 1), "FAIL  Public"},
		"json":   {"{not json", "not valid JSON"},
	}
	for name, c := range cases {
		code, out := runInspect(t, c.doc)
		if code == 0 || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, output:\n%s", name, code, out)
		}
	}
}

// TestInspectP256 checks PublicKeyECDH messages as DH ones are checked:
// a valid P-256 request passes, and each broken key is named.
func TestInspectP256(t *testing.T) {
	key, err := exchange.GenerateClientKey(rand.Reader, exchange.P256)
	if err != nil {
		t.Fatal(err)
	}
	_, msg, _ := key.NewExchange(rand.Reader, nil)
	good, _ := json.Marshal(msg)
	if code, out := runInspect(t, string(good)); code != 0 || !strings.HasSuffix(out, "OK\n") || !strings.Contains(out, "PublicKeyECDH") || !strings.Contains(out, key.Public().KeyID()) {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	var m wire.ExchangeRequest
	wire.Unmarshal(good, &m)
	point := m.ClientNonce.Public
	compressed := append([]byte{2 | point[64]&1}, point[1:33]...)
	dhKey, _ := exchange.GenerateClientKey(rand.Reader, exchange.ModP2048)
	for name, c := range map[string]struct {
		mutate func(m *wire.ExchangeRequest)
		want   string
	}{
		"kid":        {func(m *wire.ExchangeRequest) { m.ClientNonce.KID = "MAAAA" }, "FAIL  kid given      MAAAA"},
		"curve":      {func(m *wire.ExchangeRequest) { m.ClientNonce.Curve = "P-384" }, `FAIL  crv            "P-384"`},
		"compressed": {func(m *wire.ExchangeRequest) { m.ClientNonce.Public = compressed }, "the point is compressed"},
		"mixed":      {func(m *wire.ExchangeRequest) { m.ClientNonce = exchange.EncodeKey(dhKey.Public()) }, "both must be of one kind"},
	} {
		var bad wire.ExchangeRequest
		wire.Unmarshal(good, &bad)
		c.mutate(&bad)
		b, _ := json.Marshal(&bad)
		if code, out := runInspect(t, string(b)); code == 0 || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, output:\n%s", name, code, out)
		}
	}
}
