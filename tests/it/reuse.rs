//! Reuse on the everyday paths: request bodies that follow their head in a
//! second write, origins that answer before reading the body, uploads that
//! trickle, `Expect: 100-continue`, and origins that restart. Connections
//! are counted at the origin, never in eddy.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::{get, parse, Response};
use crate::support::eddy::{self, Proxy};
use crate::support::eventually;
use crate::support::origin::{find, Behavior, Origin};

async fn closes(proxy: &Proxy, origin: &Origin, reason: &str) -> f64 {
    proxy.closes(&origin.url(), reason).await
}

/// Reads one response from `s` (Content-Length framed, as the test origin
/// and eddy's own answers are) and returns it, leaving the socket open.
async fn read_response(s: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(r) = parse(&buf) {
            let len = r
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_none_or(|n| r.body.len() >= n) {
                return r;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("a response within 20 s")
            .expect("read");
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads up to the end of an interim or final head (`\r\n\r\n`).
async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while find(&buf, b"\r\n\r\n").is_none() {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut byte))
            .await
            .expect("a head within 20 s")
            .expect("read");
        assert!(n > 0, "closed before a head");
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A POST as Python's http.client writes it: the head in one write, the
/// body in a second, on a connection of its own.
async fn post_in_two_writes(proxy: SocketAddr, url: &str, body: &[u8]) -> Response {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let head = format!(
        "POST {url} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    // The gap a Python client leaves between its two sends, widened so
    // that the origin's answer to the head certainly comes first.
    tokio::time::sleep(Duration::from_millis(3)).await;
    s.write_all(body).await.expect("body");
    read_response(&mut s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_answered_on_their_head_keep_their_connection() {
    // nginx `return` answers on the head and reads the body afterwards;
    // the body arrives in a second write. Whichever eddy sees first, the
    // connection is returned once both are complete.
    let origin = Origin::start(Behavior {
        answer_before_body: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[pool]\nmax_connections_per_host = 4\n").await;
    let url = format!("{}/x", origin.url());
    let mut clients = Vec::new();
    for c in 0..4 {
        let (addr, url) = (proxy.addr, url.clone());
        clients.push(tokio::spawn(async move {
            // Read ahead (1 KiB, 60 KiB) and streamed (100 KiB) bodies.
            let body = vec![b'j'; [1024, 60 * 1024, 100 * 1024, 1024][c]];
            for _ in 0..50 {
                let r = post_in_two_writes(addr, &url, &body).await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    assert!(
        origin.stats.accepted() <= 4,
        "200 POSTs took {} origin connections",
        origin.stats.accepted()
    );
    assert_eq!(origin.stats.requests(), 200);
    for reason in ["error", "not_drained", "peer_closed"] {
        assert_eq!(closes(&proxy, &origin, reason).await, 0.0, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_answered_early_with_200_is_sent_in_full_and_its_connection_kept() {
    let origin = Origin::start(Behavior {
        answer_before_body: true,
        ..Behavior::default()
    })
    .await;
    // Generous drain limits: a loaded machine must not decide this test.
    let proxy = eddy::start("", "[drain]\ntimeout = \"5s\"\n").await;
    let size = 1024 * 1024;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!(
        "POST {}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n",
        origin.url()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    // More than client_body_buffer, so the body streams...
    s.write_all(&vec![b'u'; 128 * 1024]).await.expect("part");
    // ...and the answer comes before the rest is even written: certainly
    // early, whatever the scheduling. (eddy holds it back a while, hoping
    // the body completes first; this client waits, so it does not.)
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{}", r.text());
    s.write_all(&vec![b'u'; size - 128 * 1024])
        .await
        .expect("the rest");
    // Once the body is in, the connection goes back to the pool...
    eventually(
        "the connection is back once the body is sent",
        Duration::from_secs(5),
        || async { proxy.pools_sum("idle").await == 1 },
    )
    .await;
    // ...and the next request goes on it.
    let r = get(proxy.addr, &format!("{}/after", origin.url())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-conn").as_deref(), Some("0"), "{}", r.head);
    assert_eq!(origin.stats.accepted(), 1);
    assert_eq!(closes(&proxy, &origin, "not_drained").await, 0.0);
    assert_eq!(closes(&proxy, &origin, "error").await, 0.0);
}

/// Acceptance: an origin that answers 413 to a 1 MiB upload without
/// reading it. The client gets the 413, and the next request to the origin
/// is parsed as a request, never read after leftover body bytes.
async fn a_rejected_upload(discard: bool, whole_body_at_once: bool) {
    let origin = Origin::start(Behavior {
        reject_body_over: Some(1024),
        discard_rejected: discard,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let size = 1024 * 1024;
    let s = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST {}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n",
        origin.url()
    );
    wr.write_all(head.as_bytes()).await.expect("head");
    let writer = tokio::spawn(async move {
        if whole_body_at_once {
            // As Python's requests does: the whole body, then the answer.
            let _ = wr.write_all(&vec![b'u'; size]).await;
        } else {
            // As curl does: stop sending once the answer is in.
            let _ = wr.write_all(&vec![b'u'; 128 * 1024]).await;
        }
        wr
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut buf)).await;
    let r =
        parse(&buf).unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&buf)));
    assert_eq!(r.status, 413, "{}", r.text());
    drop(writer.await);
    for n in 0..3 {
        let r = get(proxy.addr, &format!("{}/after{n}", origin.url())).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let heads = origin.stats.request_lines();
    assert_eq!(
        heads,
        [
            "POST /upload HTTP/1.1",
            "GET /after0 HTTP/1.1",
            "GET /after1 HTTP/1.1",
            "GET /after2 HTTP/1.1"
        ],
        "the origin read only requests"
    );
    eventually("nothing in use", Duration::from_secs(5), || async {
        proxy.pools_sum("in_use").await == 0
    })
    .await;
    assert_eq!(closes(&proxy, &origin, "error").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_careless_413_to_a_whole_upload_never_reads_body_bytes_as_a_request() {
    a_rejected_upload(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_careless_413_to_a_cut_off_upload_never_reads_body_bytes_as_a_request() {
    a_rejected_upload(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_from_an_origin_that_discards_the_body_is_relayed_cleanly() {
    a_rejected_upload(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_origin_restarts_right_after_a_response_teach_no_idle_limit() {
    let mut origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "[pool]\nidle_timeout = \"30s\"\n").await;
    let url = origin.url();
    for n in 1..=2 {
        // Restarts seconds apart, as real ones are: two separate events,
        // not one burst.
        if n > 1 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(get(proxy.addr, &url).await.status, 200);
        // The pooled connection has been idle ~30 ms when the origin
        // restarts gracefully and closes it.
        tokio::time::sleep(Duration::from_millis(30)).await;
        origin.restart().await;
        assert_eq!(origin.stats.restart_closes(), n);
        eventually(
            "eddy drops the closed connection",
            Duration::from_secs(5),
            || async { proxy.pools_sum("idle").await == 0 },
        )
        .await;
    }
    let before = origin.stats.accepted();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(get(proxy.addr, &url).await.status, 200);
    }
    let opened = origin.stats.accepted() - before;
    assert!(opened <= 2, "10 GETs 1 s apart opened {opened} connections");
    let timeout = proxy.pools().await[url.as_str()]["effective_idle_timeout_seconds"]
        .as_f64()
        .expect("effective_idle_timeout_seconds");
    assert!(
        timeout >= 5.0,
        "idle timeout {timeout} s after two restarts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_do_not_take_the_pool() {
    // An origin that reads the whole body before answering; four slots.
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "[pool]\nmax_connections_per_host = 4\n").await;
    let url = origin.url();
    let mut uploads = Vec::new();
    for i in 0..8 {
        let (addr, url) = (proxy.addr, url.clone());
        uploads.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let head = format!(
                "POST {url}/upload{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.expect("head");
            // One byte every half second, until eddy gives up on it.
            for _ in 0..60 {
                if s.write_all(b"u").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    eventually(
        "eddy holds the 8 uploads",
        Duration::from_secs(5),
        || async {
            proxy
                .metric("eddy_client_connections_open", &[("listener", "proxy")])
                .await
                == 8.0
        },
    )
    .await;
    for n in 0..16 {
        let started = tokio::time::Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            get(proxy.addr, &format!("{url}/honest{n}")),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {n} got no answer within 2 s"));
        assert_eq!(r.status, 200, "GET {n}: {}", r.text());
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        origin.stats.recorded_starting("POST ").is_empty(),
        "a trickling upload reached the origin"
    );
    assert!(origin.stats.accepted() <= 4);
    for u in uploads {
        u.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_that_falls_behind_the_minimum_rate_frees_its_connection() {
    let origin = Origin::start(Behavior {
        echo: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start(
        "client_body_timeout = \"1s\"\nclient_body_min_rate = \"64KiB\"\n",
        "",
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!(
        "POST {}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n",
        origin.url()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    // Past the read-ahead buffer: a connection is taken and the body
    // streams. Then a trickle: never silent, far below 64 KiB/s.
    s.write_all(&vec![b'u'; 100 * 1024]).await.expect("part");
    origin
        .wait_for(
            "the upload reached the origin",
            Duration::from_secs(5),
            |s| s.accepted() == 1,
        )
        .await;
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b"u").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut buf)).await;
    let r = parse(&buf).expect("an answer");
    assert_eq!(r.status, 400, "{}", r.text());
    trickle.abort();
    eventually("the slot is free", Duration::from_secs(5), || async {
        proxy.pools_sum("in_use").await == 0 && origin.stats.open() == 0
    })
    .await;
}

/// Sends a request with `Expect: 100-continue` and a body of `size` bytes
/// the way curl does: the head, then the body only once told `100
/// Continue`. Returns the interim head (if any) and the final response.
async fn expect_continue(proxy: &Proxy, url: &str, size: usize) -> (Option<String>, Response) {
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!(
        "PUT {url} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let first = read_head(&mut s).await;
    if !first.starts_with("HTTP/1.1 100") {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        let mut all = first.into_bytes();
        all.extend_from_slice(&rest);
        return (None, parse(&all).expect("a final response"));
    }
    s.write_all(&vec![b'e'; size]).await.expect("body");
    (Some(first), read_response(&mut s).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_met_by_eddy_and_keeps_reuse() {
    // An origin that would honour the expectation: eddy never passes it on.
    let origin = Origin::start(Behavior {
        continue_100: true,
        echo: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    // Read ahead (1000 bytes) and streamed (1 MiB) bodies alike.
    for (n, size) in [1000, 1024 * 1024, 1000].into_iter().enumerate() {
        let (interim, r) = expect_continue(&proxy, &format!("{}/up{n}", origin.url()), size).await;
        assert!(interim.is_some(), "the client was asked for its body");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body.len(), size, "the body reached the origin");
    }
    assert_eq!(origin.stats.continues(), 0, "the origin saw no expectation");
    assert!(origin
        .stats
        .recorded()
        .iter()
        .all(|r| !r.head.to_ascii_lowercase().contains("expect:")));
    assert_eq!(origin.stats.accepted(), 1, "one connection for all three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_401_to_an_expecting_upload_keeps_the_connection() {
    // The origin refuses on the head and discards the body, as nginx does.
    let origin = Origin::start(Behavior {
        answer_before_body: true,
        early_status: Some(401),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[drain]\ntimeout = \"5s\"\n").await;
    for (n, size) in [1000, 1024 * 1024].into_iter().enumerate() {
        let (interim, r) = expect_continue(&proxy, &format!("{}/up{n}", origin.url()), size).await;
        assert!(interim.is_some());
        assert_eq!(r.status, 401, "{}", r.text());
    }
    eventually("the connection is back", Duration::from_secs(5), || async {
        proxy.pools_sum("idle").await == 1
    })
    .await;
    let r = get(proxy.addr, &format!("{}/after", origin.url())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(origin.stats.accepted(), 1);
    assert_eq!(
        origin.stats.recorded().len(),
        3,
        "three requests, nothing between"
    );
    for reason in ["error", "not_drained"] {
        assert_eq!(closes(&proxy, &origin, reason).await, 0.0, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_chunked_body_reaches_the_origin_whole() {
    // hyper drops an unknown-length body on GET unless told it is chunked.
    let origin = Origin::start(Behavior {
        echo: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let body = vec![b'g'; 100 * 1024];
    let mut req = format!(
        "GET {}/q HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        origin.url()
    )
    .into_bytes();
    for piece in body.chunks(10 * 1024) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = crate::support::client::send_raw(proxy.addr, &req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, body);
    assert_eq!(origin.stats.recorded()[0].body, body);
}
