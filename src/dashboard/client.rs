//! Who a request comes from: the client's address (the key of every
//! per-client limit) and whether the browser reached us over HTTPS (for the
//! cookie's `Secure`). Pure: reads the TCP peer and the request headers only.
//!
//! # Trusting a proxy
//! `X-Forwarded-For` and `X-Forwarded-Proto` are headers like any other: a
//! client can send them with any value. They are read only when the TCP peer
//! is one of the `--trusted-proxy` addresses, the reverse proxy that sets
//! them (and that must overwrite, not append to, what a client sent in
//! `X-Forwarded-Proto`). Then the client is the rightmost `X-Forwarded-For`
//! address that is not itself a trusted proxy (entries further left were
//! written by the client and prove nothing), and HTTPS is the last
//! `X-Forwarded-Proto` value. From any other peer both headers are ignored: the
//! client is the peer and the scheme is plain HTTP.
//!
//! Limits key on the address, with IPv6 addresses cut to their /64 (one host
//! commonly holds the whole /64, so a per-address key would be no limit).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;

/// The TCP peer of a connection, put into each request by the connection loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What a per-client limit counts by: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(address: IpAddr) -> ClientKey {
        match address {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    ClientKey(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The client of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub key: ClientKey,
    /// The browser's connection is HTTPS (as a trusted proxy says).
    pub https: bool,
}

/// The `--trusted-proxy` addresses.
#[derive(Debug, Clone, Default)]
pub struct Proxies(Vec<IpAddr>);

impl Proxies {
    pub fn new(addresses: &[IpAddr]) -> Proxies {
        Proxies(addresses.iter().map(|a| canonical(*a)).collect())
    }

    pub fn trusts(&self, address: IpAddr) -> bool {
        self.0.contains(&canonical(address))
    }

    /// The client of a request that came from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Client {
        if !self.trusts(peer) {
            return Client {
                key: ClientKey::of(peer),
                https: false,
            };
        }
        let forwarded_for = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for entry in forwarded_for.iter().rev() {
            // An unreadable entry ends the chain: what is left of it is unknown.
            let Some(address) = parse_forwarded(entry) else {
                break;
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        let https = headers
            .get_all("x-forwarded-proto")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
        Client {
            key: ClientKey::of(client),
            https,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// An `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// Request headers from `(name, value)` pairs, for the tests here and in `auth`.
#[cfg(test)]
pub(super) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, axum::http::HeaderValue::from_str(value).expect("header"));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn forwarded_headers_count_only_from_a_trusted_proxy() {
        let proxies = Proxies::new(&[ip("10.0.0.1"), ip("10.0.0.2")]);
        let forwarded = headers(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        // A stranger's headers are ignored.
        assert_eq!(
            proxies.client(ip("9.9.9.9"), &forwarded),
            Client {
                key: ClientKey::of(ip("9.9.9.9")),
                https: false
            }
        );
        // From the proxy: the address it saw (not what the client wrote left of it).
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &forwarded),
            Client {
                key: ClientKey::of(ip("1.2.3.4")),
                https: true
            }
        );
        // Through two trusted proxies; the mapped form of a trusted address is trusted.
        let chained = headers(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4:5555, 10.0.0.2"),
            ("x-forwarded-proto", "http, https"),
        ]);
        assert_eq!(
            proxies.client(ip("::ffff:10.0.0.1"), &chained),
            Client {
                key: ClientKey::of(ip("1.2.3.4")),
                https: true
            }
        );
        // No header, or garbage: the proxy itself, plain HTTP.
        let garbage = headers(&[("x-forwarded-for", "nonsense"), ("x-forwarded-proto", "http")]);
        for headers in [HeaderMap::new(), garbage] {
            assert_eq!(
                proxies.client(ip("10.0.0.1"), &headers),
                Client {
                    key: ClientKey::of(ip("10.0.0.1")),
                    https: false
                }
            );
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2:aaaa::1")),
            ClientKey::of(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(ClientKey::of(ip("::ffff:1.2.3.4")), ClientKey::of(ip("1.2.3.4")));
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }
}
