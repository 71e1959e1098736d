//! The pool key: which origin server a connection talks to.
//!
//! Two requests may share a connection only if they agree on scheme, host and
//! port (and, once TLS origination lands, on the TLS settings). The key is an
//! `Arc` so the hot path clones a pointer, and it renders once, at creation,
//! as `scheme://host:port`: the form `/pools` and the `upstream` label use.

use std::fmt;
use std::sync::Arc;

use crate::config::OriginUrl;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Origin(Arc<Inner>);

#[derive(PartialEq, Eq, Hash)]
struct Inner {
    tls: bool,
    host: Box<str>,
    port: u16,
    /// `scheme://host:port`, derived from the fields above.
    name: Box<str>,
}

impl Origin {
    /// `host` must already be lower-case and without IPv6 brackets.
    pub fn new(tls: bool, host: &str, port: u16) -> Origin {
        let url = OriginUrl {
            tls,
            host: host.to_string(),
            port,
        };
        Origin(Arc::new(Inner {
            tls,
            host: host.into(),
            port,
            name: url.to_string().into(),
        }))
    }

    pub fn from_url(url: &OriginUrl) -> Origin {
        Origin::new(url.tls, &url.host, url.port)
    }

    pub fn is_tls(&self) -> bool {
        self.0.tls
    }
    pub fn host(&self) -> &str {
        &self.0.host
    }
    pub fn port(&self) -> u16 {
        self.0.port
    }
    /// `scheme://host:port`.
    pub fn as_str(&self) -> &str {
        &self.0.name
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
