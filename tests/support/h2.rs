//! An HTTP/2 origin (prior knowledge over TCP) that counts connections and
//! streams, and can send GOAWAY after a number of streams on a connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub struct H2Origin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub streams: Arc<AtomicUsize>,
    /// The most streams in flight at once, over all connections.
    pub max_in_flight: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Origin {
    pub async fn start(goaway_after: Option<usize>, delay: Duration) -> H2Origin {
        H2Origin::start_with(goaway_after, delay, None).await
    }

    /// As [`start`](H2Origin::start), announcing `max_streams` as its
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub async fn start_with(
        goaway_after: Option<usize>,
        delay: Duration,
        max_streams: Option<u32>,
    ) -> H2Origin {
        H2Origin::start_at("127.0.0.1:0", goaway_after, delay, max_streams).await
    }

    /// As [`start_with`](H2Origin::start_with), on `addr`.
    pub async fn start_at(
        addr: &str,
        goaway_after: Option<usize>,
        delay: Duration,
        max_streams: Option<u32>,
    ) -> H2Origin {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let streams = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (c, s, m) = (connections.clone(), streams.clone(), max_in_flight.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (s, m, f) = (s.clone(), m.clone(), in_flight.clone());
                tokio::spawn(async move {
                    let goaway = Arc::new(Notify::new());
                    let on_conn = Arc::new(AtomicUsize::new(0));
                    let g = goaway.clone();
                    let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                        let (s, m, f, g, on_conn) =
                            (s.clone(), m.clone(), f.clone(), g.clone(), on_conn.clone());
                        async move {
                            s.fetch_add(1, Ordering::SeqCst);
                            let n = on_conn.fetch_add(1, Ordering::SeqCst) + 1;
                            if Some(n) == goaway_after {
                                g.notify_one();
                            }
                            let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                            m.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            f.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                "h2 ok\n",
                            ))))
                        }
                    });
                    let mut builder =
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    if let Some(n) = max_streams {
                        builder.max_concurrent_streams(n);
                    }
                    let mut conn = pin!(builder.serve_connection(TokioIo::new(tcp), svc));
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = goaway.notified() => {
                            // GOAWAY: streams in flight finish, new ones are refused.
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        H2Origin {
            addr,
            connections,
            streams,
            max_in_flight,
            task,
        }
    }
}

/// An HTTP/2 origin written on the `h2` crate, which can refuse a stream
/// (`RST_STREAM` with `REFUSED_STREAM`): by RFC 9113 such a stream was not
/// processed, so a proxy may send it again whatever its method.
pub struct RefusingH2Origin {
    pub addr: SocketAddr,
    /// Paths of the requests processed (answered), in order.
    pub processed: Arc<std::sync::Mutex<Vec<String>>>,
    pub refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RefusingH2Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RefusingH2Origin {
    /// Refuses the first attempt of every `every`-th request (by the
    /// number its path ends in); answers the others, and the second
    /// attempts, with 200 after reading their bodies.
    pub async fn start(every: usize) -> RefusingH2Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let processed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let (p, r) = (processed.clone(), refused.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (p, r) = (p.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    let mut seen = std::collections::HashSet::new();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let path = req.uri().path().to_string();
                        let n: usize = path
                            .trim_start_matches(|c: char| !c.is_ascii_digit())
                            .parse()
                            .unwrap_or(1);
                        if n % every == 0 && seen.insert(path) {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            r.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        let p = p.clone();
                        tokio::spawn(async move {
                            let path = req.uri().path().to_string();
                            let mut body = req.into_body();
                            while let Some(Ok(data)) = body.data().await {
                                let _ = body.flow_control().release_capacity(data.len());
                            }
                            p.lock().expect("processed").push(path);
                            let resp = hyper::Response::new(());
                            if let Ok(mut send) = respond.send_response(resp, false) {
                                let _ = send.send_data(Bytes::from_static(b"processed\n"), true);
                            }
                        });
                    }
                });
            }
        });
        RefusingH2Origin {
            addr,
            processed,
            refused,
            task,
        }
    }
}
