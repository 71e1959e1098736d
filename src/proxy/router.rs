//! From the host a client asked for to the [`Route`] it takes: the origin to
//! connect to and the pool settings for it, from the configuration's
//! `[[upstream]]` tables (`match` on `host:port` first, then on `host`).
//! Hosts with no entry use the global `[pool]` settings, shared by pointer.

use std::collections::HashMap;
use std::sync::Arc;

use super::target::Target;
use crate::config::{Config, PoolConfig};
use crate::upstream::tls::TlsProfile;
use crate::upstream::{Origin, Route};

pub(crate) struct Router {
    /// 0 at start, one more at each reload: a pool keeps the settings of
    /// the newest table it has seen, so a request routed just before a
    /// reload cannot bring the old settings back.
    generation: u64,
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
    /// What `tls` was built from: the settings and the files' bytes.
    tls_source: Option<TlsSource>,
    settings: Arc<PoolConfig>,
    min_idle: usize,
    default_port: u16,
    http2: bool,
    /// `via =`: the egress proxy's host and port.
    via: Option<(String, u16)>,
}

impl Entry {
    /// `origin`, through this entry's egress proxy if it names one.
    fn through_via(&self, origin: Origin) -> Origin {
        match &self.via {
            Some((host, port)) => origin.via(host, *port),
            None => origin,
        }
    }
}

/// The inputs of a TLS profile. Equal sources give equal profiles, so a
/// reload keeps the running one (and its pools and session cache) unless a
/// setting or a file's contents changed.
#[derive(PartialEq)]
struct TlsSource {
    settings: (
        Option<std::path::PathBuf>,
        Option<std::path::PathBuf>,
        Option<std::path::PathBuf>,
        Option<String>,
    ),
    files: Vec<Option<Vec<u8>>>,
}

impl TlsSource {
    fn of(u: &crate::config::UpstreamConfig) -> TlsSource {
        let read = |p: &Option<std::path::PathBuf>| p.as_ref().and_then(|p| std::fs::read(p).ok());
        TlsSource {
            settings: (
                u.ca_file.clone(),
                u.client_cert.clone(),
                u.client_key.clone(),
                u.sni.clone(),
            ),
            files: vec![read(&u.ca_file), read(&u.client_cert), read(&u.client_key)],
        }
    }
}

impl Router {
    /// Builds the routing table; fails on TLS files that cannot be used.
    pub(crate) fn new(config: &Config) -> Result<Router, String> {
        Router::build(config, None)
    }

    /// The table for a reloaded configuration: TLS profiles whose settings
    /// and files did not change are kept from `running`.
    pub(crate) fn reloaded(config: &Config, running: &Router) -> Result<Router, String> {
        Router::build(config, Some(running))
    }

    fn build(config: &Config, running: Option<&Router>) -> Result<Router, String> {
        let default_settings = Arc::new(config.pool.clone());
        let mut entries: HashMap<(String, Option<u16>), Entry> = HashMap::new();
        for u in &config.upstreams {
            let Some((host, port)) = u.match_host_port() else {
                continue;
            };
            let (tls, tls_source) = if u.ca_file.is_some()
                || u.client_cert.is_some()
                || u.sni.is_some()
            {
                let source = TlsSource::of(u);
                let same = running.and_then(|r| {
                    r.entries
                        .values()
                        .find_map(|e| match (&e.tls_source, &e.tls) {
                            (Some(s), Some(t)) if *s == source => Some(t.clone()),
                            _ => None,
                        })
                });
                let profile = match same {
                    Some(p) => p,
                    None => {
                        let client = u.client_cert.as_deref().zip(u.client_key.as_deref());
                        let built =
                            TlsProfile::build(u.ca_file.as_deref(), client, u.sni.as_deref())
                                .map_err(|e| format!("[[upstream]] match = {:?}: {e}", u.match_))?;
                        Arc::new(built)
                    }
                };
                (Some(profile), Some(source))
            } else {
                (None, None)
            };
            let connect = u.connect.as_ref().map(|url| match (&tls, url.tls) {
                (Some(p), true) => Origin::with_tls(&url.host, url.port, p.clone()),
                _ => Origin::from_url(url),
            });
            let settings = u.pool.apply(&config.pool);
            let mut entry = Entry {
                connect: None,
                tls,
                tls_source,
                min_idle: settings.min_idle_per_host,
                settings: Arc::new(settings),
                default_port: port.unwrap_or(80),
                http2: u.http2,
                via: u.via.as_ref().map(|v| (v.host.clone(), v.port)),
            };
            entry.connect = connect.map(|c| entry.through_via(c));
            entries.insert((host, port), entry);
        }
        let by_origin = entries
            .iter()
            .filter_map(|((host, port), e)| {
                let origin = match (&e.connect, port) {
                    (Some(c), _) => c.clone(),
                    (None, Some(p)) => e.through_via(Origin::new(false, host, *p)),
                    (None, None) => return None,
                };
                Some((origin, e.settings.clone()))
            })
            .collect();
        Ok(Router {
            generation: running.map_or(0, |r| r.generation + 1),
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

    pub(crate) fn route(&self, target: &Target) -> Route {
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
                    .unwrap_or_else(|| e.through_via(Router::origin_of(target, e.tls.as_ref()))),
                settings: e.settings.clone(),
                http2: e.http2,
                generation: self.generation,
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
                    generation: self.generation,
                }
            }
        }
    }

    /// The table's generation (see [`Router::reloaded`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The settings a pooled origin has under this table, for a reload:
    /// those [`Router::route`] gives the requests that reach it. `None`
    /// for an origin no request can reach any more: one built with TLS
    /// settings that changed.
    pub(crate) fn settings_for(&self, origin: &Origin) -> Option<Arc<PoolConfig>> {
        // Reached through an entry without `connect`: keyed by the host
        // and port asked for, which are the origin's own.
        let direct = [Some(origin.port()), None].into_iter().find_map(|port| {
            self.entries
                .get(&(origin.host().to_string(), port))
                .filter(|e| e.connect.is_none())
        });
        if let Some(e) = direct {
            let same_tls = match (origin.tls_profile(), &e.tls) {
                (Some(p), Some(t)) => Arc::ptr_eq(p, t),
                (Some(_), None) => false,
                (None, Some(_)) => !origin.is_tls(),
                (None, None) => true,
            };
            let same_via = origin.via_proxy() == e.via.as_ref().map(|(h, p)| (h.as_str(), *p));
            return (same_tls && same_via).then(|| e.settings.clone());
        }
        if origin.tls_profile().is_some() {
            // Only a `connect =` origin of an entry with TLS settings.
            return self
                .entries
                .values()
                .find(|e| e.connect.as_ref() == Some(origin))
                .map(|e| e.settings.clone());
        }
        Some(
            self.by_origin
                .get(origin)
                .unwrap_or(&self.default_settings)
                .clone(),
        )
    }

    /// The routes to keep warm: `[[upstream]]` entries with
    /// `min_idle_per_host > 0`.
    pub(crate) fn prewarm_routes(&self) -> Vec<Route> {
        self.entries
            .iter()
            .filter(|(_, e)| e.min_idle > 0 && !e.http2)
            .map(|((host, port), e)| Route {
                origin: e.connect.clone().unwrap_or_else(|| {
                    e.through_via(Origin::new(false, host, port.unwrap_or(e.default_port)))
                }),
                settings: e.settings.clone(),
                http2: false,
                generation: self.generation,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16, tls: bool) -> Target {
        Target {
            host: host.into(),
            port,
            authority: host.into(),
            tls,
        }
    }

    /// A reload gives each pooled origin the settings its requests get.
    #[test]
    fn settings_for_agrees_with_route_for_every_entry_shape() {
        let config = Config::from_toml(
            "[pool]\nmax_connections_per_host = 9\n\
             [[upstream]]\nmatch = \"exact\"\n[upstream.pool]\nmax_connections_per_host = 1\n\
             [[upstream]]\nmatch = \"port:8443\"\n[upstream.pool]\nmax_connections_per_host = 2\n\
             [[upstream]]\nmatch = \"moved\"\nconnect = \"http://elsewhere:81\"\n[upstream.pool]\nmax_connections_per_host = 3\n\
             [[upstream]]\nmatch = \"named\"\nsni = \"other.example\"\n[upstream.pool]\nmax_connections_per_host = 4\n\
             [[upstream]]\nmatch = \"tunnelled\"\nconnect = \"https://tls-origin:443\"\nsni = \"x.example\"\n[upstream.pool]\nmax_connections_per_host = 5\n",
            "t.toml",
        )
        .expect("valid");
        let router = Router::new(&config).expect("router");
        let targets = [
            target("exact", 80, false),
            target("exact", 8080, true),
            target("port", 8443, false),
            target("port", 8443, true),
            target("moved", 80, false),
            target("named", 443, true),
            target("named", 80, false),
            target("tunnelled", 80, false),
            target("elsewhere", 81, false),
            target("nobody", 80, false),
            target("nobody", 443, true),
        ];
        for t in &targets {
            let route = router.route(t);
            let again = router.settings_for(&route.origin);
            assert_eq!(
                again.map(|s| s.max_connections_per_host),
                Some(route.settings.max_connections_per_host),
                "{}:{} tls={} -> {}",
                t.host,
                t.port,
                t.tls,
                route.origin
            );
        }

        // Unchanged TLS settings keep their profile (and pools) across a
        // reload; origins of a changed one are no longer reached.
        let reloaded = Router::reloaded(&config, &router).expect("reloaded");
        let origin = router.route(&target("named", 443, true)).origin;
        assert_eq!(reloaded.route(&target("named", 443, true)).origin, origin);
        assert!(reloaded.settings_for(&origin).is_some());
        let changed = Config::from_toml(
            "[[upstream]]\nmatch = \"named\"\nsni = \"changed.example\"\n",
            "t.toml",
        )
        .expect("valid");
        let reloaded = Router::reloaded(&changed, &router).expect("reloaded");
        assert!(reloaded.settings_for(&origin).is_none());
        assert_eq!(reloaded.generation(), 1);
    }
}
