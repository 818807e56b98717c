package exchange

import (
	"slices"

	"github.com/custos-kx/custos/internal/wire"
)

// Algorithm identifiers (JOSE names).
const (
	A256CBCHS512 = "A256CBC-HS512"
	HS512        = "HS512"
)

// Suite is a chosen pair of algorithms.
type Suite struct {
	Encryption     string
	Authentication string
}

// DefaultSuite is what a request without an Offer gets; in v1 it is also
// the only suite.
var DefaultSuite = Suite{Encryption: A256CBCHS512, Authentication: HS512}

// Supported lists what the service supports, for discovery.
var Supported = wire.Suite{Encryption: []string{A256CBCHS512}, Authentication: []string{HS512}}

// Negotiate picks the first offered suite the service supports. An absent
// (nil) offer means the default suite; an empty one offers nothing.
func Negotiate(offer []wire.Suite) (Suite, error) {
	if offer == nil {
		return DefaultSuite, nil
	}
	for _, s := range offer {
		if slices.Contains(s.Encryption, A256CBCHS512) && slices.Contains(s.Authentication, HS512) {
			return DefaultSuite, nil
		}
	}
	return Suite{}, Errorf(NoCommonAlgorithm, "None of the offered suites is supported; offer Encryption A256CBC-HS512 with Authentication HS512, or omit Offer.")
}
