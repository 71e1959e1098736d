//! Request smuggling and response splitting: every malformed framing eddy
//! meets, from either side, ends with an error answer and a closed
//! connection, and the next honest request is served over a clean one.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::support::client::{get, send_raw};
use crate::support::eddy;
use crate::support::origin::{Behavior, Origin};

/// Malformed responses from an origin: 502 `http_protocol_error`, that
/// connection closed, the next request on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_responses_are_502_and_their_connection_is_closed() {
    let vectors: &[(&str, &[u8])] = &[
        (
            "Content-Length and Transfer-Encoding",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "differing Content-Lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "obsolete line folding",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "whitespace before the colon",
            b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        ),
        ("garbage status line", b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok"),
    ];
    for (name, raw) in vectors {
        let bad = Origin::start(Behavior {
            raw_response: Some(raw),
            ..Behavior::default()
        })
        .await;
        let proxy = eddy::start("", "").await;
        let r = get(proxy.addr, &bad.url()).await;
        println!("{name}: {} {:?}", r.status, r.proxy_error());
        assert_eq!(r.status, 502, "{name}: {}", r.text());
        assert_eq!(
            r.proxy_error().as_deref(),
            Some("http_protocol_error"),
            "{name}"
        );
        bad.wait_for(
            &format!("{name}: the connection is closed"),
            Duration::from_secs(5),
            |s| s.open() == 0,
        )
        .await;
        let good = Origin::start(Behavior::default()).await;
        assert_eq!(get(proxy.addr, &good.url()).await.status, 200, "{name}");
        // The same origin again: a new connection, not the closed one.
        let again = get(proxy.addr, &bad.url()).await;
        assert_eq!(again.status, 502, "{name}");
        assert_eq!(bad.stats.accepted(), 2, "{name}: a fresh connection");
    }
}

/// A malformed chunk size in a response body: the head was already
/// relayed, so the client's response is cut off; the upstream connection
/// is closed and never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunk_in_a_response_closes_both_sides() {
    let bad = Origin::start(Behavior {
        raw_response: Some(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        format!("GET {}/ HTTP/1.1\r\nHost: x\r\n\r\n", bad.url()).as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await
    .expect("the client connection ends")
    .ok();
    let text = String::from_utf8_lossy(&buf);
    assert!(
        !text.contains("hello"),
        "no smuggled body reached the client: {text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the client's response is visibly cut off: {text}"
    );
    bad.wait_for(
        "the upstream connection is closed",
        Duration::from_secs(5),
        |s| s.open() == 0,
    )
    .await;
    // The next request to the same origin goes over a new connection.
    let req = format!("GET {}/again HTTP/1.1\r\nHost: x\r\n\r\n", bad.url());
    let mut s = crate::support::client::open(proxy.addr, req.as_bytes()).await;
    let mut again = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut again))
        .await
        .expect("the second request is answered or closed in time")
        .ok();
    assert_eq!(bad.stats.accepted(), 2, "a fresh connection");
}

/// Client-side vectors (the head scanner and hyper): 400 with
/// `http_request_error` and a closed connection, so that a request
/// pipelined behind the bad one is never read; after each, the next honest
/// request is served over a clean upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_and_never_reach_the_origin() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    let url = origin.url();
    let chunked = |size: &str| {
        format!("POST {url}/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n")
    };
    let vectors = [
        format!("POST {url}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("POST {url}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        chunked("zz"),
        chunked("fffffffffffffffff1"),
        chunked("-1"),
        chunked("0x5"),
        format!("GET {url}/ HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n"),
        format!("GET {url}/ HTTP/1.1\r\nHost : x\r\n\r\n"),
        format!("GET {url}/caf\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ];
    for v in &vectors {
        let pipelined = format!("{v}GET {url}/pipelined HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut s = crate::support::client::open(proxy.addr, pipelined.as_bytes()).await;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{v:?}: the client connection was not closed"))
            .ok();
        let r = crate::support::client::parse(&buf)
            .unwrap_or_else(|| panic!("{v:?}: no answer: {}", String::from_utf8_lossy(&buf)));
        assert_eq!(r.status, 400, "{v:?}: {}", r.text());
        assert_eq!(
            r.proxy_error().as_deref(),
            Some("http_request_error"),
            "{v:?}"
        );
        let answers = String::from_utf8_lossy(&buf).matches("HTTP/1.1 ").count();
        assert_eq!(answers, 1, "{v:?}: the pipelined request was answered");
        let honest = get(proxy.addr, &format!("{url}/honest")).await;
        assert_eq!(honest.status, 200, "{v:?}: the next request");
    }
    assert!(origin.stats.recorded_starting("GET /pipelined").is_empty());
    assert!(
        origin.stats.recorded_starting("POST ").is_empty(),
        "no malformed request was answered by the origin"
    );
    assert_eq!(
        origin.stats.requests(),
        vectors.len(),
        "only the honest ones"
    );
}

/// What hyper would answer with a bare 400 or 431 of its own, eddy
/// answers itself: with `Proxy-Status`, counted under `upstream="none"`
/// (the request's record), and the connection closed. The header-count
/// limit is `max_headers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_head_gets_proxy_status_and_is_counted() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("max_headers = 20\n", "").await;
    let url = origin.url();
    let many: String = (0..21).map(|i| format!("X-{i}: v\r\n")).collect();
    let vectors: Vec<(&str, String, u16)> = vec![
        ("xchunked", format!("POST {url}/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n"), 400),
        ("two TE", format!("POST {url}/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        ("TE list", format!("POST {url}/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 400),
        ("CL 1 2", format!("POST {url}/ HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n"), 400),
        ("bare CR", format!("GET {url}/ HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n"), 400),
        ("chunked 1.0", format!("POST {url}/ HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        ("h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_string(), 400),
        ("too many headers", format!("GET {url}/ HTTP/1.1\r\nHost: h\r\n{many}\r\n"), 431),
    ];
    for (i, (name, raw, status)) in vectors.iter().enumerate() {
        let r = send_raw(proxy.addr, raw.as_bytes()).await;
        assert_eq!(r.status, *status, "{name}: {}", r.head);
        assert_eq!(
            r.proxy_error().as_deref(),
            Some("http_request_error"),
            "{name}: {}",
            r.head
        );
        let counted = proxy
            .metric(
                "eddy_errors_total",
                &[("upstream", "none"), ("error", "http_request_error")],
            )
            .await;
        assert_eq!(counted, (i + 1) as f64, "{name}");
    }
    // 20 fields are within the limit.
    let few: String = (0..18).map(|i| format!("X-{i}: v\r\n")).collect();
    let r = send_raw(
        proxy.addr,
        format!("GET {url}/ HTTP/1.1\r\nHost: h\r\n{few}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        origin.stats.requests(),
        1,
        "no refused head reached the origin"
    );
}
