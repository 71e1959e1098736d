//! Hop-by-hop headers stop at eddy in both directions; end-to-end headers and
//! bodies arrive intact.

use crate::support::client::send_raw;
use crate::support::eddy;
use crate::support::origin::{Behavior, Origin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_never_reach_the_origin() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    let req = format!(
        "GET {}/h HTTP/1.1\r\nHost: ignored\r\nConnection: x-foo, close\r\nX-Foo: secret\r\n\
         Proxy-Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic dTpw\r\n\
         TE: trailers\r\nX-End-To-End: kept\r\n\r\n",
        origin.url()
    );
    let r = send_raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let head = origin.stats.recorded()[0].head.to_ascii_lowercase();
    for gone in [
        "x-foo",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "te:",
        "connection:",
    ] {
        assert!(!head.contains(gone), "{gone} reached the origin:\n{head}");
    }
    assert!(head.contains("x-end-to-end: kept"), "{head}");
    assert!(
        head.starts_with("get /h http/1.1"),
        "origin-form upstream: {head}"
    );
    assert!(
        head.contains(&format!("host: {}", origin.addr)),
        "Host from the target: {head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_never_reach_the_client() {
    let origin = Origin::start(Behavior {
        extra_headers: vec![
            "Connection: x-bar".into(),
            "X-Bar: internal".into(),
            "Proxy-Authenticate: Basic".into(),
            "X-Visible: yes".into(),
        ],
        keep_alive_timeout: Some(30),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let r = crate::support::client::get(proxy.addr, &origin.url()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-bar"), None);
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("proxy-authenticate"), None);
    assert_eq!(r.header("x-visible").as_deref(), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_arrive_intact_both_ways() {
    let echo = Origin::start(Behavior {
        echo: true,
        ..Behavior::default()
    })
    .await;
    let chunked_echo = Origin::start(Behavior {
        echo: true,
        chunked: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let payload: String = (0..5000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();

    // Content-Length request, Content-Length response.
    let req = format!(
        "POST {}/upload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        echo.url(),
        payload.len()
    );
    let r = send_raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), payload);
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(echo.stats.recorded()[0].body, payload.as_bytes());

    // Chunked request, chunked response.
    let (a, b) = payload.split_at(1234);
    let req = format!(
        "POST {}/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        chunked_echo.url(),
        a.len(),
        b.len()
    );
    let r = send_raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), payload);
    assert_eq!(chunked_echo.stats.recorded()[0].body, payload.as_bytes());

    // HTTP/1.0 client, chunked origin response: delimited by close.
    let req = format!(
        "POST {}/x HTTP/1.0\r\nContent-Length: {}\r\n\r\n{payload}",
        chunked_echo.url(),
        payload.len()
    );
    let r = send_raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), payload);

    // The upstream connections stayed reusable throughout.
    assert_eq!(chunked_echo.stats.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_responses_keep_the_connection_reusable() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    let head = format!(
        "HEAD {}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        origin.url()
    );
    let mut s = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut raw)
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "no body after a HEAD response: {text}"
    );
    let r = crate::support::client::get(proxy.addr, &origin.url()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        origin.stats.accepted(),
        1,
        "the HEAD's connection was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_uploads_work() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = Origin::start(Behavior {
        echo: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    let body = "z".repeat(3000);
    let mut s = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST {}/up HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        echo.url(),
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let mut interim = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut interim))
        .await
        .expect("100 Continue in time")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&interim[..n]).starts_with("HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&interim[..n])
    );
    s.write_all(body.as_bytes()).await.expect("body");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("response");
    let r = crate::support::client::parse(&rest).expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), body);
}

/// Header names keep their case both ways by default: legacy apps and
/// servers sometimes match names case-sensitively. With
/// `preserve_header_case = false` they are lower-case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_keep_their_case_end_to_end() {
    let origin = Origin::start(Behavior {
        extra_headers: vec!["Server: Legacy".into(), "X-Powered-By: Old".into()],
        ..Behavior::default()
    })
    .await;
    let req = format!(
        "GET {}/case HTTP/1.1\r\nHost: ignored\r\nX-Custom-Header: A\r\nAccept-ENCODING: identity\r\n\
         Connection: close\r\n\r\n",
        origin.url()
    );
    let proxy = eddy::start("", "").await;
    let r = send_raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = &origin.stats.recorded()[0].head;
    assert!(sent.contains("\r\nX-Custom-Header: A\r\n"), "{sent}");
    assert!(sent.contains("\r\nAccept-ENCODING: identity\r\n"), "{sent}");
    assert!(r.head.contains("\r\nServer: Legacy\r\n"), "{}", r.head);
    assert!(r.head.contains("\r\nX-Powered-By: Old\r\n"), "{}", r.head);

    let lower = eddy::start("preserve_header_case = false\n", "").await;
    let r = send_raw(lower.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = &origin.stats.recorded()[1].head;
    assert!(sent.contains("\r\nx-custom-header: A\r\n"), "{sent}");
    assert!(r.head.contains("\r\nserver: Legacy\r\n"), "{}", r.head);
}
