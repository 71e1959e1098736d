//! Runs eddy in-process with every socket on port 0.

use std::net::SocketAddr;

use eddy::{Config, Eddy};

use super::client::Response;

pub struct Proxy {
    pub eddy: Eddy,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts eddy; `listener` is extra keys for the one `[[listener]]`, `rest`
/// any further tables (`[pool]`, `[[upstream]]`, ...).
pub async fn start(listener: &str, rest: &str) -> Proxy {
    super::fail_on_eddy_panics();
    let toml = config_text(listener, rest);
    let config = Config::from_toml(&toml, "test.toml").unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let eddy = Eddy::start(config).await.expect("eddy starts");
    let addr = eddy.proxy_addr().expect("a TCP listener");
    let admin = eddy.admin_addr;
    Proxy { eddy, addr, admin }
}

/// The configuration [`start`] runs: every socket on port 0, access log
/// off, `listener` keys for the one listener, `rest` further tables.
pub fn config_text(listener: &str, rest: &str) -> String {
    format!(
        "shutdown_grace = \"3s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess_log = false\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\n{listener}\n{rest}\n"
    )
}

impl Proxy {
    /// Writes [`config_text`]`("", rest)` to a file and reloads from it, as
    /// SIGHUP would. The addresses are the running ones (port 0 stays port
    /// 0), so nothing in it needs a restart.
    pub fn reload(&self, name: &str, rest: &str) -> eddy::reload::Reloaded {
        let dir = std::env::temp_dir().join(format!("eddy-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config_text("", rest)).expect("write the new file");
        let reloaded = self.eddy.reload_file(&path).expect("reload applies");
        assert!(
            reloaded.needs_restart.is_empty(),
            "{:?}",
            reloaded.needs_restart
        );
        reloaded
    }

    /// `GET path` from this eddy's admin port.
    pub async fn admin_get(&self, path: &str) -> Response {
        admin_get(self.admin, path).await
    }

    /// `GET /pools` from the admin port, parsed.
    pub async fn pools(&self) -> serde_json::Value {
        let r = self.admin_get("/pools").await;
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).expect("/pools is JSON")
    }

    /// The value of one metric series from `/metrics`: `name` plus every
    /// `label="value"` pair given; 0 when the series is absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_at(self.admin, name, labels).await
    }

    /// `eddy_upstream_connections_closed_total` for one origin and reason.
    pub async fn closes(&self, upstream: &str, reason: &str) -> f64 {
        self.metric(
            "eddy_upstream_connections_closed_total",
            &[("upstream", upstream), ("reason", reason)],
        )
        .await
    }

    /// Sum of a `/pools` field over all origins.
    pub async fn pools_sum(&self, field: &str) -> u64 {
        let pools = self.pools().await;
        pools
            .as_object()
            .map(|m| m.values().filter_map(|v| v[field].as_u64()).sum())
            .unwrap_or(0)
    }
}

/// `GET path` from the admin port at `admin` (an in-process eddy or a
/// spawned one), on a connection of its own.
pub async fn admin_get(admin: SocketAddr, path: &str) -> Response {
    super::client::send_raw(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

/// One metric series from the `/metrics` of the admin port at `admin` (an
/// in-process eddy or a spawned one): `name` plus every `label="value"`
/// pair given; 0 when the series is absent.
pub async fn metric_at(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let r = admin_get(admin, "/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
