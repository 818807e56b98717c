package httpapi

import (
	"net/http/httptest"
	"net/netip"
	"testing"
)

// TestClientAddress: the per-address limits count an IPv4 address, or the
// /64 of an IPv6 one, which a single host is commonly given whole; behind
// a trusted proxy, the address it forwarded, and never one the client
// wrote itself.
func TestClientAddress(t *testing.T) {
	direct := &Service{}
	for remote, want := range map[string]string{
		"192.0.2.7:4000":                 "192.0.2.7",
		"[2001:db8:1:2:aaaa::1]:4000":    "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff:ffff::]:443": "2001:db8:1:2::/64",
		"[::ffff:192.0.2.7]:4000":        "192.0.2.7",
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = remote
		r.Header.Set("X-Forwarded-For", "203.0.113.9") // from a proxy not trusted: ignored
		if got := direct.clientAddress(r); got != want {
			t.Errorf("%s: counted as %s, want %s", remote, got, want)
		}
	}

	behind := &Service{cfg: Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32")}}}
	for _, c := range []struct {
		remote string
		xff    []string
		want   string
	}{
		{"127.0.0.1:5000", []string{"192.0.2.7"}, "192.0.2.7"},
		{"127.0.0.1:5000", nil, "127.0.0.1"},
		// The client prepends a lie; the balancer appends the truth.
		{"127.0.0.1:5000", []string{"198.51.100.1, 192.0.2.7"}, "192.0.2.7"},
		{"127.0.0.1:5000", []string{"198.51.100.1", "192.0.2.7"}, "192.0.2.7"},
		// Two trusted hops: the address before them.
		{"127.0.0.1:5000", []string{"192.0.2.7, 10.1.2.3"}, "192.0.2.7"},
		{"127.0.0.1:5000", []string{"2001:db8:1:2::5"}, "2001:db8:1:2::/64"},
		// Garbage where an address should be: the proxy itself is counted.
		{"127.0.0.1:5000", []string{"192.0.2.7, not-an-address"}, "127.0.0.1"},
		// Not from a trusted proxy: its header counts for nothing.
		{"192.0.2.50:5000", []string{"192.0.2.7"}, "192.0.2.50"},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.remote
		for _, v := range c.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := behind.clientAddress(r); got != c.want {
			t.Errorf("%s with X-Forwarded-For %q: counted as %s, want %s", c.remote, c.xff, got, c.want)
		}
	}
}
