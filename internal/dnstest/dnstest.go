// Package dnstest runs an authoritative DNS server for the SRV records of
// jwcexchange (SPEC §8) on 127.0.0.1, for tests of SRV discovery that must
// not reach the network.
package dnstest

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Server answers _jwcexchange._tcp.<domain> from the records Set for
// domain, SERVFAIL for a domain it is told to Fail, and NXDOMAIN for any
// other name. Resolver asks it and nothing else.
type Server struct {
	Resolver *net.Resolver

	mu       sync.Mutex
	records  map[string][]net.SRV // by domain, without the trailing dot
	servfail map[string]bool
}

// Start runs a server on UDP and TCP on 127.0.0.1 until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	d := &Server{records: map[string][]net.SRV{}, servfail: map[string]bool{}}
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
	d.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dialer net.Dialer
		return dialer.DialContext(ctx, network, addr[strings.TrimRight(network, "46")])
	}}
	return d
}

// Set makes recs the SRV records of domain; none makes it NXDOMAIN.
func (d *Server) Set(domain string, recs ...net.SRV) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.records[domain] = recs
	if len(recs) == 0 {
		delete(d.records, domain)
	}
}

// Fail makes every query about domain answer SERVFAIL.
func (d *Server) Fail(domain string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.servfail[domain] = true
}

func (d *Server) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
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
