//! `[[upstream]] http2 = true`: many client requests multiplexed over one
//! HTTP/2 connection; GOAWAY costs idempotent requests nothing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::client::get;
use crate::support::client::request;
use crate::support::eddy;
use crate::support::h2::{H2Origin, RefusingH2Origin};

fn upstream(origin: &H2Origin) -> String {
    upstream_at(origin.addr)
}

fn upstream_at(addr: std::net::SocketAddr) -> String {
    format!("[[upstream]]\nmatch = \"h2.test\"\nconnect = \"http://{addr}\"\nhttp2 = true\n")
}

async fn hundred_concurrent(proxy: std::net::SocketAddr) -> Vec<u16> {
    let mut tasks = Vec::new();
    for i in 0..100 {
        tasks.push(tokio::spawn(async move {
            let r = get(proxy, &format!("http://h2.test/{i}")).await;
            assert_eq!(
                r.text(),
                if r.status == 200 {
                    "h2 ok\n".to_string()
                } else {
                    r.text()
                }
            );
            r.status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_share_one_http2_connection() {
    let origin = H2Origin::start(None, Duration::from_millis(100)).await;
    let proxy = eddy::start("", &upstream(&origin)).await;
    let statuses = hundred_concurrent(proxy.addr).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
    assert_eq!(origin.streams.load(Ordering::SeqCst), 100);
    assert!(
        origin.max_in_flight.load(Ordering::SeqCst) > 1,
        "requests were multiplexed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_mid_run_costs_idempotent_requests_nothing() {
    // GOAWAY after the 30th stream on a connection; requests come in four
    // waves of 25, so the GOAWAY lands while more requests are coming.
    let origin = H2Origin::start(Some(30), Duration::from_millis(50)).await;
    let proxy = eddy::start("", &upstream(&origin)).await;
    for wave in 0..4 {
        let mut tasks = Vec::new();
        for i in 0..25 {
            let addr = proxy.addr;
            tasks.push(tokio::spawn(async move {
                let r = get(addr, &format!("http://h2.test/{wave}/{i}")).await;
                (r.status, r.text())
            }));
        }
        for t in tasks {
            let (status, text) = t.await.expect("task");
            assert_eq!(status, 200, "wave {wave}: {text}");
        }
    }
    assert!(
        origin.connections.load(Ordering::SeqCst) >= 2,
        "GOAWAY made eddy open another connection"
    );
    // A GET is idempotent, so eddy may also resend one whose connection
    // died after the origin had taken it (a reset can discard a response
    // already in the socket buffer). Every extra stream must be such a
    // counted retry; none may be lost.
    let streams = origin.streams.load(Ordering::SeqCst) as f64;
    let retried = proxy
        .metric("eddy_stale_retries_total", &[("outcome", "succeeded")])
        .await;
    assert!(
        (100.0..=100.0 + retried).contains(&streams),
        "{streams} streams at the origin, {retried} retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_slow_http2_connect_is_bounded_by_connect_timeout() {
    // A listener whose backlog is full never completes a handshake.
    let stalled = crate::support::stalled_listener().await;
    let addr = stalled.addr;
    let proxy = eddy::start(
        "",
        &format!(
            "[[upstream]]\nmatch = \"slow.test\"\nconnect = \"http://{addr}\"\nhttp2 = true\n[upstream.pool]\nconnect_timeout = \"300ms\"\n"
        ),
    )
    .await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let a = proxy.addr;
        tasks.push(tokio::spawn(async move {
            get(a, &format!("http://slow.test/{i}")).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 504);
    }
    // Serialised behind one another, ten 300 ms connects would take 3 s.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origins_concurrent_stream_limit_is_respected() {
    // The origin allows 10 streams at once; 100 requests still share its
    // one connection, queued by eddy rather than refused by the origin.
    let origin = H2Origin::start_with(None, Duration::from_millis(100), Some(10)).await;
    let proxy = eddy::start("", &upstream(&origin)).await;
    let statuses = hundred_concurrent(proxy.addr).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
    assert_eq!(origin.streams.load(Ordering::SeqCst), 100);
    let most = origin.max_in_flight.load(Ordering::SeqCst);
    assert!((2..=10).contains(&most), "{most} streams at once");
    // The origin's server enforces the limit itself, refusing streams
    // beyond it (REFUSED_STREAM), which eddy would then send again; so
    // `most` alone proves little. Nothing may have been refused: not after
    // the origin's SETTINGS arrived, and not before (eddy opens one stream
    // until then, since HTTP/2 assumes no limit before it).
    let retried = proxy
        .metric("eddy_stale_retries_total", &[("outcome", "succeeded")])
        .await
        + proxy
            .metric("eddy_stale_retries_total", &[("outcome", "failed")])
            .await;
    assert_eq!(retried, 0.0, "streams beyond the limit were refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_origin_refused_are_sent_again_even_posts() {
    // Every third stream is refused (REFUSED_STREAM: not processed). Those
    // requests are sent again, POSTs included, and each request is
    // processed exactly once.
    let origin = RefusingH2Origin::start(3).await;
    let proxy = eddy::start("", &upstream_at(origin.addr)).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            request(
                addr,
                "POST",
                &format!("http://h2.test/p{i}"),
                &[],
                b"a body",
            )
            .await
        }));
    }
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "processed\n");
    }
    let refused = origin.refused.load(Ordering::SeqCst);
    assert!(refused >= 10, "{refused} streams refused");
    // Each resend is counted, which is what gives the stream-limit test's
    // "no retry" its meaning.
    let retried = proxy
        .metric("eddy_stale_retries_total", &[("outcome", "succeeded")])
        .await;
    assert_eq!(retried, refused as f64);
    let mut processed = origin.processed.lock().expect("processed").clone();
    processed.sort();
    processed.dedup();
    assert_eq!(processed.len(), 30, "each POST processed once");
    assert_eq!(origin.processed.lock().expect("processed").len(), 30);
}

/// An HTTP/2 origin is in `/pools` and the gauges: its connection in use
/// while a request is in flight on it (with the streams counted), idle after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_origin_shows_in_pools_and_the_gauges_while_in_use() {
    let origin = H2Origin::start(None, Duration::from_secs(3)).await;
    let proxy = eddy::start("", &upstream(&origin)).await;
    let key = format!("http://{}", origin.addr);
    let addr = proxy.addr;
    let slow = tokio::spawn(async move { get(addr, "http://h2.test/slow").await });
    crate::support::eventually("a stream in flight", Duration::from_secs(10), || async {
        proxy.pools().await[&key]["streams"] == 1
    })
    .await;
    let pools = proxy.pools().await;
    assert_eq!(pools[&key]["protocol"], "h2", "{pools}");
    assert_eq!(pools[&key]["in_use"], 1, "{pools}");
    let in_use = proxy
        .metric(
            "eddy_upstream_connections",
            &[("upstream", &key), ("state", "in_use")],
        )
        .await;
    assert_eq!(in_use, 1.0);
    assert_eq!(slow.await.expect("task").status, 200);
    crate::support::eventually("the stream is over", Duration::from_secs(10), || async {
        let p = proxy.pools().await;
        p[&key]["streams"] == 0 && p[&key]["idle"] == 1
    })
    .await;
}
