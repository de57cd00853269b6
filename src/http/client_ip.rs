//! The client's address behind trusted proxies.
//!
//! Behind an ingress or a load balancer every connection comes from the
//! proxy. When the connection's peer is in one of the trusted networks
//! (`SWAPSTREAM_TRUSTED_PROXIES`), the client is read from `Forwarded`
//! (RFC 7239, `for=`) or, without it, `X-Forwarded-For`: walking the hops
//! from the nearest, every hop that is itself a trusted proxy is skipped and
//! the first other one is the client. From any other peer those headers are
//! ignored (anyone can send them), so the per-IP limits cannot be dodged.

use std::net::IpAddr;

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { networks }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&ip))
    }

    /// The client of a connection from `peer` carrying `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded: Vec<&str> = headers.get_all("forwarded").filter_map(|v| v.to_str().ok()).collect();
        let hops = if forwarded.is_empty() {
            let listed: Vec<&str> = headers.get_all("x-forwarded-for").filter_map(|v| v.to_str().ok()).collect();
            listed.iter().flat_map(|v| v.split(',')).map(|hop| parse_hop(hop.trim())).collect()
        } else {
            forwarded.iter().flat_map(|v| v.split(',')).map(forwarded_for).collect::<Vec<_>>()
        };
        self.nearest_untrusted(peer, &hops)
    }

    /// Walks `hops` (oldest first) from the nearest: the first hop that is
    /// not a trusted proxy. An unreadable hop ends the walk at the last
    /// trusted one, whose word cannot be taken further.
    fn nearest_untrusted(&self, peer: IpAddr, hops: &[Option<IpAddr>]) -> IpAddr {
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) => {
                    client = *ip;
                    if !self.trusts(*ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.60;proto=http`,
/// `for="[2001:db8::1]:4711"`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| parse_hop(value.trim().trim_matches('"')))?
    })
}

/// An address, with or without a port, IPv6 in brackets or bare.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    hop.rsplit_once(':').and_then(|(ip, port)| port.parse::<u16>().ok().and(ip.parse().ok()))
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let claimed = headers(&[("x-forwarded-for", "198.51.100.7"), ("forwarded", "for=198.51.100.8")]);
        assert_eq!(proxies().client(ip("203.0.113.9"), &claimed), ip("203.0.113.9"));
        assert_eq!(TrustedProxies::default().client(ip("10.0.0.1"), &claimed), ip("10.0.0.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() {
        let peer = ip("10.1.2.3");
        let chain = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.5, 10.9.9.9")]);
        assert_eq!(proxies().client(peer, &chain), ip("203.0.113.5"), "a client cannot prepend a fake hop");
        let split = headers(&[("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "203.0.113.5:4711")]);
        assert_eq!(proxies().client(peer, &split), ip("203.0.113.5"));
        let only_proxies = headers(&[("x-forwarded-for", "10.0.0.7, 10.0.0.8")]);
        assert_eq!(proxies().client(peer, &only_proxies), ip("10.0.0.7"));
        assert_eq!(proxies().client(peer, &HeaderMap::new()), peer, "no header: the proxy itself");
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_reads_every_form() {
        let peer = ip("10.1.2.3");
        let both = headers(&[
            ("forwarded", "for=192.0.2.60;proto=http;by=10.1.2.3, for=\"[fd00::1]:8080\""),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(proxies().client(peer, &both), ip("192.0.2.60"));
        let v6 = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\"")]);
        assert_eq!(proxies().client(peer, &v6), ip("2001:db8::1"));
    }

    #[test]
    fn an_unreadable_hop_stops_the_walk_at_the_last_trusted_one() {
        let peer = ip("10.1.2.3");
        let junk = headers(&[("x-forwarded-for", "198.51.100.1, unknown, 10.0.0.9")]);
        assert_eq!(proxies().client(peer, &junk), ip("10.0.0.9"));
        let obfuscated = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(proxies().client(peer, &obfuscated), peer);
    }
}
