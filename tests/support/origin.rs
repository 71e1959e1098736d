//! A raw-TCP HTTP/1.1 origin whose every misbehaviour is a switch.
//!
//! It parses just enough HTTP (head, Content-Length and chunked bodies) to
//! serve a real proxy, counts what a test needs to assert (connections
//! accepted and open at once, requests per connection, who closed an idle
//! connection and after how long), and records each request head.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// What the origin does. The default: HTTP/1.1 keep-alive, 200, a short
/// body naming the connection and request, no delays, never closes.
#[derive(Clone, Debug, Default)]
pub struct Behavior {
    /// Wait this long before answering each request.
    pub delay: Duration,
    /// Close, silently, any connection idle for this long.
    pub idle_close: Option<Duration>,
    /// Answer with `Connection: close` and close.
    pub connection_close: bool,
    /// Answer as an HTTP/1.0 server without keep-alive and close.
    pub http10: bool,
    /// Send `Keep-Alive: timeout=N`.
    pub keep_alive_timeout: Option<u64>,
    /// Read requests, never answer.
    pub never_respond: bool,
    /// Echo the request body (and its content type) back.
    pub echo: bool,
    /// Answer with a chunked body.
    pub chunked: bool,
    /// Stream a body of `chunks` × `size` bytes with `interval` between.
    pub slow_body: Option<(usize, usize, Duration)>,
    /// Extra response header lines (`"Name: value"`).
    pub extra_headers: Vec<String>,
    /// Read request number N on each connection, then close without
    /// answering (the classic stale-connection race, made certain).
    pub kill_request: Option<usize>,
    /// Read request number N on each connection, then reset (RST).
    pub reset_request: Option<usize>,
    /// Answer with a body of this many bytes.
    pub body_bytes: Option<usize>,
    /// Answer 413 to a request declaring a larger body, before reading it.
    pub reject_body_over: Option<usize>,
    /// Read request heads, never their bodies, and never answer.
    pub deaf_to_bodies: bool,
    /// Answer with exactly these bytes (malformed on purpose), then keep
    /// the connection open.
    pub raw_response: Option<&'static [u8]>,
    /// With `idle_close`: forget the idle connection without a FIN, as a
    /// NAT or load balancer does, and reset it when the next request comes
    /// (a stale hit that no check before reuse can see).
    pub forget_silently: bool,
    /// Reset every request whose target contains this, on any connection.
    pub reset_targets: Option<&'static str>,
    /// Answer request number N on each connection with these bytes only,
    /// then close (a response cut off after it had begun).
    pub raw_response_on: Option<(usize, &'static [u8])>,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub conn: usize,
    /// 1 for the first request on its connection.
    pub index: usize,
    pub head: String,
    pub body: Vec<u8>,
}

#[derive(Default)]
pub struct Stats {
    pub accepted: AtomicUsize,
    pub open: AtomicUsize,
    pub max_open: AtomicUsize,
    pub requests: AtomicUsize,
    /// Idle connections the origin closed itself (`idle_close`).
    pub origin_idle_closes: AtomicUsize,
    /// Of those, closes with request bytes already waiting (a request in
    /// flight when the origin closed: a stale-connection hit).
    pub closed_under_request: AtomicUsize,
    /// Requests killed or reset on purpose.
    pub killed: AtomicUsize,
    /// Idle times after which the client (eddy) closed a connection.
    pub client_closes: Mutex<Vec<Duration>>,
    /// Requests served on each connection, by connection number.
    pub per_conn: Mutex<Vec<usize>>,
    pub recorded: Mutex<Vec<Recorded>>,
    /// Signalled on every accept, request and close.
    pub changed: Notify,
}

impl Stats {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    pub fn max_open(&self) -> usize {
        self.max_open.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn origin_idle_closes(&self) -> usize {
        self.origin_idle_closes.load(Ordering::SeqCst)
    }
    pub fn closed_under_request(&self) -> usize {
        self.closed_under_request.load(Ordering::SeqCst)
    }
    pub fn killed(&self) -> usize {
        self.killed.load(Ordering::SeqCst)
    }
    /// Recorded requests whose head starts with `prefix` (e.g. `"POST "`).
    pub fn recorded_starting(&self, prefix: &str) -> Vec<Recorded> {
        self.recorded()
            .into_iter()
            .filter(|r| r.head.starts_with(prefix))
            .collect()
    }
    pub fn client_closes(&self) -> Vec<Duration> {
        self.client_closes.lock().expect("stats").clone()
    }
    pub fn per_conn(&self) -> Vec<usize> {
        self.per_conn.lock().expect("stats").clone()
    }
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("stats").clone()
    }
}

pub struct Origin {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    pub async fn start(behavior: Behavior) -> Origin {
        Origin::start_on("127.0.0.1:0", behavior).await
    }

    pub async fn start_on(addr: &str, behavior: Behavior) -> Origin {
        let listener = TcpListener::bind(addr).await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let stats = Arc::new(Stats::default());
        let b = Arc::new(behavior);
        let s = stats.clone();
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                let n = s.accepted.fetch_add(1, Ordering::SeqCst);
                let open = s.open.fetch_add(1, Ordering::SeqCst) + 1;
                s.max_open.fetch_max(open, Ordering::SeqCst);
                s.per_conn.lock().expect("stats").push(0);
                s.changed.notify_waiters();
                let (s, b) = (s.clone(), b.clone());
                conns.push(tokio::spawn(async move {
                    serve_conn(stream, n, &s, &b).await;
                    s.open.fetch_sub(1, Ordering::SeqCst);
                    s.changed.notify_waiters();
                }));
                conns.retain(|h| !h.is_finished());
            }
        });
        Origin { addr, stats, task }
    }

    /// Waits (up to `limit`) until `check` holds for this origin's counters.
    pub async fn wait_for(&self, what: &str, limit: Duration, check: impl Fn(&Stats) -> bool) {
        let stats = self.stats.clone();
        let check = &check;
        super::eventually(what, limit, || {
            let s = stats.clone();
            async move { check(&s) }
        })
        .await;
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

enum Head {
    Request {
        head: String,
        body: Vec<u8>,
    },
    /// A head declaring a body over `reject_body_over`; the body is unread.
    TooLarge {
        head: String,
    },
    /// The client closed the connection while it was idle.
    ClientClosed,
    /// `idle_close` elapsed.
    IdleTimeout,
    Broken,
}

async fn serve_conn(mut stream: TcpStream, conn: usize, stats: &Stats, b: &Behavior) {
    let mut buf = Vec::new();
    let mut idle_since = Instant::now();
    let mut served = 0usize;
    loop {
        match read_request(
            &mut stream,
            &mut buf,
            b.idle_close,
            b.reject_body_over,
            b.deaf_to_bodies,
        )
        .await
        {
            Head::TooLarge { head } => {
                served += 1;
                stats.requests.fetch_add(1, Ordering::SeqCst);
                stats.recorded.lock().expect("stats").push(Recorded {
                    conn,
                    index: served,
                    head,
                    body: Vec::new(),
                });
                let answer =
                    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                // Keep the connection open, as a careless origin would: a
                // proxy that reused it would send its next request after the
                // unread body.
                idle_since = Instant::now();
            }
            Head::Request { head, body } => {
                served += 1;
                stats.requests.fetch_add(1, Ordering::SeqCst);
                stats.per_conn.lock().expect("stats")[conn] = served;
                stats.recorded.lock().expect("stats").push(Recorded {
                    conn,
                    index: served,
                    head: head.clone(),
                    body: body.clone(),
                });
                stats.changed.notify_waiters();
                if b.kill_request == Some(served) {
                    stats.killed.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.shutdown().await;
                    return;
                }
                let doomed = b.reset_targets.is_some_and(|t| {
                    head.split_whitespace()
                        .nth(1)
                        .is_some_and(|target| target.contains(t))
                });
                if b.reset_request == Some(served) || doomed {
                    stats.killed.fetch_add(1, Ordering::SeqCst);
                    // SO_LINGER 0: closing sends RST instead of FIN.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    return;
                }
                if b.never_respond {
                    // Hold the connection until the client gives up.
                    let mut sink = [0u8; 1024];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    return;
                }
                if !b.delay.is_zero() {
                    tokio::time::sleep(b.delay).await;
                }
                if respond(&mut stream, conn, served, &head, &body, b)
                    .await
                    .is_err()
                {
                    return;
                }
                if b.connection_close || b.http10 {
                    let _ = stream.shutdown().await;
                    return;
                }
                idle_since = Instant::now();
            }
            Head::ClientClosed => {
                if served > 0 || buf.is_empty() {
                    stats
                        .client_closes
                        .lock()
                        .expect("stats")
                        .push(idle_since.elapsed());
                    stats.changed.notify_waiters();
                }
                return;
            }
            Head::IdleTimeout if b.forget_silently => {
                // Nothing goes out now; the next request meets a reset.
                let mut first = [0u8; 1];
                if matches!(stream.read(&mut first).await, Ok(n) if n > 0) {
                    stats.closed_under_request.fetch_add(1, Ordering::SeqCst);
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
                // Closed before it is counted: a test waiting on the count
                // then finds the socket closed.
                drop(stream);
                stats.origin_idle_closes.fetch_add(1, Ordering::SeqCst);
                stats.changed.notify_waiters();
                return;
            }
            Head::IdleTimeout => {
                let mut peek = [0u8; 1];
                if matches!(stream.try_read(&mut peek), Ok(n) if n > 0) {
                    stats.closed_under_request.fetch_add(1, Ordering::SeqCst);
                }
                drop(stream);
                stats.origin_idle_closes.fetch_add(1, Ordering::SeqCst);
                stats.changed.notify_waiters();
                return;
            }
            Head::Broken => return,
        }
    }
}

async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    idle: Option<Duration>,
    reject_body_over: Option<usize>,
    deaf: bool,
) -> Head {
    let head_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 8192];
        let read = stream.read(&mut chunk);
        let n = match idle {
            Some(limit) if buf.is_empty() => match tokio::time::timeout(limit, read).await {
                Ok(r) => r,
                Err(_) => return Head::IdleTimeout,
            },
            _ => read.await,
        };
        match n {
            Ok(0) if buf.is_empty() => return Head::ClientClosed,
            Ok(0) | Err(_) => return Head::Broken,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let lower = head.to_ascii_lowercase();
    let body = if lower.contains("transfer-encoding: chunked") {
        match read_chunked(stream, buf).await {
            Some(b) => b,
            None => return Head::Broken,
        }
    } else {
        let len = header_value(&lower, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if reject_body_over.is_some_and(|max| len > max) {
            return Head::TooLarge { head };
        }
        if deaf && len > 0 {
            // Take the head, then stop reading: the sender's writes back up.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Head::Broken;
        }
        while buf.len() < len {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Head::Broken,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..len).collect()
    };
    Head::Request { head, body }
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = find(buf, b"\r\n") {
                break p;
            }
            fill(stream, buf).await?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            loop {
                if let Some(p) = find(buf, b"\r\n") {
                    let empty = p == 0;
                    buf.drain(..p + 2);
                    if empty {
                        return Some(body);
                    }
                } else {
                    fill(stream, buf).await?;
                }
            }
        }
        while buf.len() < size + 2 {
            fill(stream, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    conn: usize,
    req: usize,
    head: &str,
    body: &[u8],
    b: &Behavior,
) -> std::io::Result<()> {
    if let Some((n, raw)) = b.raw_response_on {
        if n == req {
            stream.write_all(raw).await?;
            stream.flush().await?;
            stream.shutdown().await?;
            return Err(std::io::Error::other("closed after part of a response"));
        }
    }
    if let Some(raw) = b.raw_response {
        stream.write_all(raw).await?;
        if b.connection_close {
            // Whatever the bytes promised, the connection ends here.
            stream.shutdown().await?;
            return Err(std::io::Error::other("closed after a raw response"));
        }
        return Ok(());
    }
    let version = if b.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut out = format!("{version} 200 OK\r\nX-Conn: {conn}\r\nX-Req: {req}\r\n");
    if b.connection_close {
        out.push_str("Connection: close\r\n");
    }
    if let Some(t) = b.keep_alive_timeout {
        out.push_str(&format!("Keep-Alive: timeout={t}\r\n"));
    }
    for h in &b.extra_headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    let payload: Vec<u8> = if let Some(n) = b.body_bytes {
        vec![b'b'; n]
    } else if b.echo {
        let lower = head.to_ascii_lowercase();
        if let Some(ct) = header_value(&lower, "content-type") {
            out.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        body.to_vec()
    } else {
        format!("conn={conn} req={req}\n").into_bytes()
    };
    if let Some((chunks, size, interval)) = b.slow_body {
        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
        stream.write_all(out.as_bytes()).await?;
        let piece = vec![b'x'; size];
        for _ in 0..chunks {
            stream.write_all(format!("{size:x}\r\n").as_bytes()).await?;
            stream.write_all(&piece).await?;
            stream.write_all(b"\r\n").await?;
            tokio::time::sleep(interval).await;
        }
        return stream.write_all(b"0\r\n\r\n").await;
    }
    if b.chunked {
        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let half = payload.len() / 2;
        for part in [&payload[..half], &payload[half..]] {
            if !part.is_empty() {
                out.push_str(&format!("{:x}\r\n", part.len()));
                out.push_str(&String::from_utf8_lossy(part));
                out.push_str("\r\n");
            }
        }
        out.push_str("0\r\n\r\n");
        return stream.write_all(out.as_bytes()).await;
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
    let mut bytes = out.into_bytes();
    if !head.starts_with("HEAD ") {
        bytes.extend_from_slice(&payload);
    }
    stream.write_all(&bytes).await
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` in a lower-cased head.
pub fn header_value<'a>(lower_head: &'a str, name: &str) -> Option<&'a str> {
    lower_head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        (n.trim() == name).then(|| v.trim())
    })
}
