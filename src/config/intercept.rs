//! The `[tls_intercept]` table: opt-in TLS termination of CONNECT tunnels
//! to listed hosts, so that the requests inside are pooled.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::HostPattern;

/// Leaf certificates kept, by default (one per intercepted host name).
pub(crate) const DEFAULT_MAX_CACHED_CERTS: usize = 1000;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TlsInterceptConfig {
    /// The local CA's certificate (PEM), which the applications trust.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Its private key (PEM); must not be readable by group or others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ca_key: Option<PathBuf>,
    /// Hosts whose tunnels are intercepted: exact names and `*.suffix`.
    /// Empty: nothing is.
    pub(crate) hosts: Vec<HostPattern>,
    /// Leaf certificates kept (least recently used dropped).
    pub(crate) max_cached_certs: usize,
}

impl Default for TlsInterceptConfig {
    fn default() -> Self {
        TlsInterceptConfig {
            ca_cert: None,
            ca_key: None,
            hosts: Vec::new(),
            max_cached_certs: DEFAULT_MAX_CACHED_CERTS,
        }
    }
}

impl TlsInterceptConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.ca_cert.is_some() != self.ca_key.is_some() {
            return Err("tls_intercept.ca_cert and tls_intercept.ca_key go together".into());
        }
        if !self.hosts.is_empty() && self.ca_cert.is_none() {
            return Err(
                "tls_intercept.hosts needs tls_intercept.ca_cert and tls_intercept.ca_key".into(),
            );
        }
        if !(1..=100_000).contains(&self.max_cached_certs) {
            return Err("tls_intercept.max_cached_certs must be between 1 and 100000".into());
        }
        Ok(())
    }
}
