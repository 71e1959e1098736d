//! Body draining and the completion rule: what happens to an upstream
//! connection when the client goes away mid-response, stops reading, aborts an
//! upload, or the origin answers before the upload is complete.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::{get, open, request};
use crate::support::eddy::{self, Proxy};
use crate::support::eventually;
use crate::support::origin::{Behavior, Origin};

async fn drains(proxy: &Proxy, origin: &Origin, outcome: &str) -> f64 {
    proxy
        .metric(
            "eddy_body_drains_total",
            &[("upstream", &origin.url()), ("outcome", outcome)],
        )
        .await
}

/// Requests `url`, reads about 1 KiB of the response, and hangs up.
async fn read_a_little_and_leave(proxy: &Proxy, url: &str) {
    let req = format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut s = open(proxy.addr, req.as_bytes()).await;
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while got < 1024 {
        let n = s.read(&mut buf[got..]).await.expect("read");
        assert!(n > 0, "response ended early");
        got += n;
    }
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

async fn wait_drains(proxy: &Proxy, origin: &Origin, outcome: &str, n: f64) {
    eventually(
        &format!("{n} drain(s) {outcome}"),
        Duration::from_secs(10),
        || async { drains(proxy, origin, outcome).await >= n },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_body_within_the_limits_is_drained_and_the_connection_saved() {
    // The 100 KiB body streams over about half a second, so most of it is
    // still on its way when the client leaves (kernel and hyper buffers
    // would swallow a fast one before anyone noticed the client was gone).
    let origin = Origin::start(Behavior {
        slow_body: Some((100, 1024, Duration::from_millis(5))),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[drain]\nmax_bytes = \"256KiB\"\ntimeout = \"5s\"\n").await;
    read_a_little_and_leave(&proxy, &format!("{}/big", origin.url())).await;
    wait_drains(&proxy, &origin, "reused", 1.0).await;
    let r = get(proxy.addr, &format!("{}/next", origin.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100 * 1024);
    assert_eq!(
        origin.stats.accepted(),
        1,
        "served on the drained connection"
    );
    assert_eq!(origin.stats.per_conn(), vec![2]);
    assert_eq!(drains(&proxy, &origin, "reused").await, 1.0);
    assert_eq!(drains(&proxy, &origin, "closed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_the_response_head_does_not_cost_the_connection() {
    // The origin takes 300 ms to answer; the client hangs up as soon as the
    // origin has the request (a load tool stopping, an app timing out).
    let origin = Origin::start(Behavior {
        delay: Duration::from_millis(300),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[drain]\ntimeout = \"5s\"\n").await;
    let req = format!("GET {}/slow HTTP/1.1\r\nHost: x\r\n\r\n", origin.url());
    let s = open(proxy.addr, req.as_bytes()).await;
    origin
        .wait_for("the origin has the request", Duration::from_secs(10), |s| {
            s.requests() >= 1
        })
        .await;
    drop(s);
    wait_drains(&proxy, &origin, "reused", 1.0).await;
    let r = get(proxy.addr, &format!("{}/next", origin.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        origin.stats.accepted(),
        1,
        "served on the connection the first client left"
    );
    assert_eq!(origin.stats.per_conn(), vec![2]);
    assert_eq!(drains(&proxy, &origin, "closed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_bytes_closes_the_connection() {
    let origin = Origin::start(Behavior {
        slow_body: Some((2048, 1024, Duration::from_millis(1))),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[drain]\nmax_bytes = \"64KiB\"\ntimeout = \"10s\"\n").await;
    read_a_little_and_leave(&proxy, &format!("{}/huge", origin.url())).await;
    wait_drains(&proxy, &origin, "closed", 1.0).await;
    let not_drained = proxy
        .metric(
            "eddy_upstream_connections_closed_total",
            &[("upstream", &origin.url()), ("reason", "not_drained")],
        )
        .await;
    assert_eq!(not_drained, 1.0);
    assert_eq!(drains(&proxy, &origin, "closed").await, 1.0);
    assert_eq!(drains(&proxy, &origin, "reused").await, 0.0);
    let r = get(proxy.addr, &format!("{}/next", origin.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        origin.stats.accepted(),
        2,
        "a new connection for the next request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_is_cut_off_by_the_drain_timeout() {
    let origin = Origin::start(Behavior {
        slow_body: Some((100_000, 16, Duration::from_millis(20))),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[drain]\ntimeout = \"250ms\"\n").await;
    let req = format!("GET {}/forever HTTP/1.1\r\nHost: x\r\n\r\n", origin.url());
    let mut s = open(proxy.addr, req.as_bytes()).await;
    let mut buf = [0u8; 256];
    assert!(s.read(&mut buf).await.expect("read") > 0);
    drop(s);
    wait_drains(&proxy, &origin, "closed", 1.0).await;
    origin
        .wait_for(
            "the endless connection is closed",
            Duration::from_secs(10),
            |s| s.open() == 0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_decides_whether_a_slow_body_is_waited_for() {
    // The same body, 50 × 16 B at 20 ms (about 1 s, far under max_bytes),
    // abandoned the same way: drain.timeout alone decides its fate.
    for (timeout, outcome, accepted) in [("3s", "reused", 1), ("250ms", "closed", 2)] {
        let origin = Origin::start(Behavior {
            slow_body: Some((50, 16, Duration::from_millis(20))),
            ..Behavior::default()
        })
        .await;
        let proxy = eddy::start("", &format!("[drain]\ntimeout = \"{timeout}\"\n")).await;
        let req = format!("GET {}/slow HTTP/1.1\r\nHost: x\r\n\r\n", origin.url());
        let mut s = open(proxy.addr, req.as_bytes()).await;
        let mut buf = [0u8; 256];
        assert!(s.read(&mut buf).await.expect("read") > 0);
        drop(s);
        wait_drains(&proxy, &origin, outcome, 1.0).await;
        let r = get(proxy.addr, &format!("{}/next", origin.url())).await;
        assert_eq!(r.status, 200);
        assert_eq!(origin.stats.accepted(), accepted, "timeout {timeout}");
        let other = if outcome == "reused" {
            "closed"
        } else {
            "reused"
        };
        assert_eq!(
            drains(&proxy, &origin, other).await,
            0.0,
            "timeout {timeout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_releases_the_upstream_connection() {
    let origin = Origin::start(Behavior {
        body_bytes: Some(8 * 1024 * 1024),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start(
        "client_idle_timeout = \"500ms\"\n",
        "[pool]\nmax_connections_per_host = 1\npending_timeout = \"20s\"\n",
    )
    .await;
    // This client asks and never reads: eddy's writes to it stall.
    let req = format!("GET {}/big HTTP/1.1\r\nHost: x\r\n\r\n", origin.url());
    let stuck = open(proxy.addr, req.as_bytes()).await;
    // The only upstream connection frees up once eddy gives up on it.
    let r = request(
        proxy.addr,
        "GET",
        &format!("{}/next", origin.url()),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(drains(&proxy, &origin, "closed").await, 1.0);
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_aborting_its_upload_closes_the_upstream_connection() {
    let origin = Origin::start(Behavior {
        echo: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!(
        "POST {}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n",
        origin.url()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    // More than client_body_buffer (64 KiB): the body streams upstream.
    s.write_all(&vec![b'u'; 100 * 1024])
        .await
        .expect("part of the body");
    origin
        .wait_for(
            "the upload reached the origin",
            Duration::from_secs(5),
            |s| s.accepted() == 1,
        )
        .await;
    drop(s);
    origin
        .wait_for(
            "the half-written upstream connection is closed",
            Duration::from_secs(10),
            |s| s.open() == 0,
        )
        .await;
    let r = request(
        proxy.addr,
        "POST",
        &format!("{}/next", origin.url()),
        &[],
        b"fresh",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "fresh",
        "answered correctly, never framed after a half body"
    );
    assert_eq!(origin.stats.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_an_upload_is_forwarded_and_the_connection_not_reused() {
    let origin = Origin::start(Behavior {
        reject_body_over: Some(1024),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let big = vec![b'z'; 512 * 1024];
    let r = request(
        proxy.addr,
        "POST",
        &format!("{}/upload", origin.url()),
        &[],
        &big,
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = get(proxy.addr, &format!("{}/after", origin.url())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        origin.stats.accepted(),
        2,
        "the 413's connection was not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_stops_reading_an_upload_gets_504_and_frees_the_slot() {
    let origin = Origin::start(Behavior {
        deaf_to_bodies: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("client_idle_timeout = \"1s\"\n", "").await;
    let s = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST {}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\nConnection: close\r\n\r\n",
        origin.url()
    );
    wr.write_all(head.as_bytes()).await.expect("head");
    let uploader = tokio::spawn(async move {
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..1024 {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut buf))
        .await
        .expect("an answer, not a hang")
        .expect("read");
    let r = crate::support::client::parse(&buf).expect("response");
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("http_response_timeout"));
    uploader.abort();
    eventually("the slot is free", Duration::from_secs(5), || async {
        proxy.pools_sum("in_use").await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_is_not_cut_off() {
    let size = 2 * 1024 * 1024;
    let origin = Origin::start(Behavior {
        body_bytes: Some(size),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("client_idle_timeout = \"1s\"\n", "").await;
    let req = format!(
        "GET {}/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        origin.url()
    );
    let mut s = open(proxy.addr, req.as_bytes()).await;
    // About 640 KB/s: slower than eddy can send, never silent for 1 s.
    let mut all = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut chunk).await.expect("read");
        if n == 0 {
            break;
        }
        all.extend_from_slice(&chunk[..n]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = crate::support::client::parse(&all).expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), size, "the whole body arrived");
}
