//! Listener tables: where eddy accepts connections (`listen`), in which mode,
//! and with which client-side limits; plus the origin URLs and `host:port`
//! parsing that listeners and `[[upstream]]` share.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    Dur, Size, DEFAULT_CLIENT_BODY_BUFFER, DEFAULT_CLIENT_BODY_MIN_RATE,
    DEFAULT_CLIENT_BODY_TIMEOUT, DEFAULT_CLIENT_HEADER_TIMEOUT, DEFAULT_CLIENT_IDLE_TIMEOUT,
    DEFAULT_MAX_CLIENT_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_PROXY_LISTEN,
    MAX_BODY_BUFFER, MAX_CONNECTIONS_CEILING,
};

/// Where a listener accepts connections: a TCP socket address or a Unix
/// socket path (`unix:/run/eddy.sock`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    pub(crate) fn parse(s: &str) -> Result<ListenAddr, String> {
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
    pub(crate) fn is_ephemeral(&self) -> bool {
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

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ListenerMode {
    /// `HTTP_PROXY` semantics: absolute-form targets (and later CONNECT).
    Forward,
    /// Every request goes to the listener's `upstream`.
    Route,
}

/// Whether the file wrote a key (rather than taking its default). Equal
/// to any other: a configuration's meaning does not depend on it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Written(pub(crate) bool);

impl PartialEq for Written {
    fn eq(&self, _: &Written) -> bool {
        true
    }
}

/// The most header fields a listener may allow per request head: hyper
/// keeps one index entry per field while parsing, so the bound is a memory
/// bound too.
const MAX_HEADERS_CEILING: usize = 1000;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct ListenerConfig {
    pub(crate) name: String,
    /// The table wrote its `name` (rather than taking the default): for
    /// messages only, so not part of what makes two configurations equal.
    #[serde(skip)]
    pub(crate) named: Written,
    pub(crate) listen: ListenAddr,
    pub(crate) mode: ListenerMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upstream: Option<OriginUrl>,
    pub(crate) max_client_connections: usize,
    pub(crate) client_header_timeout: Dur,
    pub(crate) client_idle_timeout: Dur,
    pub(crate) max_header_bytes: Size,
    /// Request bodies up to this size are read in full before an upstream
    /// connection is taken; larger ones stream after this much.
    pub(crate) client_body_buffer: Size,
    /// How long a request body may take, plus a second per
    /// `client_body_min_rate` bytes received.
    pub(crate) client_body_timeout: Dur,
    /// Bytes per second a request body must keep up after
    /// `client_body_timeout`; 0: no rate rule.
    pub(crate) client_body_min_rate: Size,
    /// Header names keep the case they arrived in, both ways (HTTP/1).
    pub(crate) preserve_header_case: bool,
    /// Header fields a request head may carry (431 beyond).
    pub(crate) max_headers: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: "proxy".into(),
            named: Written(false),
            listen: ListenAddr::parse(DEFAULT_PROXY_LISTEN).expect("default proxy address"),
            mode: ListenerMode::Forward,
            upstream: None,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
            client_header_timeout: DEFAULT_CLIENT_HEADER_TIMEOUT,
            client_idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            client_body_buffer: DEFAULT_CLIENT_BODY_BUFFER,
            client_body_timeout: DEFAULT_CLIENT_BODY_TIMEOUT,
            client_body_min_rate: DEFAULT_CLIENT_BODY_MIN_RATE,
            preserve_header_case: true,
            max_headers: crate::head_scan::DEFAULT_MAX_HEADERS,
        }
    }
}

/// The listener table as written; validated into [`ListenerConfig`].
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Listener")]
struct RawListener {
    name: Option<String>,
    listen: Option<ListenAddr>,
    mode: Option<ListenerMode>,
    upstream: Option<OriginUrl>,
    max_client_connections: Option<usize>,
    client_header_timeout: Option<Dur>,
    client_idle_timeout: Option<Dur>,
    max_header_bytes: Option<Size>,
    client_body_buffer: Option<Size>,
    client_body_timeout: Option<Dur>,
    client_body_min_rate: Option<Size>,
    preserve_header_case: Option<bool>,
    max_headers: Option<usize>,
}

impl<'de> Deserialize<'de> for ListenerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawListener::deserialize(d)?;
        let def = ListenerConfig::default();
        let l = ListenerConfig {
            named: Written(raw.name.is_some()),
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
            client_body_buffer: raw.client_body_buffer.unwrap_or(def.client_body_buffer),
            client_body_timeout: raw.client_body_timeout.unwrap_or(def.client_body_timeout),
            client_body_min_rate: raw.client_body_min_rate.unwrap_or(def.client_body_min_rate),
            preserve_header_case: raw.preserve_header_case.unwrap_or(def.preserve_header_case),
            max_headers: raw.max_headers.unwrap_or(def.max_headers),
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
        if self.max_headers == 0 || self.max_headers > MAX_HEADERS_CEILING {
            return Err(format!(
                "listener {name:?}: max_headers must be between 1 and {MAX_HEADERS_CEILING}"
            ));
        }
        if self.max_header_bytes.bytes() < 1024 || self.max_header_bytes.bytes() > 16 << 20 {
            return Err(format!(
                "listener {name:?}: max_header_bytes must be between 1KiB and 16MiB"
            ));
        }
        if self.client_body_buffer.bytes() > MAX_BODY_BUFFER {
            return Err(format!(
                "listener {name:?}: client_body_buffer must be at most 16MiB (it is held per request in flight)"
            ));
        }
        if self.client_body_timeout.is_zero() {
            return Err(format!(
                "listener {name:?}: client_body_timeout must be above 0s"
            ));
        }
        Ok(())
    }
}

/// `scheme://host[:port]` naming an origin server (no path).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OriginUrl {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl OriginUrl {
    /// Parses `http://host[:port]` or `https://host[:port]` (no path).
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
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
            None => (s, None),
        };
        // A name or IPv4 address never holds a colon: an unbracketed
        // `::1` or `a:b:80` is ambiguous, and would print back bracketed
        // as something else.
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            return None;
        }
        (host, port)
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

impl schemars::JsonSchema for ListenerConfig {
    fn schema_name() -> String {
        "Listener".into()
    }
    fn json_schema(gen: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        RawListener::json_schema(gen)
    }
}

impl schemars::JsonSchema for ListenAddr {
    fn schema_name() -> String {
        "ListenAddress".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        super::units::string_schema(
            None,
            "Where to listen: \"IP:PORT\" (e.g. \"127.0.0.1:3128\") or \"unix:/absolute/path\".",
        )
    }
}

impl schemars::JsonSchema for OriginUrl {
    fn schema_name() -> String {
        "OriginUrl".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        super::units::string_schema(
            Some(r"^https?://[^/]+/?$"),
            "An origin: \"http://host[:port]\" or \"https://host[:port]\", no path.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_split() {
        assert_eq!(
            split_host_port("Example.com"),
            Some(("example.com".into(), None))
        );
        assert_eq!(split_host_port("a:81"), Some(("a".into(), Some(81))));
        assert_eq!(
            split_host_port("[::1]:443"),
            Some(("::1".into(), Some(443)))
        );
        assert_eq!(split_host_port("[::1]"), Some(("::1".into(), None)));
    }

    #[test]
    fn an_unbracketed_colon_in_the_host_is_rejected() {
        // Found by the config fuzzer: `b0.1:3128:::0` was taken as host
        // `b0.1:3128::`, which printed back as an unparseable `[...]`.
        for bad in [
            "b0.1:3128:::0",
            "::1",
            "::1:443",
            "a:b:80",
            ":80",
            "[::1]x",
            "[nope]:1",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
        assert!(OriginUrl::parse("https://b0.1:3128:::0").is_err());
    }

    #[test]
    fn every_accepted_origin_prints_back_to_itself() {
        for s in [
            "http://a",
            "https://a:8443",
            "http://[::1]:80",
            "https://10.0.0.1",
        ] {
            let o = OriginUrl::parse(s).expect(s);
            assert_eq!(OriginUrl::parse(&o.to_string()), Ok(o), "{s}");
        }
    }
}
