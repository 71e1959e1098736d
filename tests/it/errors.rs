//! Every error eddy answers itself (the Proxy-Status table in docs/design.md),
//! and that none of them leaves anything stuck in the pool.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::{get, open, send_raw};
use crate::support::eddy::{self, Proxy};
use crate::support::eventually;
use crate::support::origin::{Behavior, Origin};

/// After an error: a normal request succeeds and nothing is left in use.
async fn still_healthy(proxy: &Proxy, origin: &Origin) {
    let r = get(proxy.addr, &origin.url()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(
        "nothing in use or connecting",
        Duration::from_secs(5),
        || async {
            proxy.pools_sum("in_use").await == 0
                && proxy.pools_sum("connecting").await == 0
                && proxy.pools_sum("pending").await == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_port_is_502_connection_refused() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    let port = crate::support::closed_port().port();
    let r = get(proxy.addr, &format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("connection_refused"));
    assert_eq!(r.text().lines().count(), 1, "a one-line body");
    still_healthy(&proxy, &origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_name_is_502_dns_error() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    let r = get(proxy.addr, "http://no-such-host.invalid/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("dns_error"));
    still_healthy(&proxy, &origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_answers_is_504_http_response_timeout() {
    let silent = Origin::start(Behavior {
        never_respond: true,
        ..Behavior::default()
    })
    .await;
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "[pool]\nresponse_header_timeout = \"300ms\"\n").await;
    let r = get(proxy.addr, &silent.url()).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("http_response_timeout"));
    // The timed-out connection is closed, not pooled.
    silent
        .wait_for(
            "the silent origin's connection is closed",
            Duration::from_secs(5),
            |s| s.open() == 0,
        )
        .await;
    still_healthy(&proxy, &origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_is_504_connection_timeout() {
    // A listener whose backlog is full never completes a handshake.
    let stalled = crate::support::stalled_listener().await;
    let addr = stalled.addr;
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "[pool]\nconnect_timeout = \"300ms\"\n").await;
    let r = get(proxy.addr, &format!("http://{addr}/")).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("connection_timeout"));
    still_healthy(&proxy, &origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_is_431() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    let big = "a".repeat(100 * 1024);
    let req = format!(
        "GET {}/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n",
        origin.url()
    );
    let r = send_raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("http_request_error"));
    assert_eq!(origin.stats.requests(), 0);
    still_healthy(&proxy, &origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_eddy_itself_is_508_proxy_loop_detected() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    for url in [
        format!("http://{}/", proxy.addr),
        format!("http://localhost:{}/", proxy.addr.port()),
    ] {
        let r = get(proxy.addr, &url).await;
        assert_eq!(r.status, 508, "{url}: {}", r.text());
        assert_eq!(r.proxy_error().as_deref(), Some("proxy_loop_detected"));
    }
    still_healthy(&proxy, &origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_or_closed_and_eddy_keeps_serving() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    // Origin-form on a forward listener: eddy's own 400.
    let r = send_raw(
        proxy.addr,
        b"GET /path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.proxy_error().as_deref(), Some("http_request_error"));
    // Garbage, half-sent heads, and clients vanishing at once.
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET http://x/ HTTP/1.1\r\nHost",
        b"POST http://x/ HTTP/1.1\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"",
    ] {
        let mut s = open(proxy.addr, junk).await;
        let _ = s.shutdown().await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        if !buf.is_empty() {
            let text = String::from_utf8_lossy(&buf);
            assert!(text.starts_with("HTTP/1.1 400"), "{text}");
            assert!(
                text.contains("Proxy-Status: eddy; error=http_request_error"),
                "{text}"
            );
        }
    }
    still_healthy(&proxy, &origin).await;
    eventually(
        "all client connections closed",
        Duration::from_secs(5),
        || async { proxy.eddy.client_connections() == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_response_does_not_poison_the_pool() {
    let slow = Origin::start(Behavior {
        slow_body: Some((200, 1024, Duration::from_millis(10))),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let req = format!("GET {}/big HTTP/1.1\r\nHost: x\r\n\r\n", slow.url());
    let mut s = open(proxy.addr, req.as_bytes()).await;
    let mut first = vec![0u8; 4096];
    let n = s.read(&mut first).await.expect("read");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    // The next request must not land on the half-read connection.
    let r = get(proxy.addr, &format!("{}/small", slow.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-conn").as_deref(),
        Some("1"),
        "served by a new connection"
    );
    slow.wait_for(
        "the half-read connection is closed",
        Duration::from_secs(10),
        |s| s.open() <= 1,
    )
    .await;
    eventually("nothing stuck in use", Duration::from_secs(10), || async {
        proxy.pools_sum("in_use").await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_400_with_proxy_status_and_never_reach_the_origin() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    let url = origin.url();
    for head in [
        format!("GET {url}/ HTTP/1.1\r\nHost: x\r\n folded: value\r\nConnection: close\r\n\r\n"),
        format!("GET {url}/ HTTP/1.1\r\nHost : x\r\nConnection: close\r\n\r\n"),
        format!("GET {url}/caf\u{e9} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        format!("GET {url}/ HTTP/1.1\r\nX-Ctl: a\x01b\r\nConnection: close\r\n\r\n"),
        "G@T / HTTP/1.1\r\n\r\n".to_string(),
    ] {
        let r = send_raw(proxy.addr, head.as_bytes()).await;
        assert_eq!(r.status, 400, "{head:?}: {}", r.text());
        assert_eq!(
            r.proxy_error().as_deref(),
            Some("http_request_error"),
            "{head:?}"
        );
        assert_eq!(r.header("connection").as_deref(), Some("close"));
    }
    assert_eq!(origin.stats.requests(), 0);
    still_healthy(&proxy, &origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_header_bytes_is_exact() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("max_header_bytes = 2048\n", "").await;
    let head_of = |pad: usize| {
        let base = format!(
            "GET {}/ HTTP/1.1\r\nConnection: close\r\nX-Pad: \r\n\r\n",
            origin.url()
        );
        let pad = "p".repeat(pad - base.len());
        format!(
            "GET {}/ HTTP/1.1\r\nConnection: close\r\nX-Pad: {pad}\r\n\r\n",
            origin.url()
        )
    };
    let fits = head_of(2048);
    assert_eq!(fits.len(), 2048);
    assert_eq!(send_raw(proxy.addr, fits.as_bytes()).await.status, 200);
    let over = head_of(2049);
    let r = send_raw(proxy.addr, over.as_bytes()).await;
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("http_request_error"));
    // Far over the limit: still eddy's own answer, and nothing read past it.
    let huge = format!(
        "GET {}/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        origin.url(),
        "b".repeat(1 << 20)
    );
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let _ = s.write_all(huge.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert_eq!(origin.stats.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pipelined_request_is_never_forwarded() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    let url = origin.url();
    let pipelined = format!(
        "GET {url}/first HTTP/1.1\r\nHost: x\r\n\r\n\
         POST {url}/smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let mut s = open(proxy.addr, pipelined.as_bytes()).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the connection closes")
        .expect("read");
    let first = crate::support::client::parse(&buf).expect("the first response");
    assert_eq!(first.status, 200);
    assert_eq!(
        origin.stats.requests(),
        1,
        "only the first request was forwarded"
    );
    assert!(origin.stats.recorded_starting("POST").is_empty());
    still_healthy(&proxy, &origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_with_bodies_are_all_served() {
    let origin = Origin::start(Behavior {
        echo: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let url = origin.url();
    let pipelined = format!(
        "POST {url}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         POST {url}/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
         GET {url}/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut s = open(proxy.addr, pipelined.as_bytes()).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("all answered")
        .expect("read");
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    assert!(text.contains("hello") && text.contains("abc"), "{text}");
    assert_eq!(origin.stats.requests(), 3);
}
