//! The `[pool]` table (and the `[upstream.pool]` overrides written in the
//! same shape), `[retry]` and `[drain]`: how upstream connections are
//! bounded, kept, replayed on and drained.

use serde::{Deserialize, Serialize};

use super::{
    Dur, Size, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DNS_REFRESH, DEFAULT_DRAIN_MAX_BYTES,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS_PER_HOST,
    DEFAULT_MAX_IDLE_PER_HOST, DEFAULT_MAX_IDLE_TOTAL, DEFAULT_MAX_PENDING_PER_HOST,
    DEFAULT_PENDING_TIMEOUT, DEFAULT_RESPONSE_HEADER_TIMEOUT, DEFAULT_RETRY_BODY_BUFFER,
    DEFAULT_STALE_RETRIES, DEFAULT_UNSAFE_MAX_IDLE_AGE, MAX_CONNECTIONS_CEILING,
};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct PoolConfig {
    pub(crate) max_connections_per_host: usize,
    pub(crate) max_idle_per_host: usize,
    pub(crate) min_idle_per_host: usize,
    pub(crate) max_idle_total: usize,
    pub(crate) idle_timeout: Dur,
    pub(crate) learn_idle_timeout: bool,
    pub(crate) max_lifetime: Dur,
    pub(crate) max_requests_per_connection: u64,
    pub(crate) connect_timeout: Dur,
    pub(crate) max_pending_per_host: usize,
    pub(crate) pending_timeout: Dur,
    pub(crate) response_header_timeout: Dur,
    /// The longest an origin name's addresses are used without resolving
    /// it again (a shorter DNS TTL wins).
    pub(crate) dns_refresh: Dur,
    /// The local address upstream connections are made from (none: the
    /// kernel chooses, as for any outgoing connection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source_address: Option<std::net::IpAddr>,
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
            dns_refresh: DEFAULT_DNS_REFRESH,
            source_address: None,
        }
    }
}

/// Any `[pool]` key, all optional: the `[pool]` table itself and the
/// `[upstream.pool]` overrides are both written in this shape.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Pool")]
pub(crate) struct PoolOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_connections_per_host: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_idle_per_host: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) min_idle_per_host: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_idle_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) idle_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) learn_idle_timeout: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_lifetime: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_requests_per_connection: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) connect_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_pending_per_host: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pending_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response_header_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dns_refresh: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source_address: Option<std::net::IpAddr>,
}

impl PoolOverrides {
    /// `base` with every key set here replacing its value.
    pub(crate) fn apply(&self, base: &PoolConfig) -> PoolConfig {
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
            dns_refresh: self.dns_refresh.unwrap_or(base.dns_refresh),
            source_address: self.source_address.or(base.source_address),
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
    pub(crate) fn validate(&self) -> Result<(), String> {
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
        if self.dns_refresh.get() < std::time::Duration::from_secs(1) {
            return Err("dns_refresh must be at least 1s".into());
        }
        if self
            .source_address
            .is_some_and(|a| a.is_unspecified() || a.is_multicast())
        {
            return Err("source_address must be one of this host's unicast addresses".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetryConfig {
    pub(crate) stale_retries: u32,
    pub(crate) retry_body_buffer: Size,
    pub(crate) unsafe_max_idle_age: Dur,
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

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DrainConfig {
    pub(crate) max_bytes: Size,
    pub(crate) timeout: Dur,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            max_bytes: DEFAULT_DRAIN_MAX_BYTES,
            timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

impl schemars::JsonSchema for PoolConfig {
    fn schema_name() -> String {
        "Pool".into()
    }
    fn json_schema(gen: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        PoolOverrides::json_schema(gen)
    }
}
