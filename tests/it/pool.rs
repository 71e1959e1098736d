//! Pooling (docs/design.md, "The pool's rules"): few upstream connections
//! for many short-lived clients, a hard per-origin bound, and a bounded wait
//! queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::client::{get, get10};
use crate::support::eddy;
use crate::support::origin::{Behavior, Origin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_short_lived_clients_share_one_upstream_connection() {
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start("", "").await;
    let url = format!("{}/item", origin.url());
    for i in 0..500 {
        let r = if i % 2 == 0 {
            get10(proxy.addr, &url).await
        } else {
            get(proxy.addr, &url).await
        };
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(origin.stats.requests(), 500);
    assert_eq!(
        origin.stats.accepted(),
        1,
        "every request reused one connection"
    );
    let pools = proxy.pools().await;
    let o = &pools[origin.url().as_str()];
    assert_eq!(o["opened_total"], 1);
    assert_eq!(o["reused_total"], 499);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_never_exceed_the_per_host_bound() {
    let origin = Origin::start(Behavior {
        delay: Duration::from_millis(5),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[pool]\nmax_connections_per_host = 4\n").await;
    let url = Arc::new(format!("{}/", origin.url()));
    let mut clients = Vec::new();
    for c in 0..50 {
        let url = url.clone();
        let addr = proxy.addr;
        clients.push(tokio::spawn(async move {
            for i in 0..8 {
                let r = get(addr, &url).await;
                assert_eq!(r.status, 200, "client {c} request {i}: {}", r.text());
            }
        }));
    }
    for c in clients {
        c.await.expect("client task");
    }
    assert_eq!(origin.stats.requests(), 400);
    assert!(
        origin.stats.max_open() <= 4,
        "max open {}",
        origin.stats.max_open()
    );
    assert!(
        origin.stats.accepted() <= 4,
        "accepted {}",
        origin.stats.accepted()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_connection_limit_reached() {
    let origin = Origin::start(Behavior {
        delay: Duration::from_millis(800),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start(
        "",
        "[pool]\nmax_connections_per_host = 1\nmax_pending_per_host = 2\n",
    )
    .await;
    let url = Arc::new(format!("{}/", origin.url()));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move { get(addr, &url).await }));
    }
    let mut ok = 0;
    let mut rejected = 0;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            200 => ok += 1,
            503 => {
                assert_eq!(r.proxy_error().as_deref(), Some("connection_limit_reached"));
                rejected += 1;
            }
            s => panic!("unexpected status {s}: {}", r.text()),
        }
    }
    assert_eq!(
        (ok, rejected),
        (3, 3),
        "one in flight and two waiting are served"
    );
    assert_eq!(origin.stats.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_gets_503_after_pending_timeout() {
    let origin = Origin::start(Behavior {
        delay: Duration::from_millis(1500),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start(
        "",
        "[pool]\nmax_connections_per_host = 1\npending_timeout = \"200ms\"\n",
    )
    .await;
    let url = format!("{}/", origin.url());
    let first = {
        let url = url.clone();
        let addr = proxy.addr;
        tokio::spawn(async move { get(addr, &url).await })
    };
    // Wait until the first request holds the only connection.
    origin
        .wait_for("first request at the origin", Duration::from_secs(5), |s| {
            s.requests() == 1
        })
        .await;
    let started = Instant::now();
    let second = get(proxy.addr, &url).await;
    assert_eq!(second.status, 503, "{}", second.text());
    assert_eq!(
        second.proxy_error().as_deref(),
        Some("connection_limit_reached")
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(first.await.expect("first").status, 200);
    assert_eq!(proxy.pools_sum("pending").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_connection_goes_to_the_oldest_waiter() {
    // With one connection and a queue, every request is served on the same
    // upstream connection (hand-off, not a new connect per waiter), in the
    // order the waiters arrived.
    let origin = Origin::start(Behavior {
        delay: Duration::from_millis(300),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "[pool]\nmax_connections_per_host = 1\n").await;
    let key = origin.url();
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        let url = format!("{}/{i}", origin.url());
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move { get(addr, &url).await }));
        // The next one arrives only once this one has: it is at the origin
        // or in the queue (the sum can only reach i + 1 once it has).
        let arrived = (i + 1) as usize;
        crate::support::eventually(
            "the request has arrived",
            Duration::from_secs(5),
            || async {
                let pending = proxy.pools().await[key.as_str()]["pending"]
                    .as_u64()
                    .unwrap_or(0) as usize;
                origin.stats.requests() + pending == arrived
            },
        )
        .await;
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").status, 200);
    }
    assert_eq!(origin.stats.accepted(), 1);
    assert_eq!(origin.stats.per_conn(), vec![6]);
    let order: Vec<String> = origin
        .stats
        .recorded()
        .iter()
        .map(|r| r.head.split_whitespace().nth(1).unwrap_or("").to_string())
        .collect();
    assert_eq!(
        order,
        ["/0", "/1", "/2", "/3", "/4", "/5"],
        "served in arrival order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_recently_used_idle_connection_is_reused_first() {
    // Slow enough that the two first requests overlap however late the
    // second is scheduled.
    let origin = Origin::start(Behavior {
        delay: Duration::from_millis(600),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("", "").await;
    // Two at once: two connections.
    let url = Arc::new(origin.url());
    let both: Vec<_> = (0..2)
        .map(|_| {
            let (addr, url) = (proxy.addr, url.clone());
            tokio::spawn(async move { get(addr, &url).await })
        })
        .collect();
    for t in both {
        assert_eq!(t.await.expect("task").status, 200);
    }
    assert_eq!(origin.stats.accepted(), 2);
    crate::support::eventually("both idle", Duration::from_secs(5), || async {
        proxy.pools_sum("idle").await == 2
    })
    .await;
    // One at a time: each finds the one the previous request released, so
    // one connection does all the work and the other only ages (a FIFO
    // would alternate between them).
    for i in 0..6 {
        assert_eq!(get(proxy.addr, &format!("{url}/{i}")).await.status, 200);
        crate::support::eventually("released", Duration::from_secs(5), || async {
            proxy.pools_sum("idle").await == 2
        })
        .await;
    }
    let conns: Vec<usize> = origin.stats.recorded()[2..]
        .iter()
        .map(|r| r.conn)
        .collect();
    assert!(
        conns.windows(2).all(|w| w[0] == w[1]),
        "sequential requests moved between connections: {conns:?}"
    );
    let per_conn = origin.stats.per_conn();
    assert!(
        per_conn.contains(&1) && per_conn.contains(&7),
        "{per_conn:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_request_and_an_alias_share_one_bounded_pool() {
    let origin = Origin::start(Behavior {
        delay: Duration::from_millis(20),
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start(
        "",
        &format!(
            "[[upstream]]\nmatch = \"alias.test\"\nconnect = \"{}\"\n[upstream.pool]\nmax_connections_per_host = 2\n",
            origin.url()
        ),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            "http://alias.test/".to_string()
        } else {
            format!("{}/", origin.url())
        };
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move { get(addr, &url).await }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").status, 200);
    }
    assert!(
        origin.stats.max_open() <= 2,
        "max open {}",
        origin.stats.max_open()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_releases_its_upstream_connection() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start(Behavior::default()).await;
    let proxy = eddy::start(
        "client_idle_timeout = \"400ms\"\n",
        "[pool]\nmax_connections_per_host = 1\npending_timeout = \"10s\"\n",
    )
    .await;
    // More than client_body_buffer arrives, so the body streams on the
    // only connection; then the client goes silent.
    let head = format!(
        "POST {}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 204800\r\n\r\n",
        origin.url()
    );
    let mut stalled = crate::support::client::open(proxy.addr, head.as_bytes()).await;
    stalled
        .write_all(&vec![b'u'; 100 * 1024])
        .await
        .expect("half the body");
    origin
        .wait_for(
            "the upload holds the connection",
            Duration::from_secs(5),
            |s| s.accepted() == 1,
        )
        .await;
    // The stalled upload holds the only connection until its body times
    // out; then the next request gets through.
    let r = get(proxy.addr, &format!("{}/next", origin.url())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The stalled client itself got the 400 its silence earns.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut answer),
    )
    .await;
    assert!(read.is_ok(), "the stalled client was left hanging");
    let answer = crate::support::client::parse(&answer).expect("an answer");
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert_eq!(answer.proxy_error().as_deref(), Some("http_request_error"));
    assert_eq!(
        proxy.closes(&origin.url(), "not_drained").await,
        1.0,
        "the half-sent upload's connection"
    );
    assert_eq!(proxy.closes(&origin.url(), "error").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_request_bodies_are_bounded_by_the_body_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start(Behavior {
        echo: true,
        ..Behavior::default()
    })
    .await;
    let proxy = eddy::start("client_idle_timeout = \"1s\"\n", "").await;
    // A PUT (idempotent, so buffered for a replay) that trickles a byte
    // every 200 ms: slow but alive, so it is served whole.
    let url = format!("{}/trickle", origin.url());
    let head =
        format!("PUT {url} HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\n");
    let mut s = crate::support::client::open(proxy.addr, head.as_bytes()).await;
    for b in b"trickled" {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(&[*b]).await.expect("byte");
    }
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    let r = crate::support::client::parse(&buf).expect("a response");
    assert_eq!((r.status, r.text().as_str()), (200, "trickled"));
    // The same PUT stopping halfway: 400 after the idle timeout, and the
    // origin never sees it.
    let head = format!("PUT {url}/stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\ntric");
    let mut s = crate::support::client::open(proxy.addr, head.as_bytes()).await;
    let started = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("cut off")
        .ok();
    let waited = started.elapsed();
    let r = crate::support::client::parse(&buf).expect("a response");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("http_request_error"));
    assert!(waited >= Duration::from_millis(800), "{waited:?}");
    assert!(origin
        .stats
        .recorded_starting("PUT /trickle/stalled")
        .is_empty());
    assert_eq!(origin.stats.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarming_never_evicts_to_stay_warm() {
    let warm = Origin::start(Behavior::default()).await;
    let other = Origin::start(Behavior::default()).await;
    let proxy = eddy::start(
        "",
        &format!(
            "[pool]\nmax_idle_total = 2\n[[upstream]]\nmatch = \"{}\"\n[upstream.pool]\nmin_idle_per_host = 2\n",
            warm.addr
        ),
    )
    .await;
    warm.wait_for("prewarmed", Duration::from_secs(5), |s| s.open() == 2)
        .await;
    // Another origin's idle connection pushes one warm connection out; the
    // prewarmer must not fight back with a connect/close loop.
    assert_eq!(get(proxy.addr, &other.url()).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        warm.stats.accepted() <= 3,
        "connect storm: {} accepts",
        warm.stats.accepted()
    );
    assert!(proxy.pools_sum("idle").await <= 2);
}

/// `pool.source_address`: upstream connections come from that address (the
/// origin sees it), and an origin of the other family cannot be reached
/// from it: a clear 502, nothing dialled.
#[tokio::test]
async fn upstream_connections_come_from_the_source_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            seen.lock().expect("peers").push(peer.ip());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0
                        || s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let proxy = eddy::start("", "[pool]\nsource_address = \"127.0.0.5\"\n").await;
    for _ in 0..3 {
        let r = get(proxy.addr, &format!("http://127.0.0.1:{port}/")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let seen: Vec<std::net::IpAddr> = peers.lock().expect("peers").clone();
    assert_eq!(seen.len(), 1, "one pooled connection: {seen:?}");
    assert_eq!(seen[0].to_string(), "127.0.0.5");

    let r = get(proxy.addr, "http://[::1]:9/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.proxy_error().as_deref(), Some("connection_refused"));
    assert!(r.text().contains("source_address"), "{}", r.text());
}
