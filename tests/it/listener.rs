//! The client side: keep-alive and `Connection: close` clients, the
//! header and idle timeouts, `max_client_connections`, graceful shutdown.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::{get, open, parse, send_raw};
use crate::support::eddy;
use crate::support::origin::{find, Behavior, Origin};

/// Reads one response with a Content-Length body from a kept-alive stream
/// (bytes read past it are dropped: one request at a time).
async fn read_one(s: &mut TcpStream) -> crate::support::client::Response {
    read_responses(s, 1).await.remove(0)
}

/// Reads `n` responses with Content-Length bodies, which may arrive in one
/// read (answers to pipelined requests).
async fn read_responses(s: &mut TcpStream, n: usize) -> Vec<crate::support::client::Response> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = crate::support::origin::header_value(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            out.push(parse(&buf[..end + 4 + len]).expect("response"));
            buf.drain(..end + 4 + len);
            if out.len() == n {
                return out;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_client_sends_many_requests_on_one_connection() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    for i in 0..10 {
        let req = format!("GET {}/{i} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url());
        s.write_all(req.as_bytes()).await.expect("write");
        let r = read_one(&mut s).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(origin.stats.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_head_is_cut_off() {
    let proxy = eddy::start("client_header_timeout = \"600ms\"\n", "").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let started = Instant::now();
    // A slowloris: one byte of a long head every 50 ms, which would take
    // 20 s to finish. Trickling must not extend the timeout.
    let (mut read, mut write) = s.split();
    let trickle = async {
        let head = format!(
            "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
            "a".repeat(400)
        );
        for b in head.bytes() {
            if write.write_all(&[b]).await.is_err() {
                // eddy closed it: the read side reports how.
                return std::future::pending().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the whole trickled head was accepted");
    };
    let mut buf = Vec::new();
    let read = tokio::select! {
        r = read.read_to_end(&mut buf) => r,
        () = trickle => unreachable!(),
    };
    let took = started.elapsed();
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "closed, cleanly or by a reset: {read:?}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 408") || buf.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_client_asking_for_keep_alive_keeps_its_connection() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    let req = format!(
        "GET {}/ HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        origin.url()
    );
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    for i in 0..3 {
        s.write_all(req.as_bytes()).await.expect("request");
        let r = read_one(&mut s).await;
        assert_eq!(r.status, 200, "request {i}");
        assert!(
            r.header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("keep-alive")),
            "an HTTP/1.0 keep-alive answer says so: {:?}",
            r.header("connection")
        );
    }
    // Without the header, HTTP/1.0 closes after the answer.
    let once = format!("GET {}/ HTTP/1.0\r\nHost: x\r\n\r\n", origin.url());
    s.write_all(once.as_bytes()).await.expect("write");
    assert_eq!(read_one(&mut s).await.status, 200);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("eddy closes after an HTTP/1.0 request without keep-alive")
        .expect("clean close");
    assert!(rest.is_empty());
}

/// Between requests (and before the first byte) eddy lets go of the
/// connection's HTTP state and waits with the socket alone. Heads and
/// bodies that arrive in pieces around those pauses, and pipelined
/// requests after one, must lose no byte. The pauses give eddy time to
/// settle into the waiting state; the test passes or fails on the bytes,
/// whichever way a pause falls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_waiting_between_requests_keeps_every_byte() {
    let origin = Origin::start(Behavior {
        echo: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let pause = || tokio::time::sleep(Duration::from_millis(150));
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    pause().await;
    let head = format!(
        "POST {}/one HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
        origin.url()
    );
    let (first, second) = head.split_at(20);
    for piece in [first.as_bytes(), second.as_bytes(), b"01234", b"56789"] {
        s.write_all(piece).await.expect("write");
        pause().await;
    }
    let r = read_one(&mut s).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"0123456789");
    pause().await;
    let two = format!("GET {}/two HTTP/1.1\r\nHost: x\r\n\r\n", origin.url());
    let three = format!("GET {}/three HTTP/1.1\r\nHost: x\r\n\r\n", origin.url());
    s.write_all(format!("{two}{three}").as_bytes())
        .await
        .expect("pipelined");
    for r in read_responses(&mut s, 2).await {
        assert_eq!(r.status, 200);
    }
    let targets = origin.stats.request_lines();
    assert_eq!(
        targets,
        [
            "POST /one HTTP/1.1",
            "GET /two HTTP/1.1",
            "GET /three HTTP/1.1"
        ]
    );
    assert_eq!(origin.stats.accepted(), 1, "one upstream connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_client_is_closed_after_client_idle_timeout() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start(
        "client_idle_timeout = \"400ms\"\nclient_header_timeout = \"5s\"\n",
        "",
    )
    .await;
    let req = format!("GET {}/ HTTP/1.1\r\nHost: x\r\n\r\n", origin.url());
    let mut s = open(proxy.addr, req.as_bytes()).await;
    assert_eq!(read_one(&mut s).await.status, 200);
    let idle_from = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("closed by the idle timeout")
        .expect("clean close");
    assert!(idle_from.elapsed() >= Duration::from_millis(350));
    assert!(
        idle_from.elapsed() < Duration::from_secs(4),
        "not the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_connections_pauses_accept_without_dropping_anyone() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("max_client_connections = 2\n", "").await;
    // Two keep-alive clients hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let req = format!("GET {}/ HTTP/1.1\r\nHost: x\r\n\r\n", origin.url());
        let mut s = open(proxy.addr, req.as_bytes()).await;
        assert_eq!(read_one(&mut s).await.status, 200);
        held.push(s);
    }
    // A third client waits in the kernel backlog...
    let addr = proxy.addr;
    let url = origin.url();
    let third = tokio::spawn(async move { get(addr, &url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "served beyond max_client_connections");
    // Not accepted and parked: eddy has accepted exactly two.
    assert_eq!(proxy.eddy.client_connections(), 2);
    assert_eq!(
        proxy
            .metric("eddy_client_connections_total", &[("listener", "proxy")])
            .await,
        2.0
    );
    // ...and is served, not dropped, once a slot frees.
    held.pop();
    let r = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served after a slot freed")
        .expect("task");
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_ones() {
    let origin = Origin::start(Behavior {
        delay: Duration::from_millis(600),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let addr = proxy.addr;
    let admin = proxy.admin;
    let url = origin.url();
    let in_flight = tokio::spawn(async move { get(addr, &url).await });
    origin
        .wait_for("request reached the origin", Duration::from_secs(5), |s| {
            s.requests() == 1
        })
        .await;
    let shutdown = tokio::spawn(proxy.eddy.shutdown());
    // Readiness drops while draining.
    crate::support::eventually("readyz turns 503", Duration::from_secs(5), || async move {
        let r = eddy::admin_get(admin, "/readyz").await;
        r.status == 503
    })
    .await;
    let r = in_flight.await.expect("in-flight task");
    assert_eq!(r.status, 200, "the in-flight request finished");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown completes")
        .expect("shutdown task");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
    origin
        .wait_for("upstream connections closed", Duration::from_secs(5), |s| {
            s.open() == 0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_health_readiness_and_config() {
    let proxy = eddy::start("", "").await;
    let get_admin = |path: &'static str| proxy.admin_get(path);
    assert_eq!(get_admin("/healthz").await.status, 200);
    assert_eq!(get_admin("/readyz").await.status, 200);
    let config = get_admin("/config").await;
    assert_eq!(config.status, 200);
    assert!(::eddy::Config::from_toml(&config.text(), "/config").is_ok());
    assert_eq!(get_admin("/nope").await.status, 404);
    for path in ["/", "/metrics", "/pools"] {
        assert_eq!(get_admin(path).await.status, 200, "{path}");
    }
    // Only GET (and HEAD): the admin port changes nothing.
    for raw in [
        &b"POST /config HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..],
        b"DELETE /pools HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ] {
        let r = send_raw(proxy.admin, raw).await;
        assert_eq!(r.status, 405, "{}", String::from_utf8_lossy(raw));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_listener_serves_and_cleans_up() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let origin = Origin::start(Behavior::default()).await;
    let dir = std::env::temp_dir().join(format!("eddy-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("eddy.sock");
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess_log = false\n[[listener]]\nlisten = \"unix:{}\"\n",
        path.display()
    );
    let eddy = ::eddy::Eddy::start(::eddy::Config::from_toml(&toml, "t").expect("config"))
        .await
        .expect("start");
    let meta = std::fs::metadata(&path).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let mut s = tokio::net::UnixStream::connect(&path)
        .await
        .expect("connect");
    let req = format!(
        "GET {}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        origin.url()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    assert_eq!(parse(&buf).expect("response").status, 200);
    eddy.shutdown().await;
    assert!(!path.exists(), "socket file removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_length_and_transfer_encoding_is_400() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    for head in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
    ] {
        let req = format!(
            "POST {}/ HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            origin.url()
        );
        let r = send_raw(proxy.addr, req.as_bytes()).await;
        assert_eq!(r.status, 400, "{head}: {}", r.text());
        assert_eq!(r.proxy_error().as_deref(), Some("http_request_error"));
    }
    assert_eq!(origin.stats.requests(), 0, "nothing reached the origin");
    assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
}
