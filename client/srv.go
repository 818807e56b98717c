package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
)

// A ServiceLookup finds the Custos service of a domain by the DNS SRV
// record _jwcexchange._tcp.<domain> (SPEC §8, RFC 2782), so that clients
// can be given a domain instead of a URL. The zero value uses
// net.DefaultResolver and returns https origins.
//
//	origin, err := (&client.ServiceLookup{}).Origin(ctx, "example.com")
//	err = tr.Exchange(ctx, origin)
type ServiceLookup struct {
	// Resolver answers the query; nil means net.DefaultResolver.
	Resolver *net.Resolver
	// PlainHTTP makes Origin return http:// origins instead of https://,
	// for a service on loopback in tests. The exchange still
	// authenticates the service; only TLS is missing.
	PlainHTTP bool
}

// Origin looks up _jwcexchange._tcp.<domain> and returns the origin of the
// service it names, as "https://host:port". The record is chosen as RFC
// 2782 says: among the records of the lowest priority, at random by
// weight, a weight-0 record having a small chance. The port is left out when it is the
// scheme's default, so that the origin names the same pins and sessions
// as the service's URL would.
//
// A domain that publishes only the target "." says the service is
// decidedly not available there; Origin reports so rather than trying
// anything else.
func (l *ServiceLookup) Origin(ctx context.Context, domain string) (string, error) {
	domain = strings.TrimSuffix(domain, ".")
	if domain == "" {
		return "", errors.New("client: no domain to look up the service of")
	}
	name := "_jwcexchange._tcp." + domain
	r := l.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	// LookupSRV may return the records that are well-formed together
	// with an error about those that are not; the well-formed ones are
	// still the domain's word, so an error counts only when none is left.
	_, recs, err := r.LookupSRV(ctx, "jwcexchange", "tcp", domain)
	if len(recs) == 0 {
		var dnsErr *net.DNSError
		switch {
		case errors.As(err, &dnsErr) && dnsErr.IsNotFound, err == nil:
			return "", fmt.Errorf("client: %s has no DNS SRV record %s: publish one, or give the service's URL instead", domain, name)
		default:
			return "", fmt.Errorf("client: could not look up the DNS SRV record %s: %w", name, err)
		}
	}
	// "." is meaningful only as the one record; among others it is
	// skipped, as a target that cannot be reached would be.
	var usable []*net.SRV
	for _, rec := range recs {
		if rec.Target != "." {
			usable = append(usable, rec)
		}
	}
	if len(usable) == 0 {
		return "", fmt.Errorf("client: the DNS SRV record %s says the service is not available at %s (its target is \".\")", name, domain)
	}
	rec := pick(usable)
	scheme, defaultPort := "https", uint16(443)
	if l.PlainHTTP {
		scheme, defaultPort = "http", 80
	}
	host := strings.TrimSuffix(rec.Target, ".") // a domain name: LookupSRV drops the others
	if rec.Port == defaultPort {
		return scheme + "://" + host, nil
	}
	return scheme + "://" + net.JoinHostPort(host, strconv.Itoa(int(rec.Port))), nil
}

// pick chooses one of recs as RFC 2782 says. recs come from LookupSRV,
// which sorts them by priority: the lowest priority is recs[0]'s, and this
// relies on it. LookupSRV also shuffles each priority by weight, but in a
// way that never puts a weight-0 record first while a weighted one shares
// its priority, where RFC 2782 gives it a small chance; so the choice
// within the priority is made here, with the RFC's own procedure.
func pick(recs []*net.SRV) *net.SRV {
	// The records of the lowest priority, weight-0 ones first, each
	// kind in the order it came.
	var zero, weighted []*net.SRV
	total := 0
	for _, rec := range recs {
		if rec.Priority != recs[0].Priority {
			break
		}
		if rec.Weight == 0 {
			zero = append(zero, rec)
		} else {
			weighted = append(weighted, rec)
		}
		total += int(rec.Weight)
	}
	group := append(zero, weighted...)
	return choose(group, rand.IntN(total+1))
}

// choose returns the first record of group whose running sum of weights
// is at least n, for n in [0, sum of weights], as RFC 2782 describes.
func choose(group []*net.SRV, n int) *net.SRV {
	sum := 0
	for _, rec := range group {
		sum += int(rec.Weight)
		if sum >= n {
			return rec
		}
	}
	return group[len(group)-1] // unreachable for n in range
}
