package httpapi

import (
	"context"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/ratelimit"
)

// Limits bound what one client can make the service spend on exchanges
// and rekeys, the requests that cost token time. Zero values take the
// defaults; a negative rate turns that limit off.
type Limits struct {
	// PerAddress is exchanges and rekeys per second from one client IP
	// address, with bursts of AddressBurst.
	PerAddress   float64
	AddressBurst int
	// PerAccount is exchanges and rekeys per second for one account, with
	// bursts of AccountBurst. It is checked once the account is known.
	PerAccount   float64
	AccountBurst int
	// FailedOpens is session tickets per second from one address that may
	// fail to open (each costs a token operation), with bursts of
	// FailedOpenBurst; beyond it tickets from that address that are not
	// in memory are refused 429 without a token operation.
	FailedOpens     float64
	FailedOpenBurst int
	// MaxQueued bounds the exchanges waiting for their turn (see
	// Config.MaxExchanges; default 64 × MaxExchanges or TokenSessions,
	// whichever is more); beyond it they are refused at once.
	MaxQueued int
}

// Default limits: a client exchanges once per session and rekeys about
// hourly, so these leave room for fleets behind one address while keeping
// a flood from one source off the token.
const (
	DefaultPerAddress   = 20
	DefaultAddressBurst = 50
	DefaultPerAccount   = 5
	DefaultAccountBurst = 20
	// A client whose ticket the service no longer knows fails one open,
	// then exchanges again.
	DefaultFailedOpens     = 1
	DefaultFailedOpenBurst = 10
)

func (l Limits) withDefaults(maxExchanges int) Limits {
	if l.PerAddress == 0 {
		l.PerAddress, l.AddressBurst = DefaultPerAddress, DefaultAddressBurst
	}
	if l.PerAccount == 0 {
		l.PerAccount, l.AccountBurst = DefaultPerAccount, DefaultAccountBurst
	}
	if l.FailedOpens == 0 {
		l.FailedOpens, l.FailedOpenBurst = DefaultFailedOpens, DefaultFailedOpenBurst
	}
	if l.FailedOpenBurst <= 0 {
		l.FailedOpenBurst = max(1, int(math.Ceil(l.FailedOpens)))
	}
	if l.AddressBurst <= 0 {
		l.AddressBurst = max(1, int(math.Ceil(l.PerAddress)))
	}
	if l.AccountBurst <= 0 {
		l.AccountBurst = max(1, int(math.Ceil(l.PerAccount)))
	}
	if l.MaxQueued <= 0 {
		l.MaxQueued = 64 * maxExchanges
	}
	return l
}

// Limiter is one rate limit, kept per key (an address, an account). The
// default keeps its buckets in this process's memory, so N replicas allow N
// times the rate; internal/sharedstore shares them through Redis.
type Limiter interface {
	// Allow takes a token for key, or says how long until one is
	// available. An error means it could not tell, and the request is
	// refused 503.
	Allow(ctx context.Context, key string) (ok bool, retry time.Duration, err error)
	// Peek says whether key has a token, without taking it.
	Peek(ctx context.Context, key string) (ok bool, retry time.Duration, err error)
}

// NewLimiter makes the Limiter named name ("address", "account",
// "failed-open") of perSecond tokens a second and bursts of burst.
type NewLimiter func(name string, perSecond float64, burst int) Limiter

// memoryLimiter is the default Limiter.
type memoryLimiter struct {
	b   *ratelimit.Buckets
	now func() time.Time
}

func (m memoryLimiter) Allow(_ context.Context, key string) (bool, time.Duration, error) {
	ok, retry := m.b.Allow(key, m.now())
	return ok, retry, nil
}

func (m memoryLimiter) Peek(_ context.Context, key string) (bool, time.Duration, error) {
	ok, retry := m.b.Peek(key, m.now())
	return ok, retry, nil
}

// unlimited is the Limiter of a limit turned off.
type unlimited struct{}

func (unlimited) Allow(context.Context, string) (bool, time.Duration, error) { return true, 0, nil }
func (unlimited) Peek(context.Context, string) (bool, time.Duration, error)  { return true, 0, nil }

// newLimiter makes a limit of cfg, turned off when perSecond is negative.
func (cfg *Config) newLimiter(name string, perSecond float64, burst int) Limiter {
	switch {
	case perSecond < 0:
		return unlimited{}
	case cfg.Limiter != nil:
		return cfg.Limiter(name, perSecond, burst)
	}
	return memoryLimiter{ratelimit.New(perSecond, burst), cfg.Now}
}

// take applies the limit l to key: nil when a token was taken, else the
// refusal to send.
func (s *Service) take(ctx context.Context, l Limiter, key, who string) *exchange.Error {
	ok, retry, err := l.Allow(ctx, key)
	if err != nil {
		return s.refusal("rate limit", exchange.SharedStoreError(err))
	}
	if !ok {
		return rateLimited(who, retry)
	}
	return nil
}

func rateLimited(who string, retry time.Duration) *exchange.Error {
	e := exchange.Errorf(exchange.RateLimited, "Too many exchanges and rekeys from %s; retry after %s.", who, retryAfter(retry)+"s")
	e.RetryAfter = retry
	return e
}

func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}

// clientAddress is what the per-address limits count: the client's IPv4
// address, or the /64 of its IPv6 address, since one host is commonly
// given a whole /64 and could otherwise rotate through it. Behind a load
// balancer or proxy in Config.TrustedProxies, the client is the last
// address in X-Forwarded-For that is not itself a trusted proxy: the
// entries before it are whatever the client chose to send.
func (s *Service) clientAddress(r *http.Request) string { return s.clientAddr(r.RemoteAddr, r.Header) }

// clientAddr is clientAddress of a request from the peer remote with the
// headers h.
func (s *Service) clientAddr(remote string, h http.Header) string {
	peer, ok := parseAddr(remote)
	if !ok {
		return remote
	}
	if s.trusted(peer) {
		fwd := h.Values("X-Forwarded-For")
		for i := len(fwd) - 1; i >= 0; i-- {
			hops := strings.Split(fwd[i], ",")
			for j := len(hops) - 1; j >= 0; j-- {
				ip, err := netip.ParseAddr(strings.TrimSpace(hops[j]))
				if err != nil {
					return maskAddr(peer) // a hop the proxy did not write: stop at the proxy
				}
				if peer = ip.Unmap(); !s.trusted(peer) {
					return maskAddr(peer)
				}
			}
		}
	}
	return maskAddr(peer)
}

func (s *Service) trusted(ip netip.Addr) bool {
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// parseAddr is the IP address of a host:port.
func parseAddr(remote string) (netip.Addr, bool) {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(host)
	return ip.Unmap(), err == nil
}

func maskAddr(ip netip.Addr) string {
	if ip.Is6() {
		return netip.PrefixFrom(ip, 64).Masked().String()
	}
	return ip.String()
}
