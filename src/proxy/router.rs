//! From the host a client asked for to the [`Route`] it takes: the origin to
//! connect to and the pool settings for it, per SPEC section 2's
//! `[[upstream]]` tables (`match` on `host:port` first, then on `host`).
//! Hosts with no entry use the global `[pool]` settings, shared by pointer.

use std::collections::HashMap;
use std::sync::Arc;

use super::target::Target;
use crate::config::{Config, PoolConfig};
use crate::upstream::tls::TlsProfile;
use crate::upstream::{Origin, Route};

pub struct Router {
    default_settings: Arc<PoolConfig>,
    /// Settings of `[[upstream]]` entries by the origin they connect to, so
    /// a request naming that origin directly shares the entry's pool
    /// settings: one origin, one pool, one bound.
    by_origin: HashMap<Origin, Arc<PoolConfig>>,
    /// Keyed by (host, port); a `None` port matches any port.
    entries: HashMap<(String, Option<u16>), Entry>,
}

struct Entry {
    /// `connect =`: where to connect instead of the requested origin.
    connect: Option<Origin>,
    /// The entry's own TLS settings (`ca_file`, `client_cert`, `sni`).
    tls: Option<Arc<TlsProfile>>,
    settings: Arc<PoolConfig>,
    min_idle: usize,
    default_port: u16,
    http2: bool,
}

impl Router {
    /// Builds the routing table; fails on TLS files that cannot be used.
    pub fn new(config: &Config) -> Result<Router, String> {
        let default_settings = Arc::new(config.pool.clone());
        let mut entries: HashMap<(String, Option<u16>), Entry> = HashMap::new();
        for u in &config.upstreams {
            let Some((host, port)) = u.match_host_port() else {
                continue;
            };
            let tls = if u.ca_file.is_some() || u.client_cert.is_some() || u.sni.is_some() {
                let client = u.client_cert.as_deref().zip(u.client_key.as_deref());
                let profile = TlsProfile::build(u.ca_file.as_deref(), client, u.sni.as_deref())
                    .map_err(|e| format!("[[upstream]] match = {:?}: {e}", u.match_))?;
                Some(Arc::new(profile))
            } else {
                None
            };
            let connect = u.connect.as_ref().map(|url| match (&tls, url.tls) {
                (Some(p), true) => Origin::with_tls(&url.host, url.port, p.clone()),
                _ => Origin::from_url(url),
            });
            let settings = u.pool.apply(&config.pool);
            let entry = Entry {
                connect,
                tls,
                min_idle: settings.min_idle_per_host,
                settings: Arc::new(settings),
                default_port: port.unwrap_or(80),
                http2: u.http2,
            };
            entries.insert((host, port), entry);
        }
        let by_origin = entries
            .iter()
            .filter_map(|((host, port), e)| {
                let origin = match (&e.connect, port) {
                    (Some(c), _) => c.clone(),
                    (None, Some(p)) => Origin::new(false, host, *p),
                    (None, None) => return None,
                };
                Some((origin, e.settings.clone()))
            })
            .collect();
        Ok(Router {
            default_settings,
            by_origin,
            entries,
        })
    }

    /// The origin a target reaches when no `connect =` says otherwise.
    fn origin_of(target: &Target, tls: Option<&Arc<TlsProfile>>) -> Origin {
        match (target.tls, tls) {
            (true, Some(profile)) => Origin::with_tls(&target.host, target.port, profile.clone()),
            (tls, _) => Origin::new(tls, &target.host, target.port),
        }
    }

    pub fn route(&self, target: &Target) -> Route {
        // Most forward proxies name no `[[upstream]]`: no lookup at all.
        let entry = if self.entries.is_empty() {
            None
        } else {
            self.entries
                .get(&(target.host.clone(), Some(target.port)))
                .or_else(|| self.entries.get(&(target.host.clone(), None)))
        };
        match entry {
            Some(e) => Route {
                origin: e
                    .connect
                    .clone()
                    .unwrap_or_else(|| Router::origin_of(target, e.tls.as_ref())),
                settings: e.settings.clone(),
                http2: e.http2,
            },
            None => {
                let origin = Router::origin_of(target, None);
                let settings = if self.by_origin.is_empty() {
                    &self.default_settings
                } else {
                    self.by_origin
                        .get(&origin)
                        .unwrap_or(&self.default_settings)
                }
                .clone();
                Route {
                    origin,
                    settings,
                    http2: false,
                }
            }
        }
    }

    /// The settings a pooled origin has under this table, for a reload.
    /// `None` for an origin no request can reach any more: one built with
    /// TLS settings of an earlier table (a reload re-reads certificate
    /// files, so an `[[upstream]]` with TLS settings of its own gets new
    /// pools).
    pub fn settings_for(&self, origin: &Origin) -> Option<Arc<PoolConfig>> {
        if let Some(profile) = origin.tls_profile() {
            return self
                .entries
                .values()
                .find(|e| e.tls.as_ref().is_some_and(|t| Arc::ptr_eq(t, profile)))
                .map(|e| e.settings.clone());
        }
        if let Some(s) = self.by_origin.get(origin) {
            return Some(s.clone());
        }
        let any_port = self
            .entries
            .get(&(origin.host().to_string(), None))
            .filter(|e| e.connect.is_none());
        Some(
            any_port
                .map_or(&self.default_settings, |e| &e.settings)
                .clone(),
        )
    }

    /// The routes to keep warm: `[[upstream]]` entries with
    /// `min_idle_per_host > 0`.
    pub fn prewarm_routes(&self) -> Vec<Route> {
        self.entries
            .iter()
            .filter(|(_, e)| e.min_idle > 0 && !e.http2)
            .map(|((host, port), e)| Route {
                origin: e
                    .connect
                    .clone()
                    .unwrap_or_else(|| Origin::new(false, host, port.unwrap_or(e.default_port))),
                settings: e.settings.clone(),
                http2: false,
            })
            .collect()
    }
}
