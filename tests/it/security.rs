//! The `[security]` settings: where eddy refuses to go.

use std::time::{Duration, Instant};

use crate::support::client::get;
use crate::support::eddy;
use crate::support::origin::{Behavior, Origin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_metadata_is_never_dialled_directly_or_by_name() {
    let proxy = eddy::start(
        "",
        "[[upstream]]\nmatch = \"metadata.test\"\nconnect = \"http://169.254.169.254\"\n",
    )
    .await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.test/",
    ] {
        let started = Instant::now();
        let r = get(proxy.addr, url).await;
        assert_eq!(r.status, 403, "{url}: {}", r.text());
        assert_eq!(
            r.proxy_error().as_deref(),
            Some("destination_ip_prohibited")
        );
        // Refused before any connect attempt (a dial would hang or time out).
        assert!(started.elapsed() < Duration::from_millis(1500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_address_receives_no_connection_at_all() {
    let origin = Origin::start_on("127.0.0.2:0", Behavior::default()).await;
    let allowed = Origin::start(Behavior::default()).await;
    let proxy = eddy::start(
        "",
        &format!(
            "[security]\ndeny_cidrs = [\"127.0.0.2/32\"]\n[[upstream]]\nmatch = \"inside.test\"\nconnect = \"{}\"\n",
            origin.url()
        ),
    )
    .await;
    for url in [origin.url(), "http://inside.test/".to_string()] {
        let r = get(proxy.addr, &url).await;
        assert_eq!(r.status, 403, "{url}: {}", r.text());
        assert_eq!(
            r.proxy_error().as_deref(),
            Some("destination_ip_prohibited")
        );
    }
    // A round trip to an allowed origin first, so that a connection to the
    // denied one, had eddy made it, would have been accepted by now.
    assert_eq!(get(proxy.addr, &allowed.url()).await.status, 200);
    assert_eq!(
        origin.stats.accepted(),
        0,
        "no TCP connection reached the denied address"
    );
    let prohibited = proxy
        .metric(
            "eddy_errors_total",
            &[("error", "destination_ip_prohibited")],
        )
        .await;
    assert_eq!(prohibited, 2.0, "each counted in eddy_errors_total");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_checked_by_the_addresses_it_resolves_to() {
    // `localhost` is not a denied literal; what it resolves to is.
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start(
        "",
        "[security]\ndeny_cidrs = [\"127.0.0.0/8\", \"::1/128\"]\n",
    )
    .await;
    let r = get(
        proxy.addr,
        &format!("http://localhost:{}/", origin.addr.port()),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.proxy_error().as_deref(),
        Some("destination_ip_prohibited")
    );
    // The same by address; the second round trip also gives a connection,
    // had one been made, time to be accepted.
    let r = get(proxy.addr, &origin.url()).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(origin.stats.accepted(), 0, "nothing was dialled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_hosts_admits_only_matching_names() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start(
        "",
        &format!(
            "[security]\nallow_hosts = [\"*.example.test\"]\nconnect_ports = [{port}]\n\
             [[upstream]]\nmatch = \"a.example.test\"\nconnect = \"{url}\"\n\
             [[upstream]]\nmatch = \"example.test.evil\"\nconnect = \"{url}\"\n",
            url = origin.url(),
            port = origin.addr.port()
        ),
    )
    .await;
    assert_eq!(get(proxy.addr, "http://a.example.test/").await.status, 200);
    for url in [
        "http://example.test.evil/",
        "http://example.test/",
        &origin.url(),
    ] {
        let r = get(proxy.addr, url).await;
        assert_eq!(r.status, 403, "{url}: {}", r.text());
        assert_eq!(r.proxy_error().as_deref(), Some("http_request_denied"));
    }
    // CONNECT obeys the same list.
    let r = crate::support::client::send_raw(
        proxy.addr,
        format!(
            "CONNECT {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            origin.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(origin.stats.requests(), 1);
    let denied = proxy
        .metric("eddy_errors_total", &[("error", "http_request_denied")])
        .await;
    assert_eq!(denied, 4.0, "three requests and the CONNECT are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_carrying_eddys_own_via_token_has_looped() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    assert_eq!(get(proxy.addr, &origin.url()).await.status, 200);
    // What eddy added on the way through.
    let head = origin.stats.recorded()[0].head.clone();
    let via = head
        .lines()
        .find_map(|l| l.strip_prefix("via: ").or_else(|| l.strip_prefix("Via: ")))
        .expect("eddy adds a Via entry")
        .to_string();
    assert!(via.starts_with("1.1 eddy-"), "{via}");
    // The same request coming back to eddy, as through a loop of names or
    // another proxy, is refused.
    let looped = format!(
        "GET {}/again HTTP/1.1\r\nHost: x\r\nVia: 1.0 other-proxy, {via}\r\nConnection: close\r\n\r\n",
        origin.url()
    );
    let r = crate::support::client::send_raw(proxy.addr, looped.as_bytes()).await;
    assert_eq!(r.status, 508, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("proxy_loop_detected"));
    // Another proxy's Via is fine.
    let r = crate::support::client::send_raw(
        proxy.addr,
        format!(
            "GET {}/ok HTTP/1.1\r\nHost: x\r\nVia: 1.1 squid\r\nConnection: close\r\n\r\n",
            origin.url()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.stats.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slowloris_connections_do_not_starve_a_good_client() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("client_header_timeout = \"30s\"\n", "").await;
    // 2,000 clients that start a head and never finish it.
    let mut loris = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        s.write_all(b"GET http://x/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("partial head");
        loris.push(s);
    }
    crate::support::eventually(
        "all slow clients accepted",
        Duration::from_secs(20),
        || async { proxy.eddy.client_connections() >= 2000 },
    )
    .await;
    let started = Instant::now();
    let r = get(proxy.addr, &origin.url()).await;
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "served in {:?} beside 2,000 slow clients",
        started.elapsed()
    );
    drop(loris);
}

/// eddy's own sockets, however the address is spelt, are never dialled:
/// not a proxy listener (a loop), not the admin port (the configuration
/// and the metrics are not for whoever may use the proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddys_own_addresses_are_refused_however_spelt() {
    let proxy = eddy::start("", "").await;
    let (port, admin) = (proxy.addr.port(), proxy.admin.port());
    // The admin port through the proxy.
    let r = get(proxy.addr, &format!("http://127.0.0.1:{admin}/config")).await;
    assert_eq!(r.status, 508, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("proxy_loop_detected"));
    assert!(!r.text().contains("[pool]"), "{}", r.text());
    for target in [admin, port] {
        for host in [
            "0.0.0.0",
            "0",
            "127.1",
            "2130706433",
            "0x7f000001",
            "[::ffff:127.0.0.1]",
            "localhost",
        ] {
            let url = format!("http://{host}:{target}/metrics");
            let r = get(proxy.addr, &url).await;
            assert_eq!(r.status, 508, "{url}: {}", r.text());
            assert_eq!(r.proxy_error().as_deref(), Some("proxy_loop_detected"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_eddy_itself_is_refused_however_spelt() {
    // The proxy's own port is allowed for CONNECT: only the loop guard
    // stands in the way.
    let proxy = eddy::start("", "").await;
    let port = proxy.addr.port();
    proxy.reload(
        "connect-self",
        &format!("[security]\nconnect_ports = [{port}]\n"),
    );
    for host in ["0.0.0.0", "[::ffff:127.0.0.1]", "127.1", "localhost"] {
        let target = format!("{host}:{port}");
        let (_s, head) = crate::tunnel::connect(proxy.addr, &target).await;
        assert!(head.starts_with("HTTP/1.1 508"), "{target}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-status: eddy; error=proxy_loop_detected"),
            "{target}: {head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v4_mapped_deny_cidr_covers_the_ipv4_destination() {
    let origin = Origin::start_on("127.0.0.2:0", Behavior::default()).await;
    let proxy = eddy::start("", "[security]\ndeny_cidrs = [\"::ffff:127.0.0.2/128\"]\n").await;
    let r = get(proxy.addr, &origin.url()).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.proxy_error().as_deref(),
        Some("destination_ip_prohibited")
    );
    assert_eq!(origin.stats.accepted(), 0);
}
