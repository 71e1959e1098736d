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
    /// Answer 413 to a request declaring a larger body, before reading it,
    /// and keep the connection open without reading the body: a careless
    /// origin, which takes whatever follows as the next request.
    pub reject_body_over: Option<usize>,
    /// With `reject_body_over`: after the 413, read and discard the body
    /// (as nginx and Go do) instead of taking it for the next request.
    pub discard_rejected: bool,
    /// Answer each request with a body as soon as its head is read, then
    /// read and discard the body (nginx `return`).
    pub answer_before_body: bool,
    /// With `answer_before_body`: answer with this status instead of 200.
    pub early_status: Option<u16>,
    /// Send `100 Continue` before reading a body announced with
    /// `Expect: 100-continue`.
    pub continue_100: bool,
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
    /// Idle connections closed by a graceful restart ([`Origin::restart`]).
    pub restart_closes: AtomicUsize,
    /// `100 Continue` responses sent.
    pub continues: AtomicUsize,
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
    pub fn restart_closes(&self) -> usize {
        self.restart_closes.load(Ordering::SeqCst)
    }
    pub fn continues(&self) -> usize {
        self.continues.load(Ordering::SeqCst)
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

    /// The request line of every request recorded, in arrival order.
    pub fn request_lines(&self) -> Vec<String> {
        self.recorded()
            .iter()
            .map(|r| r.head.lines().next().unwrap_or_default().to_string())
            .collect()
    }
}

pub struct Origin {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    behavior: Arc<Behavior>,
    task: JoinHandle<()>,
    /// Bumped by [`Origin::restart`]: idle connections close, busy ones
    /// close after their answer.
    generation: tokio::sync::watch::Sender<u64>,
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
        let behavior = Arc::new(behavior);
        let (generation, _) = tokio::sync::watch::channel(0);
        let task = accept_loop(listener, stats.clone(), behavior.clone(), &generation);
        Origin {
            addr,
            stats,
            behavior,
            task,
            generation,
        }
    }

    /// A graceful restart, as `nginx -s quit` and a new start do: the
    /// listener closes, every idle connection is closed at once (busy ones
    /// after their answer), and a new listener takes the same port. Returns
    /// once the old connections are gone and the new listener is up.
    pub async fn restart(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
        self.wait_for(
            "the old connections are closed",
            Duration::from_secs(10),
            |s| s.open() == 0,
        )
        .await;
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("bind the restarted origin to the same port");
        self.task = accept_loop(
            listener,
            self.stats.clone(),
            self.behavior.clone(),
            &self.generation,
        );
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

fn accept_loop(
    listener: TcpListener,
    s: Arc<Stats>,
    b: Arc<Behavior>,
    generation: &tokio::sync::watch::Sender<u64>,
) -> JoinHandle<()> {
    let mut restarted = generation.subscribe();
    restarted.mark_unchanged();
    tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            let n = s.accepted.fetch_add(1, Ordering::SeqCst);
            let open = s.open.fetch_add(1, Ordering::SeqCst) + 1;
            s.max_open.fetch_max(open, Ordering::SeqCst);
            s.per_conn.lock().expect("stats").push(0);
            s.changed.notify_waiters();
            let (s, b, restarted) = (s.clone(), b.clone(), restarted.clone());
            conns.push(tokio::spawn(async move {
                serve_conn(stream, n, &s, &b, restarted).await;
                s.open.fetch_sub(1, Ordering::SeqCst);
                s.changed.notify_waiters();
            }));
            conns.retain(|h| !h.is_finished());
        }
    })
}

/// How the body after a head is framed.
#[derive(Clone, Copy, Debug)]
enum Framing {
    Length(usize),
    Chunked,
}

enum Head {
    Request {
        head: String,
        body: Vec<u8>,
    },
    /// A head whose body is left unread for now: rejected for its size
    /// (`reject_body_over`) or answered first (`answer_before_body`).
    Unread {
        head: String,
        framing: Framing,
        status: u16,
    },
    /// The client closed the connection while it was idle.
    ClientClosed,
    /// `idle_close` elapsed.
    IdleTimeout,
    /// A graceful restart closed the idle connection.
    Restarted,
    Broken,
}

type Restarts = tokio::sync::watch::Receiver<u64>;

async fn serve_conn(
    mut stream: TcpStream,
    conn: usize,
    stats: &Stats,
    b: &Behavior,
    mut restarted: Restarts,
) {
    let mut buf = Vec::new();
    let mut idle_since = Instant::now();
    let mut served = 0usize;
    loop {
        match read_request(&mut stream, &mut buf, b, stats, &mut restarted).await {
            Head::Unread {
                head,
                framing,
                status,
            } => {
                served += 1;
                stats.requests.fetch_add(1, Ordering::SeqCst);
                stats.per_conn.lock().expect("stats")[conn] = served;
                stats.recorded.lock().expect("stats").push(Recorded {
                    conn,
                    index: served,
                    head: head.clone(),
                    body: Vec::new(),
                });
                stats.changed.notify_waiters();
                let sent = if status == 413 {
                    stream
                        .write_all(
                            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large",
                        )
                        .await
                } else if status == 200 {
                    respond(&mut stream, conn, served, &head, &[], b).await
                } else {
                    let answer =
                        format!("HTTP/1.1 {status} Refused\r\nContent-Length: 7\r\n\r\nrefused");
                    stream.write_all(answer.as_bytes()).await
                };
                if sent.is_err() {
                    return;
                }
                let careless = status == 413 && !b.discard_rejected;
                if !careless {
                    // Read and discard the body, as nginx and Go do, so the
                    // connection stays in step.
                    if skip_body(&mut stream, &mut buf, framing).await.is_none() {
                        return;
                    }
                }
                // A careless origin keeps the connection open without
                // reading: a proxy that reused it would have its next
                // request read after the unread body.
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
                if b.connection_close || b.http10 || restarted.has_changed().unwrap_or(true) {
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
            Head::Restarted => {
                drop(stream);
                stats.restart_closes.fetch_add(1, Ordering::SeqCst);
                stats.changed.notify_waiters();
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
    b: &Behavior,
    stats: &Stats,
    restarted: &mut Restarts,
) -> Head {
    let head_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = if buf.is_empty() {
            // Idle: a restart or the idle limit may close it.
            let idle = async {
                match b.idle_close {
                    Some(limit) => tokio::time::sleep(limit).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = stream.read(&mut chunk) => r,
                _ = idle => return Head::IdleTimeout,
                _ = restarted.changed() => return Head::Restarted,
            }
        } else {
            stream.read(&mut chunk).await
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
    let framing = if lower.contains("transfer-encoding: chunked") {
        Framing::Chunked
    } else {
        Framing::Length(
            header_value(&lower, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0),
        )
    };
    let has_body = !matches!(framing, Framing::Length(0));
    let expects = header_value(&lower, "expect").is_some_and(|v| v == "100-continue");
    if let Framing::Length(len) = framing {
        if b.reject_body_over.is_some_and(|max| len > max) {
            return Head::Unread {
                head,
                framing,
                status: 413,
            };
        }
    }
    if has_body && b.answer_before_body {
        return Head::Unread {
            head,
            framing,
            status: b.early_status.unwrap_or(200),
        };
    }
    if has_body && expects && b.continue_100 {
        if stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
        {
            return Head::Broken;
        }
        stats.continues.fetch_add(1, Ordering::SeqCst);
    }
    if b.deaf_to_bodies && has_body {
        // Take the head, then stop reading: the sender's writes back up.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return Head::Broken;
    }
    let body = match framing {
        Framing::Chunked => match read_chunked(stream, buf).await {
            Some(b) => b,
            None => return Head::Broken,
        },
        Framing::Length(len) => {
            while buf.len() < len {
                if fill(stream, buf).await.is_none() {
                    return Head::Broken;
                }
            }
            buf.drain(..len).collect()
        }
    };
    Head::Request { head, body }
}

/// Reads and discards a body, keeping whatever follows it in `buf`.
async fn skip_body(stream: &mut TcpStream, buf: &mut Vec<u8>, framing: Framing) -> Option<()> {
    match framing {
        Framing::Chunked => read_chunked(stream, buf).await.map(drop),
        Framing::Length(len) => {
            let mut left = len;
            loop {
                let take = left.min(buf.len());
                buf.drain(..take);
                left -= take;
                if left == 0 {
                    return Some(());
                }
                fill(stream, buf).await?;
            }
        }
    }
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
