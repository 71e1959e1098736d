//! The reference documents in `docs/` against the code, both ways: every
//! configuration key eddy reads and prints, every metric `/metrics` serves
//! and every shipped alert is documented, and nothing documented is
//! missing from the code. (Error types and close reasons are checked by
//! unit tests next to their enums, in `src/error.rs` and `src/metrics.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use crate::support::client::get;
use crate::support::eddy;
use crate::support::origin::{Behavior, Origin};

pub(crate) fn repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The cells of every markdown table row whose first cell is a code span,
/// keyed by that span's text (without the backticks).
fn table_rows(doc: &str) -> BTreeMap<String, Vec<String>> {
    let mut rows = BTreeMap::new();
    for line in doc.lines() {
        let Some(inner) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect();
        let Some(name) = inner.split('`').next() else {
            continue;
        };
        rows.insert(name.to_string(), cells);
    }
    rows
}

/// Every key the configuration's JSON Schema (generated from the types
/// that read the file) allows, dotted: `pool.idle_timeout`,
/// `listener.name`, `upstream.pool.max_connections_per_host`.
pub(crate) fn schema_keys() -> BTreeSet<String> {
    let schema: serde_json::Value =
        serde_json::from_str(&repo_file("config/eddy.schema.json")).expect("the schema is JSON");
    let defs = &schema["definitions"];
    fn walk(
        prefix: &str,
        node: &serde_json::Value,
        defs: &serde_json::Value,
        out: &mut BTreeSet<String>,
    ) {
        let before = out.len();
        // Follow `$ref`, `allOf`/`anyOf` (options), and array items.
        if let Some(r) = node["$ref"].as_str() {
            let name = r.rsplit('/').next().unwrap_or("");
            return walk(prefix, &defs[name], defs, out);
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            for alt in node[key].as_array().into_iter().flatten() {
                walk(prefix, alt, defs, out);
            }
        }
        if node["items"].is_object() {
            walk(prefix, &node["items"], defs, out);
        }
        let Some(props) = node["properties"].as_object() else {
            if !prefix.is_empty() && out.len() == before {
                out.insert(prefix.to_string());
            }
            return;
        };
        for (key, sub) in props {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            walk(&name, sub, defs, out);
        }
    }
    let mut keys = BTreeSet::new();
    walk("", &schema, defs, &mut keys);
    keys
}

/// Dotted keys of a TOML document; an array of tables contributes the keys
/// of all its entries.
fn dotted(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => dotted(&name, t, out),
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                for t in a.iter().filter_map(toml::Value::as_table) {
                    dotted(&name, t, out);
                }
            }
            _ => {
                out.insert(name, value.clone());
            }
        }
    }
}

/// What `eddy check` prints for a configuration file, as dotted keys and
/// their values.
fn eddy_check_prints(config: &str) -> BTreeMap<String, toml::Value> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("docs-check-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run eddy check");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "eddy check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table =
        toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("eddy check prints TOML");
    let mut keys = BTreeMap::new();
    dotted("", &printed, &mut keys);
    keys
}

/// A configuration that sets every optional key eddy check can print
/// without files (TLS files are read by `eddy check`, so those keys come
/// from the schema instead).
const WITH_OPTIONAL_KEYS: &str = r#"
[[listener]]
name = "app"
mode = "route"
upstream = "http://api.internal:8080"

[pool]
source_address = "127.0.0.1"

[[upstream]]
match = "a.internal"
connect = "https://a.internal:443"
http2 = true
sni = "a.example"

[[upstream]]
match = "b.internal"
via = "http://egress.internal:3128"
[upstream.pool]
max_connections_per_host = 4
"#;

#[test]
fn the_configuration_reference_documents_every_key_both_ways() {
    let doc = repo_file("docs/configuration.md");
    let rows = table_rows(&doc);
    let documented: BTreeSet<String> = rows.keys().cloned().collect();
    let schema = schema_keys();
    assert!(schema.len() > 50, "{schema:?}");

    // Every key the code reads is documented (`upstream.pool.*` stands
    // for the per-origin copies of the `[pool]` keys).
    let covered = |key: &str| {
        documented.contains(key)
            || key.strip_prefix("upstream.pool.").is_some_and(|k| {
                documented.contains("upstream.pool.*") && documented.contains(&format!("pool.{k}"))
            })
    };
    for key in &schema {
        assert!(
            covered(key),
            "docs/configuration.md does not document `{key}`"
        );
    }
    let mut printed = eddy_check_prints("");
    printed.extend(eddy_check_prints(WITH_OPTIONAL_KEYS));
    for key in printed.keys() {
        assert!(
            covered(key),
            "eddy check prints `{key}`, which docs/configuration.md does not document"
        );
    }
    // Nothing documented is missing from the code.
    for key in &documented {
        assert!(
            schema.contains(key) || key == "upstream.pool.*",
            "docs/configuration.md documents `{key}`, which eddy does not read"
        );
    }
    // Each row has a type, a default and a description, and the default
    // is what eddy check prints for a file that leaves the key out.
    let defaults = eddy_check_prints("");
    for (key, cells) in &rows {
        assert_eq!(
            cells.len(),
            4,
            "the row of `{key}` has four cells: {cells:?}"
        );
        assert!(cells.iter().all(|c| !c.is_empty()), "`{key}`: {cells:?}");
        let default = &cells[2];
        match defaults.get(key) {
            Some(value) => assert_eq!(
                default,
                &format!("`{value}`"),
                "docs/configuration.md gives `{key}` the default {default}; eddy check prints {value}"
            ),
            None if key.starts_with("listener.") => {
                // The default listener leaves out only `upstream`.
                assert_eq!(key, "listener.upstream");
                assert_eq!(default, "–");
            }
            None => assert!(
                default == "–" || key.starts_with("upstream."),
                "`{key}` has no printed default, so its cell must say –, not {default}"
            ),
        }
    }
}

/// Every `section.key` a document names in backticks is a key eddy reads:
/// the README and every page of `docs/` may not point operators at a key
/// that does not exist.
#[test]
fn every_key_the_docs_name_exists() {
    let schema = schema_keys();
    // Every table of the configuration, as the schema has them.
    let sections: BTreeSet<String> = schema
        .iter()
        .filter_map(|k| k.split_once('.').map(|(table, _)| format!("{table}.")))
        .collect();
    assert!(sections.len() >= 10, "{sections:?}");
    let dir = format!("{}/docs", env!("CARGO_MANIFEST_DIR"));
    let mut files = vec!["README.md".to_string()];
    for entry in std::fs::read_dir(&dir).expect("docs/") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    let mut checked = 0;
    for file in &files {
        let text = repo_file(file);
        for span in text.split('`').skip(1).step_by(2) {
            let key = span.split(" = ").next().unwrap_or(span).trim();
            let is_key = sections.iter().any(|s| key.starts_with(s))
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
                && !key.ends_with(".md")
                && !key.ends_with(".rs");
            if !is_key {
                continue;
            }
            checked += 1;
            assert!(
                schema.contains(key),
                "{file} names `{key}`, which is not a configuration key"
            );
        }
    }
    assert!(checked > 50, "only {checked} keys named in the docs");
}

/// The metrics reference against a live `/metrics`: every family served is
/// documented with its type and exact labels, and every documented metric
/// is served or defined in `src/metrics.rs`, with a section and a PromQL
/// example of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_reference_matches_what_metrics_serves() {
    let doc = repo_file("docs/metrics.md");
    let summary: BTreeMap<String, Vec<String>> = table_rows(&doc)
        .into_iter()
        .filter(|(name, _)| name.starts_with("eddy_") || name.starts_with("process_"))
        .collect();
    assert!(summary.len() >= 20, "{summary:?}");

    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("name = \"app\"\n", "").await;
    assert_eq!(
        get(proxy.addr, &format!("{}/x", origin.url())).await.status,
        200
    );
    assert_eq!(get(proxy.addr, "http://nowhere.invalid/").await.status, 502);
    let text = proxy.admin_get("/metrics").await.text();

    let mut served = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                served.insert(name.to_string(), kind.to_string());
            }
        }
    }
    assert!(served.len() >= 20, "{served:?}");
    let labels_of = |cells: &Vec<String>| -> BTreeSet<String> {
        cells
            .get(2)
            .map(|c| {
                c.split(", ")
                    .map(|l| l.trim_matches('`').to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (name, kind) in &served {
        let cells = summary.get(name).unwrap_or_else(|| {
            panic!("/metrics serves {name}, which docs/metrics.md does not list")
        });
        assert_eq!(&cells[1], kind, "{name}: type");
        let want = labels_of(cells);
        for line in text.lines().filter(|l| {
            l.strip_prefix(name.as_str())
                .is_some_and(|r| r.starts_with(['{', ' ', '_']))
        }) {
            let sample = line.split([' ', '{']).next().unwrap_or("");
            if sample != name && !(kind == "histogram" && sample.starts_with(&format!("{name}_"))) {
                continue; // another metric sharing the prefix
            }
            let got: BTreeSet<String> = line
                .split_once('{')
                .and_then(|(_, r)| r.rsplit_once('}'))
                .map(|(labels, _)| {
                    labels
                        .split("\",")
                        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()))
                        .filter(|k| k != "le")
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(
                got, want,
                "{name}: labels of `{line}` against docs/metrics.md"
            );
        }
    }
    let source = repo_file("src/metrics.rs");
    for name in summary.keys() {
        assert!(
            served.contains_key(name) || source.contains(&format!("\"{name}\"")),
            "docs/metrics.md lists {name}, which eddy neither serves nor defines"
        );
        let heading = format!("### `{name}`");
        let section = doc
            .split_once(&heading)
            .unwrap_or_else(|| panic!("docs/metrics.md has no section {heading}"))
            .1;
        let section = section.split("\n### ").next().unwrap_or(section);
        let promql = section
            .split_once("```promql\n")
            .and_then(|(_, r)| r.split_once("```"))
            .map(|(q, _)| q)
            .unwrap_or_else(|| panic!("{heading} has no PromQL example"));
        assert!(
            promql.contains(name.as_str()),
            "{heading}: its example uses {name}"
        );
    }
}

/// The operations page names every shipped alert, with what to do.
#[test]
fn the_operations_page_explains_every_alert() {
    let rules = repo_file("deploy/prometheus/eddy-alerts.yml");
    let alerts: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().trim_matches(['"', '\'']).to_string())
        .collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    let doc = repo_file("docs/operations.md");
    let rows = table_rows(&doc);
    for alert in &alerts {
        let cells = rows
            .get(alert)
            .unwrap_or_else(|| panic!("docs/operations.md has no row for {alert}"));
        assert_eq!(cells.len(), 3, "{alert}: fires when, what to do");
    }
    for name in rows.keys().filter(|n| n.starts_with("Eddy")) {
        assert!(
            alerts.contains(name),
            "docs/operations.md explains {name}, which is not shipped"
        );
    }
}
