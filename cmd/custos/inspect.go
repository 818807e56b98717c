package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/udf"
	"github.com/custos-kx/custos/internal/wire"
)

func cmdInspect(file string, stdin io.Reader, stdout, stderr io.Writer) int {
	var data []byte
	var err error
	if file == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		fmt.Fprintf(stderr, "custos inspect: %v\n", err)
		return 1
	}
	ok, err := inspect(data, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "custos inspect: %v\n", err)
		return 1
	}
	if !ok {
		return 1
	}
	return 0
}

// inspect reports on every key of the message in doc, which may be wrapped
// for display and surrounded by other text (HTTP headers, prose). It returns
// whether every check passed.
func inspect(doc []byte, w io.Writer) (bool, error) {
	start := bytes.IndexByte(doc, '{')
	if start < 0 {
		return false, fmt.Errorf("no JSON object found")
	}
	unwrapped := wire.UnwrapDisplay(string(doc[start:]))
	var raw json.RawMessage
	if err := json.NewDecoder(strings.NewReader(unwrapped)).Decode(&raw); err != nil {
		return false, fmt.Errorf("the message is not valid JSON: %v", err)
	}
	var probe map[string]json.RawMessage
	_ = json.Unmarshal(raw, &probe)

	type namedKey struct {
		role string
		key  *wire.PublicKey
	}
	var keys []namedKey
	allOK := true
	switch {
	case probe["ExchangeRequest"] != nil:
		var m wire.ExchangeRequest
		if err := wire.Unmarshal(raw, &m); err != nil {
			return false, fmt.Errorf("the ExchangeRequest does not decode: %v", err)
		}
		fmt.Fprintln(w, "ExchangeRequest")
		keys = []namedKey{{"ClientCredential", m.ClientCredential}, {"ClientNonce", m.ClientNonce}}
		if m.ClientCredential != nil && m.ClientNonce != nil && m.ClientCredential.Type != m.ClientNonce.Type {
			fmt.Fprintf(w, "  FAIL  ClientCredential is a %s key and ClientNonce a %s key; both must be of one kind\n", m.ClientCredential.Type, m.ClientNonce.Type)
			allOK = false
		}
		if m.ClientCredential != nil && m.ClientNonce != nil && bytes.Equal(m.ClientCredential.Public, m.ClientNonce.Public) {
			fmt.Fprintln(w, "  FAIL  ClientCredential and ClientNonce are the same key")
			allOK = false
		}
		if _, err := exchange.Negotiate(m.Offer); err != nil {
			fmt.Fprintln(w, "  FAIL  Offer: no supported suite (A256CBC-HS512 with HS512)")
			allOK = false
		}
	case probe["ExchangeResponse"] != nil:
		var m wire.ExchangeResponse
		if err := wire.Unmarshal(raw, &m); err != nil {
			return false, fmt.Errorf("the ExchangeResponse does not decode: %v", err)
		}
		fmt.Fprintf(w, "ExchangeResponse  Status %d %s\n", m.Status, m.StatusDescription)
		if m.Error != "" {
			fmt.Fprintf(w, "  error response: %s\n", m.Error)
			return false, nil
		}
		if len(m.Witness) != exchange.WitnessSize {
			fmt.Fprintf(w, "  FAIL  Witness is %d bytes, want %d\n", len(m.Witness), exchange.WitnessSize)
			allOK = false
		}
		keys = []namedKey{{"ServerCredential", m.ServerCredential}, {"ServerNonce", m.ServerNonce}}
	case probe["ServiceDescription"] != nil:
		var m wire.ServiceDescription
		if err := wire.Unmarshal(raw, &m); err != nil {
			return false, fmt.Errorf("the ServiceDescription does not decode: %v", err)
		}
		fmt.Fprintln(w, "ServiceDescription")
		if m.ServerCredential != nil {
			keys = append(keys, namedKey{"ServerCredential", m.ServerCredential})
		}
		for i := range m.Credentials {
			keys = append(keys, namedKey{fmt.Sprintf("Credentials[%d]", i), &m.Credentials[i]})
		}
		if len(keys) == 0 {
			fmt.Fprintln(w, "  FAIL  no credential: neither ServerCredential nor Credentials")
			allOK = false
		}
	default:
		return false, fmt.Errorf("the message is not an ExchangeRequest, ExchangeResponse or ServiceDescription")
	}
	for _, k := range keys {
		if !inspectKey(w, k.role, k.key) {
			allOK = false
		}
	}
	if allOK {
		fmt.Fprintln(w, "OK")
	} else {
		fmt.Fprintln(w, "FAIL")
	}
	return allOK, nil
}

// inspectKey prints every check of one key, not only the first failure.
func inspectKey(w io.Writer, role string, k *wire.PublicKey) bool {
	fmt.Fprintf(w, "\n%s\n", role)
	if k == nil {
		fmt.Fprintln(w, "  FAIL  missing")
		return false
	}
	ok := true
	mark := func(good bool) string {
		if good {
			return "ok  "
		}
		ok = false
		return "FAIL"
	}
	if k.Type == wire.KeyECDH {
		inspectPoint(w, k, mark)
		return ok
	}
	fmt.Fprintln(w, "  PublicKeyDH")
	domain := group.Domain()
	domainOK := bytes.Equal(k.Domain, domain[:])
	dname := "unknown group"
	if domainOK {
		dname = "RFC 3526 group 14"
	}
	fmt.Fprintf(w, "  %s  Domain         %s (%s)\n", mark(domainOK), base64.RawURLEncoding.EncodeToString(k.Domain), dname)

	_, err := group.DecodeWire(k.Public)
	member := "in the prime-order subgroup"
	if err != nil {
		member = err.(*group.InvalidError).Reason
	}
	fmt.Fprintf(w, "  %s  Public         %d bytes, %s\n", mark(err == nil), len(k.Public), member)

	computed := udf.KeyID(domain, k.Public)
	if !domainOK && len(k.Domain) == udf.Size {
		computed = udf.KeyID([udf.Size]byte(k.Domain), k.Public)
	}
	fmt.Fprintf(w, "  %s  kid given      %s\n", mark(k.KID == computed), k.KID)
	fmt.Fprintf(w, "        kid computed   %s\n", computed)
	return ok
}

// inspectPoint prints the checks of a PublicKeyECDH key (SPEC §9).
func inspectPoint(w io.Writer, k *wire.PublicKey, mark func(bool) string) {
	fmt.Fprintln(w, "  PublicKeyECDH")
	fmt.Fprintf(w, "  %s  crv            %q\n", mark(k.Curve == p256.Curve), k.Curve)
	pt, err := p256.Decode(k.Public)
	member := "an uncompressed point on the curve"
	if err != nil {
		member = err.(*p256.InvalidError).Reason
	}
	fmt.Fprintf(w, "  %s  Public         %d bytes, %s\n", mark(err == nil), len(k.Public), member)
	if err != nil {
		fmt.Fprintf(w, "  %s  kid given      %s (not checked: the point is invalid)\n", mark(false), k.KID)
		return
	}
	fmt.Fprintf(w, "  %s  kid given      %s\n", mark(k.KID == pt.KeyID()), k.KID)
	fmt.Fprintf(w, "        kid computed   %s\n", pt.KeyID())
}
