//! The shipped dashboard and alert rules only use metric names that eddy
//! exports (`EXPORTED_METRICS`), so a rename cannot silently blank a panel or
//! an alert; every alert has promtool unit tests that fire it and keep it
//! quiet; every dashboard query selects on the job, instance and pod variables,
//! and every panel has one unit.

use std::collections::BTreeSet;

use crate::docs::repo_file;

const EXPORTED_METRICS: &[&str] = &[
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
    "eddy_build_info",
];

const DASHBOARD: &str = "deploy/grafana/eddy-dashboard.json";
const RULES: &str = "deploy/prometheus/eddy-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/eddy-alerts.test.yml";

/// Where metric names (`eddy_*`, `process_*`) occur in a query text, as
/// byte ranges.
fn metric_spans(query: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && (query[i..].starts_with("eddy_") || query[i..].starts_with("process_")) {
            let end = query[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(query.len(), |n| i + n);
            spans.push(i..end);
            i = end;
        } else {
            i += 1;
        }
    }
    spans
}

/// Metric names (`eddy_*`, `process_*`) used in a query text, with histogram
/// suffixes removed.
fn metric_names(query: &str) -> BTreeSet<String> {
    metric_spans(query)
        .into_iter()
        .map(|span| {
            let name = &query[span];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            base.to_string()
        })
        .collect()
}

/// The label matchers after each metric name in a query, with the spaces
/// outside quotes removed (`job=~"$job"`); `None` for a name without braces.
fn metric_selectors(query: &str) -> Vec<(String, Option<BTreeSet<String>>)> {
    metric_spans(query)
        .into_iter()
        .map(|span| {
            let name = query[span.clone()].to_string();
            let rest = query[span.end..].trim_start();
            let Some(inside) = rest.strip_prefix('{') else {
                return (name, None);
            };
            let mut matchers = BTreeSet::new();
            let mut current = String::new();
            let mut quoted = false;
            let mut escaped = false;
            for c in inside.chars() {
                if quoted {
                    current.push(c);
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        quoted = false;
                    }
                    continue;
                }
                match c {
                    '"' => {
                        quoted = true;
                        current.push(c);
                    }
                    ',' | '}' => {
                        if !current.is_empty() {
                            matchers.insert(std::mem::take(&mut current));
                        }
                        if c == '}' {
                            break;
                        }
                    }
                    c if c.is_whitespace() => {}
                    c => current.push(c),
                }
            }
            (name, Some(matchers))
        })
        .collect()
}

fn check_known(names: &BTreeSet<String>, source: &str) {
    for n in names {
        assert!(
            EXPORTED_METRICS.contains(&n.as_str()) || n.starts_with("process_"),
            "{source} uses {n}, which eddy does not export"
        );
    }
}

#[test]
fn the_dashboard_loads_and_queries_only_exported_metrics() {
    let dash = dashboard();
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
        "eddy_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
}

#[test]
fn the_alert_rules_use_only_exported_metrics() {
    let text = repo_file(RULES);
    let used = metric_names(&text);
    check_known(&used, "the alert rules");
    for needed in [
        "eddy_pool_pending",
        "eddy_pool_rejected_total",
        "eddy_stale_retries_total",
        "eddy_upstream_requests_total",
        "eddy_upstream_connections_closed_total",
        "eddy_errors_total",
        "eddy_requests_total",
        "eddy_config_reloads_total",
    ] {
        assert!(used.contains(needed), "an alert uses {needed}");
    }
    // EddyDown and EddyAbsent read `up` for the shipped scrape job.
    let config = repo_file("deploy/prometheus/prometheus.yml");
    assert!(config.contains("job_name: eddy"), "{config}");
    assert!(text.contains(r#"up{job=~"eddy|.+/eddy"} == 0"#), "{text}");
    assert!(
        text.contains(r#"absent(up{job=~"eddy|.+/eddy"})"#),
        "{text}"
    );
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&repo_file(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every target's query of a dashboard panel.
fn panel_queries(panel: &serde_json::Value) -> Vec<&str> {
    panel["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| t["expr"].as_str().expect("expr"))
        .collect()
}

/// The panels can be narrowed to one eddy: each query selects on the job,
/// instance and pod variables in every selector, so no panel mixes in
/// other jobs' series (`process_*` exists in every job) or shows all
/// instances while one is picked.
#[test]
fn every_dashboard_query_selects_the_job_instance_and_pod() {
    let dash = dashboard();
    let panels = dash["panels"].as_array().expect("panels");
    for p in panels {
        for expr in panel_queries(p) {
            let selectors = metric_selectors(expr);
            assert!(!selectors.is_empty(), "{expr}");
            for (metric, matchers) in selectors {
                let matchers = matchers.unwrap_or_else(|| {
                    panic!(
                        "panel {}: {metric} has no label matchers in {expr}",
                        p["title"]
                    )
                });
                for needed in [
                    r#"job=~"$job""#,
                    r#"instance=~"$instance""#,
                    r#"pod=~"$pod""#,
                ] {
                    assert!(
                        matchers.contains(needed),
                        "panel {}: {metric} lacks {needed} in {expr}",
                        p["title"]
                    );
                }
            }
        }
    }
}

#[test]
fn the_dashboard_defines_the_job_instance_and_pod_variables() {
    let dash = dashboard();
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("the dashboard has no ${name} variable"))
    };
    let query = |name: &str| {
        var(name)["query"]
            .as_str()
            .expect("a query variable")
            .to_string()
    };
    assert!(query("job").contains("eddy_build_info"), "{}", query("job"));
    // Chained: picking a job narrows the instances, and both the pods.
    assert!(
        query("instance").contains(r#"job=~"$job""#),
        "{}",
        query("instance")
    );
    assert!(query("pod").contains(r#"job=~"$job""#), "{}", query("pod"));
    assert!(
        query("pod").contains(r#"instance=~"$instance""#),
        "{}",
        query("pod")
    );
    for name in ["job", "instance"] {
        // "All" must list the values: an allValue of .* would let
        // process_* series of every other job into the panels.
        assert_eq!(var(name)["includeAll"], true, "${name}");
        assert!(
            var(name)["allValue"].as_str().unwrap_or("").is_empty(),
            "${name} has allValue {}",
            var(name)["allValue"]
        );
    }
    // Only Kubernetes has a pod label: "All" is .*, which matches series
    // without one too.
    assert_eq!(var("pod")["includeAll"], true);
    assert_eq!(var("pod")["allValue"], ".*");
}

/// Each panel has one explicit unit, so nothing that counts bytes shares an
/// axis with seconds, or a level with a rate.
#[test]
fn every_dashboard_panel_has_one_unit() {
    let dash = dashboard();
    let panels = dash["panels"].as_array().expect("panels");
    let mut memory = false;
    let mut cpu = false;
    for p in panels {
        let title = &p["title"];
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        assert!(
            !unit.is_empty(),
            "panel {title} sets fieldConfig.defaults.unit"
        );
        for o in p["fieldConfig"]["overrides"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for prop in o["properties"].as_array().into_iter().flatten() {
                assert_ne!(prop["id"], "unit", "panel {title} overrides its unit");
            }
        }
        let queries = panel_queries(p);
        let rates = queries
            .iter()
            .filter(|q| q.contains("rate(") || q.contains("increase("))
            .count();
        assert!(
            rates == 0 || rates == queries.len(),
            "panel {title} mixes rates and levels: {queries:?}"
        );
        let uses = |metric: &str| queries.iter().any(|q| metric_names(q).contains(metric));
        if uses("process_resident_memory_bytes") {
            memory = true;
            assert_eq!(unit, "bytes", "panel {title}");
            assert!(
                !uses("process_cpu_seconds_total"),
                "panel {title} mixes memory and CPU"
            );
        }
        if uses("process_cpu_seconds_total") {
            cpu = true;
            assert_ne!(unit, "bytes", "panel {title}");
        }
    }
    assert!(memory && cpu, "the dashboard shows memory and CPU");
}

/// Every configuration key, dotted, as the schema allows them; the copies
/// of the `[pool]` keys under `[upstream.pool]` are left out (the example
/// says any `[pool]` key may go there).
fn every_config_key() -> BTreeSet<String> {
    crate::docs::schema_keys()
        .into_iter()
        .filter(|k| !k.starts_with("upstream.pool."))
        .collect()
}

/// The alert names of a rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|name| {
            name.trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_string()
        })
        .collect()
}

/// One `alert_rule_test` entry of a promtool test file.
#[derive(Debug)]
struct AlertCase {
    alert: String,
    /// Whether the entry expects the alert to fire (`exp_alerts` lists one);
    /// `exp_alerts: []`, or none at all, expects it quiet.
    fires: bool,
}

/// The entries of every `alert_rule_test` list in a promtool test file, read
/// from the text by indentation (there is no YAML parser among the
/// dependencies): an entry is a `- ` line at the list's indentation and the
/// lines indented under it.
fn alert_rule_cases(text: &str) -> Vec<AlertCase> {
    fn indent(line: &str) -> usize {
        line.len() - line.trim_start().len()
    }
    let mut lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
        .peekable();
    let mut cases = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim() != "alert_rule_test:" {
            continue;
        }
        let Some(item) = lines.peek().map(|l| indent(l)) else {
            break;
        };
        let mut case: Option<(Option<String>, bool)> = None;
        while let Some(line) = lines.peek() {
            let (n, t) = (indent(line), line.trim());
            if n < item || (n == item && !t.starts_with("- ")) {
                break;
            }
            if n == item {
                cases.extend(case.take().map(finish_case));
                case = Some((None, false));
            }
            let entry = case.as_mut().expect("an entry");
            let t = t.strip_prefix("- ").unwrap_or(t);
            if let Some(name) = t.strip_prefix("alertname:") {
                entry.0 = Some(
                    name.trim()
                        .trim_matches(|c| c == '"' || c == '\'')
                        .to_string(),
                );
            } else if let Some(value) = t.strip_prefix("exp_alerts:") {
                let value = value.trim();
                assert!(
                    value.is_empty() || value == "[]",
                    "write exp_alerts as [] or as a block list, not {value}"
                );
            } else if t.starts_with("exp_labels:") {
                entry.1 = true;
            }
            lines.next();
        }
        cases.extend(case.take().map(finish_case));
    }
    cases
}

fn finish_case((alert, fires): (Option<String>, bool)) -> AlertCase {
    AlertCase {
        alert: alert.expect("every alert_rule_test entry names its alertname"),
        fires,
    }
}

/// The promtool unit tests cover every alert both ways: a case where it
/// fires, and one where it stays quiet.
#[test]
fn every_alert_has_a_promtool_case_that_fires_it_and_one_that_does_not() {
    let tests = repo_file(RULE_TESTS);
    assert!(
        tests.lines().any(|l| l.trim() == "- eddy-alerts.yml"),
        "{RULE_TESTS} loads eddy-alerts.yml"
    );
    let alerts = alert_names(&repo_file(RULES));
    assert!(alerts.len() >= 10, "{alerts:?}");
    let cases = alert_rule_cases(&tests);
    for alert in &alerts {
        assert!(
            cases.iter().any(|c| &c.alert == alert && c.fires),
            "no case in {RULE_TESTS} fires {alert}"
        );
        assert!(
            cases.iter().any(|c| &c.alert == alert && !c.fires),
            "no case in {RULE_TESTS} where {alert} stays quiet"
        );
    }
    for c in &cases {
        assert!(
            alerts.contains(&c.alert),
            "{RULE_TESTS} tests {}, which is not an alert",
            c.alert
        );
    }
}

/// `promtool test rules` (and `check rules`) pass. Skipped without promtool;
/// .ci/run installs it.
#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        ["check", "rules", "eddy-alerts.yml"],
        ["test", "rules", "eddy-alerts.test.yml"],
    ] {
        let out = match std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipped: promtool is not on PATH (.ci/run installs it and runs `promtool test rules`)");
                return;
            }
            out => out.expect("promtool runs"),
        };
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
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

/// The repository stands alone: no file names a path outside it, or the
/// team's contract file that a clone does not have.
#[test]
fn no_file_points_outside_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("git ls-files");
    assert!(listed.status.success(), "git ls-files failed");
    // Spelt in pieces, so this file does not name them itself.
    let outside = ["..", "/shared"].concat();
    let contract = ["SP", "EC"].concat();
    let mut offenders = Vec::new();
    for path in listed.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = String::from_utf8_lossy(path).into_owned();
        let Ok(text) = std::fs::read_to_string(root.join(&path)) else {
            continue; // binary files
        };
        let spec = text
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .any(|word| word == contract);
        if text.contains(&outside) || spec {
            offenders.push(path);
        }
    }
    assert!(
        offenders.is_empty(),
        "files that point outside the repository: {offenders:?}"
    );
}
