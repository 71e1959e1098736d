//! Origins reached through an egress forward proxy (`[[upstream]] via`):
//! a second eddy as the proxy here, and a real Squid when one is installed
//! (CI installs it and sets `EDDY_REQUIRE_SQUID`, so there it never skips).
//! Either way the connections to the proxy are pooled like any origin's.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::client::get;
use crate::support::eddy::{self, Proxy};
use crate::support::origin::{Behavior, Origin};
use crate::support::tls::{TestCa, TlsOrigin};

/// `workers` clients at once, `each` requests apiece, every one on a new
/// client connection (a legacy app); the statuses that were not 200.
async fn load(proxy: SocketAddr, url: &str, workers: usize, each: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            for i in 0..each {
                let r = get(proxy, &format!("{url}/{w}/{i}")).await;
                if r.status != 200 {
                    bad.push(format!("{} {}", r.status, r.text()));
                }
            }
            bad
        }));
    }
    let mut bad = Vec::new();
    for t in tasks {
        bad.extend(t.await.expect("client task"));
    }
    bad
}

/// eddy with one `[[upstream]]` for `target` reached via `egress`.
async fn eddy_via(target: &str, egress: SocketAddr, extra: &str, max: usize) -> Proxy {
    eddy::start(
        "",
        &format!(
            "[[upstream]]\nmatch = \"{target}\"\nvia = \"http://{egress}\"\n{extra}\
             [upstream.pool]\nmax_connections_per_host = {max}\n"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_origin_behind_an_egress_proxy_is_pooled_through_it() {
    let origin = Origin::start(Behavior::default()).await;
    // The egress proxy: another eddy, a forward proxy like any other.
    let egress = eddy::start("", "").await;
    let proxy = eddy_via(&origin.addr.to_string(), egress.addr, "", 4).await;
    let bad = load(proxy.addr, &origin.url(), 8, 25).await;
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(origin.stats.requests(), 200);
    // eddy's connections to the egress proxy, counted by the proxy.
    let reached = egress
        .metric("eddy_client_connections_total", &[("listener", "proxy")])
        .await;
    assert!(
        (1.0..=4.0).contains(&reached),
        "{reached} connections reached the egress proxy"
    );
    // The egress proxy was asked in absolute form, and went to the origin.
    let upstream = origin.url();
    assert_eq!(
        egress
            .metric(
                "eddy_requests_total",
                &[("upstream", &upstream), ("code", "2xx")]
            )
            .await,
        200.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_origin_behind_an_egress_proxy_is_reached_through_connect_tunnels() {
    let ca = TestCa::new("eddy test CA");
    let origin = TlsOrigin::start(&ca).await;
    let port = origin.addr.port();
    let egress = eddy::start("", &format!("[security]\nconnect_ports = [{port}]\n")).await;
    let proxy = eddy_via(
        "api.test",
        egress.addr,
        &format!(
            "connect = \"https://localhost:{port}\"\nca_file = \"{}\"\n",
            ca.write_pem("via").display()
        ),
        3,
    )
    .await;
    let bad = load(proxy.addr, "http://api.test", 6, 10).await;
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(origin.requests.load(Ordering::SeqCst), 60);
    let handshakes = origin.handshakes.load(Ordering::SeqCst);
    assert!((1..=3).contains(&handshakes), "{handshakes} TLS handshakes");
    let tunnels = egress
        .metric("eddy_tunnels_total", &[("listener", "proxy")])
        .await;
    assert!((1.0..=3.0).contains(&tunnels), "{tunnels} tunnels");
}

#[tokio::test]
async fn an_egress_proxy_that_refuses_the_tunnel_is_a_clear_502() {
    // The egress eddy allows CONNECT to port 443 only.
    let egress = eddy::start("", "").await;
    let proxy = eddy_via(
        "api.test",
        egress.addr,
        "connect = \"https://127.0.0.1:8443\"\n",
        2,
    )
    .await;
    let r = get(proxy.addr, "http://api.test/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("connection_refused"));
    assert!(
        r.text().contains("egress proxy: CONNECT answered 403"),
        "{}",
        r.text()
    );
}

/// A Squid of our own on a free loopback port, with its files in a
/// temporary directory; stopped (by its PID) when dropped.
struct Squid {
    addr: SocketAddr,
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Squid {
    /// `None` when Squid is not installed (and not required).
    async fn start() -> Option<Squid> {
        let binary = ["/usr/sbin/squid", "/usr/bin/squid"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            assert!(
                std::env::var_os("EDDY_REQUIRE_SQUID").is_none(),
                "Squid is required here (EDDY_REQUIRE_SQUID) but not installed"
            );
            eprintln!("skipped: Squid is not installed");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("eddy-squid-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("squid dir");
        // Squid started as root drops to its own user, which must be able
        // to write its logs here.
        let _ = Command::new("chmod").arg("777").arg(&dir).status();
        let d = dir.display();
        let conf = format!(
            "http_port 127.0.0.1:{port}\n\
             acl loopback src 127.0.0.0/8\n\
             http_access allow loopback\n\
             http_access deny all\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             pid_filename {d}/squid.pid\n\
             access_log none\n\
             cache_log {d}/cache.log\n\
             coredump_dir {d}\n\
             shutdown_lifetime 0 seconds\n\
             server_persistent_connections on\n\
             client_persistent_connections on\n"
        );
        let conf_path = dir.join("squid.conf");
        std::fs::write(&conf_path, conf).expect("squid.conf");
        let child = Command::new(binary)
            .arg("-N")
            .arg("-f")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("squid starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let squid = Squid { addr, child, dir };
        crate::support::eventually("Squid listens", Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        Some(squid)
    }
}

/// Acceptance: 200 requests through eddy, `via` a real Squid, reach the
/// origin over at most `max_connections_per_host` connections; and an
/// HTTPS origin through Squid's CONNECT is pooled the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_squid_as_the_egress_proxy() {
    let Some(squid) = Squid::start().await else {
        return;
    };
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy_via(&origin.addr.to_string(), squid.addr, "", 4).await;
    let bad = load(proxy.addr, &origin.url(), 8, 25).await;
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(origin.stats.requests(), 200);
    let upstream = origin.url();
    let opened = proxy
        .metric(
            "eddy_upstream_connections_opened_total",
            &[("upstream", &upstream)],
        )
        .await;
    assert!(
        (1.0..=4.0).contains(&opened),
        "eddy opened {opened} connections to Squid"
    );
    assert!(
        origin.stats.accepted() <= 4,
        "{} connections reached the origin through Squid",
        origin.stats.accepted()
    );

    let ca = TestCa::new("eddy test CA");
    let tls = TlsOrigin::start(&ca).await;
    let proxy = eddy_via(
        "api.test",
        squid.addr,
        &format!(
            "connect = \"https://localhost:{}\"\nca_file = \"{}\"\n",
            tls.addr.port(),
            ca.write_pem("squid").display()
        ),
        3,
    )
    .await;
    let bad = load(proxy.addr, "http://api.test", 6, 10).await;
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(tls.requests.load(Ordering::SeqCst), 60);
    let handshakes = tls.handshakes.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&handshakes),
        "{handshakes} TLS handshakes through Squid"
    );
}

/// A client's own CONNECT to a host whose `[[upstream]]` names `via` goes
/// through the egress proxy too: eddy asks the proxy for the tunnel.
#[tokio::test]
async fn a_client_tunnel_to_a_via_host_goes_through_the_egress_proxy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start(Behavior::default()).await;
    let port = origin.addr.port();
    let egress = eddy::start("", &format!("[security]\nconnect_ports = [{port}]\n")).await;
    let proxy = eddy::start(
        "",
        &format!(
            "[security]\nconnect_ports = [{port}]\n\
             [[upstream]]\nmatch = \"127.0.0.1:{port}\"\nvia = \"http://{}\"\n",
            egress.addr
        ),
    )
    .await;
    let (mut tunnel, head) = crate::tunnel::connect(proxy.addr, &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tunnel
        .write_all(b"GET /inside HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write through the tunnel");
    // Until a whole response has arrived (the test origin keeps its
    // connections open whatever the client asks).
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while crate::support::client::parse(&answer).is_none() {
        let n = tokio::time::timeout(Duration::from_secs(10), tunnel.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(origin.stats.requests(), 1);
    assert_eq!(
        egress
            .metric("eddy_tunnels_total", &[("listener", "proxy")])
            .await,
        1.0,
        "the egress proxy carried the tunnel"
    );
}
