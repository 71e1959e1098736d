//! The shipped dashboard and alert rules only use metric names that exist
//! (SPEC section 9), so a rename cannot silently blank a panel or an alert.

use std::collections::BTreeSet;

const SPEC_METRICS: &[&str] = &[
    "eddy_client_connections_total",
    "eddy_client_connections_open",
    "eddy_requests_total",
    "eddy_request_duration_seconds",
    "eddy_upstream_requests_total",
    "eddy_upstream_connections_opened_total",
    "eddy_upstream_connections_closed_total",
    "eddy_upstream_connections",
    "eddy_upstream_connect_duration_seconds",
    "eddy_pool_pending",
    "eddy_pool_wait_seconds",
    "eddy_pool_rejected_total",
    "eddy_stale_retries_total",
    "eddy_body_drains_total",
    "eddy_errors_total",
    "eddy_tunnels_total",
    "eddy_tunnels_open",
    "eddy_config_reloads_total",
    "eddy_config_last_reload_success_timestamp_seconds",
];

/// Metric names (`eddy_*`, `process_*`) used in a query text, with histogram
/// suffixes removed.
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && (query[i..].starts_with("eddy_") || query[i..].starts_with("process_")) {
            let end = query[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(query.len(), |n| i + n);
            let name = &query[i..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

fn check_known(names: &BTreeSet<String>, source: &str) {
    for n in names {
        assert!(
            SPEC_METRICS.contains(&n.as_str()) || n.starts_with("process_"),
            "{source} uses {n}, which eddy does not export"
        );
    }
}

#[test]
fn the_dashboard_loads_and_queries_only_spec_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/eddy-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("dashboard file");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut used = BTreeSet::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has queries", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            used.extend(names);
        }
    }
    check_known(&used, "the dashboard");
    for needed in [
        "eddy_upstream_requests_total",
        "eddy_upstream_connections",
        "eddy_pool_pending",
        "eddy_pool_wait_seconds",
        "eddy_stale_retries_total",
        "eddy_body_drains_total",
        "eddy_errors_total",
        "eddy_requests_total",
        "eddy_request_duration_seconds",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
}

#[test]
fn the_alert_rules_use_only_spec_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/eddy-alerts.yml"
    );
    let text = std::fs::read_to_string(path).expect("rules file");
    let used = metric_names(&text);
    check_known(&used, "the alert rules");
    for needed in [
        "eddy_pool_pending",
        "eddy_pool_rejected_total",
        "eddy_stale_retries_total",
        "eddy_upstream_requests_total",
        "eddy_upstream_connections_closed_total",
    ] {
        assert!(used.contains(needed), "an alert uses {needed}");
    }
}

fn repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Dotted names of every key in a TOML table (`pool.idle_timeout`); an
/// array of tables contributes the keys of its first entry.
fn dotted_keys(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => dotted_keys(&name, t, out),
            toml::Value::Array(a) => match a.first() {
                Some(toml::Value::Table(t)) => dotted_keys(&name, t, out),
                _ => {
                    out.insert(name);
                }
            },
            _ => {
                out.insert(name);
            }
        }
    }
}

/// Every configuration key, dotted: those of the printed default, and the
/// keys of `[[upstream]]`, which is empty by default, and the route
/// listener's `upstream`, which the default forward listener leaves out.
fn every_config_key() -> BTreeSet<String> {
    let printed: toml::Table =
        toml::from_str(&eddy::Config::default().to_toml()).expect("the default prints as TOML");
    let mut keys = BTreeSet::new();
    dotted_keys("", &printed, &mut keys);
    for k in [
        "match",
        "connect",
        "http2",
        "ca_file",
        "client_cert",
        "client_key",
        "sni",
    ] {
        keys.insert(format!("upstream.{k}"));
    }
    keys.insert("listener.upstream".to_string());
    keys
}

/// The operator's guide names every configuration key (SPEC section 2) and
/// every shipped alert, so neither can be added without documenting it.
#[test]
fn the_operators_guide_covers_every_key_and_every_alert() {
    let readme = repo_file("README.md");
    let guide = &readme[readme
        .find("## Operator's guide")
        .expect("an operator's guide")..];
    let mut keys = every_config_key();
    keys.insert("upstream.pool.*".to_string());
    assert!(keys.len() > 40, "{keys:?}");
    for key in &keys {
        assert!(
            guide.contains(&format!("`{key}`")),
            "the guide does not name `{key}`"
        );
    }
    let rules = repo_file("deploy/prometheus/eddy-alerts.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    for alert in alerts {
        assert!(
            guide.contains(&format!("`{alert}`")),
            "the guide does not name {alert}"
        );
    }
}

#[test]
fn the_example_config_documents_every_key() {
    let example = repo_file("config/eddy.toml");
    // Every `key =` line, set or commented out, with the table it is under.
    let mut documented = BTreeSet::new();
    let mut table = String::new();
    for line in example.lines() {
        let line = line.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
        if let Some(header) = line.strip_prefix('[') {
            table = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .to_string();
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && !key.contains(' ') {
                documented.insert(if table.is_empty() {
                    key.to_string()
                } else {
                    format!("{table}.{key}")
                });
            }
        }
    }
    let keys = every_config_key();
    assert!(keys.len() > 40, "{keys:?}");
    for key in &keys {
        assert!(
            documented.contains(key),
            "config/eddy.toml does not document `{key}`; it has {documented:?}"
        );
    }
    // And the example itself is valid.
    eddy::Config::from_toml(&example, "config/eddy.toml").expect("the example parses");
}
