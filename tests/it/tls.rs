//! TLS origination (`[[upstream]] connect = "https://..."`, with the TLS
//! settings part of the pool key): a plain-HTTP app gets pooled TLS
//! connections.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::support::client::{get, send_raw};
use crate::support::eddy;
use crate::support::tls::{TestCa, TlsOrigin};

fn upstream(origin: &TlsOrigin, ca: &std::path::Path, extra: &str) -> String {
    format!(
        "[[upstream]]\nmatch = \"api.test\"\nconnect = \"https://localhost:{}\"\nca_file = \"{}\"\n{extra}",
        origin.addr.port(),
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_short_lived_clients_share_one_tls_connection() {
    let ca = TestCa::new("eddy test CA");
    let origin = TlsOrigin::start(&ca).await;
    let proxy = eddy::start("", &upstream(&origin, &ca.write_pem("one"), "")).await;
    for i in 0..200 {
        let r = get(proxy.addr, &format!("http://api.test/{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), "tls ok\n");
    }
    assert_eq!(origin.requests.load(Ordering::SeqCst), 200);
    assert_eq!(
        origin.handshakes.load(Ordering::SeqCst),
        1,
        "one TLS connection carried them all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_cause_at_most_max_connections_handshakes() {
    let ca = TestCa::new("eddy test CA");
    let origin = TlsOrigin::start(&ca).await;
    let proxy = eddy::start(
        "",
        &upstream(
            &origin,
            &ca.write_pem("two"),
            "[upstream.pool]\nmax_connections_per_host = 2\n",
        ),
    )
    .await;
    let addr = proxy.addr;
    let mut tasks = Vec::new();
    for i in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for j in 0..5 {
                statuses.push(get(addr, &format!("http://api.test/{i}/{j}")).await.status);
            }
            statuses
        }));
    }
    for t in tasks {
        assert!(t.await.expect("task").iter().all(|&s| s == 200));
    }
    assert!(
        origin.handshakes.load(Ordering::SeqCst) <= 2,
        "{} handshakes",
        origin.handshakes.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_502_tls_certificate_error() {
    let ca = TestCa::new("eddy test CA");
    let stranger = TestCa::new("someone else");
    let origin = TlsOrigin::start(&stranger).await;
    let proxy = eddy::start("", &upstream(&origin, &ca.write_pem("untrusted"), "")).await;
    let r = get(proxy.addr, "http://api.test/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("tls_certificate_error"));
    assert_eq!(origin.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_listener_originates_tls_to_its_upstream() {
    let ca = TestCa::new("eddy test CA");
    let origin = Arc::new(TlsOrigin::start(&ca).await);
    let pem = ca.write_pem("route");
    let port = origin.addr.port();
    let proxy = eddy::start(
        &format!("mode = \"route\"\nupstream = \"https://localhost:{port}\"\n"),
        &format!(
            "[[upstream]]\nmatch = \"localhost:{port}\"\nca_file = \"{}\"\n",
            pem.display()
        ),
    )
    .await;
    for _ in 0..5 {
        let r = send_raw(
            proxy.addr,
            b"GET /orders HTTP/1.1\r\nHost: localhost:8081\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "tls ok\n");
    }
    assert_eq!(origin.handshakes.load(Ordering::SeqCst), 1);
    // Host is rewritten to the route's upstream.
    let hosts = origin.hosts.lock().expect("hosts").clone();
    assert_eq!(hosts.len(), 5);
    assert!(
        hosts.iter().all(|h| *h == format!("localhost:{port}")),
        "{hosts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_names_the_server_and_is_what_the_certificate_is_checked_against() {
    let ca = TestCa::new("eddy test CA");
    let origin = TlsOrigin::start(&ca).await;
    let pem = ca.write_pem("sni");
    let at = |sni: &str| {
        format!(
            "[[upstream]]\nmatch = \"api.test\"\nconnect = \"https://127.0.0.1:{}\"\nca_file = \"{}\"\nsni = \"{sni}\"\n",
            origin.addr.port(),
            pem.display()
        )
    };
    let proxy = eddy::start("", &at("localhost")).await;
    let r = get(proxy.addr, "http://api.test/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        origin.server_names.lock().expect("names").clone(),
        vec![Some("localhost".to_string())],
        "the handshake named sni, not the address"
    );
    // A name the certificate does not cover fails verification.
    let wrong = eddy::start("", &at("elsewhere.test")).await;
    let r = get(wrong.addr, "http://api.test/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("tls_certificate_error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_fails_without_a_certificate_problem_is_tls_protocol_error() {
    // A plain-HTTP server where TLS was configured: it answers the
    // ClientHello with an HTTP error, so the handshake fails on garbage,
    // not on a certificate.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let plain_addr = plain.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = plain.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let proxy = eddy::start(
        "",
        &format!("[[upstream]]\nmatch = \"api.test\"\nconnect = \"https://{plain_addr}\"\n"),
    )
    .await;
    let r = get(proxy.addr, "http://api.test/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("tls_protocol_error"));
    // HTTP/2 asked of an origin whose ALPN offers only HTTP/1.1.
    let ca = TestCa::new("eddy test CA");
    let h1 = TlsOrigin::start(&ca).await;
    let proxy = eddy::start("", &upstream(&h1, &ca.write_pem("alpn"), "http2 = true\n")).await;
    let r = get(proxy.addr, "http://api.test/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("tls_protocol_error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_key_includes_the_tls_settings() {
    // Two names for one https origin, one with a client certificate and
    // one without. Were they one pool, the second would be handed the
    // first's authenticated connection and get 200.
    let ca = TestCa::new("eddy test CA");
    let origin = TlsOrigin::start_requiring_client_cert(&ca).await;
    let pem = ca.write_pem("key");
    let (cert, key) = ca.write_client_pair("key");
    let port = origin.addr.port();
    let proxy = eddy::start(
        "",
        &format!(
            "[[upstream]]\nmatch = \"mtls.test\"\nconnect = \"https://localhost:{port}\"\nca_file = \"{ca}\"\n\
             client_cert = \"{cert}\"\nclient_key = \"{key}\"\n\
             [[upstream]]\nmatch = \"anon.test\"\nconnect = \"https://localhost:{port}\"\nca_file = \"{ca}\"\n",
            ca = pem.display(),
            cert = cert.display(),
            key = key.display()
        ),
    )
    .await;
    let r = get(proxy.addr, "http://mtls.test/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(proxy.addr, "http://anon.test/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_to_a_known_origin_resumes_the_session() {
    let ca = TestCa::new("eddy test CA");
    let origin = TlsOrigin::start(&ca).await;
    let proxy = eddy::start("", &upstream(&origin, &ca.write_pem("resume"), "")).await;
    assert_eq!(get(proxy.addr, "http://api.test/first").await.status, 200);
    assert_eq!(origin.resumed.load(Ordering::SeqCst), 0);
    origin.close_all();
    crate::support::eventually(
        "eddy saw the close",
        std::time::Duration::from_secs(5),
        || async { proxy.pools_sum("idle").await == 0 },
    )
    .await;
    assert_eq!(get(proxy.addr, "http://api.test/second").await.status, 200);
    assert_eq!(origin.handshakes.load(Ordering::SeqCst), 2);
    assert_eq!(
        origin.resumed.load(Ordering::SeqCst),
        1,
        "the second handshake resumed the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works_with_a_client_certificate_and_fails_cleanly_without() {
    let ca = TestCa::new("eddy test CA");
    let origin = TlsOrigin::start_requiring_client_cert(&ca).await;
    let pem = ca.write_pem("mtls");
    let (cert, key) = ca.write_client_pair("mtls");
    let with = eddy::start(
        "",
        &upstream(
            &origin,
            &pem,
            &format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
        ),
    )
    .await;
    let r = get(with.addr, "http://api.test/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // GET /config names the key file but never shows what is in it.
    let config = with.admin_get("/config").await;
    let shown = config.text();
    assert!(shown.contains(&key.display().to_string()), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    let without = eddy::start("", &upstream(&origin, &pem, "")).await;
    let r = get(without.addr, "http://api.test/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.proxy_error().as_deref(),
        Some("tls_certificate_error"),
        "{}",
        r.text()
    );
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
}

/// Without a client certificate, an origin that requires one is a TLS
/// failure under either version: under TLS 1.2 the handshake fails, under
/// TLS 1.3 the refusal arrives after it, on the first read. Neither is a
/// terminated connection, neither is retried, and no request reaches the
/// origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_certificate_is_a_tls_error_under_tls_1_2_and_1_3() {
    let ca = TestCa::new("eddy test CA");
    let pem = ca.write_pem("mtls-versions");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let origin = TlsOrigin::start_requiring_client_cert_over(&ca, version).await;
        let proxy = eddy::start("", &upstream(&origin, &pem, "")).await;
        for _ in 0..3 {
            let r = get(proxy.addr, "http://api.test/").await;
            assert_eq!(r.status, 502, "{version:?}: {}", r.text());
            assert!(
                matches!(
                    r.proxy_error().as_deref(),
                    Some("tls_certificate_error" | "tls_protocol_error")
                ),
                "{version:?}: {:?} {}",
                r.proxy_error(),
                r.text()
            );
        }
        assert_eq!(origin.requests.load(Ordering::SeqCst), 0, "{version:?}");
        let metrics = proxy.admin_get("/metrics").await.text();
        // Not retried: no stale retry, at most one connection per request
        // (under TLS 1.2 none opens at all).
        for line in metrics.lines() {
            if line.starts_with("eddy_stale_retries_total{") {
                assert!(line.ends_with(" 0"), "{version:?}: {line}");
            }
            if let Some(n) = line.strip_prefix("eddy_upstream_connections_opened_total{") {
                let opened: u64 = n
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(99);
                assert!(opened <= 3, "{version:?}: {line}");
            }
        }
        assert!(
            metrics.lines().any(|l| l.starts_with("eddy_errors_total")
                && l.contains("error=\"tls_")
                && l.ends_with(" 3")),
            "{version:?}: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_is_negotiated_by_alpn_and_multiplexed() {
    let ca = TestCa::new("eddy test CA");
    let origin = TlsOrigin::start_h2(&ca).await;
    let proxy = eddy::start(
        "",
        &upstream(&origin, &ca.write_pem("h2"), "http2 = true\n"),
    )
    .await;
    let addr = proxy.addr;
    let mut tasks = Vec::new();
    for i in 0..30 {
        tasks.push(tokio::spawn(async move {
            get(addr, &format!("http://api.test/{i}")).await
        }));
    }
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "tls ok\n");
    }
    assert_eq!(
        origin.handshakes.load(Ordering::SeqCst),
        1,
        "one HTTP/2 connection"
    );
    assert_eq!(origin.requests.load(Ordering::SeqCst), 30);
}
