//! The admin port's `GET /`: the status page, in a real browser.
//!
//! eddy runs in-process with two origins: one fast, one slow behind a bound
//! of 1 with requests queueing (a saturated pool). `tests/browser/
//! status_page.py` then drives headless Chromium (Debian's `chromium`, via
//! Playwright) against the admin port: it waits for the page to refresh
//! itself, compares its table with `/pools`, checks the saturated mark,
//! fails on any request that leaves the admin port, and saves a screenshot.
//!
//! Without Chromium or Playwright the test is skipped with a message, so
//! `cargo test` passes on a machine with neither; `.ci/run` installs both
//! and sets `EDDY_REQUIRE_BROWSER=1`, which turns the skip into a failure.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::client::{get, send_raw};
use crate::support::eddy;
use crate::support::origin::{Behavior, Origin};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Why the browser test cannot run here, if it cannot.
fn missing_browser() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} not found (Debian package chromium)"));
    }
    let playwright = Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .output();
    match playwright {
        Ok(out) if out.status.success() => None,
        _ => Some("python3 cannot import playwright (pip install playwright)".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_pools_and_marks_a_saturated_one() {
    if let Some(why) = missing_browser() {
        assert!(
            std::env::var_os("EDDY_REQUIRE_BROWSER").is_none(),
            "EDDY_REQUIRE_BROWSER is set but {why}"
        );
        eprintln!("skipped: the status page browser test needs Chromium and Playwright: {why}");
        return;
    }
    let fast = Origin::start(Behavior::default()).await;
    // Slower than the whole browser run: its requests stay in flight.
    let slow = Origin::start(Behavior {
        delay: Duration::from_secs(60),
        ..Behavior::default()
    })
    .await;
    let p = eddy::start(
        "",
        &format!(
            "[[upstream]]\nmatch = \"{}\"\n[upstream.pool]\nmax_connections_per_host = 1\npending_timeout = \"120s\"\n",
            slow.addr
        ),
    )
    .await;

    // Traffic to the fast origin: some at once (several connections), then
    // one after another (reused).
    let burst: Vec<_> = (0..4)
        .map(|_| {
            let (addr, url) = (p.addr, fast.url());
            tokio::spawn(async move { get(addr, &url).await })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.expect("task").status, 200);
    }
    for _ in 0..20 {
        assert_eq!(get(p.addr, &fast.url()).await.status, 200);
    }
    // An origin that refuses connections: its errors mark it failing.
    let refused = crate::support::closed_port();
    for _ in 0..2 {
        let r = get(p.addr, &format!("http://{refused}/")).await;
        assert_eq!(r.proxy_error().as_deref(), Some("connection_refused"));
    }
    // A client mistake (a target eddy cannot parse): shown apart, not as
    // an origin failing.
    let r = send_raw(p.addr, b"GET /relative HTTP/1.1\r\nHost: \r\n\r\n").await;
    assert_eq!(r.status, 400, "{}", r.text());
    // The slow origin: one request in flight, three waiting for the bound.
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let (addr, url) = (p.addr, slow.url());
        waiting.push(tokio::spawn(async move { get(addr, &url).await }));
    }
    crate::support::eventually("three waiting", Duration::from_secs(10), || async {
        p.pools_sum("pending").await == 3
    })
    .await;

    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&out_dir).expect("artifact dir");
    let screenshot = out_dir.join("status-page.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/status_page.py");
    let admin = format!("http://{}", p.admin);
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .args(["--admin", &admin, "--chromium", CHROMIUM])
            .args(["--saturated", &format!("http://{}", slow.addr)])
            .args(["--expect", &format!("http://{}", fast.addr)])
            .args(["--failing", &format!("http://{refused}")])
            .arg("--screenshot")
            .arg(&screenshot)
            .output()
            .expect("run python3")
    })
    .await
    .expect("browser run");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the browser check failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    eprintln!("{stdout}");
    for w in waiting {
        w.abort();
    }
}

/// `/status.json` reads the same counters as `/metrics` and the same pool
/// state as `/pools`: after traffic, the three agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_agrees_with_metrics_and_pools() {
    let origin = Origin::start(Behavior::default()).await;
    let p = eddy::start("", "").await;
    for _ in 0..5 {
        assert_eq!(get(p.addr, &origin.url()).await.status, 200);
    }
    let refused = crate::support::closed_port();
    assert_eq!(get(p.addr, &format!("http://{refused}/")).await.status, 502);
    let r = p.admin_get("/status.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let status: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    let row = |origin: &str| {
        status["origins"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["origin"] == origin))
            .cloned()
            .unwrap_or_else(|| panic!("{origin} in {status}"))
    };
    let up = origin.url();
    let o = row(&up);
    let metric_requests = p
        .metric(
            "eddy_upstream_requests_total",
            &[("upstream", &up), ("connection", "new")],
        )
        .await
        + p.metric(
            "eddy_upstream_requests_total",
            &[("upstream", &up), ("connection", "reused")],
        )
        .await;
    assert_eq!(o["requests_total"].as_f64(), Some(metric_requests));
    assert_eq!(metric_requests, 5.0);
    let pools = p.pools().await;
    for field in [
        "idle",
        "in_use",
        "connecting",
        "pending",
        "opened_total",
        "reused_total",
    ] {
        assert_eq!(o[field], pools[&up][field], "{field}");
    }
    let bad = row(&format!("http://{refused}"));
    let refused_errors = p
        .metric(
            "eddy_errors_total",
            &[
                ("upstream", &format!("http://{refused}")),
                ("error", "connection_refused"),
            ],
        )
        .await;
    assert_eq!(refused_errors, 1.0);
    assert_eq!(
        bad["recent_errors"]["connection_refused"].as_f64(),
        Some(refused_errors)
    );
    assert_eq!(bad["failing"], true);
    assert_eq!(o["failing"], false);
    assert!(
        status["rss_bytes"].as_f64().is_some_and(|b| b > 0.0),
        "{status}"
    );

    let page = p.admin_get("/").await;
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("status.json"), "the page reads status.json");
    // Self-contained: no script, style, image or font from anywhere else.
    for attr in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
        "url(",
    ] {
        assert!(!html.contains(attr), "the page refers outside: {attr}");
    }
}
