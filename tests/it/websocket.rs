//! `Upgrade` (WebSocket) requests get a dedicated upstream connection, relayed
//! both ways after 101, never returned to the pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::client::{get, open};
use crate::support::eddy;
use crate::support::eventually;
use crate::support::origin::find;

/// Answers an upgrade with 101 and then echoes bytes; answers anything
/// else with a plain 200 and closes. Counts connections accepted, and
/// upgraded ones still open.
///
/// After the client's EOF an upgraded connection stays open, as a
/// WebSocket server waiting for a close frame would, writing a byte every
/// 50 ms: it only counts as closed once eddy has closed its socket (a
/// write fails), not merely shut down its writing half.
async fn websocket_echo() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let upgraded = Arc::new(AtomicUsize::new(0));
    let (count, open) = (accepted.clone(), upgraded.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let open = open.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while find(&head, b"\r\n\r\n").is_none() {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !text.contains("upgrade: websocket") || !text.contains("sec-websocket-key: abc")
                {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nplain").await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: xyz\r\n\r\n")
                    .await;
                open.fetch_add(1, Ordering::SeqCst);
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                // Bounded: 10 s of keep-alive bytes at most.
                for _ in 0..200 {
                    if s.write_all(b".").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, upgraded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_exchange_is_relayed_on_a_connection_of_its_own() {
    let (origin, accepted, upgraded) = websocket_echo().await;
    let proxy = eddy::start("", "").await;
    let req = format!(
        "GET http://{origin}/chat HTTP/1.1\r\nHost: {origin}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut s = open(proxy.addr, req.as_bytes()).await;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while find(&head, b"\r\n\r\n").is_none() {
        assert_eq!(s.read(&mut byte).await.expect("read"), 1, "closed early");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("sec-websocket-accept: xyz"), "{head}");
    // A masked WebSocket text frame ("hi"), and arbitrary bytes: all relayed.
    let frame = [
        0x81u8,
        0x82,
        1,
        2,
        3,
        4,
        b'h' ^ 1,
        b'i' ^ 2,
        0xff,
        0x00,
        b'\r',
        b'\n',
    ];
    s.write_all(&frame).await.expect("frame");
    let mut echo = vec![0u8; frame.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(echo, frame);
    assert_eq!(upgraded.load(Ordering::SeqCst), 1);
    drop(s);
    // The client's close closes the upstream connection too.
    eventually(
        "the upstream side is closed",
        Duration::from_secs(5),
        || async { upgraded.load(Ordering::SeqCst) == 0 },
    )
    .await;
    // The upgraded connection is not reused: a plain request opens another.
    let r = get(proxy.addr, &format!("http://{origin}/plain")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "plain");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    eventually("nothing left open", Duration::from_secs(5), || async {
        proxy.eddy.client_connections() == 0 && proxy.pools_sum("in_use").await == 0
    })
    .await;
}
