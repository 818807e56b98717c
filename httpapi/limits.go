package httpapi

import (
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/custos-kx/custos/exchange"
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
	// Config.MaxExchanges); beyond it they are refused at once.
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

// buckets holds one token bucket per key, forgetting buckets that have
// been idle long enough to be full again.
type buckets struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	m     map[string]*bucket
	swept time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

func newBuckets(perSecond float64, burst int) *buckets {
	if perSecond < 0 {
		return nil
	}
	return &buckets{rate: rate.Limit(perSecond), burst: burst, m: map[string]*bucket{}}
}

// allow takes a token for key, or says how long until one is available.
func (b *buckets) allow(key string, now time.Time) (ok bool, retry time.Duration) {
	if b == nil {
		return true, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.swept) > time.Minute {
		full := time.Duration(float64(b.burst)/float64(b.rate)*float64(time.Second)) + time.Second
		for k, e := range b.m {
			if now.Sub(e.seen) > full {
				delete(b.m, k)
			}
		}
		b.swept = now
	}
	e := b.m[key]
	if e == nil {
		e = &bucket{lim: rate.NewLimiter(b.rate, b.burst)}
		b.m[key] = e
	}
	e.seen = now
	r := e.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// peek says whether key has a token, without taking it.
func (b *buckets) peek(key string, now time.Time) (ok bool, retry time.Duration) {
	if b == nil {
		return true, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.m[key]
	if e == nil {
		return true, 0
	}
	r := e.lim.ReserveN(now, 1)
	d := r.DelayFrom(now)
	r.CancelAt(now)
	return d <= 0, d
}

func rateLimited(who string, retry time.Duration) *exchange.Error {
	e := exchange.Errorf(exchange.RateLimited, "Too many exchanges and rekeys from %s; retry after %s.", who, retryAfter(retry)+"s")
	e.RetryAfter = retry
	return e
}

func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}

// clientAddress is the peer's IP address. Behind a proxy, every client has
// the proxy's address: raise PerAddress or turn it off there.
// clientAddress is what the per-address limit counts: the client's IPv4
// address, or the /64 of its IPv6 address, since one host is commonly
// given a whole /64 and could otherwise rotate through it.
func clientAddress(r *http.Request) string { return addressOf(r.RemoteAddr) }

func addressOf(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	if ip = ip.Unmap(); ip.Is6() {
		return netip.PrefixFrom(ip, 64).Masked().String()
	}
	return ip.String()
}
