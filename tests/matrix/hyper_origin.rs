//! The reuse matrix's hyper origin: HTTP/1.1 with keep-alive, reads every
//! request body in full and answers `METHOD LENGTH`, and counts the
//! connections it accepts.
//!
//! It prints `origin ADDR stats ADDR` and serves until killed; `GET` on
//! the stats address answers the accept count (on a socket of its own, so
//! asking does not count). Built by `cargo build --example
//! matrix-hyper-origin`; `tests/matrix/matrix.py` runs it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let origin = TcpListener::bind("127.0.0.1:0").await?;
    let stats = TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "origin {} stats {}",
        origin.local_addr()?,
        stats.local_addr()?
    );
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = stats.accept().await {
            let n = counted.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = format!("{n}\n");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    loop {
        let (tcp, _) = origin.accept().await?;
        accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let method = req.method().clone();
                let len = match req.into_body().collect().await {
                    Ok(body) => body.to_bytes().len(),
                    Err(_) => 0,
                };
                let text = format!("{method} {len}\n");
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
