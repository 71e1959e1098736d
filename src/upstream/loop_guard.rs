//! Loop protection: eddy must never connect to one of its own listeners
//! (a route or a forward target that points back at eddy would otherwise
//! recurse until every slot is taken). The proxy checks IP literals and
//! `localhost` before any lookup; the connector checks every address a
//! name resolves to before dialling it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// eddy's own proxy listener addresses.
#[derive(Debug, Default)]
pub(crate) struct LoopGuard {
    own: Vec<SocketAddr>,
}

impl LoopGuard {
    pub(crate) fn new(own: Vec<SocketAddr>) -> LoopGuard {
        LoopGuard { own }
    }

    /// Whether connecting to `addr` would reach one of eddy's listeners.
    pub(crate) fn is_own_address(&self, addr: SocketAddr) -> bool {
        self.own.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == addr.ip()
                    || (own.ip().is_unspecified()
                        && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
        })
    }

    /// A cheap check before any DNS lookup: IP literals and `localhost`.
    pub(crate) fn is_own_target(&self, host: &str, port: u16) -> bool {
        let ips: &[IpAddr] = if host == "localhost" {
            &[
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]
        } else {
            match host.parse::<IpAddr>() {
                Ok(ip) => return self.is_own_address(SocketAddr::new(ip, port)),
                Err(_) => return false,
            }
        };
        ips.iter()
            .any(|ip| self.is_own_address(SocketAddr::new(*ip, port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_addresses_are_recognised() {
        let g = LoopGuard::new(vec!["127.0.0.1:3128".parse().expect("addr")]);
        assert!(g.is_own_target("127.0.0.1", 3128));
        assert!(g.is_own_target("localhost", 3128));
        assert!(!g.is_own_target("127.0.0.1", 3129));
        assert!(!g.is_own_target("example.com", 3128));
        let any = LoopGuard::new(vec!["0.0.0.0:3128".parse().expect("addr")]);
        assert!(any.is_own_address("127.0.0.5:3128".parse().expect("addr")));
    }
}
