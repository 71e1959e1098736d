//! SIGHUP: re-read the configuration file and apply it to new work.
//!
//! Why it is built this way: a sidecar is restarted only with its pod, so an
//! operator tuning the pool must not have to drop the app's connections to
//! do it. A reload therefore never rebinds anything and never closes a
//! connection that is doing work:
//!
//! - pool, retry, drain, `[[upstream]]`, security and `access_log` settings,
//!   and a listener's `client_body_*` rules, take effect for the next request (each request reads its listener's
//!   context once, when it arrives; `proxy::ListenerSlot`);
//! - the pool takes each origin's new settings at once: idle connections
//!   over a lowered bound close now, busy ones when their exchange ends;
//! - what a reload cannot change without rebinding or re-registering (a
//!   listener's address, mode or limits, a listener added or removed, the
//!   admin address, `log.format`, `metrics.max_upstream_labels`) keeps its
//!   running value and is reported as needing a restart;
//! - a file that does not parse or validate (or names TLS files that cannot
//!   be used) changes nothing: the error is logged with its position.
//!
//! `log.level` is applied by the binary, which owns the log subscriber.

use std::path::Path;
use std::sync::Arc;

use crate::app::Eddy;
use crate::config::Config;
use crate::metrics::unix_now;
use crate::proxy::Router;

/// A reload that was applied.
#[derive(Debug)]
pub struct Reloaded {
    /// Changes in the file that were not applied: they need a restart.
    pub needs_restart: Vec<String>,
}

impl Eddy {
    /// Reads `path` and applies it (see the module docs). Counts the outcome
    /// in `eddy_config_reloads_total`; an `Err` is the reason, with the
    /// file position when there is one.
    pub fn reload_file(&self, path: &Path) -> Result<Reloaded, String> {
        let outcome = Config::load(path)
            .map_err(|e| e.to_string())
            .and_then(|config| self.apply(config));
        let metrics = &self.parts.metrics;
        match &outcome {
            Ok(_) => {
                metrics.config_reloads.with_label_values(&["success"]).inc();
                metrics.config_last_reload_success.set(unix_now());
            }
            Err(_) => metrics.config_reloads.with_label_values(&["failure"]).inc(),
        }
        outcome
    }

    /// The configuration in effect.
    pub fn config(&self) -> Arc<Config> {
        self.admin_state.current_config()
    }

    fn apply(&self, new: Config) -> Result<Reloaded, String> {
        let running = self.config();
        let (config, needs_restart) = effective(&running, new);
        // Everything that can fail comes before the first change.
        let router = Arc::new(match self.slots.first() {
            Some(slot) => Router::reloaded(&config, &slot.current().router)?,
            None => Router::new(&config)?,
        });
        // New requests first: a checkout sets its origin's settings from
        // the route it was given, so from here on they are the new ones.
        for (index, (slot, lc)) in self.slots.iter().zip(&config.listeners).enumerate() {
            slot.replace(self.parts.listener_ctx(index, lc, &config, &router));
        }
        self.parts.pool.reconfigure(
            router.generation(),
            config.pool.max_idle_total,
            config.security.deny_cidrs.clone(),
            |origin| router.settings_for(origin),
        );
        self.parts.pool.prewarm(router.prewarm_routes());
        *self
            .admin_state
            .config
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(Reloaded { needs_restart })
    }
}

/// The configuration a reload puts in effect: `new`, except for what only a
/// restart can change, which keeps its `running` value and is listed.
pub fn effective(running: &Config, mut new: Config) -> (Config, Vec<String>) {
    let mut restart = Vec::new();
    if new.admin != running.admin {
        restart.push(format!(
            "admin.listen ({} -> {})",
            running.admin.listen, new.admin.listen
        ));
        new.admin = running.admin.clone();
    }
    if new.log.format != running.log.format {
        restart.push("log.format".to_string());
        new.log.format = running.log.format;
    }
    if new.tls_intercept != running.tls_intercept {
        // The CA and its leaves were loaded at start.
        restart.push("[tls_intercept]".to_string());
        new.tls_intercept = running.tls_intercept.clone();
    }
    if new.metrics != running.metrics {
        restart.push("metrics.max_upstream_labels".to_string());
        new.metrics = running.metrics.clone();
    }
    let same_set = new.listeners.len() == running.listeners.len()
        && new
            .listeners
            .iter()
            .zip(&running.listeners)
            .all(|(n, r)| n.name == r.name && n.listen == r.listen && n.mode == r.mode);
    if !same_set {
        restart.push("the [[listener]] set (names, addresses or modes)".to_string());
        new.listeners = running.listeners.clone();
    } else {
        for (n, r) in new.listeners.iter_mut().zip(&running.listeners) {
            // A route listener's `upstream` and the request body rules are
            // read per request; the rest of a listener's keys were fixed
            // when it started accepting.
            let mut kept = r.clone();
            kept.upstream = n.upstream.clone();
            kept.client_body_buffer = n.client_body_buffer;
            kept.client_body_timeout = n.client_body_timeout;
            kept.client_body_min_rate = n.client_body_min_rate;
            if *n != kept {
                restart.push(format!("[[listener]] {:?}: limits or timeouts", r.name));
            }
            *n = kept;
        }
    }
    (new, restart)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::from_toml(text, "t.toml").expect("valid")
    }

    #[test]
    fn pool_and_upstreams_apply_and_listener_changes_wait_for_a_restart() {
        let running = parse(
            "[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:3128\"\n[pool]\nmax_connections_per_host = 4\n",
        );
        let new = parse(
            "[admin]\nlisten = \"127.0.0.1:9999\"\n\
             [[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:3128\"\nmax_header_bytes = 4096\n\
             [pool]\nmax_connections_per_host = 1\n\
             [[upstream]]\nmatch = \"api\"\nconnect = \"http://127.0.0.1:1\"\n",
        );
        let (effective, restart) = effective(&running, new);
        assert_eq!(effective.pool.max_connections_per_host, 1);
        assert_eq!(effective.upstreams.len(), 1);
        assert_eq!(effective.admin, running.admin);
        assert_eq!(effective.listeners, running.listeners);
        assert_eq!(restart.len(), 2, "{restart:?}");
        assert!(restart[0].starts_with("admin.listen"), "{restart:?}");
        assert!(restart[1].contains("\"p\""), "{restart:?}");
    }

    #[test]
    fn a_route_listeners_upstream_applies() {
        let route = |up: &str| {
            parse(&format!(
                "[[listener]]\nname = \"r\"\nlisten = \"127.0.0.1:8080\"\nmode = \"route\"\nupstream = \"{up}\"\n"
            ))
        };
        let (effective, restart) = effective(&route("http://a:80"), route("https://b:443"));
        assert!(restart.is_empty(), "{restart:?}");
        assert_eq!(
            effective.listeners[0]
                .upstream
                .as_ref()
                .map(|u| u.host.as_str()),
            Some("b")
        );
    }

    #[test]
    fn a_listener_added_keeps_the_running_set() {
        let one = parse("[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n");
        let two = parse(
            "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:2\"\n",
        );
        let (effective, restart) = effective(&one, two);
        assert_eq!(effective.listeners, one.listeners);
        assert_eq!(restart.len(), 1);
    }
}
