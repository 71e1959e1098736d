//! A raw HTTP/1 client: writes exactly the bytes a test gives it, so tests
//! control versions, framing and misbehaviour, and reads the answer to EOF.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::origin::find;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `Proxy-Status` error type, if eddy made this response.
    pub fn proxy_error(&self) -> Option<String> {
        let v = self.header("proxy-status")?;
        v.split(';')
            .find_map(|p| p.trim().strip_prefix("error=").map(str::to_string))
    }
}

/// A new connection to `addr` with `raw` written on it, for tests that go
/// on reading, writing or hanging up themselves.
pub async fn open(addr: SocketAddr, raw: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect to eddy");
    s.write_all(raw).await.expect("write request");
    s
}

/// Sends `raw` on a new connection and reads the response until the server
/// closes (the request must ask for that: HTTP/1.0 or `Connection: close`).
pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut s = open(addr, raw).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("response within 20s")
        .expect("read response");
    parse(&buf)
        .unwrap_or_else(|| panic!("unparseable response: {:?}", String::from_utf8_lossy(&buf)))
}

/// `GET url` through the proxy with HTTP/1.1 and `Connection: close`.
pub async fn get(proxy: SocketAddr, url: &str) -> Response {
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    send_raw(proxy, req.as_bytes()).await
}

/// `GET url` through the proxy with HTTP/1.0 (no keep-alive).
pub async fn get10(proxy: SocketAddr, url: &str) -> Response {
    let req = format!("GET {url} HTTP/1.0\r\n\r\n");
    send_raw(proxy, req.as_bytes()).await
}

pub fn parse(buf: &[u8]) -> Option<Response> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let rest = &buf[end..];
    let lower = head.to_ascii_lowercase();
    let body = if lower.contains("transfer-encoding: chunked") {
        dechunk(rest)?
    } else if let Some(len) = super::origin::header_value(&lower, "content-length") {
        let len: usize = len.parse().ok()?;
        rest.get(..len)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Response { status, head, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = find(data, b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line]).ok()?.trim(), 16).ok()?;
        data = &data[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// `method url` through the proxy with extra header lines and a body,
/// HTTP/1.1 and `Connection: close`.
pub async fn request(
    proxy: SocketAddr,
    method: &str,
    url: &str,
    headers: &[&str],
    body: &[u8],
) -> Response {
    let mut req = format!("{method} {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    send_raw(proxy, &bytes).await
}
