package client

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// SRV discovery against a real DNS server on loopback, started by the test:
// the resolver is Go's own, dialling only that server.

// testDNS is an authoritative DNS server for _jwcexchange._tcp.<domain>
// names, on UDP and TCP on 127.0.0.1.
type testDNS struct {
	mu       sync.Mutex
	records  map[string][]net.SRV // by domain, without the trailing dot
	servfail map[string]bool

	resolver *net.Resolver
}

func newTestDNS(t *testing.T) *testDNS {
	t.Helper()
	d := &testDNS{records: map[string][]net.SRV{}, servfail: map[string]bool{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 2)
	for _, srv := range []*dns.Server{{PacketConn: pc}, {Listener: ln}} {
		srv.Handler = dns.HandlerFunc(d.serveDNS)
		srv.NotifyStartedFunc = func() { started <- struct{}{} }
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
	}
	for range 2 {
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("the test DNS server did not start")
		}
	}
	addr := map[string]string{"udp": pc.LocalAddr().String(), "tcp": ln.Addr().String()}
	d.resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dialer net.Dialer
		return dialer.DialContext(ctx, network, addr[strings.TrimRight(network, "46")])
	}}
	return d
}

// set makes recs the SRV records of domain; none makes it NXDOMAIN.
func (d *testDNS) set(domain string, recs ...net.SRV) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.records[domain] = recs
	if len(recs) == 0 {
		delete(d.records, domain)
	}
}

// fail makes every query about domain answer SERVFAIL.
func (d *testDNS) fail(domain string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.servfail[domain] = true
}

func (d *testDNS) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	q := req.Question[0]
	domain, ok := strings.CutPrefix(strings.TrimSuffix(strings.ToLower(q.Name), "."), "_jwcexchange._tcp.")
	d.mu.Lock()
	recs, found := d.records[domain]
	fail := d.servfail[domain]
	d.mu.Unlock()
	switch {
	case fail:
		m.Rcode = dns.RcodeServerFailure
	case !ok || !found:
		m.Rcode = dns.RcodeNameError
	case q.Qtype == dns.TypeSRV:
		for _, r := range recs {
			m.Answer = append(m.Answer, &dns.SRV{
				Hdr:      dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 60},
				Priority: r.Priority, Weight: r.Weight, Port: r.Port, Target: r.Target,
			})
		}
	}
	w.WriteMsg(m)
}

// origins looks domain up n times and counts the origins returned.
func (d *testDNS) origins(t *testing.T, domain string, n int) map[string]int {
	t.Helper()
	l := &ServiceLookup{Resolver: d.resolver}
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
	d := newTestDNS(t)
	backup := net.SRV{Target: "backup.example.test.", Port: 443, Priority: 20, Weight: 100}
	d.set("example.test",
		backup,
		net.SRV{Target: "a.example.test.", Port: 8443, Priority: 10, Weight: 1},
		net.SRV{Target: "b.example.test.", Port: 8443, Priority: 10, Weight: 3},
	)
	for o, n := range d.origins(t, "example.test", 500) {
		if o != "https://a.example.test:8443" && o != "https://b.example.test:8443" {
			t.Errorf("%s chosen %d times while priority 10 has targets", o, n)
		}
	}
	// Once the lowest priority is gone, the next one serves.
	d.set("example.test", backup)
	for o, n := range d.origins(t, "example.test", 50) {
		if o != "https://backup.example.test" {
			t.Errorf("%s chosen %d times; want https://backup.example.test (port 443 left out)", o, n)
		}
	}
}

func TestServiceLookupWeights(t *testing.T) {
	d := newTestDNS(t)
	d.set("example.test",
		net.SRV{Target: "light.example.test.", Port: 8443, Priority: 10, Weight: 1},
		net.SRV{Target: "heavy.example.test.", Port: 8443, Priority: 10, Weight: 3},
	)
	const n = 2000
	seen := d.origins(t, "example.test", n)
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
	d := newTestDNS(t)
	d.set("example.test",
		net.SRV{Target: "spare.example.test.", Port: 8443, Priority: 10, Weight: 0},
		net.SRV{Target: "main.example.test.", Port: 8443, Priority: 10, Weight: 3},
	)
	const n = 2000
	seen := d.origins(t, "example.test", n)
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
	d := newTestDNS(t)
	d.set("default.test", net.SRV{Target: "api.default.test.", Port: 80, Priority: 1, Weight: 1})
	d.set("other.test", net.SRV{Target: "api.other.test.", Port: 8080, Priority: 1, Weight: 1})
	// LookupSRV drops a target that is not a domain name, such as an
	// address, and keeps the others.
	d.set("malformed.test",
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
		got, err := (&ServiceLookup{Resolver: d.resolver, PlainHTTP: c.plainHTTP}).Origin(t.Context(), c.domain)
		if err != nil || got != c.want {
			t.Errorf("Origin(%q, PlainHTTP=%v) = %q, %v; want %q", c.domain, c.plainHTTP, got, err, c.want)
		}
	}
}

func TestServiceLookupErrors(t *testing.T) {
	d := newTestDNS(t)
	d.set("closed.test", net.SRV{Target: ".", Port: 0})
	d.fail("broken.test")
	for domain, want := range map[string]string{
		"closed.test":  `the DNS SRV record _jwcexchange._tcp.closed.test says the service is not available at closed.test`,
		"nowhere.test": "nowhere.test has no DNS SRV record _jwcexchange._tcp.nowhere.test: publish one, or give the service's URL instead",
		"broken.test":  "could not look up the DNS SRV record _jwcexchange._tcp.broken.test",
		"":             "no domain",
	} {
		o, err := (&ServiceLookup{Resolver: d.resolver}).Origin(t.Context(), domain)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Origin(%q) = %q, %v; want an error saying %q", domain, o, err, want)
		}
	}
}
