//! `[tls_intercept]`: CONNECT tunnels to listed hosts are terminated with a
//! local CA and the requests inside are pooled. The clients here are a
//! rustls client, curl and Python `requests` (the latter two skip where
//! they are missing, unless `EDDY_REQUIRE_CLIENTS` is set, as `.ci/run`
//! sets it).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::parse;
use crate::support::eddy::{self, Proxy};
use crate::support::tls::{TestCa, TlsOrigin};

/// The CA the applications trust, the origin's own CA, an origin, and an
/// eddy that intercepts `localhost` and trusts the origin's CA.
struct World {
    app_ca: TestCa,
    origin_ca: TestCa,
    origin: TlsOrigin,
    proxy: Proxy,
}

impl World {
    async fn new(name: &str, extra: &str) -> World {
        let app_ca = TestCa::new("eddy intercept CA");
        let origin_ca = TestCa::new("origin CA");
        let origin = TlsOrigin::start(&origin_ca).await;
        let port = origin.addr.port();
        let intercept = intercept_table(
            &app_ca,
            &format!("intercept-{name}"),
            "\"localhost\", \"*.test\"",
        );
        let proxy = eddy::start(
            "",
            &format!(
                "[security]\nconnect_ports = [443, {port}]\n{intercept}{extra}\
                 [[upstream]]\nmatch = \"localhost:{port}\"\nca_file = \"{}\"\n\
                 [upstream.pool]\nmax_connections_per_host = 2\n",
                origin_ca.write_pem(&format!("origin-{name}")).display(),
            ),
        )
        .await;
        World {
            app_ca,
            origin_ca,
            origin,
            proxy,
        }
    }

    fn target(&self) -> String {
        format!("localhost:{}", self.origin.addr.port())
    }
}

/// Opens `CONNECT target` through `proxy`; the stream once eddy said 200.
async fn tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    let (s, head) = crate::tunnel::connect(proxy, target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

/// A `[tls_intercept]` table for `hosts` (TOML array items), with `ca`
/// written to files named after `name` (the key mode 0600).
fn intercept_table(ca: &TestCa, name: &str, hosts: &str) -> String {
    let (cert, key) = ca.write_ca_pair(name);
    format!(
        "[tls_intercept]\nca_cert = \"{}\"\nca_key = \"{}\"\nhosts = [{hosts}]\n",
        cert.display(),
        key.display()
    )
}

/// One request over a new tunnel and a new TLS session (a legacy app):
/// the status and body.
async fn request_through(
    proxy: SocketAddr,
    target: &str,
    trust: Arc<rustls::ClientConfig>,
    sni: &str,
    raw: String,
) -> std::io::Result<(u16, String)> {
    let tcp = tunnel(proxy, target).await;
    let connector = tokio_rustls::TlsConnector::from(trust);
    let name = ServerName::try_from(sni.to_string()).expect("name");
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(raw.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(r) = parse(&buf) {
            return Ok((r.status, r.text()));
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("no answer in time"))??;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "closed: {}",
                String::from_utf8_lossy(&buf)
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn get(target: &str, i: usize) -> String {
    format!("GET /get/{i} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
}

fn post(target: &str, i: usize) -> String {
    let body = format!("{{\"n\": {i}}}");
    format!(
        "POST /post/{i} HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_tunnels_share_pooled_tls_connections() {
    let w = World::new("pooled", "").await;
    let target = w.target();
    let trust = w.app_ca.client_config();
    let addr = w.proxy.addr;
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (target, trust) = (target.clone(), trust.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..25 {
                let raw = if i % 2 == 0 {
                    get(&target, i)
                } else {
                    post(&target, i)
                };
                out.push(request_through(addr, &target, trust.clone(), "localhost", raw).await);
                let _ = worker;
            }
            out
        }));
    }
    for t in tasks {
        for r in t.await.expect("task") {
            let (status, body) = r.expect("an answer");
            assert_eq!((status, body.as_str()), (200, "tls ok\n"));
        }
    }
    assert_eq!(w.origin.requests.load(Ordering::SeqCst), 100);
    let handshakes = w.origin.handshakes.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&handshakes),
        "{handshakes} TLS handshakes at the origin for 100 tunnels"
    );
    let upstream = format!("https://{target}");
    assert_eq!(
        w.proxy
            .metric(
                "eddy_tls_intercepted_requests_total",
                &[("upstream", &upstream)]
            )
            .await,
        100.0
    );
    // /pools shows them under their https:// origin.
    let pools = w.proxy.pools().await;
    assert!(
        pools[&upstream]["opened_total"].as_u64().is_some(),
        "{pools}"
    );
}

#[tokio::test]
async fn a_client_without_the_ca_fails_its_handshake_and_nothing_reaches_the_origin() {
    let w = World::new("untrusted", "").await;
    let target = w.target();
    let stranger = TestCa::new("someone else").client_config();
    let r = request_through(
        w.proxy.addr,
        &target,
        stranger,
        "localhost",
        get(&target, 0),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(w.origin.requests.load(Ordering::SeqCst), 0);
    assert_eq!(w.origin.handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_server_name_other_than_the_connect_host_is_refused() {
    let w = World::new("sni", "").await;
    let target = w.target();
    let r = request_through(
        w.proxy.addr,
        &target,
        w.app_ca.client_config(),
        "other.test",
        get(&target, 0),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(w.origin.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_offering_only_h2_fails_cleanly() {
    let w = World::new("h2", "").await;
    let target = w.target();
    let mut config = (*w.app_ca.client_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let r = request_through(
        w.proxy.addr,
        &target,
        Arc::new(config),
        "localhost",
        get(&target, 0),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(w.origin.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_host_not_listed_is_a_raw_tunnel_as_before() {
    let w = World::new("raw", "").await;
    // By its IP address, which is not listed: the client talks TLS with
    // the origin itself, so it must trust the origin's CA.
    let target = format!("127.0.0.1:{}", w.origin.addr.port());
    for i in 0..3 {
        let (status, body) = request_through(
            w.proxy.addr,
            &target,
            w.origin_ca.client_config(),
            "localhost",
            get(&target, i),
        )
        .await
        .expect("a raw tunnel");
        assert_eq!((status, body.as_str()), (200, "tls ok\n"));
    }
    assert_eq!(
        w.origin.handshakes.load(Ordering::SeqCst),
        3,
        "one origin connection per tunnel"
    );
}

#[tokio::test]
async fn an_origin_eddy_does_not_trust_is_a_502_inside_the_tunnel() {
    // The origin's certificate comes from a CA eddy was not given.
    let app_ca = TestCa::new("eddy intercept CA");
    let origin = TlsOrigin::start(&TestCa::new("unknown origin CA")).await;
    let port = origin.addr.port();
    let intercept = intercept_table(&app_ca, "intercept-untrusted-origin", "\"localhost\"");
    let proxy = eddy::start(
        "",
        &format!("[security]\nconnect_ports = [{port}]\n{intercept}"),
    )
    .await;
    let target = format!("localhost:{port}");
    let raw = get(&target, 0);
    let tcp = tunnel(proxy.addr, &target).await;
    let connector = tokio_rustls::TlsConnector::from(app_ca.client_config());
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("the client trusts eddy's CA");
    tls.write_all(raw.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.ok();
    let r = parse(&buf).expect("a response");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("tls_certificate_error"));
    assert_eq!(origin.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaf_cache_stays_at_its_bound() {
    let w = World::new("cache", "max_cached_certs = 50\n").await;
    let trust = w.app_ca.client_config();
    let connector = tokio_rustls::TlsConnector::from(trust);
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let mut at_half = 0;
    for i in 0..1_000 {
        let name = format!("n{i}.test");
        let tcp = tunnel(w.proxy.addr, &format!("{name}:443")).await;
        let tls = connector
            .connect(ServerName::try_from(name.clone()).expect("name"), tcp)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        drop(tls);
        if i == 499 {
            at_half = rss();
        }
    }
    assert_eq!(w.proxy.eddy.tls_intercept_cached_certs(), 50);
    let grown_kib = rss().saturating_sub(at_half);
    assert!(
        grown_kib < 4 * 1024,
        "RSS grew {grown_kib} KiB over the second 500 names"
    );
}

#[tokio::test]
async fn a_group_readable_ca_key_stops_eddy_from_starting() {
    use std::os::unix::fs::PermissionsExt;
    let ca = TestCa::new("eddy intercept CA");
    let (cert, key) = ca.write_ca_pair("intercept-mode");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let toml = eddy::config_text(
        "",
        &format!(
            "[tls_intercept]\nca_cert = \"{}\"\nca_key = \"{}\"\nhosts = [\"a.test\"]\n",
            cert.display(),
            key.display()
        ),
    );
    let config = ::eddy::Config::from_toml(&toml, "t.toml").expect("the file itself is valid");
    let err = match ::eddy::Eddy::start(config).await {
        Ok(_) => panic!("eddy started with a group-readable CA key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("readable by group or others"), "{err}");
    // The key's contents never appear in /config.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let proxy = eddy::start(
        "",
        &format!(
            "[tls_intercept]\nca_cert = \"{}\"\nca_key = \"{}\"\nhosts = [\"a.test\"]\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let shown = proxy.admin_get("/config").await.text();
    assert!(shown.contains("[tls_intercept]"), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

/// Real clients nobody here wrote, each making every request on a new
/// connection through `HTTPS_PROXY`, trusting the local CA: Python
/// `requests` without a Session (500 GETs, 500 POSTs), curl and a Go
/// client. The origin sees at most `max_connections_per_host` TLS
/// connections for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_are_pooled_through_interception() {
    let w = World::new("clients", "").await;
    let port = w.origin.addr.port();
    let ca = w.app_ca.write_pem("clients-trust");
    let proxy = format!("http://{}", w.proxy.addr);
    let url = format!("https://localhost:{port}");
    let require = std::env::var_os("EDDY_REQUIRE_CLIENTS").is_some();
    let have = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut ran = Vec::new();

    if have("python3", &["-c", "import requests"]) {
        let script = r#"
import sys, requests
proxy, url, ca = sys.argv[1:4]
bad = 0
for i in range(500):
    r = requests.get(f"{url}/get/{i}", proxies={"https": proxy}, verify=ca, timeout=30)
    bad += r.status_code != 200 or r.text != "tls ok\n"
for i in range(500):
    r = requests.post(f"{url}/post/{i}", json={"n": i}, proxies={"https": proxy}, verify=ca, timeout=30)
    bad += r.status_code != 200 or r.text != "tls ok\n"
print(bad)
"#;
        let out = tokio::process::Command::new("python3")
            .args(["-c", script, &proxy, &url, &ca.to_string_lossy()])
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .output()
            .await
            .expect("python3 runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.trim() == "0",
            "python requests: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran.push("python-requests");
    } else {
        assert!(!require, "Python requests is required here");
    }

    if have("curl", &["--version"]) {
        for i in 0..50 {
            let out = tokio::process::Command::new("curl")
                .args(["-sS", "--max-time", "20", "-p", "-x", &proxy, "--cacert"])
                .arg(&ca)
                .arg(format!("{url}/curl/{i}"))
                .output()
                .await
                .expect("curl runs");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "tls ok\n",
                "curl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ran.push("curl");
    } else {
        assert!(!require, "curl is required here");
    }

    if have("go", &["version"]) {
        let dir = std::env::temp_dir().join(format!("eddy-go-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let main = dir.join("main.go");
        std::fs::write(&main, GO_CLIENT).expect("write the Go client");
        let out = tokio::process::Command::new("go")
            .arg("run")
            .arg(&main)
            .args([&proxy, &url, &ca.to_string_lossy().into_owned()])
            .env("GOCACHE", dir.join("cache"))
            .env("GOFLAGS", "-mod=mod")
            .output()
            .await
            .expect("go runs");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0",
            "go client: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran.push("go");
    } else {
        assert!(!require, "Go is required here");
    }

    eprintln!("clients run: {ran:?}");
    let handshakes = w.origin.handshakes.load(Ordering::SeqCst);
    assert!(
        handshakes <= 2,
        "{handshakes} TLS handshakes at the origin for {ran:?}"
    );
}

/// A Go client: a new Transport (no keep-alive across requests) for each
/// of 100 GETs, the proxy set explicitly (ProxyFromEnvironment never
/// proxies loopback), the CA in RootCAs. Prints the number of failures.
const GO_CLIENT: &str = r#"package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
)

func main() {
	proxy, _ := url.Parse(os.Args[1])
	target, caFile := os.Args[2], os.Args[3]
	pem, err := os.ReadFile(caFile)
	if err != nil {
		panic(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	bad := 0
	for i := 0; i < 100; i++ {
		tr := &http.Transport{Proxy: http.ProxyURL(proxy), TLSClientConfig: &tls.Config{RootCAs: roots}, DisableKeepAlives: true}
		resp, err := (&http.Client{Transport: tr}).Get(fmt.Sprintf("%s/go/%d", target, i))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			bad++
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "tls ok\n" {
			bad++
		}
	}
	fmt.Println(bad)
}
"#;

#[tokio::test]
async fn an_idle_intercepted_connection_is_closed_after_client_idle_timeout() {
    let app_ca = TestCa::new("eddy intercept CA");
    let origin_ca = TestCa::new("origin CA");
    let origin = TlsOrigin::start(&origin_ca).await;
    let port = origin.addr.port();
    let intercept = intercept_table(&app_ca, "intercept-idle", "\"localhost\"");
    let proxy = eddy::start(
        "client_idle_timeout = \"1s\"\n",
        &format!(
            "[security]\nconnect_ports = [{port}]\n{intercept}\
             [[upstream]]\nmatch = \"localhost:{port}\"\nca_file = \"{}\"\n",
            origin_ca.write_pem("origin-idle").display()
        ),
    )
    .await;
    let target = format!("localhost:{port}");
    let tcp = tunnel(proxy.addr, &target).await;
    let connector = tokio_rustls::TlsConnector::from(app_ca.client_config());
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    // Nothing sent: eddy ends the connection (EOF or reset) well within
    // the generous limit.
    let mut buf = [0u8; 64];
    let ended = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf)).await;
    match ended {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("the idle intercepted connection is still open: {other:?}"),
    }
}

/// A listed host whose `[[upstream]]` connects in plain text is not
/// intercepted (the app asked for TLS): its tunnel stays raw.
#[tokio::test]
async fn a_listed_host_routed_to_plain_http_is_left_a_raw_tunnel() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = echo.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let ca = TestCa::new("eddy intercept CA");
    let intercept = intercept_table(&ca, "intercept-plain", "\"localhost\"");
    let proxy = eddy::start(
        "",
        &format!(
            "[security]\nconnect_ports = [{port}]\n{intercept}\
             [[upstream]]\nmatch = \"localhost\"\nconnect = \"http://127.0.0.1:9\"\n"
        ),
    )
    .await;
    let mut s = tunnel(proxy.addr, &format!("localhost:{port}")).await;
    s.write_all(b"not tls").await.expect("send");
    let mut buf = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("echoed in time")
        .expect("echoed");
    assert_eq!(&buf, b"not tls");
}

/// A client that opens an intercepted tunnel and sends no ClientHello is
/// let go after `client_header_timeout`.
#[tokio::test]
async fn a_silent_intercepted_tunnel_is_closed_after_client_header_timeout() {
    let ca = TestCa::new("eddy intercept CA");
    let proxy = eddy::start(
        "client_header_timeout = \"1s\"\n",
        &intercept_table(&ca, "intercept-silent", "\"a.test\""),
    )
    .await;
    let mut s = tunnel(proxy.addr, "a.test:443").await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("the silent tunnel is still open: {other:?}"),
    }
}
