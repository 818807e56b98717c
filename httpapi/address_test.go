package httpapi

import (
	"net/http/httptest"
	"testing"
)

// TestClientAddress: the per-address limits count an IPv4 address, or the
// /64 of an IPv6 one, which a single host is commonly given whole.
func TestClientAddress(t *testing.T) {
	for remote, want := range map[string]string{
		"192.0.2.7:4000":                 "192.0.2.7",
		"[2001:db8:1:2:aaaa::1]:4000":    "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff:ffff::]:443": "2001:db8:1:2::/64",
		"[::ffff:192.0.2.7]:4000":        "192.0.2.7",
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = remote
		if got := clientAddress(r); got != want {
			t.Errorf("%s: counted as %s, want %s", remote, got, want)
		}
	}
}
