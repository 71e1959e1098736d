//! SIGHUP reloads the configuration file; pool and upstream settings apply to
//! new work, in-flight requests finish, and a bad file keeps the running
//! configuration.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cli::{addresses, signal, spawn_eddy};
use crate::support::client::{get, Response};
use crate::support::eddy::{self, metric_at};
use crate::support::origin::{Behavior, Origin};

fn tagged(tag: &str, delay: Duration) -> Behavior {
    Behavior {
        delay,
        extra_headers: vec![format!("X-Origin: {tag}")],
        ..Behavior::default()
    }
}

/// `api.test` goes to `connect` under `bound`; `slow.test` to `slow`.
fn config(bound: usize, connect: &str, slow: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\naccess_log = false\n\
         [[listener]]\nname = \"app\"\nlisten = \"127.0.0.1:0\"\n\
         [pool]\nmax_connections_per_host = {bound}\n\
         [[upstream]]\nmatch = \"api.test\"\nconnect = \"{connect}\"\n\
         [[upstream]]\nmatch = \"slow.test\"\nconnect = \"{slow}\"\n"
    )
}

/// Waits until the spawned eddy has counted `want` reloads with `outcome`.
async fn wait_for_reloads(admin: SocketAddr, outcome: &str, want: f64) {
    crate::support::eventually(
        &format!("{want} reloads with outcome {outcome}"),
        Duration::from_secs(10),
        || async { reloads(admin, outcome).await == want },
    )
    .await;
}

async fn reloads(admin: SocketAddr, outcome: &str) -> f64 {
    metric_at(admin, "eddy_config_reloads_total", &[("outcome", outcome)]).await
}

/// `n` GETs of `url` at once through `proxy`; each must answer 200.
async fn at_once(proxy: SocketAddr, url: &str, n: usize) -> Vec<Response> {
    let all: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { get(proxy, &url).await })
        })
        .collect();
    let mut responses = Vec::new();
    for r in all {
        let r = r.await.expect("request task");
        assert_eq!(r.status, 200, "{}", r.text());
        responses.push(r);
    }
    responses
}

/// Four requests at once, each answered by the origin its header names.
async fn burst(proxy: SocketAddr) -> Vec<String> {
    at_once(proxy, "http://api.test/r", 4)
        .await
        .iter()
        .map(|r| r.header("x-origin").unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_bound_and_route_and_a_bad_file_changes_nothing() {
    let slow = Duration::from_millis(400);
    let a = Origin::start(tagged("a", slow)).await;
    let b = Origin::start(tagged("b", slow)).await;
    // Slow enough that a request to it is certainly in flight across the
    // reload.
    let s = Origin::start(tagged("s", Duration::from_secs(4))).await;
    let (child, rx) = spawn_eddy(&config(4, &a.url(), &s.url()), "reload", &[]);
    let path = child.config_path.clone();
    let (proxy, admin) = addresses(&rx);

    // The running bound: four at once reach the origin on four connections.
    assert_eq!(burst(proxy).await, ["a", "a", "a", "a"]);
    assert_eq!(a.stats.max_open(), 4);

    // A request in flight across the reload finishes.
    let in_flight = tokio::spawn(async move { get(proxy, "http://slow.test/").await });
    s.wait_for("the in-flight request", Duration::from_secs(10), |st| {
        st.requests() == 1
    })
    .await;
    std::fs::write(&path, config(1, &b.url(), &s.url())).expect("write the new file");
    signal(child.id(), "-HUP");
    wait_for_reloads(admin, "success", 1.0).await;
    assert!(
        !in_flight.is_finished(),
        "the request was in flight at the reload"
    );
    let r = in_flight.await.expect("in-flight task");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-origin").as_deref(), Some("s"));

    // New requests take the new route under the new bound: one connection.
    assert_eq!(burst(proxy).await, ["b", "b", "b", "b"]);
    assert_eq!(b.stats.accepted(), 1);
    assert_eq!(b.stats.max_open(), 1);
    let shown = eddy::admin_get(admin, "/config").await.text();
    assert!(shown.contains("max_connections_per_host = 1"), "{shown}");

    // A file that does not validate: counted, logged with its position,
    // and the running configuration keeps serving.
    std::fs::write(&path, "[pool]\nmax_connections_per_host = \"one\"\n").expect("write");
    signal(child.id(), "-HUP");
    wait_for_reloads(admin, "failure", 1.0).await;
    let logged = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the failure is logged");
        if line.contains("reload failed") {
            break line;
        }
    };
    assert!(logged.contains("eddy.toml:2:"), "{logged}");
    assert_eq!(burst(proxy).await, ["b", "b", "b", "b"]);
    assert_eq!(b.stats.max_open(), 1);
    assert_eq!(reloads(admin, "success").await, 1.0);
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_bound_closes_idle_connections_over_it_at_once() {
    let origin = Origin::start(tagged("o", Duration::from_millis(200))).await;
    let p = eddy::start("", "[pool]\nmax_connections_per_host = 4\n").await;
    let url = origin.url();
    at_once(p.addr, &url, 4).await;
    assert_eq!(origin.stats.accepted(), 4);
    // A response can reach the client a moment before its connection is
    // back in the pool.
    crate::support::eventually("four idle", Duration::from_secs(10), || async {
        p.pools_sum("idle").await == 4
    })
    .await;

    p.reload("lowered", "[pool]\nmax_connections_per_host = 1\n");
    assert_eq!(p.pools_sum("idle").await, 1);
    origin
        .wait_for("three closes", Duration::from_secs(10), |s| s.open() == 1)
        .await;
    assert_eq!(
        p.metric(
            "eddy_upstream_connections_closed_total",
            &[("reason", "evicted")]
        )
        .await,
        3.0
    );

    // The one connection left serves them all, one at a time.
    at_once(p.addr, &url, 3).await;
    assert_eq!(origin.stats.accepted(), 4);
    assert_eq!(origin.stats.open(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_over_a_lowered_bound_retire_as_their_exchanges_end() {
    // Slow enough that the reload lands while the first four are in flight.
    let origin = Origin::start(tagged("o", Duration::from_millis(800))).await;
    let p = eddy::start("", "[pool]\nmax_connections_per_host = 4\n").await;
    // Four in flight on four connections, four more waiting for one.
    let all: Vec<_> = (0..8)
        .map(|_| {
            let url = origin.url();
            let addr = p.addr;
            tokio::spawn(async move { get(addr, &url).await })
        })
        .collect();
    origin
        .wait_for("four requests in flight", Duration::from_secs(10), |s| {
            s.requests() == 4
        })
        .await;
    crate::support::eventually("four waiting", Duration::from_secs(10), || async {
        p.pools_sum("pending").await == 4
    })
    .await;
    p.reload("busy", "[pool]\nmax_connections_per_host = 1\n");
    for r in all {
        assert_eq!(
            r.await.expect("task").status,
            200,
            "in flight across the reload"
        );
    }
    // The first four connections closed as their exchanges ended, but one:
    // the waiters were served on that one, one at a time, never on four.
    let mut per_conn = origin.stats.per_conn();
    per_conn.sort_unstable();
    assert_eq!(per_conn, [1, 1, 1, 5]);
    origin
        .wait_for("one connection left", Duration::from_secs(10), |s| {
            s.open() == 1
        })
        .await;
    assert_eq!(p.pools_sum("idle").await, 1);
    assert_eq!(
        p.metric(
            "eddy_upstream_connections_closed_total",
            &[("reason", "evicted")]
        )
        .await,
        3.0
    );
}

/// `min_idle_per_host` above what may stay idle must not become a loop
/// that opens connections only to evict them, at start or after a reload
/// (a reload once left the old prewarming running against new bounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarming_stops_at_what_may_stay_idle_across_a_reload() {
    let origin = Origin::start(Behavior::default()).await;
    let pinned = |min: usize, max_idle: usize| {
        format!(
            "[[upstream]]\nmatch = \"{}\"\n[upstream.pool]\nmin_idle_per_host = {min}\nmax_idle_per_host = {max_idle}\n",
            origin.addr
        )
    };
    let p = eddy::start("", &pinned(3, 8)).await;
    origin
        .wait_for("three prewarmed", Duration::from_secs(10), |s| {
            s.open() == 3
        })
        .await;
    p.reload("prewarm", &pinned(1, 1));
    origin
        .wait_for("trimmed to one", Duration::from_secs(10), |s| s.open() == 1)
        .await;
    // Nothing announces that a loop is not running: give one time to show
    // (it would open and close hundreds of connections in this long).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        origin.stats.accepted(),
        3,
        "connections opened after the reload"
    );
    assert_eq!(origin.stats.open(), 1);
}

/// A reload that adds an address to `deny_cidrs` stops eddy reusing
/// connections to it: idle ones close at once, a busy one when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_address_is_not_reused_after_a_reload() {
    let idle_origin = Origin::start(Behavior::default()).await;
    let busy_origin = Origin::start(tagged("busy", Duration::from_secs(2))).await;
    let p = eddy::start("", "").await;
    assert_eq!(get(p.addr, &idle_origin.url()).await.status, 200);
    let busy = {
        let (addr, url) = (p.addr, busy_origin.url());
        tokio::spawn(async move { get(addr, &url).await })
    };
    busy_origin
        .wait_for("the busy request", Duration::from_secs(10), |s| {
            s.requests() == 1
        })
        .await;
    p.reload("deny", "[security]\ndeny_cidrs = [\"127.0.0.0/8\"]\n");
    idle_origin
        .wait_for("the idle connection closed", Duration::from_secs(10), |s| {
            s.open() == 0
        })
        .await;
    assert_eq!(
        busy.await.expect("task").status,
        200,
        "in flight across the reload"
    );
    busy_origin
        .wait_for("the busy connection closed", Duration::from_secs(10), |s| {
            s.open() == 0
        })
        .await;
    assert_eq!(p.pools_sum("idle").await, 0);
    let r = get(p.addr, &idle_origin.url()).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.proxy_error().as_deref(),
        Some("destination_ip_prohibited")
    );
}
