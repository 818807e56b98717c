package client

import (
	"net"
	"strings"
	"testing"

	"github.com/custos-kx/custos/internal/dnstest"
)

// SRV discovery against a real DNS server on loopback, started by the test:
// the resolver is Go's own, dialling only that server.

// origins looks the service of domain up n times and counts the origins.
func origins(d *dnstest.Server, t *testing.T, domain string, n int) map[string]int {
	t.Helper()
	l := &ServiceLookup{Resolver: d.Resolver}
	seen := map[string]int{}
	for range n {
		o, err := l.Origin(t.Context(), domain)
		if err != nil {
			t.Fatal(err)
		}
		seen[o]++
	}
	return seen
}

func TestServiceLookupPriority(t *testing.T) {
	d := dnstest.Start(t)
	backup := net.SRV{Target: "backup.example.test.", Port: 443, Priority: 20, Weight: 100}
	d.Set("example.test",
		backup,
		net.SRV{Target: "a.example.test.", Port: 8443, Priority: 10, Weight: 1},
		net.SRV{Target: "b.example.test.", Port: 8443, Priority: 10, Weight: 3},
	)
	for o, n := range origins(d, t, "example.test", 500) {
		if o != "https://a.example.test:8443" && o != "https://b.example.test:8443" {
			t.Errorf("%s chosen %d times while priority 10 has targets", o, n)
		}
	}
	// Once the lowest priority is gone, the next one serves.
	d.Set("example.test", backup)
	for o, n := range origins(d, t, "example.test", 50) {
		if o != "https://backup.example.test" {
			t.Errorf("%s chosen %d times; want https://backup.example.test (port 443 left out)", o, n)
		}
	}
}

func TestServiceLookupWeights(t *testing.T) {
	d := dnstest.Start(t)
	d.Set("example.test",
		net.SRV{Target: "light.example.test.", Port: 8443, Priority: 10, Weight: 1},
		net.SRV{Target: "heavy.example.test.", Port: 8443, Priority: 10, Weight: 3},
	)
	const n = 2000
	seen := origins(d, t, "example.test", n)
	light, heavy := seen["https://light.example.test:8443"], seen["https://heavy.example.test:8443"]
	if light+heavy != n {
		t.Fatalf("unexpected origins: %v", seen)
	}
	// 3/4 expected; the bounds are many standard deviations away.
	if f := float64(heavy) / n; light == 0 || f < 0.6 || f > 0.9 {
		t.Errorf("the weight-3 target was chosen %d times of %d and the weight-1 one %d times; want about 3:1", heavy, n, light)
	}
}

func TestServiceLookupZeroWeight(t *testing.T) {
	d := dnstest.Start(t)
	d.Set("example.test",
		net.SRV{Target: "spare.example.test.", Port: 8443, Priority: 10, Weight: 0},
		net.SRV{Target: "main.example.test.", Port: 8443, Priority: 10, Weight: 3},
	)
	const n = 2000
	seen := origins(d, t, "example.test", n)
	// RFC 2782 draws in [0, 3]: the weight-0 record first wins on 0 only.
	if spare := seen["https://spare.example.test:8443"]; spare < n/10 || spare > n*4/10 {
		t.Errorf("the weight-0 target was chosen %d times of %d; want about a quarter: %v", spare, n, seen)
	}
}

func TestChooseRFC2782(t *testing.T) {
	z := &net.SRV{Target: "z.", Weight: 0}
	a := &net.SRV{Target: "a.", Weight: 1}
	b := &net.SRV{Target: "b.", Weight: 3}
	group := []*net.SRV{z, a, b}
	for n, want := range []*net.SRV{z, a, b, b, b} {
		if got := choose(group, n); got != want {
			t.Errorf("choose(n=%d) = %s, want %s", n, got.Target, want.Target)
		}
	}
}

func TestServiceLookupOrigin(t *testing.T) {
	d := dnstest.Start(t)
	d.Set("default.test", net.SRV{Target: "api.default.test.", Port: 80, Priority: 1, Weight: 1})
	d.Set("other.test", net.SRV{Target: "api.other.test.", Port: 8080, Priority: 1, Weight: 1})
	// LookupSRV drops a target that is not a domain name, such as an
	// address, and keeps the others.
	d.Set("malformed.test",
		net.SRV{Target: "192.0.2.1.", Port: 8443, Priority: 1, Weight: 1},
		net.SRV{Target: "api.malformed.test.", Port: 8443, Priority: 2, Weight: 1},
	)
	for _, c := range []struct {
		domain    string
		plainHTTP bool
		want      string
	}{
		{"default.test", false, "https://api.default.test:80"},
		{"default.test", true, "http://api.default.test"},
		{"default.test.", true, "http://api.default.test"},
		{"other.test", true, "http://api.other.test:8080"},
		{"malformed.test", false, "https://api.malformed.test:8443"},
	} {
		got, err := (&ServiceLookup{Resolver: d.Resolver, PlainHTTP: c.plainHTTP}).Origin(t.Context(), c.domain)
		if err != nil || got != c.want {
			t.Errorf("Origin(%q, PlainHTTP=%v) = %q, %v; want %q", c.domain, c.plainHTTP, got, err, c.want)
		}
	}
}

func TestServiceLookupErrors(t *testing.T) {
	d := dnstest.Start(t)
	d.Set("closed.test", net.SRV{Target: ".", Port: 0})
	d.Fail("broken.test")
	for domain, want := range map[string]string{
		"closed.test":  `the DNS SRV record _jwcexchange._tcp.closed.test says the service is not available at closed.test`,
		"nowhere.test": "nowhere.test has no DNS SRV record _jwcexchange._tcp.nowhere.test: publish one, or give the service's URL instead",
		"broken.test":  "could not look up the DNS SRV record _jwcexchange._tcp.broken.test",
		"":             "no domain",
	} {
		o, err := (&ServiceLookup{Resolver: d.Resolver}).Origin(t.Context(), domain)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Origin(%q) = %q, %v; want an error saying %q", domain, o, err, want)
		}
	}
}
