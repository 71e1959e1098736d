//! Opt-in TLS interception of CONNECT tunnels (`[tls_intercept]`).
//!
//! A legacy app calling `https://` through `HTTPS_PROXY` opens a tunnel per
//! connection, and a tunnel is bytes eddy cannot pool: every request pays a
//! TCP and a TLS handshake to the origin. For hosts the operator lists,
//! eddy instead answers the CONNECT itself, completes the TLS handshake as
//! that host with a leaf certificate minted by a local CA the app trusts
//! (`certs`), and sends the requests inside through the pool to
//! `https://host:port`, verifying the origin as TLS origination does.
//!
//! The trade-off is the operator's to make, host by host: the app must
//! trust the CA, and certificate pinning or client certificates cannot
//! pass through eddy. Nothing is intercepted unless listed.

mod certs;

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::config::{HostPattern, TlsInterceptConfig};

use certs::Minter;

/// The listed hosts and the CA that speaks for them.
pub(crate) struct Interceptor {
    hosts: Vec<HostPattern>,
    minter: Minter,
}

impl Interceptor {
    /// `None` when no host is listed. Fails on unreadable files, a key
    /// readable by group or others, or a CA that cannot sign.
    pub(crate) fn from_config(c: &TlsInterceptConfig) -> Result<Option<Interceptor>, String> {
        if c.hosts.is_empty() {
            return Ok(None);
        }
        let (Some(cert_path), Some(key_path)) = (&c.ca_cert, &c.ca_key) else {
            return Err("tls_intercept.hosts needs ca_cert and ca_key".into());
        };
        key_is_private(key_path)?;
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| format!("tls_intercept: {}: {e}", p.display()))
        };
        let minter = Minter::new(&read(cert_path)?, &read(key_path)?, c.max_cached_certs)
            .map_err(|e| format!("tls_intercept: {e}"))?;
        Ok(Some(Interceptor {
            hosts: c.hosts.clone(),
            minter,
        }))
    }

    /// Whether CONNECT tunnels to `host` are intercepted.
    pub(crate) fn intercepts(&self, host: &str) -> bool {
        self.hosts.iter().any(|p| p.matches(host))
    }

    /// The listed patterns, for the start-up log line.
    pub(crate) fn hosts(&self) -> &[HostPattern] {
        &self.hosts
    }

    /// Leaf certificates held now.
    pub(crate) fn cached_certs(&self) -> usize {
        self.minter.cached()
    }

    /// The TLS server side for connections to `host`: its leaf, and
    /// HTTP/1.1 as the only application protocol (a client that offers
    /// only `h2` fails the handshake cleanly).
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        self.minter.server_config(host)
    }
}

/// The CA key must be the operator's secret alone: eddy refuses to start
/// with one that group or others may read.
fn key_is_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("tls_intercept.ca_key {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "tls_intercept.ca_key {} is readable by group or others (mode {mode:03o}); chmod 600 it",
            path.display()
        ));
    }
    Ok(())
}
