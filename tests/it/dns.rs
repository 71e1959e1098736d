//! Origins that move, dual-stack origins and local ports that run out,
//! each in namespaces of its own: a mount namespace for a private
//! `/etc/hosts`, a network namespace for a blackholed IPv6 route or a tiny
//! local port range. Nothing here touches the host's own files or network.
//!
//! Namespaces need root. Each test runs its body in a child process of
//! this test binary, started under `unshare`; without root it says so and
//! passes, unless `EDDY_REQUIRE_NAMESPACES` is set (CI sets it, and runs as
//! root), so a CI that lost root fails instead of skipping.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::client;
use crate::support::eddy;
use crate::support::origin::{Behavior, Origin};

const CHILD: &str = "EDDY_NAMESPACE_CHILD";

/// In the parent: runs test `name` again in a child process inside new
/// mount and network namespaces, checks it passed, and returns false. In
/// that child: runs `setup` (shell commands) and returns true, so the test
/// body goes on there.
fn in_namespaces(name: &str, setup: &[&str]) -> bool {
    if std::env::var(CHILD).as_deref() == Ok(name) {
        for cmd in setup {
            let out = Command::new("sh")
                .arg("-ec")
                .arg(cmd)
                .output()
                .expect("sh runs");
            assert!(
                out.status.success(),
                "namespace setup `{cmd}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        return true;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var_os("EDDY_REQUIRE_NAMESPACES").is_none(),
            "{name} needs root (network and mount namespaces)"
        );
        eprintln!("skipped {name}: needs root for network and mount namespaces");
        return false;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private"])
        .arg(&exe)
        .args([
            "--exact",
            &format!("dns::{name}"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, name)
        .output()
        .expect("unshare runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{name} in its namespaces failed:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{name} did not run in its namespaces:\n{text}"
    );
    false
}

/// A private `/etc/hosts` with `contents` (bind-mounted in the child's
/// mount namespace); writing the returned path changes it.
fn private_hosts(name: &str) -> (String, String) {
    let path = std::env::temp_dir()
        .join(format!("eddy-hosts-{name}-{}", std::process::id()))
        .to_string_lossy()
        .into_owned();
    let cmd = format!("touch {path} && mount --bind {path} /etc/hosts");
    (path, cmd)
}

fn write_hosts(path: &str, contents: &str) {
    // In place: the bind mount follows the inode.
    std::fs::write(path, contents).expect("write the private hosts file");
}

/// Sends `GET url` through eddy on a new client connection; the status.
async fn get_status(proxy: SocketAddr, url: &str) -> u16 {
    client::get(proxy, url).await.status
}

/// Acceptance 1: a name moves from 127.0.0.2 (A) to 127.0.0.3 (B) under
/// steady traffic with `dns_refresh = "1s"`. New requests reach B within
/// 3 s, eddy closes A's connections within 5 s, no request fails.
#[tokio::test]
async fn the_pool_follows_a_name_that_moves() {
    let name = "the_pool_follows_a_name_that_moves";
    let (hosts, mount) = private_hosts(name);
    if !in_namespaces(name, &["ip link set lo up", &mount]) {
        return;
    }
    let a = Origin::start_on("127.0.0.2:0", Behavior::default()).await;
    let port = a.addr.port();
    let b = Origin::start_on(&format!("127.0.0.3:{port}"), Behavior::default()).await;
    write_hosts(&hosts, "127.0.0.2 moving.test\n");
    let proxy = eddy::start("", "[pool]\ndns_refresh = \"1s\"\n").await;
    let url = format!("http://moving.test:{port}/");

    // Steady traffic: four clients, a new connection each request.
    let failed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    let addr = proxy.addr;
    for _ in 0..4 {
        let (url, failed, sent, stop) = (url.clone(), failed.clone(), sent.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            // Bounded: at most 20,000 requests per client.
            for _ in 0..20_000 {
                let status = tokio::select! {
                    s = get_status(addr, &url) => s,
                    _ = stop.notified() => return,
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    a.wait_for("traffic reaches A", Duration::from_secs(10), |s| {
        s.requests() >= 40
    })
    .await;
    assert_eq!(b.stats.requests(), 0);

    write_hosts(&hosts, "127.0.0.3 moving.test\n");
    b.wait_for("new requests reach B", Duration::from_secs(3), |s| {
        s.requests() > 0
    })
    .await;
    a.wait_for(
        "eddy closes its connections to A",
        Duration::from_secs(5),
        |s| s.open() == 0,
    )
    .await;
    // From now on every request reaches B.
    let a_before = a.stats.requests();
    let b_before = b.stats.requests();
    b.wait_for("more requests reach B", Duration::from_secs(5), |s| {
        s.requests() >= b_before + 40
    })
    .await;
    stop.notify_waiters();
    for c in clients {
        c.abort();
    }
    assert_eq!(
        a.stats.requests(),
        a_before,
        "a request reached A after the switch"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the switch"
    );
    assert!(sent.load(Ordering::Relaxed) > 80);
    let upstream = format!("http://moving.test:{port}");
    assert!(proxy.closes(&upstream, "address_gone").await >= 1.0);
    // /pools lists the origin's current address and its connections.
    let pools = proxy.pools().await;
    let addresses = pools[&upstream]["addresses"]
        .as_array()
        .expect("addresses")
        .clone();
    assert_eq!(addresses[0]["address"], "127.0.0.3", "{addresses:?}");
    assert_eq!(addresses[0]["current"], true);
    assert!(
        addresses.iter().all(|a| a["address"] != "127.0.0.2"),
        "{addresses:?}"
    );
}

/// Acceptance 2: a name with an IPv6 address whose packets vanish (a
/// static neighbour on a veth pair nobody answers on) and a working IPv4
/// one. The request succeeds after Happy Eyeballs' attempt delay, far
/// below `connect_timeout`.
#[tokio::test]
async fn a_broken_ipv6_path_costs_a_delay_not_a_timeout() {
    let name = "a_broken_ipv6_path_costs_a_delay_not_a_timeout";
    let (hosts, mount) = private_hosts(name);
    let setup = [
        "ip link set lo up",
        "ip link add v0 type veth peer name v1",
        "ip link set v0 up",
        "ip link set v1 up",
        "ip -6 addr add 2001:db8::2/64 dev v0 nodad",
        "ip -6 route add 2001:db8:dead::/64 dev v0",
        "ip -6 neigh add 2001:db8:dead::1 lladdr 02:00:00:00:00:01 dev v0 nud permanent",
        &mount,
    ];
    if !in_namespaces(name, &setup) {
        return;
    }
    let origin = Origin::start(Behavior::default()).await;
    let port = origin.addr.port();
    write_hosts(&hosts, "2001:db8:dead::1 dual.test\n127.0.0.1 dual.test\n");
    let proxy = eddy::start("", "[pool]\nconnect_timeout = \"10s\"\n").await;
    let url = format!("http://dual.test:{port}/");
    let started = std::time::Instant::now();
    let r = client::get(proxy.addr, &url).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        took < Duration::from_secs(1),
        "the broken IPv6 path cost {took:?}"
    );
    assert_eq!(origin.stats.requests(), 1);
    // Both addresses were known; the connection is to the IPv4 one.
    let pools = proxy.pools().await;
    let addresses = pools[&format!("http://dual.test:{port}")]["addresses"]
        .as_array()
        .expect("addresses")
        .clone();
    let of = |ip: &str| {
        addresses
            .iter()
            .find(|a| a["address"] == ip)
            .unwrap_or_else(|| panic!("{ip} not in {addresses:?}"))["connections"]
            .as_u64()
    };
    assert_eq!(of("2001:db8:dead::1"), Some(0));
    assert_eq!(of("127.0.0.1"), Some(1));
}

/// Acceptance 3: ten local ports, 50 concurrent requests to one origin
/// with a bound of 64. Connects beyond the ports fail with EADDRNOTAVAIL;
/// those requests wait for pooled connections, and all succeed. The
/// clients reach eddy over a Unix socket, so they take no local ports.
#[tokio::test]
async fn requests_wait_for_pooled_connections_when_local_ports_run_out() {
    let name = "requests_wait_for_pooled_connections_when_local_ports_run_out";
    if !in_namespaces(name, &["ip link set lo up"]) {
        return;
    }
    let origin = Origin::start(Behavior {
        delay: Duration::from_millis(50),
        ..Behavior::default()
    })
    .await;
    let socket = std::env::temp_dir().join(format!("eddy-ports-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let proxy = eddy::start(
        "",
        &format!(
            "[pool]\nmax_connections_per_host = 64\npending_timeout = \"20s\"\n\
             [[listener]]\nname = \"app\"\nlisten = \"unix:{}\"\n",
            socket.display()
        ),
    )
    .await;
    // Every listening socket is bound; now the range shrinks to 10 ports.
    std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40009")
        .expect("set the namespace's local port range");
    let target = origin.addr;
    let mut requests = Vec::new();
    for i in 0..50 {
        let socket = socket.clone();
        requests.push(tokio::spawn(async move {
            let mut s = tokio::net::UnixStream::connect(&socket)
                .await
                .expect("connect to eddy's socket");
            let req = format!(
                "GET http://{target}/{i} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.expect("send");
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.expect("read");
            client::parse(&buf).map(|r| (r.status, r.text()))
        }));
    }
    for r in requests {
        let (status, text) = r.await.expect("task").expect("a response");
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(origin.stats.requests(), 50);
    assert!(
        origin.stats.accepted() <= 10,
        "{} connections with 10 local ports",
        origin.stats.accepted()
    );
    let upstream = format!("http://{target}");
    let shortages = proxy
        .metric(
            "eddy_errors_total",
            &[("upstream", &upstream), ("error", "proxy_internal_error")],
        )
        .await;
    assert!(shortages >= 1.0, "no port shortage counted");
}

/// The same move for an HTTP/2 origin: its one connection is replaced by
/// one to the new address, and requests follow.
#[tokio::test]
async fn an_http2_origin_follows_a_name_that_moves() {
    use crate::support::h2::H2Origin;
    let name = "an_http2_origin_follows_a_name_that_moves";
    let (hosts, mount) = private_hosts(name);
    if !in_namespaces(name, &["ip link set lo up", &mount]) {
        return;
    }
    let a = H2Origin::start_at("127.0.0.2:0", None, Duration::ZERO, None).await;
    let port = a.addr.port();
    let b = H2Origin::start_at(&format!("127.0.0.3:{port}"), None, Duration::ZERO, None).await;
    write_hosts(&hosts, "127.0.0.2 moving.test\n");
    let proxy = eddy::start(
        "",
        &format!(
            "[[upstream]]\nmatch = \"api.test\"\nconnect = \"http://moving.test:{port}\"\n\
             http2 = true\n[upstream.pool]\ndns_refresh = \"1s\"\n"
        ),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(get_status(proxy.addr, "http://api.test/").await, 200);
    }
    assert_eq!(a.streams.load(Ordering::SeqCst), 5);
    write_hosts(&hosts, "127.0.0.3 moving.test\n");
    // Requests keep going; within a few seconds they reach B.
    let addr = proxy.addr;
    let b_streams = b.streams.clone();
    crate::support::eventually("requests reach B", Duration::from_secs(5), || {
        let b_streams = b_streams.clone();
        async move {
            assert_eq!(get_status(addr, "http://api.test/").await, 200);
            b_streams.load(Ordering::SeqCst) > 0
        }
    })
    .await;
    let upstream = format!("http://moving.test:{port}");
    assert_eq!(proxy.closes(&upstream, "address_gone").await, 1.0);
}
