package p256_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"math/big"
	"os"
	"testing"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/udf"
	"github.com/custos-kx/custos/internal/wire"
)

var update = flag.Bool("update", false, "rewrite testdata/custos-kid-p256-vectors.json")

// kidVector is one key of the kid vector files.
type kidVector struct {
	Note    string          `json:"note"`
	Private string          `json:"private_scalar_hex"`
	Public  string          `json:"public_b64u"`
	SPKI    string          `json:"spki_hex"`
	KID     string          `json:"kid"`
	Key     json.RawMessage `json:"key_json"`
}

func load(t *testing.T, file string) []kidVector {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var vs []kidVector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	return vs
}

// checkVector checks every field of a kid vector against this package,
// and the key object through the wire decoder and exchange.ParseKey.
func checkVector(t *testing.T, v kidVector) {
	t.Helper()
	priv, _ := hex.DecodeString(v.Private)
	s, err := p256.NewScalar(priv)
	if err != nil {
		t.Fatalf("%s: %v", v.Note, err)
	}
	pub := s.Public()
	if got := base64.RawURLEncoding.EncodeToString(pub.Bytes()); got != v.Public {
		t.Errorf("%s: public %s, want %s", v.Note, got, v.Public)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(v.Public)
	pt, err := p256.Decode(raw)
	if err != nil {
		t.Fatalf("%s: %v", v.Note, err)
	}
	if pt.KeyID() != v.KID || pub.KeyID() != v.KID {
		t.Errorf("%s: kid %s, want %s", v.Note, pt.KeyID(), v.KID)
	}
	spki, _ := hex.DecodeString(v.SPKI)
	if got := udf.Text(udf.Fingerprint(spki)); got != v.KID {
		t.Errorf("%s: UDF of the SPKI is %s, want %s", v.Note, got, v.KID)
	}
	var k wire.PublicKey
	if err := wire.Unmarshal(v.Key, &k); err != nil {
		t.Fatalf("%s: key object: %v", v.Note, err)
	}
	key, err := exchange.ParseKey(&k, "vector")
	if err != nil || key.KeyID() != v.KID || key.Profile() != exchange.P256 {
		t.Errorf("%s: ParseKey: %v", v.Note, err)
	}
	if again, _ := json.Marshal(exchange.EncodeKey(key)); !jsonEqual(again, v.Key) {
		t.Errorf("%s: EncodeKey gives %s, want %s", v.Note, again, v.Key)
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	json.Unmarshal(a, &x)
	json.Unmarshal(b, &y)
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// TestSharedKidVectors: the six vectors computed outside the project.
func TestSharedKidVectors(t *testing.T) {
	vs := load(t, "testdata/udf-kid-p256-vectors.json")
	if len(vs) != 6 {
		t.Fatalf("%d vectors, want 6", len(vs))
	}
	for _, v := range vs {
		checkVector(t, v)
	}
}

// spkiPrefix is the DER of SubjectPublicKeyInfo up to the point for
// id-ecPublicKey on prime256v1 (RFC 5480), written out by hand so the
// vectors below do not come from crypto/x509.
var spkiPrefix, _ = hex.DecodeString("3059301306072a8648ce3d020106082a8648ce3d03010703420004")

// ownScalars are the project's own vector keys, beside the shared ones:
// small scalars, the largest, a power of two, and n−2.
var ownScalars = []struct{ note, hex string }{
	{"scalar 2", "02"},
	{"scalar 3", "03"},
	{"scalar 2^255", "8000000000000000000000000000000000000000000000000000000000000000"},
	{"scalar n-2", "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc63254f"},
	{"scalar 2^128+1", "0100000000000000000000000000000001"},
}

func ownVectors(t *testing.T) []kidVector {
	var out []kidVector
	for _, o := range ownScalars {
		b, _ := new(big.Int).SetString(o.hex, 16)
		priv := b.FillBytes(make([]byte, 32))
		k, err := ecdh.P256().NewPrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		point := k.PublicKey().Bytes()
		spki := append(append([]byte(nil), spkiPrefix...), point[1:]...)
		kid := udf.Text(udf.Fingerprint(spki))
		pub := base64.RawURLEncoding.EncodeToString(point)
		key, _ := json.Marshal(map[string]any{"PublicKeyECDH": map[string]string{"kid": kid, "crv": "P-256", "Public": pub}})
		out = append(out, kidVector{Note: o.note, Private: hex.EncodeToString(priv), Public: pub, SPKI: hex.EncodeToString(spki), KID: kid, Key: key})
	}
	return out
}

// TestOwnKidVectors checks the committed file against a computation that
// builds the SPKI by hand, then every vector against the package.
func TestOwnKidVectors(t *testing.T) {
	const file = "testdata/custos-kid-p256-vectors.json"
	want := ownVectors(t)
	if *update {
		b, _ := json.MarshalIndent(want, "", " ")
		if err := os.WriteFile(file, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := load(t, file)
	wb, _ := json.Marshal(want)
	gb, _ := json.Marshal(got)
	if !bytes.Equal(wb, gb) {
		t.Fatalf("%s differs from the hand-built SPKIs; run go test ./internal/p256 -update", file)
	}
	for _, v := range got {
		checkVector(t, v)
	}
}

func TestDecodeRefusals(t *testing.T) {
	k, _ := ecdh.P256().GenerateKey(rand.Reader)
	good := k.PublicKey().Bytes()
	offCurve := bytes.Clone(good)
	offCurve[64] ^= 1
	bigX := bytes.Clone(good)
	copy(bigX[1:33], bytes.Repeat([]byte{0xff}, 32))
	compressed := append([]byte{0x02 | good[64]&1}, good[1:33]...)
	hybrid := bytes.Clone(good)
	hybrid[0] = 0x06 | good[64]&1
	for name, b := range map[string][]byte{
		"empty":      nil,
		"identity":   {0x00},
		"compressed": compressed,
		"hybrid":     hybrid,
		"short":      good[:64],
		"long":       append(bytes.Clone(good), 0),
		"off curve":  offCurve,
		"x ≥ p":      bigX,
		"all zero":   append([]byte{4}, make([]byte, 64)...),
	} {
		if _, err := p256.Decode(b); err == nil {
			t.Errorf("%s: accepted", name)
		} else if _, ok := err.(*p256.InvalidError); !ok {
			t.Errorf("%s: error %T", name, err)
		}
	}
	if _, err := p256.Decode(good); err != nil {
		t.Fatal(err)
	}
}

func TestScalarRange(t *testing.T) {
	n, _ := hex.DecodeString("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
	for name, b := range map[string][]byte{"zero": make([]byte, 32), "n": n, "short": {1}} {
		if _, err := p256.NewScalar(b); err == nil {
			t.Errorf("%s: accepted as a private key", name)
		}
	}
	// Zero drops the key; the scalar bytes are overwritten.
	s, _ := p256.GenerateScalar(rand.Reader)
	s.Zero()
	if !bytes.Equal(s.Bytes(), make([]byte, 32)) {
		t.Fatal("Zero left the scalar")
	}
}
