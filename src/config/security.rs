//! The `[security]` table: which destinations eddy may dial. Host patterns
//! and CIDRs parse strictly, so a typo cannot silently open the proxy up.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{DEFAULT_CONNECT_PORTS, DEFAULT_DENY_CIDRS};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SecurityConfig {
    pub(crate) allow_hosts: Vec<HostPattern>,
    pub(crate) deny_cidrs: Vec<Cidr>,
    pub(crate) connect_ports: Vec<u16>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            allow_hosts: Vec::new(),
            deny_cidrs: DEFAULT_DENY_CIDRS
                .iter()
                .map(|c| Cidr::parse(c).expect("default CIDR"))
                .collect(),
            connect_ports: DEFAULT_CONNECT_PORTS.to_vec(),
        }
    }
}

/// An exact host name or a `*.suffix` pattern from `allow_hosts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// This host only (lower-case).
    Exact(String),
    /// `*.example.com` matches `a.example.com` and `b.a.example.com`, not
    /// `example.com`.
    Suffix(String),
}

impl HostPattern {
    /// Parses `host` or `*.suffix`.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let lower = s.trim().to_ascii_lowercase();
        let (pattern, body) = match lower.strip_prefix("*.") {
            Some(rest) => (HostPattern::Suffix(format!(".{rest}")), rest.to_string()),
            None => (HostPattern::Exact(lower.clone()), lower.clone()),
        };
        if body.is_empty()
            || !body.bytes().all(|b| {
                b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_' || b == b':'
            })
        {
            return Err(format!(
                "invalid host pattern {s:?}: expected a host name or \"*.suffix\""
            ));
        }
        Ok(pattern)
    }

    /// Whether `host` (lower-case) is allowed by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

impl Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An IP network such as `169.254.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl Cidr {
    /// Parses `addr/len` (IPv4 or IPv6) or a bare address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("invalid CIDR {s:?}: expected e.g. \"169.254.0.0/16\"");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| bad())?,
                p.parse::<u8>().map_err(|_| bad())?,
            ),
            None => {
                let a = s.parse::<IpAddr>().map_err(|_| bad())?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            // `::ffff:a.b.c.d/len` written for an IPv4 destination: the
            // same address, mapped.
            (IpAddr::V6(_), IpAddr::V4(v4)) => self.contains(IpAddr::V6(v4.to_ipv6_mapped())),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for HostPattern {
    fn schema_name() -> String {
        "HostPattern".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        super::units::string_schema(
            None,
            "A host name, or \"*.suffix\" for every name under it.",
        )
    }
}

impl schemars::JsonSchema for Cidr {
    fn schema_name() -> String {
        "Cidr".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        super::units::string_schema(
            None,
            "An address block, \"addr/len\" (IPv4 or IPv6), or one address.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v4_mapped_block_matches_the_ipv4_address_and_back() {
        let mapped = Cidr::parse("::ffff:127.0.0.2/128").expect("cidr");
        assert!(mapped.contains("127.0.0.2".parse().expect("ip")));
        assert!(!mapped.contains("127.0.0.3".parse().expect("ip")));
        let block = Cidr::parse("::ffff:10.0.0.0/104").expect("cidr");
        assert!(block.contains("10.9.8.7".parse().expect("ip")));
        let v4 = Cidr::parse("127.0.0.0/8").expect("cidr");
        assert!(v4.contains("::ffff:127.0.0.9".parse().expect("ip")));
    }
}
