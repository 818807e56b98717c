package udf

import (
	"encoding/base64"
	"encoding/json"
	"math/big"
	"os"
	"testing"
)

// group14 is the RFC 3526 prime, computed here independently of package group.
func group14() *big.Int {
	// p = 2^2048 − 2^1984 − 1 + 2^64·(⌊2^1918·π⌋ + 124476)
	p, _ := new(big.Int).SetString("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)
	return p
}

func littleEndian(v *big.Int) []byte {
	be := v.Bytes()
	le := make([]byte, len(be), len(be)+1)
	for i, c := range be {
		le[len(be)-1-i] = c
	}
	if be[0]&0x80 != 0 {
		le = append(le, 0)
	}
	return le
}

func TestDomainOfGroup14(t *testing.T) {
	d := Domain(littleEndian(group14()), []byte{2})
	if got := base64.RawURLEncoding.EncodeToString(d[:]); got != "YE6bnq1MlX5ojaJto6PLP_PEwA" {
		t.Fatalf("Domain = %s, want YE6bnq1MlX5ojaJto6PLP_PEwA", got)
	}
}

func TestKeyIDVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/udf-kid-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Domain string
		Keys   []struct {
			Note       string
			PrivateHex string `json:"private_exponent_hex"`
			Public     string
			Kid        string
		}
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Keys) < 5 {
		t.Fatalf("only %d vectors", len(file.Keys))
	}
	var domain [Size]byte
	if _, err := base64.RawURLEncoding.Decode(domain[:], []byte(file.Domain)); err != nil {
		t.Fatal(err)
	}
	p := group14()
	for _, k := range file.Keys {
		wire, err := base64.RawURLEncoding.DecodeString(k.Public)
		if err != nil {
			t.Fatalf("%s: %v", k.Note, err)
		}
		// The public value must be g^x of the listed exponent.
		x, _ := new(big.Int).SetString(k.PrivateHex, 16)
		y := new(big.Int).Exp(big.NewInt(2), x, p)
		if got := littleEndian(y); string(got) != string(wire) {
			t.Errorf("%s: Public is not g^x in .NET encoding", k.Note)
		}
		if got := KeyID(domain, wire); got != k.Kid {
			t.Errorf("%s: kid = %s, want %s", k.Note, got, k.Kid)
		}
	}
}

func TestText(t *testing.T) {
	var fp [Size]byte
	fp[0] = 0x60
	got := Text(fp)
	if len(got) != 35 || got[5] != '-' || got[:2] != "MA" {
		t.Fatalf("Text = %q", got)
	}
}

func TestIntegerQuirks(t *testing.T) {
	cases := []struct {
		in, want []byte
	}{
		{[]byte{}, []byte{2, 1, 0}},
		{[]byte{0, 0}, []byte{2, 1, 0}},
		{[]byte{0, 0x01, 0x80}, []byte{2, 2, 0x01, 0x80}},
		{[]byte{0x80, 0x01}, []byte{2, 3, 0, 0x80, 0x01}},
	}
	for _, c := range cases {
		if got := integer(c.in); string(got) != string(c.want) {
			t.Errorf("integer(% x) = % x, want % x", c.in, got, c.want)
		}
	}
	if got := tlv(4, make([]byte, 300))[:4]; string(got) != string([]byte{4, 0x82, 1, 44}) {
		t.Errorf("long length = % x", got)
	}
}
