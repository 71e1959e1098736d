//! Test support: origins that count and misbehave on demand, a raw HTTP/1
//! client, and a harness that runs eddy in-process on `127.0.0.1:0`.
#![allow(dead_code, unreachable_pub)]

pub mod client;
pub mod eddy;
pub mod h2;
pub mod origin;
pub mod tls;

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns true, failing the test after `limit`.
/// For conditions that no event announces (the pool's own timers).
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A listener whose backlog is full: connects to it never complete, which
/// is how tests make a connect time out. Dropping it frees the port.
pub struct StalledListener {
    pub addr: std::net::SocketAddr,
    _socket: socket2::Socket,
    _fillers: Vec<tokio::net::TcpStream>,
}

pub async fn stalled_listener() -> StalledListener {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&any.into()).expect("bind");
    socket.listen(0).expect("listen");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    StalledListener {
        addr,
        _socket: socket,
        _fillers: fillers,
    }
}

/// A loopback address nothing listens on (bound, then released): a connect
/// to it is refused.
pub fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Makes any panic outside the test code abort the test binary.
///
/// eddy runs in-process here, and a panic in one of its tasks would only
/// close that task's socket, which many tests accept as a valid outcome
/// ("a 400 or a closed connection"). So that "never a panic" is actually
/// checked, a panic whose location is not in `tests/` (eddy's own code, or
/// a library it drives) takes the whole run down with its message printed.
pub fn fail_on_eddy_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            let in_tests = info
                .location()
                .is_some_and(|l| l.file().starts_with("tests/"));
            if !in_tests {
                eprintln!("a panic outside the test code: aborting so that the run fails");
                std::process::abort();
            }
        }));
    });
}
