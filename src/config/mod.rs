//! The configuration file: every key eddy reads (docs/configuration.md
//! describes them all), its default, and its validation.
//!
//! One layer of serde types with `deny_unknown_fields` on every table, so a
//! misspelt key is an error that names the key and its position instead of a
//! silently ignored setting. Cross-field rules that serde cannot express are
//! checked by `TryFrom` on the table that owns them, so their errors carry a
//! position too. The same types serialise back to TOML for `eddy check` and
//! `GET /config`; file paths are shown, the contents of key files never are.

mod intercept;
mod listen;
mod pool;
mod security;
mod units;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use intercept::TlsInterceptConfig;
pub use listen::{split_host_port, OriginUrl};
pub(crate) use listen::{ListenAddr, ListenerConfig, ListenerMode};
pub(crate) use pool::{DrainConfig, PoolConfig, PoolOverrides, RetryConfig};
pub(crate) use security::SecurityConfig;
pub use security::{Cidr, HostPattern};
pub use units::{parse_duration, parse_size};
pub(crate) use units::{Dur, Size};

/// The configuration eddy runs with when no file is given.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default.toml");

// All defaults in one place; `default.toml` states the same values as a file.
const DEFAULT_SHUTDOWN_GRACE: Dur = Dur::secs(15);
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:3128";
const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 10_000;
const DEFAULT_CLIENT_HEADER_TIMEOUT: Dur = Dur::secs(10);
const DEFAULT_CLIENT_IDLE_TIMEOUT: Dur = Dur::secs(60);
const DEFAULT_MAX_HEADER_BYTES: Size = Size::kib(64);
const DEFAULT_CLIENT_BODY_BUFFER: Size = Size::kib(64);
const DEFAULT_CLIENT_BODY_TIMEOUT: Dur = Dur::secs(10);
const DEFAULT_CLIENT_BODY_MIN_RATE: Size = Size::kib(8);
const DEFAULT_MAX_CONNECTIONS_PER_HOST: usize = 32;
const DEFAULT_MAX_IDLE_PER_HOST: usize = 32;
const DEFAULT_MAX_IDLE_TOTAL: usize = 4096;
const DEFAULT_IDLE_TIMEOUT: Dur = Dur::secs(30);
const DEFAULT_CONNECT_TIMEOUT: Dur = Dur::secs(2);
const DEFAULT_DNS_REFRESH: Dur = Dur::secs(30);
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
/// The largest body buffer (`client_body_buffer`, `retry_body_buffer`): it
/// is held per request in flight, and `max_client_connections` requests may
/// be in flight at once.
const MAX_BODY_BUFFER: u64 = 16 << 20;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
/// eddy's whole configuration: the TOML file, defaults filled in, checked.
pub struct Config {
    pub(crate) shutdown_grace: Dur,
    pub(crate) admin: AdminConfig,
    /// `[log]`: level, format, access log.
    pub log: LogConfig,
    #[serde(rename = "listener")]
    pub(crate) listeners: Vec<ListenerConfig>,
    pub(crate) pool: PoolConfig,
    pub(crate) retry: RetryConfig,
    pub(crate) drain: DrainConfig,
    pub(crate) security: SecurityConfig,
    pub(crate) metrics: MetricsConfig,
    pub(crate) tls_intercept: TlsInterceptConfig,
    #[serde(rename = "upstream", skip_serializing_if = "Vec::is_empty")]
    pub(crate) upstreams: Vec<UpstreamConfig>,
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
            tls_intercept: TlsInterceptConfig::default(),
            upstreams: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminConfig {
    pub(crate) listen: ListenAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: ListenAddr::parse(DEFAULT_ADMIN_LISTEN).expect("default admin address"),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
/// `[log]`.
pub struct LogConfig {
    /// `log.level`: the level filter unless `RUST_LOG` is set.
    pub level: LogLevel,
    /// `log.format`: text or one JSON object per line.
    pub format: LogFormat,
    /// `log.access_log`: one line per request.
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

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
/// `log.level`.
pub enum LogLevel {
    /// Everything, per connection and per byte count.
    Trace,
    /// Decisions: retries, drains, connections ending.
    Debug,
    /// Start, reload, stop and the access log.
    Info,
    /// Failures and suspicious configuration.
    Warn,
    /// Only what stops eddy or a reload.
    Error,
}

impl LogLevel {
    /// The level as `RUST_LOG` spells it.
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

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
/// `log.format`.
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One flat JSON object per line.
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MetricsConfig {
    pub(crate) max_upstream_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_upstream_labels: DEFAULT_MAX_UPSTREAM_LABELS,
        }
    }
}

/// A per-origin override table (`[[upstream]]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamConfig {
    /// The host (or `host:port`) the application asks for.
    #[serde(rename = "match")]
    pub(crate) match_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) connect: Option<OriginUrl>,
    #[serde(default)]
    pub(crate) http2: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client_key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sni: Option<String>,
    /// An egress forward proxy this origin is reached through
    /// (`http://host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) via: Option<OriginUrl>,
    #[serde(default)]
    pub(crate) pool: PoolOverrides,
}

impl UpstreamConfig {
    /// The `match` key as (lower-cased host, optional port).
    pub(crate) fn match_host_port(&self) -> Option<(String, Option<u16>)> {
        split_host_port(&self.match_)
    }
}

/// A configuration file that could not be used; `Display` gives
/// `FILE:LINE:COL: message` (or `FILE: message` where no position applies),
/// one line per mistake found.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}{}", position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default(), more.iter().map(|(p, m)| format!("\n{file}{}: {m}", p.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())).collect::<String>())]
pub struct ConfigError {
    pub(crate) file: String,
    pub(crate) position: Option<(usize, usize)>,
    pub(crate) message: String,
    /// Further mistakes in the same file.
    pub(crate) more: Vec<(Option<(usize, usize)>, String)>,
}

/// The largest configuration file eddy reads: real ones are a few KiB, and
/// parsing holds the whole document in memory several times over.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The candidate closest to `word`, if it is close enough to be a typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    candidates
        .map(|c| (distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// serde's wording made the user's: no Rust type names, and a suggestion
/// for a misspelt key.
fn humane(message: &str) -> String {
    let mut m = message.to_string();
    for (rust, words) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        m = m.replace(rust, words);
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let word = rest.split('`').next().unwrap_or("");
        let expected = rest.split_once("expected").map_or("", |(_, e)| e);
        let candidates = expected.split('`').skip(1).step_by(2);
        if let Some(near) = closest(word, candidates) {
            m = format!("unknown key `{word}`; did you mean `{near}`? ({})", m);
        }
    }
    m
}

impl Config {
    /// Settings that are valid but probably not what the operator wants,
    /// one sentence each: written at start (warn) and by `eddy check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in &self.listeners {
            let ListenAddr::Tcp(addr) = l.listen else {
                continue;
            };
            if l.mode == ListenerMode::Forward
                && !addr.ip().is_loopback()
                && self.security.allow_hosts.is_empty()
            {
                out.push(format!(
                    "listener {:?} on {addr} is an open forward proxy: it is reachable from other hosts and security.allow_hosts is empty, so anyone who reaches it may use eddy to reach any host; bind it to loopback or list the hosts it may reach",
                    l.name
                ));
            }
        }
        let idle_above_bound = |what: &str, p: &PoolConfig| {
            (p.max_idle_per_host > p.max_connections_per_host).then(|| {
                format!(
                    "{what}: max_idle_per_host ({}) is above max_connections_per_host ({}); at most {} connections can be idle",
                    p.max_idle_per_host, p.max_connections_per_host, p.max_connections_per_host
                )
            })
        };
        out.extend(idle_above_bound("[pool]", &self.pool));
        for u in &self.upstreams {
            let what = format!("[[upstream]] {:?}", u.match_);
            if u.pool.max_idle_total.is_some() {
                out.push(format!(
                    "{what}: max_idle_total has no effect under [upstream.pool]; it bounds idle connections over all origins and belongs under [pool]"
                ));
            }
            // Only where the entry itself sets it: a smaller bound of its
            // own under the global idle default is no mistake.
            if u.pool.max_idle_per_host.is_some() {
                out.extend(idle_above_bound(&what, &u.pool.apply(&self.pool)));
            }
        }
        out
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let error = |message: String| ConfigError {
            file: file.clone(),
            position: None,
            message,
            more: Vec::new(),
        };
        let size = std::fs::metadata(path)
            .map_err(|e| error(format!("cannot read: {e}")))?
            .len();
        if size > MAX_CONFIG_BYTES {
            return Err(error(format!(
                "the file is {size} bytes; a configuration may be at most {MAX_CONFIG_BYTES} (1 MiB)"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        Config::from_toml(&text, &file)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        Config::from_toml(DEFAULT_CONFIG_TOML, "<default>").unwrap_or_default()
    }

    /// The configuration file's JSON Schema, generated from the types that
    /// read it (`eddy schema`; committed as `config/eddy.schema.json`).
    pub fn json_schema() -> String {
        let schema = schemars::schema_for!(Config);
        serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
    }

    /// Parses and validates TOML text; `file` names it in errors. Every
    /// mistake is reported, not only the first: after each, the line it is
    /// on is set aside (blanked, so positions stay true) and the rest is
    /// read again.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut work = text.to_string();
        let mut found: Vec<(Option<(usize, usize)>, String)> = Vec::new();
        let parsed = loop {
            let e = match toml::from_str::<Config>(&work) {
                Ok(config) => break Some(config),
                Err(e) => e,
            };
            let message = e.message().trim();
            let offset = e.span().map(|span| span.start);
            // serde's message names the bad value, not always its key:
            // prefix the key read from the text at the error's position.
            let message = match offset.and_then(|o| key_path_at(text, o)) {
                Some(key) if !message.contains(&format!("`{}`", last_key(&key))) => {
                    format!("{key}: {}", humane(message))
                }
                _ => humane(message),
            };
            // A check made while reading a table (a range) is reported at
            // the table; show the key it names instead.
            let at_table = |o: usize| {
                let start = text[..o.min(text.len())].rfind('\n').map_or(0, |n| n + 1);
                o == 0 || text[start..].trim_start().starts_with('[')
            };
            let offset = match offset {
                Some(o) if at_table(o) => Some(key_offset(text, &message, o).unwrap_or(o)),
                Some(o) => Some(o),
                None => key_offset(text, &message, 0),
            };
            let position = Some(line_col(text, offset.unwrap_or(0)));
            if found.iter().any(|(p, _)| *p == position) {
                break None;
            }
            found.push((position, message));
            // Set the line aside and read on, unless that would change the
            // document's shape (a table header, a value over several
            // lines), or enough has been said.
            let Some(offset) = offset else { break None };
            let start = work[..offset].rfind('\n').map_or(0, |i| i + 1);
            let end = work[offset..].find('\n').map_or(work.len(), |i| offset + i);
            let line = work[start..end].trim();
            let opens = line.matches('[').count() + line.matches('{').count();
            let closes = line.matches(']').count() + line.matches('}').count();
            if line.starts_with('[') || opens != closes || found.len() >= 20 {
                break None;
            }
            work.replace_range(start..end, &" ".repeat(end - start));
        };
        if let Some(config) = &parsed {
            if let Err(invalid) = config.validate() {
                let (line, _) = invalid.anchor.locate(text);
                let table = text
                    .split_inclusive('\n')
                    .take(line.saturating_sub(1))
                    .map(str::len)
                    .sum::<usize>();
                let position = match key_offset(text, &invalid.message, table) {
                    Some(o) => line_col(text, o),
                    None => invalid.anchor.locate(text),
                };
                found.push((Some(position), invalid.message));
            }
        }
        match (parsed, found.is_empty()) {
            (Some(config), true) => Ok(config),
            _ => {
                let mut found = found.into_iter();
                let (position, message) = found
                    .next()
                    .unwrap_or((None, "invalid configuration".to_string()));
                Err(ConfigError {
                    file: file.to_string(),
                    position,
                    message,
                    more: found.collect(),
                })
            }
        }
    }

    /// Rules that span tables. Each error carries an [`Anchor`] so that it,
    /// too, is reported at a `LINE:COL` of the file.
    fn validate(&self) -> Result<(), Invalid> {
        if self.listeners.is_empty() {
            return Err(Invalid::new(
                "at least one [[listener]] is required",
                Anchor::Start,
            ));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !names.insert(&l.name) {
                let message = if l.named.0 {
                    format!("listener name {:?} is used twice", l.name)
                } else {
                    format!(
                        "more than one [[listener]] has no `name`, and each would be called {:?}: give every listener a name of its own",
                        l.name
                    )
                };
                return Err(Invalid::new(message, Anchor::Header("[[listener]]", i + 1)));
            }
            if !l.listen.is_ephemeral() && !addrs.insert(&l.listen) {
                return Err(Invalid::new(
                    format!("listen address {} is used twice", l.listen),
                    Anchor::Header("[[listener]]", i + 1),
                ));
            }
        }
        if !self.admin.listen.is_ephemeral() && addrs.contains(&self.admin.listen) {
            return Err(Invalid::new(
                format!(
                    "admin.listen {} is also a listener's address",
                    self.admin.listen
                ),
                Anchor::Header("[admin]", 1),
            ));
        }
        let mut matches = HashSet::new();
        let mut connects: Vec<(&OriginUrl, &PoolOverrides)> = Vec::new();
        let mut prewarmed = 0usize;
        for (i, u) in self.upstreams.iter().enumerate() {
            let at = || Anchor::Header("[[upstream]]", i + 1);
            let Some((host, port)) = u.match_host_port() else {
                return Err(Invalid::new(
                    format!(
                        "[[upstream]] match = {:?}: expected a host or host:port",
                        u.match_
                    ),
                    at(),
                ));
            };
            if !matches.insert((host, port)) {
                return Err(Invalid::new(
                    format!("[[upstream]] match = {:?} appears twice", u.match_),
                    at(),
                ));
            }
            if let Some(connect) = &u.connect {
                if let Some((_, other)) = connects.iter().find(|(c, _)| *c == connect) {
                    if *other != &u.pool {
                        return Err(Invalid::new(
                            format!(
                                "[[upstream]] match = {:?}: another [[upstream]] also connects to {connect} with different [upstream.pool] settings; one origin has one pool",
                                u.match_
                            ),
                            at(),
                        ));
                    }
                }
                connects.push((connect, &u.pool));
            }
            let effective = u.pool.apply(&self.pool);
            prewarmed += effective.min_idle_per_host;
            effective.validate().map_err(|e| {
                Invalid::new(format!("[[upstream]] match = {:?}: {e}", u.match_), at())
            })?;
            if u.via.as_ref().is_some_and(|v| v.tls) {
                return Err(Invalid::new(
                    format!(
                        "[[upstream]] match = {:?}: via must be an http:// proxy (eddy speaks TLS to the origin through its CONNECT tunnel)",
                        u.match_
                    ),
                    at(),
                ));
            }
            if u.via.is_some() && u.http2 {
                return Err(Invalid::new(
                    format!(
                        "[[upstream]] match = {:?}: via cannot be combined with http2 (an HTTP/2 origin is not reached through an egress proxy)",
                        u.match_
                    ),
                    at(),
                ));
            }
            if u.client_cert.is_some() != u.client_key.is_some() {
                return Err(Invalid::new(
                    format!(
                        "[[upstream]] match = {:?}: client_cert and client_key go together",
                        u.match_
                    ),
                    at(),
                ));
            }
        }
        if self.retry.retry_body_buffer.bytes() > MAX_BODY_BUFFER {
            return Err(Invalid::new(
                "retry.retry_body_buffer must be at most 16MiB (it is held per request in flight)",
                Anchor::Header("[retry]", 1),
            ));
        }
        self.tls_intercept
            .validate()
            .map_err(|e| Invalid::new(e, Anchor::Header("[tls_intercept]", 1)))?;
        if self.metrics.max_upstream_labels == 0 {
            return Err(Invalid::new(
                "metrics.max_upstream_labels must be at least 1 (one value is kept for upstream=\"none\")",
                Anchor::Header("[metrics]", 1),
            ));
        }
        if prewarmed > self.pool.max_idle_total {
            return Err(Invalid::new(
                format!(
                    "the [[upstream]] entries' min_idle_per_host add up to {prewarmed}, above pool.max_idle_total ({})",
                    self.pool.max_idle_total
                ),
                Anchor::Header("[[upstream]]", 1),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML (what `eddy check` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// A cross-table rule that failed, and where in the file to point.
struct Invalid {
    message: String,
    anchor: Anchor,
}

impl Invalid {
    fn new(message: impl Into<String>, anchor: Anchor) -> Invalid {
        Invalid {
            message: message.into(),
            anchor,
        }
    }
}

/// Where a validation error points. Validation runs on the parsed values,
/// which have no spans, so the position is found again in the text: the
/// table the offending entry was written in. (An entry written as an
/// inline array rather than a `[[table]]` points at the start.)
enum Anchor {
    Start,
    /// The `n`-th (1-based) line that opens this table header.
    Header(&'static str, usize),
}

impl Anchor {
    fn locate(&self, text: &str) -> (usize, usize) {
        let offset = match self {
            Anchor::Start => None,
            Anchor::Header(header, nth) => {
                let mut offset = 0;
                text.split_inclusive('\n')
                    .filter_map(|line| {
                        let at = offset;
                        offset += line.len();
                        let body = line.trim_start();
                        body.starts_with(header)
                            .then(|| at + (line.len() - body.len()))
                    })
                    .nth(nth.saturating_sub(1))
            }
        };
        line_col(text, offset.unwrap_or(0))
    }
}

/// The dotted key whose value is at `offset`: the `key =` before it on its
/// line, under the nearest table header above (`pool.idle_timeout`,
/// `listener.listen`). `None` where the text does not read that way.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |p| p + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |p| offset + p);
    let line = &text[line_start..line_end];
    let before = &line[..offset - line_start];
    let key = match before.find('=') {
        // Only a plain `key = value` line: inside an inline table or an
        // array spread over lines the key is not on this line's left.
        Some(eq) if !before[eq + 1..].contains(['{', '[', ',']) => before[..eq].trim(),
        Some(_) => return None,
        // The error is on the key itself (an unknown field).
        None => line.split('=').next().unwrap_or("").trim(),
    };
    let bare = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if !bare(key) {
        return None;
    }
    let table = text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        l.starts_with('[').then(|| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
        })
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

/// The last segment of a dotted key.
fn last_key(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// 1-based line and column of a byte offset.
/// Where the key a message is about is written, at or after `from`: a
/// range check speaks of `max_connections_per_host`, and the line to show
/// is that key's, not its table's.
fn key_offset(text: &str, message: &str, from: usize) -> Option<usize> {
    let words = message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter(|w| w.contains('_'))
        .map(|w| w.rsplit('.').next().unwrap_or(w))
        .filter(|w| w.contains('_'));
    for word in words {
        let mut at = from.min(text.len());
        while let Some(i) = text[at..].find(word) {
            let pos = at + i;
            let line_start = text[..pos].rfind('\n').map_or(0, |n| n + 1);
            let after = text[pos + word.len()..].trim_start_matches([' ', '\t']);
            if text[line_start..pos].trim().is_empty() && after.starts_with('=') {
                return Some(pos);
            }
            at = pos + word.len().max(1);
        }
    }
    None
}

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
    fn finding_a_key_named_in_a_message_always_ends() {
        // A word that ends in a dot leaves nothing to search for after it.
        assert_eq!(key_offset("a_ = 1\n", "bad a_. value", 0), None);
        assert_eq!(
            key_offset("x = 1\nmax_b = 2\n", "max_b too big", 0),
            Some(6)
        );
        assert_eq!(key_offset("max_b_c = 2\n", "max_b too big", 0), None);
    }

    #[test]
    fn an_open_forward_proxy_is_warned_about() {
        let open = "[[listener]]\nlisten = \"0.0.0.0:3128\"\n";
        let c = Config::from_toml(open, "f.toml").expect("valid");
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("open forward proxy"), "{w:?}");
        let allowed = format!("{open}[security]\nallow_hosts = [\"api.example.com\"]\n");
        let c = Config::from_toml(&allowed, "f.toml").expect("valid");
        assert!(c.warnings().is_empty());
        let local = "[[listener]]\nlisten = \"127.0.0.1:3128\"\n";
        let c = Config::from_toml(local, "f.toml").expect("valid");
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn embedded_default_matches_the_built_in_defaults() {
        let c = Config::from_toml(DEFAULT_CONFIG_TOML, "<default>").expect("default parses");
        assert_eq!(c, Config::default());
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].listen.to_string(), "127.0.0.1:3128");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
    }

    #[test]
    fn dns_source_and_via_keys_are_checked() {
        let bad = |toml: &str, says: &str| {
            let e = Config::from_toml(toml, "f.toml")
                .expect_err(toml)
                .to_string();
            assert!(e.contains(says), "{toml}: {e}");
        };
        bad(
            "[pool]\ndns_refresh = \"500ms\"\n",
            "dns_refresh must be at least 1s",
        );
        bad("[pool]\nsource_address = \"0.0.0.0\"\n", "source_address");
        bad("[pool]\nsource_address = \"not-an-ip\"\n", "source_address");
        bad(
            "[[upstream]]\nmatch = \"a.test\"\nvia = \"https://egress:3128\"\n",
            "via must be an http:// proxy",
        );
        bad(
            "[[upstream]]\nmatch = \"a.test\"\nvia = \"http://egress:3128\"\nhttp2 = true\n",
            "via cannot be combined with http2",
        );
        let good = "[pool]\ndns_refresh = \"5s\"\nsource_address = \"10.0.0.5\"\n\
                    [[upstream]]\nmatch = \"a.test\"\nvia = \"http://egress:3128\"\n";
        let c = Config::from_toml(good, "f.toml").expect("valid");
        assert_eq!(c.pool.dns_refresh.get(), std::time::Duration::from_secs(5));
        assert_eq!(c.upstreams[0].via.as_ref().map(|v| v.port), Some(3128));
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(
            Config::from_toml("", "x").expect("empty"),
            Config::default()
        );
    }

    #[test]
    fn a_bad_value_is_reported_with_its_key_and_position() {
        let err = Config::from_toml("[pool]\nidle_timeout = \"30 sec\"\n", "f.toml")
            .expect_err("bad duration");
        let text = err.to_string();
        assert!(
            text.starts_with("f.toml:2:16: pool.idle_timeout: "),
            "{text}"
        );
        let err = Config::from_toml("[[listener]]\nlisten = \"nowhere\"\n", "f.toml")
            .expect_err("bad address");
        assert!(
            err.to_string()
                .starts_with("f.toml:2:10: listener.listen: "),
            "{err}"
        );
    }

    #[test]
    fn rules_across_tables_are_reported_at_a_position_too() {
        let twice = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n\
                     [[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n";
        let err = Config::from_toml(twice, "f.toml").expect_err("name twice");
        assert!(
            err.to_string().starts_with("f.toml:4:1: listener name"),
            "{err}"
        );
        let upstream = "[[upstream]]\nmatch = \"api\"\nclient_cert = \"c.pem\"\n";
        let err = Config::from_toml(upstream, "f.toml").expect_err("cert without key");
        // At the key the rule names, in the table it is about.
        assert!(
            err.to_string().starts_with("f.toml:3:1: [[upstream]]"),
            "{err}"
        );
        // Two listeners without a name both default to "proxy": the error
        // points at the second table (a commented-out header is not one).
        let unnamed = "# [[listener]]\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\
                       [[listener]]\nlisten = \"127.0.0.1:0\"\n";
        let err = Config::from_toml(unnamed, "f.toml").expect_err("default name twice");
        assert!(err.to_string().starts_with("f.toml:4:1: "), "{err}");
        let prewarm = "[pool]\nmax_idle_total = 1\n\n  [[upstream]]\nmatch = \"a\"\n\
                       pool = { min_idle_per_host = 2 }\n";
        let err = Config::from_toml(prewarm, "f.toml").expect_err("prewarm over the total");
        assert!(err.to_string().starts_with("f.toml:4:3: "), "{err}");
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
    fn request_body_rules_are_bounded() {
        let c = Config::from_toml(
            "[[listener]]\nclient_body_buffer = \"1MiB\"\nclient_body_min_rate = 0\n",
            "f.toml",
        )
        .expect("parses");
        assert_eq!(c.listeners[0].client_body_buffer, Size::kib(1024));
        assert_eq!(c.listeners[0].client_body_min_rate.bytes(), 0);
        for (bad, why) in [
            ("client_body_buffer = \"32MiB\"", "at most 16MiB"),
            (
                "client_body_timeout = \"0s\"",
                "client_body_timeout must be above 0s",
            ),
        ] {
            let err =
                Config::from_toml(&format!("[[listener]]\n{bad}\n"), "f.toml").expect_err(bad);
            assert!(err.to_string().contains(why), "{err}");
            // The key's line, not the table's.
            assert!(err.to_string().starts_with("f.toml:2:1"), "{err}");
        }
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
    fn prewarming_cannot_exceed_the_global_idle_bound() {
        let err = Config::from_toml(
            "[pool]\nmax_idle_total = 1\n[[upstream]]\nmatch = \"a\"\n[upstream.pool]\nmin_idle_per_host = 2\n",
            "f.toml",
        )
        .expect_err("min idle above max_idle_total");
        assert!(err.to_string().contains("max_idle_total"), "{err}");
    }

    #[test]
    fn one_origin_cannot_have_two_pool_settings() {
        let err = Config::from_toml(
            "[[upstream]]\nmatch = \"a\"\nconnect = \"http://o:80\"\n[upstream.pool]\nmax_connections_per_host = 2\n\
             [[upstream]]\nmatch = \"b\"\nconnect = \"http://o\"\n[upstream.pool]\nmax_connections_per_host = 3\n",
            "f.toml",
        )
        .expect_err("conflicting pools");
        assert!(err.to_string().contains("one origin has one pool"), "{err}");
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
