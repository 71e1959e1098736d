//! The pool key: which origin server a connection talks to, and how.
//!
//! Two requests may share a connection only if they agree on scheme, host,
//! port and TLS settings. The key is an `Arc` so the hot path clones a
//! pointer, and it renders once, at creation, as `scheme://host:port`: the
//! form `/pools` and the `upstream` label use.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, OnceLock};

use super::tls::TlsProfile;
use crate::config::OriginUrl;

#[derive(Clone)]
pub(crate) struct Origin(Arc<Inner>);

struct Inner {
    tls: bool,
    port: u16,
    /// TLS settings other than the defaults (`[[upstream]]` ones).
    profile: Option<Arc<TlsProfile>>,
    /// An egress proxy this origin is reached through (`[[upstream]] via`):
    /// its host and port.
    via: Option<(Box<str>, u16)>,
    /// `scheme://host:port`, derived from the fields above.
    name: Box<str>,
    /// Where the host is in `name` (one allocation serves both).
    host: std::ops::Range<usize>,
    /// The fields above hashed once, with this process's random key: the
    /// pool's maps look an origin up several times a request, and then
    /// hash these 8 bytes instead of the name. Keyed, because a forward
    /// proxy's clients choose the names (no engineered collisions).
    hash: u64,
}

impl Inner {
    fn host(&self) -> &str {
        &self.name[self.host.clone()]
    }
}

impl PartialEq for Inner {
    fn eq(&self, other: &Inner) -> bool {
        self.tls == other.tls
            && self.port == other.port
            && self.host() == other.host()
            && self.profile.as_ref().map(|p| p.id) == other.profile.as_ref().map(|p| p.id)
            && self.via == other.via
    }
}

impl Eq for Inner {}

impl Hash for Inner {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The key [`Inner::hash`] is computed with, chosen once a process.
fn hash_key() -> &'static RandomState {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new)
}

impl PartialEq for Origin {
    fn eq(&self, other: &Origin) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Origin {}

impl Hash for Origin {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Origin {
    /// `host` must already be lower-case and without IPv6 brackets.
    pub(crate) fn new(tls: bool, host: &str, port: u16) -> Origin {
        Origin::build(tls, host, port, None, None)
    }

    /// An `https://` origin reached with particular TLS settings.
    pub(crate) fn with_tls(host: &str, port: u16, profile: Arc<TlsProfile>) -> Origin {
        Origin::build(true, host, port, Some(profile), None)
    }

    /// The same origin, reached through the egress proxy at `host:port`:
    /// a pool of its own (connections to the proxy, not the origin).
    pub(crate) fn via(&self, host: &str, port: u16) -> Origin {
        let o = &self.0;
        Origin::build(
            o.tls,
            o.host(),
            o.port,
            o.profile.clone(),
            Some((host.into(), port)),
        )
    }

    /// Built for every forward request, so by hand: one allocation for
    /// the name, no formatting machinery. Renders like [`OriginUrl`].
    fn build(
        tls: bool,
        host: &str,
        port: u16,
        profile: Option<Arc<TlsProfile>>,
        via: Option<(Box<str>, u16)>,
    ) -> Origin {
        let scheme = if tls { "https://" } else { "http://" };
        let v6 = host.contains(':');
        let digits = port.checked_ilog10().unwrap_or(0) as usize + 1;
        // Exactly the name's length: `into_boxed_str` then keeps the
        // allocation instead of shrinking it into a new one.
        let len = scheme.len() + host.len() + if v6 { 2 } else { 0 } + 1 + digits;
        let mut name = String::with_capacity(len);
        name.push_str(scheme);
        if v6 {
            name.push('[');
        }
        let start = name.len();
        name.push_str(host);
        let end = name.len();
        if v6 {
            name.push(']');
        }
        name.push(':');
        push_decimal(&mut name, port);
        debug_assert_eq!(name.len(), len);
        let mut h = hash_key().build_hasher();
        tls.hash(&mut h);
        host.hash(&mut h);
        port.hash(&mut h);
        profile.as_ref().map(|p| p.id).hash(&mut h);
        via.hash(&mut h);
        Origin(Arc::new(Inner {
            tls,
            port,
            profile,
            via,
            name: name.into_boxed_str(),
            host: start..end,
            hash: h.finish(),
        }))
    }

    pub(crate) fn from_url(url: &OriginUrl) -> Origin {
        Origin::new(url.tls, &url.host, url.port)
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.0.tls
    }
    pub(crate) fn host(&self) -> &str {
        self.0.host()
    }
    pub(crate) fn port(&self) -> u16 {
        self.0.port
    }
    /// The origin's own TLS settings, if not the defaults.
    pub(crate) fn tls_profile(&self) -> Option<&Arc<TlsProfile>> {
        self.0.profile.as_ref()
    }
    /// The egress proxy's host and port, for an origin reached through one.
    pub(crate) fn via_proxy(&self) -> Option<(&str, u16)> {
        self.0.via.as_ref().map(|(h, p)| (&**h, *p))
    }
    /// Where eddy's TCP connections for this origin go: the egress proxy,
    /// or the origin itself.
    pub(crate) fn dial_host(&self) -> (&str, u16) {
        self.via_proxy().unwrap_or((self.host(), self.0.port))
    }
    /// `scheme://host:port`.
    pub(crate) fn as_str(&self) -> &str {
        &self.0.name
    }
}

fn push_decimal(out: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_the_config_url() {
        for (tls, host, port) in [
            (false, "example.com", 80),
            (true, "api.internal", 443),
            (false, "127.0.0.1", 0),
            (true, "::1", 65535),
            (false, "fe80::1", 8080),
            (false, "a", 9),
        ] {
            let o = Origin::new(tls, host, port);
            let url = OriginUrl {
                tls,
                host: host.to_string(),
                port,
            };
            assert_eq!(o.as_str(), url.to_string());
            assert_eq!(o.host(), host);
            assert_eq!(o.port(), port);
            assert_eq!(o.is_tls(), tls);
        }
    }

    #[test]
    fn equal_origins_hash_alike() {
        use std::collections::HashSet;
        let set: HashSet<Origin> = [
            Origin::new(false, "a.test", 80),
            Origin::new(false, "a.test", 80),
            Origin::new(true, "a.test", 80),
            Origin::new(false, "a.test", 81),
        ]
        .into_iter()
        .collect();
        assert_eq!(set.len(), 3);
    }
}
