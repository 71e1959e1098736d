//! A bounded fault-injection soak (well under 3 minutes): warm-up rounds
//! and identical measured rounds of traffic through origins that reset,
//! stall, close silently, send truncated, oversized or malformed responses,
//! with clients that abort at every stage. Afterwards the eddy process (run
//! as its own binary, so its descriptors and memory are its own) is back to
//! its idle file-descriptor count, its pool gauges are zero, and further
//! rounds did not grow its memory (by a fitted growth per round).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::parse;
use crate::support::eventually;
use crate::support::origin::{Behavior, Origin};

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What one client does.
#[derive(Clone, Copy)]
enum Client {
    Normal,
    /// A POST with a small body.
    Post,
    AbortAfterConnect,
    AbortMidHead,
    AbortAfterHead,
    /// Declares a 64 KiB body, sends 100 bytes of it, and leaves.
    AbortMidBody,
    AbortMidResponse,
    Garbage,
}

/// Runs one client; panics unless it saw a well-formed response or a
/// clean close.
async fn run_client(proxy: SocketAddr, url: String, kind: Client) {
    let Ok(mut s) = TcpStream::connect(proxy).await else {
        panic!("eddy refused a connection");
    };
    match kind {
        Client::Garbage => {
            let _ = s.write_all(b"\x16\x03\x01 not http at all\r\n\r\n").await;
        }
        Client::AbortAfterConnect => return,
        Client::AbortMidHead => {
            let _ = s
                .write_all(format!("GET {url} HTTP/1.1\r\nHo").as_bytes())
                .await;
            return;
        }
        Client::AbortMidBody => {
            let head = format!("PUT {url} HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n");
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&[b'b'; 100]).await;
            return;
        }
        Client::Post => {
            let req = format!(
                "POST {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 300\r\n\r\n{}",
                "p".repeat(300)
            );
            if s.write_all(req.as_bytes()).await.is_err() {
                return;
            }
        }
        _ => {
            let req = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).await.is_err() {
                return;
            }
        }
    }
    match kind {
        Client::AbortAfterHead => return,
        Client::AbortMidResponse => {
            let mut some = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut some)).await;
            return;
        }
        _ => {}
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    let Ok(read) = read else {
        panic!("a client waited more than 20 s");
    };
    if let Err(e) = read {
        panic!(
            "not a clean close ({e}) after {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        );
    }
    if buf.is_empty() {
        return; // a clean close
    }
    let text = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 "),
        "not an HTTP response: {text:?}"
    );
    // A truncated upstream body may cut the response short; the head must
    // still be whole.
    assert!(
        parse(&buf).is_some() || buf.windows(4).any(|w| w == b"\r\n\r\n"),
        "{text:?}"
    );
}

async fn round(proxy: SocketAddr, origins: &[String]) {
    let mut tasks = Vec::new();
    let kinds = [
        Client::Normal,
        Client::Post,
        Client::Normal,
        Client::AbortAfterConnect,
        Client::AbortMidHead,
        Client::AbortAfterHead,
        Client::AbortMidBody,
        Client::AbortMidResponse,
        Client::Garbage,
    ];
    let origins = Arc::new(origins.to_vec());
    for worker in 0..20usize {
        let origins = origins.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..75usize {
                let n = worker * 75 + i;
                let url = format!("{}/{n}", origins[n % origins.len()]);
                run_client(proxy, url, kinds[(n / origins.len()) % kinds.len()]).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_faults_leaks_nothing() {
    // The bound: the whole soak in under 3 minutes.
    tokio::time::timeout(Duration::from_secs(170), soak())
        .await
        .expect("the soak finishes within 170 s");
}

async fn soak() {
    let behaviors = [
        Behavior::default(),
        Behavior {
            reset_request: Some(1),
            ..Behavior::default()
        },
        Behavior {
            never_respond: true,
            ..Behavior::default()
        },
        Behavior {
            idle_close: Some(Duration::from_millis(50)),
            ..Behavior::default()
        },
        Behavior {
            raw_response: Some(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"),
            connection_close: true,
            ..Behavior::default()
        },
        Behavior {
            body_bytes: Some(512 * 1024),
            ..Behavior::default()
        },
        Behavior {
            raw_response: Some(b"HTTP/1.1 2x0 Nope\r\n\r\n"),
            ..Behavior::default()
        },
        Behavior {
            slow_body: Some((20, 512, Duration::from_millis(20))),
            ..Behavior::default()
        },
        // More body than Content-Length said, on a kept-alive connection:
        // the extra bytes must never be read as the next response.
        Behavior {
            raw_response: Some(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokSURPLUS BYTES\r\n\r\n",
            ),
            ..Behavior::default()
        },
    ];
    let mut origins = Vec::new();
    for b in behaviors {
        origins.push(Origin::start(b).await);
    }
    let urls: Vec<String> = origins.iter().map(Origin::url).collect();

    let config = "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\naccess_log = false\n\
                  [[listener]]\nlisten = \"127.0.0.1:0\"\nclient_idle_timeout = \"2s\"\n\
                  [pool]\nidle_timeout = \"1s\"\nresponse_header_timeout = \"500ms\"\nconnect_timeout = \"500ms\"\n\
                  [drain]\ntimeout = \"200ms\"\n";
    // eddy's allocator (mimalloc) returns freed pages after a 1 s delay by
    // default; without the delay, RSS right after a round is live memory,
    // not allocator timing.
    let (mut child, rx) = crate::cli::spawn_eddy(config, "soak", &[("MIMALLOC_PURGE_DELAY", "0")]);
    let pid = child.id();
    let (proxy, admin) = crate::cli::addresses(&rx);
    let baseline = fds(pid);

    let settle = || async move {
        eventually(
            "eddy is idle again",
            Duration::from_secs(30),
            || async move {
                let r = crate::support::eddy::admin_get(admin, "/metrics").await;
                let busy = r.text().lines().any(|l| {
                    (l.starts_with("eddy_upstream_connections{")
                        || l.starts_with("eddy_pool_pending{"))
                        && !l.ends_with(" 0")
                });
                // The admin request itself holds one descriptor.
                !busy && fds(pid) <= baseline + 5
            },
        )
        .await;
    };

    // A warm-up round: one-time allocations (metric series, buffers,
    // thread arenas) are not growth.
    round(proxy, &urls).await;
    settle().await;
    round(proxy, &urls).await;
    settle().await;
    // RSS after a round swings by up to ~15 % either way from one round to
    // the next (mimalloc's thread caches keep some of each round's peak;
    // 16 rounds measured here went 47, 45, 41, 44, 38, 35, ..., 34 MiB with
    // no trend), so the difference of two single rounds cannot resolve 5 %.
    // A leak adds the same amount every round, so the measure is the
    // growth per round over ten identical rounds, fitted by least squares:
    // it must stay under 5 % of the mean. Its noise is about 1 % of the
    // mean. Tried: a deliberate leak of 4 KiB per proxied request fails it
    // (6.0 % a round); 3 KiB passes just under (4.6 %).
    let mut rss = Vec::new();
    for _ in 0..10 {
        round(proxy, &urls).await;
        settle().await;
        rss.push(rss_kib(pid) as f64);
    }
    let n = rss.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean = rss.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in rss.iter().enumerate() {
        let dx = i as f64 - mean_x;
        sxy += dx * (y - mean);
        sxx += dx * dx;
    }
    let growth = sxy / sxx;
    eprintln!(
        "soak RSS after each round (KiB): {rss:?}; growth {growth:.0} KiB a round ({:.1} %)",
        growth / mean * 100.0
    );
    assert!(
        growth < 0.05 * mean,
        "RSS grows by {growth:.0} KiB a round, over 5 % of {mean:.0} KiB: {rss:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
