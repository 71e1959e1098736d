//! CONNECT tunnels for `HTTPS_PROXY` clients.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::eddy;
use crate::support::eventually;
use crate::support::origin::find;

/// A TCP server that upper-cases what it reads until EOF, then closes.
async fn shouting_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let up = buf[..n].to_ascii_uppercase();
                            if s.write_all(&up).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"|BYE").await;
            });
        }
    });
    addr
}

/// Sends `CONNECT target` and returns the stream and the response head.
pub(crate) async fn connect(proxy: std::net::SocketAddr, target: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while find(&head, b"\r\n\r\n").is_none() {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_relays_both_ways_and_passes_on_a_half_close() {
    let server = shouting_server().await;
    let proxy = eddy::start(
        "",
        &format!("[security]\nconnect_ports = [{}]\n", server.port()),
    )
    .await;
    let (mut s, head) = connect(proxy.addr, &server.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"hello through eddy").await.expect("write");
    let mut got = vec![0u8; 18];
    s.read_exact(&mut got).await.expect("echo");
    assert_eq!(&got, b"HELLO THROUGH EDDY");
    // Half-close: the server sees EOF, answers, and closes.
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("closed")
        .expect("read");
    assert_eq!(rest, b"|BYE");
    eventually(
        "the tunnel is counted and closed",
        Duration::from_secs(5),
        || async {
            proxy
                .metric("eddy_tunnels_total", &[("listener", "proxy")])
                .await
                == 1.0
                && proxy
                    .metric("eddy_tunnels_open", &[("listener", "proxy")])
                    .await
                    == 0.0
                && proxy.eddy.client_connections() == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_go_only_to_connect_ports_and_report_failures() {
    let server = shouting_server().await;
    let closed_port = crate::support::closed_port().port();
    let proxy = eddy::start(
        "",
        &format!("[security]\nconnect_ports = [443, {closed_port}]\n"),
    )
    .await;
    // A port not in connect_ports.
    let (_s, head) = connect(proxy.addr, &server.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-status: eddy; error=http_request_denied"),
        "{head}"
    );
    // An allowed port where nothing listens: 502 before any 200.
    let (_s, head) = connect(proxy.addr, &format!("127.0.0.1:{closed_port}")).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("error=connection_refused"),
        "{head}"
    );
    assert_eq!(
        proxy
            .metric("eddy_tunnels_total", &[("listener", "proxy")])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_close_from_the_server_side_is_passed_on_too() {
    // The server speaks first, shuts down its writing half, and keeps
    // reading: the client must see EOF and still be able to send.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let _ = s.write_all(b"server done").await;
        let _ = s.shutdown().await;
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        let _ = tx.send(got);
    });
    let proxy = eddy::start(
        "",
        &format!("[security]\nconnect_ports = [{}]\n", server.port()),
    )
    .await;
    let (mut s, head) = connect(proxy.addr, &server.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("EOF from the server's half-close")
        .expect("read");
    assert_eq!(got, b"server done");
    s.write_all(b"client still talking")
        .await
        .expect("write after EOF");
    s.shutdown().await.expect("shutdown");
    let heard = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the server hears the client")
        .expect("server task");
    assert_eq!(heard, b"client still talking");
    // A tunnel is never a pooled connection.
    let pools = proxy.pools().await;
    assert!(pools.as_object().is_some_and(|o| o.is_empty()), "{pools}");
}

/// An open tunnel is an upstream connection like any other to an operator:
/// `/pools` lists it under its destination and the gauge counts it in use,
/// until it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_shows_in_pools_and_the_gauges() {
    let server = shouting_server().await;
    let proxy = eddy::start(
        "",
        &format!("[security]\nconnect_ports = [{}]\n", server.port()),
    )
    .await;
    let destination = format!("tcp://{server}");
    let (mut s, head) = connect(proxy.addr, &server.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"x").await.expect("write");
    let mut echo = [0u8; 1];
    s.read_exact(&mut echo).await.expect("echo");
    let pools = proxy.pools().await;
    let tunnel = &pools[&destination];
    assert_eq!(tunnel["protocol"], "tunnel", "{pools}");
    assert_eq!(tunnel["in_use"], 1, "{pools}");
    assert_eq!(
        proxy
            .metric(
                "eddy_upstream_connections",
                &[("upstream", &destination), ("state", "in_use")]
            )
            .await,
        1.0
    );
    drop(s);
    eventually(
        "the closed tunnel leaves /pools",
        Duration::from_secs(10),
        || async { proxy.pools().await.get(&destination).is_none() },
    )
    .await;
    assert_eq!(
        proxy
            .metric(
                "eddy_upstream_connections",
                &[("upstream", &destination), ("state", "in_use")]
            )
            .await,
        0.0
    );
}
