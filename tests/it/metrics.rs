//! `/metrics` on the admin port: the metric set, its labels, its bounds, and
//! that it agrees with what the origins saw.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::client::{get, open, send_raw};
use crate::support::eddy::{self, Proxy};
use crate::support::eventually;
use crate::support::origin::{Behavior, Origin};

/// Every metric eddy exports, with its type and exact label names: names
/// and labels that dashboards and alerts rely on, so a change here is a
/// change for every user.
const EXPORTED_METRICS: &[(&str, &str, &[&str])] = &[
    ("eddy_client_connections_total", "counter", &["listener"]),
    ("eddy_client_connections_open", "gauge", &["listener"]),
    (
        "eddy_requests_total",
        "counter",
        &["listener", "upstream", "code"],
    ),
    ("eddy_request_duration_seconds", "histogram", &["upstream"]),
    (
        "eddy_upstream_requests_total",
        "counter",
        &["upstream", "connection"],
    ),
    (
        "eddy_upstream_connections_opened_total",
        "counter",
        &["upstream"],
    ),
    (
        "eddy_upstream_connections_closed_total",
        "counter",
        &["upstream", "reason"],
    ),
    ("eddy_upstream_connections", "gauge", &["upstream", "state"]),
    (
        "eddy_upstream_connect_duration_seconds",
        "histogram",
        &["upstream"],
    ),
    ("eddy_pool_pending", "gauge", &["upstream"]),
    ("eddy_pool_wait_seconds", "histogram", &["upstream"]),
    (
        "eddy_pool_rejected_total",
        "counter",
        &["upstream", "reason"],
    ),
    (
        "eddy_stale_retries_total",
        "counter",
        &["upstream", "outcome"],
    ),
    (
        "eddy_body_drains_total",
        "counter",
        &["upstream", "outcome"],
    ),
    ("eddy_errors_total", "counter", &["upstream", "error"]),
    ("eddy_tunnels_total", "counter", &["listener"]),
    ("eddy_tunnels_open", "gauge", &["listener"]),
    ("eddy_config_reloads_total", "counter", &["outcome"]),
    (
        "eddy_config_last_reload_success_timestamp_seconds",
        "gauge",
        &[],
    ),
];

async fn scrape(proxy: &Proxy) -> String {
    let r = proxy.admin_get("/metrics").await;
    assert_eq!(r.status, 200);
    r.text()
}

/// Label names of a sample line `name{a="x",b="y"} v`.
fn label_names(line: &str) -> BTreeSet<String> {
    let Some(start) = line.find('{') else {
        return BTreeSet::new();
    };
    let end = line.rfind('}').unwrap_or(line.len());
    line[start + 1..end]
        .split("\",")
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_metric_is_present_with_its_labels_and_agrees_with_the_origin() {
    let origin = Origin::start(Behavior {
        delay: Duration::from_millis(5),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("name = \"app\"\n", "[pool]\nmax_connections_per_host = 2\n").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let addr = proxy.addr;
        let url = format!("{}/{i}", origin.url());
        tasks.push(tokio::spawn(async move { get(addr, &url).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    // One error of eddy's own, for eddy_errors_total.
    assert_eq!(get(proxy.addr, "http://nowhere.invalid/").await.status, 502);
    let text = scrape(&proxy).await;
    for (name, kind, labels) in EXPORTED_METRICS {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "{name} is a {kind}"
        );
        let sample = if *kind == "histogram" {
            format!("{name}_count")
        } else {
            name.to_string()
        };
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{sample}{{")) || l.starts_with(&format!("{sample} "))
            })
            .collect();
        assert!(!lines.is_empty(), "{name} has a series");
        let want: BTreeSet<String> = labels.iter().map(|l| l.to_string()).collect();
        for l in lines {
            assert_eq!(label_names(l), want, "{l}");
        }
    }
    assert!(text.contains("process_resident_memory_bytes"));
    // Label values come from fixed lists: status classes, connection
    // states, close and rejection reasons, outcomes (`1xx` is a 101
    // upgrade's class, as docs/metrics.md says).
    let values = |label: &str| -> BTreeSet<String> {
        let key = format!("{label}=\"");
        text.lines()
            .filter(|l| l.starts_with("eddy_"))
            .filter_map(|l| {
                let i = l.find(&key)? + key.len();
                Some(l[i..i + l[i..].find('"')?].to_string())
            })
            .collect()
    };
    let allowed: &[(&str, &[&str])] = &[
        ("code", &["1xx", "2xx", "3xx", "4xx", "5xx"]),
        ("state", &["idle", "in_use", "connecting"]),
        ("connection", &["new", "reused"]),
        (
            "reason",
            &[
                "idle_timeout",
                "keepalive_hint",
                "max_lifetime",
                "max_requests",
                "peer_closed",
                "not_drained",
                "evicted",
                "error",
                "shutdown",
                "address_gone",
                "queue_full",
                "timeout",
            ],
        ),
        (
            "outcome",
            &[
                "succeeded",
                "failed",
                "reused",
                "closed",
                "success",
                "failure",
            ],
        ),
    ];
    for (label, list) in allowed {
        let seen = values(label);
        assert!(!seen.is_empty(), "{label} has values");
        for v in &seen {
            assert!(
                list.contains(&v.as_str()),
                "{label}=\"{v}\" is not an allowed value"
            );
        }
    }
    // Histogram buckets resolve from 100 µs to 30 s.
    for le in ["0.0001", "30"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("eddy_request_duration_seconds_bucket{")
                    && l.contains(&format!("le=\"{le}\""))),
            "a bucket at {le} s"
        );
    }

    let up = origin.url();
    let m = |name: &'static str, labels: Vec<(&'static str, String)>| {
        let proxy = &proxy;
        async move {
            let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            proxy.metric(name, &pairs).await
        }
    };
    let accepted = origin.stats.accepted() as f64;
    let requests = origin.stats.requests() as f64;
    assert_eq!(
        m(
            "eddy_upstream_connections_opened_total",
            vec![("upstream", up.clone())]
        )
        .await,
        accepted
    );
    let new = m(
        "eddy_upstream_requests_total",
        vec![("upstream", up.clone()), ("connection", "new".into())],
    )
    .await;
    let reused = m(
        "eddy_upstream_requests_total",
        vec![("upstream", up.clone()), ("connection", "reused".into())],
    )
    .await;
    assert_eq!(new, accepted, "one request opened each connection");
    assert_eq!(new + reused, requests, "every request the origin saw");
    let ok = m(
        "eddy_requests_total",
        vec![
            ("listener", "app".into()),
            ("upstream", up.clone()),
            ("code", "2xx".into()),
        ],
    )
    .await;
    assert_eq!(ok, 40.0);
    assert_eq!(
        m(
            "eddy_request_duration_seconds_count",
            vec![("upstream", up.clone())]
        )
        .await,
        40.0
    );
    assert_eq!(
        m(
            "eddy_client_connections_total",
            vec![("listener", "app".into())]
        )
        .await,
        41.0
    );
    assert_eq!(
        m(
            "eddy_errors_total",
            vec![
                ("upstream", "http://nowhere.invalid:80".into()),
                ("error", "dns_error".into())
            ]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_return_to_zero_whatever_failed() {
    let slow = Origin::start(Behavior {
        delay: Duration::from_secs(4),
        ..Behavior::default()
    })
    .await;
    let abandoned = Origin::start(Behavior {
        delay: Duration::from_millis(1500),
        ..Behavior::default()
    })
    .await;
    let silent = Origin::start(Behavior {
        never_respond: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start(
        "",
        "[pool]\nmax_connections_per_host = 1\npending_timeout = \"2s\"\nresponse_header_timeout = \"6s\"\n",
    )
    .await;
    let refused = crate::support::closed_port().port();
    let spawn = |url: String| {
        let addr = proxy.addr;
        tokio::spawn(async move { get(addr, &url).await })
    };
    // One request holds slow's only connection; two more queue for it.
    let served = spawn(format!("{}/first", slow.url()));
    slow.wait_for(
        "the first request is at the origin",
        Duration::from_secs(5),
        |s| s.requests() == 1,
    )
    .await;
    let queued = [
        spawn(format!("{}/q1", slow.url())),
        spawn(format!("{}/q2", slow.url())),
    ];
    let slow_label = slow.url();
    let on_slow = |state: &'static str| [("upstream", slow_label.as_str()), ("state", state)];
    eventually(
        "two waiters are pending",
        Duration::from_secs(5),
        || async {
            proxy
                .metric("eddy_pool_pending", &[("upstream", &slow_label)])
                .await
                == 2.0
        },
    )
    .await;
    // While it is busy, the gauges say so (a gauge stuck at 0 passes the
    // end check too).
    assert_eq!(
        proxy
            .metric("eddy_upstream_connections", &on_slow("in_use"))
            .await,
        1.0
    );
    let timed_out = spawn(format!("{}/silent", silent.url()));
    let refused = spawn(format!("http://127.0.0.1:{refused}/"));
    // A client that leaves while its request is at the origin.
    let s = open(
        proxy.addr,
        format!("GET {}/abort HTTP/1.1\r\nHost: x\r\n\r\n", abandoned.url()).as_bytes(),
    )
    .await;
    abandoned
        .wait_for(
            "the aborted request is at the origin",
            Duration::from_secs(5),
            |s| s.requests() == 1,
        )
        .await;
    drop(s);

    assert_eq!(served.await.expect("task").status, 200);
    for q in queued {
        let r = q.await.expect("task");
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.proxy_error().as_deref(), Some("connection_limit_reached"));
    }
    let r = timed_out.await.expect("task");
    assert_eq!(
        (r.status, r.proxy_error().as_deref()),
        (504, Some("http_response_timeout"))
    );
    let r = refused.await.expect("task");
    assert_eq!(
        (r.status, r.proxy_error().as_deref()),
        (502, Some("connection_refused"))
    );
    eventually("gauges back to zero", Duration::from_secs(10), || async {
        let text = scrape(&proxy).await;
        let busy = text.lines().filter(|l| {
            (l.starts_with("eddy_upstream_connections{") && !l.contains("state=\"idle\"")
                || l.starts_with("eddy_pool_pending{")
                || l.starts_with("eddy_client_connections_open{"))
                && !l.ends_with(" 0")
        });
        busy.count() == 0
    })
    .await;
    let text = scrape(&proxy).await;
    for series in [
        "eddy_pool_pending{",
        "eddy_upstream_connections{",
        "eddy_client_connections_open{",
    ] {
        assert!(text.contains(series), "{series} is exported");
    }
    let idle: f64 = text
        .lines()
        .filter(|l| l.starts_with("eddy_upstream_connections{") && l.contains("state=\"idle\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        idle as u64,
        proxy.pools_sum("idle").await,
        "the idle gauge is what /pools says"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_origins_stay_within_the_label_cap() {
    let proxy = eddy::start("", "[metrics]\nmax_upstream_labels = 50\n").await;
    // 5,000 distinct origins: closed loopback ports, each one refused.
    let base = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut tasks = Vec::new();
    for chunk in 0..50u16 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            for i in 0..100u16 {
                let port = 20_000 + (base.wrapping_add(chunk * 100 + i) % 40_000);
                get(addr, &format!("http://127.0.0.2:{port}/")).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    // Then requests answered before any origin was chosen (`none`), which
    // must not push the label set past the cap either.
    let r = send_raw(proxy.addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 400);
    let text = scrape(&proxy).await;
    let upstreams: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| {
            let i = l.find("upstream=\"")? + 10;
            let j = l[i..].find('"')?;
            Some(&l[i..i + j])
        })
        .collect();
    assert!(
        upstreams.len() <= 51,
        "{} upstream label values",
        upstreams.len()
    );
    assert!(upstreams.contains("other"));
    assert!(upstreams.contains("none"));
    assert!(text.len() < 600 * 1024, "/metrics is {} bytes", text.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_and_refused_requests_are_counted_too() {
    let slow = Origin::start(Behavior {
        delay: Duration::from_millis(1500),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    // A client that gives up while eddy waits for the response head.
    let s = open(
        proxy.addr,
        format!("GET {}/slow HTTP/1.1\r\nHost: x\r\n\r\n", slow.url()).as_bytes(),
    )
    .await;
    slow.wait_for(
        "the request reached the origin",
        Duration::from_secs(5),
        |s| s.requests() == 1,
    )
    .await;
    drop(s);
    let up = slow.url();
    eventually(
        "the abandoned request is counted (499)",
        Duration::from_secs(10),
        || async {
            proxy
                .metric("eddy_requests_total", &[("upstream", &up), ("code", "4xx")])
                .await
                == 1.0
        },
    )
    .await;
    // A head refused before parsing.
    let head = format!(
        "GET {}/ HTTP/1.1\r\nHost : x\r\nConnection: close\r\n\r\n",
        slow.url()
    );
    assert_eq!(send_raw(proxy.addr, head.as_bytes()).await.status, 400);
    assert_eq!(
        proxy
            .metric(
                "eddy_requests_total",
                &[("upstream", "none"), ("code", "4xx")]
            )
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(
                "eddy_errors_total",
                &[("upstream", "none"), ("error", "http_request_error")]
            )
            .await,
        1.0
    );
}
