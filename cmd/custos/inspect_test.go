package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
