//! Loop protection: eddy must never connect to one of its own sockets, a
//! proxy listener or the admin port. A route or a forward target that
//! points back at eddy would otherwise recurse until every slot is taken,
//! and the admin port (the configuration, the metrics) must not be
//! readable by whoever may use the proxy.
//!
//! An address can be spelt many ways: `0.0.0.0` and `[::]` (a connect to
//! the unspecified address reaches the local host), an IPv4 address mapped
//! into IPv6 (`[::ffff:127.0.0.1]`), the forms `inet_aton` accepts (`0`,
//! `127.1`, `2130706433`, `0x7f.1`), a name that resolves there. So every
//! address is brought to one canonical form before it is compared, the
//! proxy checks literal spellings and `localhost` before any lookup, and
//! the connector checks every address a name resolves to before dialling.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// eddy's own addresses: its TCP proxy listeners and its admin port.
#[derive(Debug, Default)]
pub(crate) struct LoopGuard {
    own: Vec<SocketAddr>,
}

/// One canonical form: IPv4 for an IPv4-mapped IPv6 address.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Whether a connect to `ip` stays on this host whatever interface a
/// listener is bound to: loopback, or the unspecified address.
fn local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// An IPv4 address in any form `inet_aton` (and so the system resolver)
/// accepts: one to four parts, each decimal, octal (`0` prefix) or hex
/// (`0x`), the last filling the remaining bytes (`127.1`, `2130706433`).
pub(crate) fn parse_inet_aton(s: &str) -> Option<Ipv4Addr> {
    fn part(p: &str) -> Option<u64> {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or(p.strip_prefix("0X")) {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (p, 10)
        };
        if p.is_empty() || (digits.is_empty() && radix == 10) {
            return None;
        }
        if digits.is_empty() {
            // "0x" alone is 0 for inet_aton.
            return Some(0);
        }
        u64::from_str_radix(digits, radix).ok()
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let values: Vec<u64> = parts.iter().map(|p| part(p)).collect::<Option<_>>()?;
    let (head, last) = values.split_at(values.len() - 1);
    if head.iter().any(|v| *v > 255) {
        return None;
    }
    let room = 8 * (4 - head.len() as u32);
    if last[0] >= 1u64 << room {
        return None;
    }
    let mut n: u32 = 0;
    for (i, v) in head.iter().enumerate() {
        n |= (*v as u32) << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from(n | last[0] as u32))
}

/// The address a literal host names, in any spelling, if it is one.
pub(crate) fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .ok()
        .or_else(|| parse_inet_aton(bare).map(IpAddr::V4))
}

impl LoopGuard {
    pub(crate) fn new(own: Vec<SocketAddr>) -> LoopGuard {
        LoopGuard { own }
    }

    /// Whether connecting to `addr` would reach one of eddy's own sockets.
    pub(crate) fn is_own_address(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.own.iter().any(|own| {
            let own_ip = canonical(own.ip());
            own.port() == addr.port()
                && (own_ip == ip
                    // A listener on every interface answers a local connect.
                    || (own_ip.is_unspecified() && local(ip))
                    // A connect to the unspecified address reaches a
                    // loopback listener of the same family.
                    || (ip.is_unspecified()
                        && own_ip.is_loopback()
                        && own_ip.is_ipv4() == ip.is_ipv4()))
        })
    }

    /// A cheap check before any DNS lookup: literal addresses in any
    /// spelling, and `localhost`.
    pub(crate) fn is_own_target(&self, host: &str, port: u16) -> bool {
        let ips: &[IpAddr] = if host.eq_ignore_ascii_case("localhost")
            || host.to_ascii_lowercase().ends_with(".localhost")
        {
            &[
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]
        } else {
            match literal_ip(host) {
                Some(ip) => return self.is_own_address(SocketAddr::new(ip, port)),
                None => return false,
            }
        };
        ips.iter()
            .any(|ip| self.is_own_address(SocketAddr::new(*ip, port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(addrs: &[&str]) -> LoopGuard {
        LoopGuard::new(addrs.iter().map(|a| a.parse().expect("addr")).collect())
    }

    #[test]
    fn own_addresses_are_recognised() {
        let g = guard(&["127.0.0.1:3128"]);
        assert!(g.is_own_target("127.0.0.1", 3128));
        assert!(g.is_own_target("localhost", 3128));
        assert!(!g.is_own_target("127.0.0.1", 3129));
        assert!(!g.is_own_target("example.com", 3128));
        let any = guard(&["0.0.0.0:3128"]);
        assert!(any.is_own_address("127.0.0.5:3128".parse().expect("addr")));
    }

    #[test]
    fn every_spelling_of_a_local_address_is_caught() {
        let g = guard(&["127.0.0.1:3128", "127.0.0.1:9901"]);
        for host in [
            "0.0.0.0",
            "0",
            "127.1",
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "::ffff:127.0.0.1",
            "[::ffff:127.0.0.1]",
            "LOCALHOST",
            "app.localhost",
        ] {
            assert!(g.is_own_target(host, 3128), "{host}");
            assert!(g.is_own_target(host, 9901), "{host} (admin)");
        }
        assert!(!g.is_own_target("10.0.0.1", 3128));
        let v6 = guard(&["[::1]:3128"]);
        assert!(v6.is_own_target("::", 3128));
        assert!(v6.is_own_target("[::1]", 3128));
        assert!(!v6.is_own_target("0.0.0.0", 3128));
    }

    #[test]
    fn inet_aton_forms() {
        let p = |s| parse_inet_aton(s);
        assert_eq!(p("127.0.0.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(p("127.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(p("10.1.2"), Some(Ipv4Addr::new(10, 1, 0, 2)));
        assert_eq!(p("0"), Some(Ipv4Addr::UNSPECIFIED));
        assert_eq!(p("0x7f.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(p("4294967295"), Some(Ipv4Addr::BROADCAST));
        assert_eq!(p("4294967296"), None);
        assert_eq!(p("256.1"), None);
        assert_eq!(p("example"), None);
        assert_eq!(p("1.2.3.4.5"), None);
        assert_eq!(p(""), None);
        assert_eq!(p("08"), None);
    }
}
