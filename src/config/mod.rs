//! The configuration file: every key of SPEC section 2, its default, and its
//! validation.
//!
//! One layer of serde types with `deny_unknown_fields` on every table, so a
//! misspelt key is an error that names the key and its position instead of a
//! silently ignored setting. Cross-field rules that serde cannot express are
//! checked by `TryFrom` on the table that owns them, so their errors carry a
//! position too. The same types serialise back to TOML for `eddy check` and
//! `GET /config`; file paths are shown, the contents of key files never are.

mod units;

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use units::{parse_duration, parse_size, Dur, Size};

/// The configuration eddy runs with when no file is given.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default.toml");

// All defaults in one place (SPEC section 2).
const DEFAULT_SHUTDOWN_GRACE: Dur = Dur::secs(15);
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:3128";
const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 10_000;
const DEFAULT_CLIENT_HEADER_TIMEOUT: Dur = Dur::secs(10);
const DEFAULT_CLIENT_IDLE_TIMEOUT: Dur = Dur::secs(60);
const DEFAULT_MAX_HEADER_BYTES: Size = Size::kib(64);
const DEFAULT_MAX_CONNECTIONS_PER_HOST: usize = 32;
const DEFAULT_MAX_IDLE_PER_HOST: usize = 32;
const DEFAULT_MAX_IDLE_TOTAL: usize = 4096;
const DEFAULT_IDLE_TIMEOUT: Dur = Dur::secs(30);
const DEFAULT_CONNECT_TIMEOUT: Dur = Dur::secs(2);
const DEFAULT_MAX_PENDING_PER_HOST: usize = 4096;
const DEFAULT_PENDING_TIMEOUT: Dur = Dur::secs(5);
const DEFAULT_RESPONSE_HEADER_TIMEOUT: Dur = Dur::secs(30);
const DEFAULT_STALE_RETRIES: u32 = 2;
const DEFAULT_RETRY_BODY_BUFFER: Size = Size::kib(64);
const DEFAULT_UNSAFE_MAX_IDLE_AGE: Dur = Dur::secs(2);
const DEFAULT_DRAIN_MAX_BYTES: Size = Size::kib(256);
const DEFAULT_DRAIN_TIMEOUT: Dur = Dur::millis(250);
const DEFAULT_DENY_CIDRS: [&str; 2] = ["169.254.0.0/16", "fd00:ec2::254/128"];
const DEFAULT_CONNECT_PORTS: [u16; 1] = [443];
const DEFAULT_MAX_UPSTREAM_LABELS: usize = 200;

/// Hard ceilings that keep a typo (an extra zero) from becoming a memory bomb.
const MAX_CONNECTIONS_CEILING: usize = 1_000_000;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub shutdown_grace: Dur,
    pub admin: AdminConfig,
    pub log: LogConfig,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    pub pool: PoolConfig,
    pub retry: RetryConfig,
    pub drain: DrainConfig,
    pub security: SecurityConfig,
    pub metrics: MetricsConfig,
    #[serde(rename = "upstream", skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            listeners: vec![ListenerConfig::default()],
            pool: PoolConfig::default(),
            retry: RetryConfig::default(),
            drain: DrainConfig::default(),
            security: SecurityConfig::default(),
            metrics: MetricsConfig::default(),
            upstreams: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: ListenAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: ListenAddr::parse(DEFAULT_ADMIN_LISTEN).expect("default admin address"),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
            format: LogFormat::Text,
            access_log: true,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where a listener accepts connections: a TCP socket address or a Unix
/// socket path (`unix:/run/eddy.sock`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() || !path.starts_with('/') {
                return Err(format!(
                    "invalid listen address {s:?}: a Unix socket needs an absolute path, e.g. \"unix:/run/eddy.sock\""
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(port) = s.strip_prefix("localhost:") {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("invalid listen address {s:?}: bad port"))?;
            return Ok(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("invalid listen address {s:?}: expected \"HOST:PORT\" (an IP address, e.g. \"127.0.0.1:3128\" or \"[::1]:3128\") or \"unix:/path\"")
        })
    }
}

impl ListenAddr {
    /// Port 0: the kernel picks a free port, so two such addresses differ.
    pub fn is_ephemeral(&self) -> bool {
        matches!(self, ListenAddr::Tcp(a) if a.port() == 0)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ListenAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// `HTTP_PROXY` semantics: absolute-form targets (and later CONNECT).
    Forward,
    /// Every request goes to the listener's `upstream`.
    Route,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: ListenAddr,
    pub mode: ListenerMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<OriginUrl>,
    pub max_client_connections: usize,
    pub client_header_timeout: Dur,
    pub client_idle_timeout: Dur,
    pub max_header_bytes: Size,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: "proxy".into(),
            listen: ListenAddr::parse(DEFAULT_PROXY_LISTEN).expect("default proxy address"),
            mode: ListenerMode::Forward,
            upstream: None,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
            client_header_timeout: DEFAULT_CLIENT_HEADER_TIMEOUT,
            client_idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// The listener table as written; validated into [`ListenerConfig`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<String>,
    listen: Option<ListenAddr>,
    mode: Option<ListenerMode>,
    upstream: Option<OriginUrl>,
    max_client_connections: Option<usize>,
    client_header_timeout: Option<Dur>,
    client_idle_timeout: Option<Dur>,
    max_header_bytes: Option<Size>,
}

impl<'de> Deserialize<'de> for ListenerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawListener::deserialize(d)?;
        let def = ListenerConfig::default();
        let l = ListenerConfig {
            name: raw.name.unwrap_or(def.name),
            listen: raw.listen.unwrap_or(def.listen),
            mode: raw.mode.unwrap_or(def.mode),
            upstream: raw.upstream,
            max_client_connections: raw
                .max_client_connections
                .unwrap_or(def.max_client_connections),
            client_header_timeout: raw
                .client_header_timeout
                .unwrap_or(def.client_header_timeout),
            client_idle_timeout: raw.client_idle_timeout.unwrap_or(def.client_idle_timeout),
            max_header_bytes: raw.max_header_bytes.unwrap_or(def.max_header_bytes),
        };
        l.validate().map_err(serde::de::Error::custom)?;
        Ok(l)
    }
}

impl ListenerConfig {
    fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if name.is_empty() {
            return Err("listener `name` must not be empty".into());
        }
        match (self.mode, &self.upstream) {
            (ListenerMode::Route, None) => {
                return Err(format!(
                    "listener {name:?}: mode = \"route\" requires `upstream` (e.g. upstream = \"https://api.example.com\")"
                ))
            }
            (ListenerMode::Forward, Some(_)) => {
                return Err(format!(
                    "listener {name:?}: `upstream` only applies to mode = \"route\""
                ))
            }
            _ => {}
        }
        if self.max_client_connections == 0 || self.max_client_connections > MAX_CONNECTIONS_CEILING
        {
            return Err(format!(
                "listener {name:?}: max_client_connections must be between 1 and {MAX_CONNECTIONS_CEILING}"
            ));
        }
        if self.client_header_timeout.is_zero() || self.client_idle_timeout.is_zero() {
            return Err(format!(
                "listener {name:?}: client_header_timeout and client_idle_timeout must be above 0s"
            ));
        }
        if self.max_header_bytes.bytes() < 1024 || self.max_header_bytes.bytes() > 16 << 20 {
            return Err(format!(
                "listener {name:?}: max_header_bytes must be between 1KiB and 16MiB"
            ));
        }
        Ok(())
    }
}

/// `scheme://host[:port]` naming an origin server (no path).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OriginUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl OriginUrl {
    pub fn parse(s: &str) -> Result<OriginUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "invalid origin {s:?}: expected \"http://host[:port]\" or \"https://host[:port]\""
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!(
                "invalid origin {s:?}: only scheme, host and port are allowed (no path, query or user)"
            ));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| format!("invalid origin {s:?}"))?;
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        Ok(OriginUrl { tls, host, port })
    }
}

impl fmt::Display for OriginUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for OriginUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OriginUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OriginUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; the host comes back
/// lower-cased and without brackets. `None` for an empty host or bad port.
pub fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (host, port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
            None => (s, None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_' || b == b':')
    {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PoolConfig {
    pub max_connections_per_host: usize,
    pub max_idle_per_host: usize,
    pub min_idle_per_host: usize,
    pub max_idle_total: usize,
    pub idle_timeout: Dur,
    pub learn_idle_timeout: bool,
    pub max_lifetime: Dur,
    pub max_requests_per_connection: u64,
    pub connect_timeout: Dur,
    pub max_pending_per_host: usize,
    pub pending_timeout: Dur,
    pub response_header_timeout: Dur,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections_per_host: DEFAULT_MAX_CONNECTIONS_PER_HOST,
            max_idle_per_host: DEFAULT_MAX_IDLE_PER_HOST,
            min_idle_per_host: 0,
            max_idle_total: DEFAULT_MAX_IDLE_TOTAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            learn_idle_timeout: true,
            max_lifetime: Dur::secs(0),
            max_requests_per_connection: 0,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_pending_per_host: DEFAULT_MAX_PENDING_PER_HOST,
            pending_timeout: DEFAULT_PENDING_TIMEOUT,
            response_header_timeout: DEFAULT_RESPONSE_HEADER_TIMEOUT,
        }
    }
}

/// Any `[pool]` key, all optional: the `[pool]` table itself and the
/// `[upstream.pool]` overrides are both written in this shape.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_host: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_idle_per_host: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_idle_per_host: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_idle_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learn_idle_timeout: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_per_host: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_header_timeout: Option<Dur>,
}

impl PoolOverrides {
    /// `base` with every key set here replacing its value.
    pub fn apply(&self, base: &PoolConfig) -> PoolConfig {
        PoolConfig {
            max_connections_per_host: self
                .max_connections_per_host
                .unwrap_or(base.max_connections_per_host),
            max_idle_per_host: self.max_idle_per_host.unwrap_or(base.max_idle_per_host),
            min_idle_per_host: self.min_idle_per_host.unwrap_or(base.min_idle_per_host),
            max_idle_total: self.max_idle_total.unwrap_or(base.max_idle_total),
            idle_timeout: self.idle_timeout.unwrap_or(base.idle_timeout),
            learn_idle_timeout: self.learn_idle_timeout.unwrap_or(base.learn_idle_timeout),
            max_lifetime: self.max_lifetime.unwrap_or(base.max_lifetime),
            max_requests_per_connection: self
                .max_requests_per_connection
                .unwrap_or(base.max_requests_per_connection),
            connect_timeout: self.connect_timeout.unwrap_or(base.connect_timeout),
            max_pending_per_host: self
                .max_pending_per_host
                .unwrap_or(base.max_pending_per_host),
            pending_timeout: self.pending_timeout.unwrap_or(base.pending_timeout),
            response_header_timeout: self
                .response_header_timeout
                .unwrap_or(base.response_header_timeout),
        }
    }
}

impl<'de> Deserialize<'de> for PoolConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pool = PoolOverrides::deserialize(d)?.apply(&PoolConfig::default());
        pool.validate().map_err(serde::de::Error::custom)?;
        Ok(pool)
    }
}

impl PoolConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections_per_host == 0
            || self.max_connections_per_host > MAX_CONNECTIONS_CEILING
        {
            return Err(format!(
                "max_connections_per_host must be between 1 and {MAX_CONNECTIONS_CEILING}"
            ));
        }
        if self.min_idle_per_host > self.max_connections_per_host {
            return Err(format!(
                "min_idle_per_host ({}) exceeds max_connections_per_host ({})",
                self.min_idle_per_host, self.max_connections_per_host
            ));
        }
        if self.min_idle_per_host > self.max_idle_per_host {
            return Err(format!(
                "min_idle_per_host ({}) exceeds max_idle_per_host ({})",
                self.min_idle_per_host, self.max_idle_per_host
            ));
        }
        if self.max_idle_total > MAX_CONNECTIONS_CEILING
            || self.max_pending_per_host > MAX_CONNECTIONS_CEILING
        {
            return Err(format!(
                "max_idle_total and max_pending_per_host must be at most {MAX_CONNECTIONS_CEILING}"
            ));
        }
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("connect_timeout", self.connect_timeout),
            ("pending_timeout", self.pending_timeout),
            ("response_header_timeout", self.response_header_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{key} must be above 0s"));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub stale_retries: u32,
    pub retry_body_buffer: Size,
    pub unsafe_max_idle_age: Dur,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            stale_retries: DEFAULT_STALE_RETRIES,
            retry_body_buffer: DEFAULT_RETRY_BODY_BUFFER,
            unsafe_max_idle_age: DEFAULT_UNSAFE_MAX_IDLE_AGE,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    pub max_bytes: Size,
    pub timeout: Dur,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            max_bytes: DEFAULT_DRAIN_MAX_BYTES,
            timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    pub allow_hosts: Vec<HostPattern>,
    pub deny_cidrs: Vec<Cidr>,
    pub connect_ports: Vec<u16>,
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
    Exact(String),
    /// `*.example.com` matches `a.example.com` and `b.a.example.com`, not
    /// `example.com`.
    Suffix(String),
}

impl HostPattern {
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
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
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
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
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

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub max_upstream_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_upstream_labels: DEFAULT_MAX_UPSTREAM_LABELS,
        }
    }
}

/// A per-origin override table (`[[upstream]]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The host (or `host:port`) the application asks for.
    #[serde(rename = "match")]
    pub match_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<OriginUrl>,
    #[serde(default)]
    pub http2: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default)]
    pub pool: PoolOverrides,
}

impl UpstreamConfig {
    /// The `match` key as (lower-cased host, optional port).
    pub fn match_host_port(&self) -> Option<(String, Option<u16>)> {
        split_host_port(&self.match_)
    }
}

/// A configuration file that could not be used; `Display` gives
/// `FILE:LINE:COL: message` (or `FILE: message` where no position applies).
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            position: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::from_toml(&text, &file)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        Config::from_toml(DEFAULT_CONFIG_TOML, "<default>").unwrap_or_default()
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_string(),
            position: e.span().map(|span| line_col(text, span.start)),
            message: e.message().trim().to_string(),
        })?;
        config.validate().map_err(|message| ConfigError {
            file: file.to_string(),
            position: None,
            message,
        })?;
        Ok(config)
    }

    /// Rules that span tables.
    fn validate(&self) -> Result<(), String> {
        if self.listeners.is_empty() {
            return Err("at least one [[listener]] is required".into());
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for l in &self.listeners {
            if !names.insert(&l.name) {
                return Err(format!("listener name {:?} is used twice", l.name));
            }
            if !l.listen.is_ephemeral() && !addrs.insert(&l.listen) {
                return Err(format!("listen address {} is used twice", l.listen));
            }
        }
        if !self.admin.listen.is_ephemeral() && addrs.contains(&self.admin.listen) {
            return Err(format!(
                "admin.listen {} is also a listener's address",
                self.admin.listen
            ));
        }
        let mut matches = HashSet::new();
        for u in &self.upstreams {
            let Some((host, port)) = u.match_host_port() else {
                return Err(format!(
                    "[[upstream]] match = {:?}: expected a host or host:port",
                    u.match_
                ));
            };
            if !matches.insert((host, port)) {
                return Err(format!("[[upstream]] match = {:?} appears twice", u.match_));
            }
            let effective = u.pool.apply(&self.pool);
            effective
                .validate()
                .map_err(|e| format!("[[upstream]] match = {:?}: {e}", u.match_))?;
            if u.client_cert.is_some() != u.client_key.is_some() {
                return Err(format!(
                    "[[upstream]] match = {:?}: client_cert and client_key go together",
                    u.match_
                ));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML (what `eddy check` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_matches_the_spec_defaults() {
        let c = Config::from_toml(DEFAULT_CONFIG_TOML, "<default>").expect("default parses");
        assert_eq!(c, Config::default());
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].listen.to_string(), "127.0.0.1:3128");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(
            Config::from_toml("", "x").expect("empty"),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_position() {
        let err = Config::from_toml("[pool]\nmax_conections_per_host = 3\n", "f.toml")
            .expect_err("unknown key");
        let text = err.to_string();
        assert!(text.starts_with("f.toml:2:1: "), "{text}");
        assert!(text.contains("max_conections_per_host"), "{text}");
    }

    #[test]
    fn bad_duration_is_reported_at_the_value() {
        let err = Config::from_toml("[pool]\nidle_timeout = \"30 seconds\"\n", "f.toml")
            .expect_err("bad duration");
        let text = err.to_string();
        assert!(text.starts_with("f.toml:2:16: "), "{text}");
        assert!(text.contains("30 seconds"), "{text}");
    }

    #[test]
    fn route_listener_needs_an_upstream() {
        let err = Config::from_toml(
            "[[listener]]\nname = \"r\"\nlisten = \"127.0.0.1:8081\"\nmode = \"route\"\n",
            "f.toml",
        )
        .expect_err("route without upstream");
        assert!(err.to_string().contains("requires `upstream`"), "{err}");
    }

    #[test]
    fn upstream_pool_overrides_apply_over_the_global_pool() {
        let c = Config::from_toml(
            "[pool]\nmax_connections_per_host = 8\n[[upstream]]\nmatch = \"api.example.com\"\n[upstream.pool]\nmax_connections_per_host = 2\n",
            "f.toml",
        )
        .expect("parses");
        let effective = c.upstreams[0].pool.apply(&c.pool);
        assert_eq!(effective.max_connections_per_host, 2);
        assert_eq!(effective.idle_timeout, Dur::secs(30));
    }

    #[test]
    fn printed_config_parses_back_to_itself() {
        let c = Config::from_toml(
            "[[upstream]]\nmatch = \"api.example.com\"\nconnect = \"https://api.example.com\"\n[upstream.pool]\nmin_idle_per_host = 2\n",
            "f.toml",
        )
        .expect("parses");
        let again = Config::from_toml(&c.to_toml(), "printed").expect("printed config parses");
        assert_eq!(c, again);
    }

    #[test]
    fn cidrs_and_host_patterns_match() {
        let c = Cidr::parse("169.254.0.0/16").expect("cidr");
        assert!(c.contains("169.254.169.254".parse().expect("ip")));
        assert!(!c.contains("10.0.0.1".parse().expect("ip")));
        let p = HostPattern::parse("*.example.com").expect("pattern");
        assert!(p.matches("api.EXAMPLE.com"));
        assert!(!p.matches("example.com"));
    }
}
