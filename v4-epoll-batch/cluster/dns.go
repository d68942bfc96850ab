package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The bounds of DNS's options.
const (
	DefaultDNSInterval = 30 * time.Second      // WithDNSInterval
	MinDNSInterval     = 10 * time.Millisecond // WithDNSInterval: shorter positive intervals are taken as this
	DNSLookupTimeout   = 10 * time.Second      // bounds each round of lookups
)

// A DNSLookup looks names up for DNS. *net.Resolver is one, and
// net.DefaultResolver the default; a test gives one of its own
// (WithDNSLookup), so that it needs no DNS server.
type DNSLookup interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	LookupSRV(ctx context.Context, service, proto, name string) (cname string, addrs []*net.SRV, err error)
}

// A DNSOption configures DNS.
type DNSOption func(*dnsResolver)

// WithDNSInterval sets how often the name is looked up again (default
// DefaultDNSInterval). d <= 0 keeps the default; positive values below
// MinDNSInterval are taken as it. A very long interval looks the name up
// about once. Until a first lookup succeeds, a failed one is tried again
// after at most a second.
func WithDNSInterval(d time.Duration) DNSOption {
	return func(r *dnsResolver) {
		if d > 0 {
			r.interval = max(d, MinDNSInterval)
		}
	}
}

// WithDNSLookup makes DNS look names up with l (default
// net.DefaultResolver). nil keeps the default.
func WithDNSLookup(l DNSLookup) DNSOption {
	return func(r *dnsResolver) {
		if l != nil {
			r.lookup = l
		}
	}
}

// WithDNSLogger sends DNS's logs to l: failed lookups, at Warn level
// (the last set stays), and changes of the set at Info level. Without it
// (or with nil) DNS is silent.
func WithDNSLogger(l *slog.Logger) DNSOption {
	return func(r *dnsResolver) {
		if l != nil {
			r.logger = l
		}
	}
}

// DNS returns a Resolver of the servers a DNS name lists, looked up again
// every interval (WithDNSInterval). target is either
//
//   - "host:port": the host's A and AAAA records, each address an endpoint
//     at port, a number (a host that is an IP address is the one
//     endpoint); or
//   - an SRV name, without a port, such as "_rpc._tcp.svc.ns.svc.cluster.local"
//     (what a Kubernetes headless service publishes for its named port):
//     each target of its SRV records, looked up in turn (A and AAAA), is
//     an endpoint at the record's port. Priorities and weights are not
//     used: every target is an endpoint, and the Balancer chooses.
//
// Endpoints are "tcp". A lookup that fails or finds nothing keeps the last
// set (a name that stops resolving is not taken as "no servers": a server
// that is really gone fails its dials and is left out); so does an SRV
// target whose own lookup fails, with the addresses it had. The set is
// reported when it changes. A Resolver that DNS returns may be watched by
// several Clients at once.
func DNS(target string, opts ...DNSOption) Resolver {
	r := &dnsResolver{
		target:   target,
		interval: DefaultDNSInterval,
		lookup:   net.DefaultResolver,
		logger:   slog.New(slog.DiscardHandler),
	}
	for _, opt := range opts {
		if opt != nil {
			opt(r)
		}
	}
	if host, port, err := net.SplitHostPort(target); err == nil {
		r.host = host
		n, err := strconv.ParseUint(port, 10, 16)
		r.port, r.err = uint16(n), err
		if err == nil && host == "" {
			r.err = errors.New("no host")
		}
	} else {
		r.srv = strings.TrimSuffix(target, ".")
		if r.srv == "" {
			r.err = errors.New("empty target")
		}
	}
	if r.err != nil {
		r.err = fmt.Errorf("cluster: DNS target %q: %w", target, r.err)
	}
	return r
}

type dnsResolver struct {
	target   string
	host     string // "host:port": the host, and the port
	port     uint16
	srv      string // an SRV name
	err      error  // a target that cannot be used
	interval time.Duration
	lookup   DNSLookup
	logger   *slog.Logger
}

// Watch looks the name up at once, then every interval, and reports the
// set when it changes (see DNS). A target that cannot be used ("host:"
// with no port, "") ends Watch at once with an error.
func (r *dnsResolver) Watch(ctx context.Context, update func([]Endpoint)) error {
	if r.err != nil {
		return r.err
	}
	var last []Endpoint
	reported := false
	byTarget := map[string][]Endpoint{} // SRV: each target's addresses at its last lookup
	for {
		lctx, cancel := context.WithTimeout(ctx, DNSLookupTimeout)
		set, err := r.resolve(lctx, byTarget)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := r.interval
		switch {
		case err != nil:
			r.logger.Warn("cluster: DNS lookup failed; the last set stays", "target", r.target, "err", err)
			if !reported {
				wait = min(wait, time.Second)
			}
		case !reported || !slices.Equal(set, last):
			r.logger.Info("cluster: DNS set", "target", r.target, "endpoints", len(set))
			update(slices.Clone(set))
			last, reported = set, true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// resolve makes one round of lookups: the set, sorted, or an error.
func (r *dnsResolver) resolve(ctx context.Context, byTarget map[string][]Endpoint) ([]Endpoint, error) {
	if r.srv == "" {
		set, err := r.addrs(ctx, r.host, r.port)
		if err == nil && len(set) == 0 {
			err = fmt.Errorf("no address for %s", r.host)
		}
		return set, err
	}
	_, records, err := r.lookup.LookupSRV(ctx, "", "", r.srv)
	if err != nil {
		return nil, err
	}
	var set []Endpoint
	seen := map[string]bool{}
	var failed []error
	for _, rec := range records {
		if rec == nil {
			continue
		}
		host := strings.TrimSuffix(rec.Target, ".")
		key := net.JoinHostPort(host, strconv.Itoa(int(rec.Port)))
		if seen[key] {
			continue
		}
		seen[key] = true
		eps, err := r.addrs(ctx, host, rec.Port)
		if err != nil || len(eps) == 0 {
			if err == nil {
				err = fmt.Errorf("no address for %s", host)
			}
			failed = append(failed, err)
			eps = byTarget[key] // what it had
		} else {
			byTarget[key] = eps
		}
		set = append(set, eps...)
	}
	for key := range byTarget { // targets no longer listed are forgotten
		if !seen[key] {
			delete(byTarget, key)
		}
	}
	if len(set) == 0 {
		if len(failed) > 0 {
			return nil, errors.Join(failed...)
		}
		return nil, fmt.Errorf("no SRV target for %s", r.srv)
	}
	if len(failed) > 0 {
		r.logger.Warn("cluster: DNS lookup of SRV targets failed; they keep their last addresses", "target", r.target, "err", errors.Join(failed...))
	}
	return sortEndpoints(set), nil
}

// addrs looks host up (unless it is an address): its endpoints at port.
func (r *dnsResolver) addrs(ctx context.Context, host string, port uint16) ([]Endpoint, error) {
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if ips, err = r.lookup.LookupNetIP(ctx, "ip", host); err != nil {
		return nil, err
	}
	set := make([]Endpoint, 0, len(ips))
	for _, ip := range ips {
		if !ip.IsValid() {
			continue
		}
		set = append(set, Endpoint{Network: "tcp", Addr: netip.AddrPortFrom(ip.Unmap(), port).String()})
	}
	return sortEndpoints(set), nil
}

// sortEndpoints sorts eps and drops duplicates.
func sortEndpoints(eps []Endpoint) []Endpoint {
	slices.SortFunc(eps, compareEndpoints)
	return slices.Compact(eps)
}
