//! What eddy writes to its log, read from a real eddy process's standard
//! output: access records (flat JSON, numbers as numbers), no colour codes
//! outside a terminal, and a warn line for every failure, throttled, whether
//! or not the access log is on.

use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::cli::{addresses, next_line, spawn_eddy};
use crate::support::client::get;
use crate::support::eddy::{admin_get, metric_at};
use crate::support::origin::{Behavior, Origin};

fn json_config(access_log: bool, rest: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\naccess_log = {access_log}\n\
         [[listener]]\nname = \"app\"\nlisten = \"127.0.0.1:0\"\n{rest}"
    )
}

/// Log lines, parsed, until `n` of them satisfy `wanted`; with the raw line.
fn collect(
    rx: &Receiver<String>,
    n: usize,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Vec<(String, serde_json::Value)> {
    let mut found = Vec::new();
    while found.len() < n {
        let line = next_line(rx).unwrap_or_else(|| panic!("{n} lines wanted, {found:?}"));
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if wanted(&v) {
            found.push((line, v));
        }
    }
    found
}

/// A loopback port nothing listens on.
fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Each timing in `line` is written as a number with at most three
/// decimals (microseconds), never as a string or a long binary fraction.
fn assert_timings_are_plain_numbers(line: &str, v: &serde_json::Value) {
    for key in ["duration_ms", "ttfb_ms", "pool_wait_ms", "connect_ms"] {
        let Some(n) = v.get(key) else { continue };
        assert!(n.is_number(), "{key} is a number: {line}");
        let at = line.find(&format!("\"{key}\":")).expect("key in line") + key.len() + 3;
        let text: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '-')
            .collect();
        let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3 && !text.contains('e'), "{key}={text}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_records_are_flat_objects_naming_the_exchange() {
    let origin = Origin::start(Behavior::default()).await;
    let (_child, rx) = spawn_eddy(&json_config(true, ""), "logs-json", &[]);
    let (proxy, _admin) = addresses(&rx);
    let url = format!("{}/items?id=7", origin.url());
    assert_eq!(get(proxy, &url).await.status, 200);
    assert_eq!(get(proxy, &url).await.status, 200);
    let long = format!("{}/{}", origin.url(), "a".repeat(3000));
    assert_eq!(get(proxy, &long).await.status, 200);
    let refused = get(proxy, "http://x.invalid/nowhere").await;
    assert_eq!(refused.status, 502);

    let access = collect(&rx, 4, |v| v["target"] == "eddy::access");
    for (line, v) in &access {
        let record = v.as_object().expect("one object");
        assert!(!record.contains_key("fields"), "flat: {line}");
        for (key, value) in record {
            assert!(
                !value.is_object() && !value.is_array(),
                "{key} is a plain value: {line}"
            );
            assert_ne!(value, "-", "{key}: absent, not a placeholder: {line}");
        }
        for key in [
            "listener",
            "client",
            "method",
            "path",
            "status",
            "duration_ms",
        ] {
            assert!(record.contains_key(key), "{key} in {line}");
        }
        assert_timings_are_plain_numbers(line, v);
    }
    let (first, second, capped, failed) = (&access[0].1, &access[1].1, &access[2].1, &access[3].1);
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/items?id=7");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], origin.url());
    let peer: SocketAddr = first["peer"]
        .as_str()
        .expect("peer")
        .parse()
        .expect("address");
    assert_eq!(peer, origin.addr);
    assert_eq!(first["upstream_connection"], "new");
    assert!(first["connect_ms"].is_number(), "{first}");
    assert!(first["ttfb_ms"].is_number(), "{first}");
    assert!(first["pool_wait_ms"].is_number(), "{first}");
    assert!(
        first["bytes_out"].as_u64().is_some_and(|n| n > 0),
        "{first}"
    );
    assert_eq!(second["upstream_connection"], "reused");
    assert!(
        second.get("connect_ms").is_none(),
        "no connect on reuse: {second}"
    );
    let path = capped["path"].as_str().expect("path");
    assert!(
        path.len() <= 1024 && path.ends_with("..."),
        "{}",
        path.len()
    );
    assert_eq!(failed["proxy_status"], "dns_error");
    assert_eq!(failed["upstream"], "http://x.invalid:80");
    assert!(failed.get("peer").is_none(), "{failed}");
    assert!(failed.get("ttfb_ms").is_none(), "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_in_a_file_carry_no_colour_codes() {
    let origin = Origin::start(Behavior::default()).await;
    let dir = std::env::temp_dir().join(format!("eddy-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("eddy.toml");
    std::fs::write(
        &config,
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\naccess_log = true\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("config");
    let log_path = dir.join("eddy.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = crate::cli::eddy()
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(log)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start eddy");
    let read_until = |wanted: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if wanted(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "log so far: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let text = read_until(&|t| t.contains("listening") && t.contains("addr="));
    let addr: SocketAddr = text
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {text}"));
    assert_eq!(get(addr, &origin.url()).await.status, 200);
    let refused = format!("http://127.0.0.1:{}/", refused_port());
    assert_eq!(get(addr, &refused).await.status, 502);
    let text =
        read_until(&|t| t.contains("eddy::failure") && t.matches("eddy::access").count() >= 2);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !text.as_bytes().contains(&0x1b),
        "an escape byte in the log file: {text:?}"
    );
    assert!(text.contains(" WARN "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_warned_once_per_window_and_counted_with_the_access_log_off() {
    let (_child, rx) = spawn_eddy(&json_config(false, ""), "logs-refused", &[]);
    let (proxy, admin) = addresses(&rx);
    let port = refused_port();
    let url = format!("http://127.0.0.1:{port}/");
    let upstream = format!("http://127.0.0.1:{port}");
    let r = get(proxy, &url).await;
    assert_eq!(r.proxy_error().as_deref(), Some("connection_refused"));
    let first = collect(&rx, 1, |v| v["target"] == "eddy::failure");
    let (line, v) = &first[0];
    assert_eq!(v["level"], "WARN", "{line}");
    assert_eq!(v["error"], "connection_refused", "{line}");
    assert_eq!(v["upstream"], upstream, "{line}");
    assert_eq!(v["suppressed"], 0, "{line}");
    assert!(v.get("message").is_some(), "{line}");

    // A flood of the same failure: counted one by one, written rarely.
    let started = Instant::now();
    for _ in 0..1000 {
        assert_eq!(get(proxy, &url).await.status, 502);
    }
    let flood = started.elapsed();
    // A different failure afterwards: its line comes after any of the
    // flood's, so everything the flood wrote has been read by then.
    assert_eq!(get(proxy, "http://x.invalid/").await.status, 502);
    let mut refused_lines = 0;
    loop {
        let line = next_line(&rx).expect("the dns_error line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_ne!(v["target"], "eddy::access", "the access log is off: {line}");
        if v["target"] != "eddy::failure" {
            continue;
        }
        if v["error"] == "dns_error" {
            break;
        }
        assert_eq!(v["error"], "connection_refused", "{line}");
        refused_lines += 1;
    }
    // One line per ten-second window at most.
    let windows = flood.as_secs() / 10 + 1;
    assert!(
        refused_lines <= windows,
        "{refused_lines} lines for 1,000 failures in {flood:?}"
    );
    let counted = metric_at(
        admin,
        "eddy_errors_total",
        &[("upstream", &upstream), ("error", "connection_refused")],
    )
    .await;
    assert_eq!(counted, 1001.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prewarm_that_cannot_resolve_is_warned_counted_and_shown_failing() {
    let upstream = "http://warm.invalid:80";
    let config = json_config(
        false,
        &format!(
            "[[upstream]]\nmatch = \"warm.test\"\nconnect = \"{upstream}\"\n\
             [upstream.pool]\nmin_idle_per_host = 1\n"
        ),
    );
    let (_child, rx) = spawn_eddy(&config, "logs-prewarm", &[]);
    // Prewarming starts with eddy: its failure may come before or after
    // the lines naming the addresses.
    let (mut admin, mut warned) = (None, None);
    while admin.is_none() || warned.is_none() {
        let line = next_line(&rx).expect("eddy's start-up lines");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        if v["message"] == "admin listening" {
            admin = v["admin_addr"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok());
        } else if v["target"] == "eddy::failure" {
            warned = Some((line, v));
        }
    }
    let (Some(admin), Some((line, v))) = (admin, warned) else {
        unreachable!()
    };
    let (line, v) = (&line, &v);
    assert_eq!(v["level"], "WARN", "{line}");
    assert_eq!(v["error"], "dns_error", "{line}");
    assert_eq!(v["upstream"], upstream, "{line}");
    let counted = metric_at(
        admin,
        "eddy_errors_total",
        &[("upstream", upstream), ("error", "dns_error")],
    )
    .await;
    assert!(counted >= 1.0, "{counted}");
    let pools: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/pools").await.text()).expect("JSON");
    let pool = &pools[upstream];
    assert!(
        pool["connect_failures"].as_u64().is_some_and(|n| n >= 1),
        "{pools}"
    );
    assert_eq!(pool["last_error"]["error"], "dns_error", "{pools}");
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status.json").await.text()).expect("JSON");
    let row = status["origins"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["origin"] == upstream))
        .unwrap_or_else(|| panic!("{status}"))
        .clone();
    assert_eq!(row["failing"], true, "{row}");
}
