//! Reaching an origin through an egress forward proxy (`[[upstream]] via`).
//!
//! Corporate networks often let nothing out but their own proxy. eddy then
//! pools connections *to that proxy*, one pool per origin as always:
//! - for an `http://` origin, requests go to the proxy in absolute form
//!   (`GET http://origin:port/path`), and the proxy's connection is kept
//!   alive like an origin's ([`absolute_form`]);
//! - for an `https://` origin, each connection first asks the proxy for a
//!   `CONNECT origin:port` tunnel ([`open_tunnel`]), and eddy's TLS to the
//!   origin runs inside it: the proxy sees only the name and the bytes.
//!
//! The proxy's address goes through the same resolver, deny list and loop
//! checks as an origin's would; the origin's own address is the proxy's
//! business.

use http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::origin::Origin;
use crate::error::ProxyError;

/// The longest CONNECT response head read from the proxy.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// The request target to send for `uri` to `origin`: absolute form when
/// the origin is reached through a proxy in plain HTTP, `None` otherwise
/// (origin form, as the request already has).
pub(crate) fn absolute_form(origin: &Origin, uri: &Uri) -> Option<Uri> {
    if origin.via_proxy().is_none() || origin.is_tls() {
        return None;
    }
    let path = match uri.path_and_query().map_or("/", |p| p.as_str()) {
        // `OPTIONS *` goes to a proxy as the bare origin (RFC 9112, 3.2.4).
        "*" => "",
        p => p,
    };
    format!("{}{path}", origin.as_str()).parse().ok()
}

/// Asks the proxy at the other end of `stream` for a tunnel to `origin`,
/// and reads its answer. On success the stream carries the tunnel.
pub(crate) async fn open_tunnel(
    stream: &mut TcpStream,
    origin: &Origin,
    deadline: Instant,
) -> Result<(), ProxyError> {
    let authority = authority(origin);
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the proxy closed the connection before answering CONNECT",
                ));
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = find_head_end(&head) {
                return Ok((head, end));
            }
            if head.len() > MAX_RESPONSE_HEAD {
                return Err(std::io::Error::other(
                    "the proxy's CONNECT answer is too long",
                ));
            }
        }
    };
    let (head, end) = match timeout_at(deadline, exchange).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            return Err(ProxyError::ConnectionTerminated {
                origin: origin.to_string(),
                reason: format!("egress proxy: {e}"),
            })
        }
        Err(_) => {
            return Err(ProxyError::ConnectTimeout {
                origin: origin.to_string(),
            })
        }
    };
    match tunnel_answer(&head[..end], head.len() - end) {
        Ok(()) => Ok(()),
        Err(reason) => Err(ProxyError::ConnectionRefused {
            origin: origin.to_string(),
            reason: format!("egress proxy: {reason}"),
        }),
    }
}

/// `host:port` for a CONNECT line (an IPv6 literal in brackets).
fn authority(origin: &Origin) -> String {
    let host = origin.host();
    if host.contains(':') {
        format!("[{host}]:{}", origin.port())
    } else {
        format!("{host}:{}", origin.port())
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Whether a CONNECT answer opens the tunnel: a 2xx status, and nothing
/// after the head (TLS starts with eddy's ClientHello, so a proxy that
/// sends bytes first is not a tunnel).
fn tunnel_answer(head: &[u8], trailing: usize) -> Result<(), String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("a malformed answer to CONNECT".into()),
    }
    let code = resp.code.unwrap_or(0);
    if !(200..300).contains(&code) {
        return Err(format!(
            "CONNECT answered {code} {}",
            resp.reason.unwrap_or("")
        ));
    }
    if trailing > 0 {
        return Err("bytes after the CONNECT answer, before the tunnel's TLS".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_origin_behind_a_proxy_gets_absolute_form() {
        let uri: Uri = "/a?b=c".parse().unwrap();
        let direct = Origin::new(false, "api.test", 8080);
        assert_eq!(absolute_form(&direct, &uri), None);
        let proxied = direct.via("egress.test", 3128);
        assert_eq!(
            absolute_form(&proxied, &uri).unwrap(),
            "http://api.test:8080/a?b=c"
        );
        let star: Uri = "*".parse().unwrap();
        assert_eq!(
            absolute_form(&proxied, &star).unwrap(),
            "http://api.test:8080"
        );
        let tls = Origin::new(true, "api.test", 443).via("egress.test", 3128);
        assert_eq!(absolute_form(&tls, &uri), None);
    }

    #[test]
    fn a_tunnel_opens_on_2xx_with_nothing_after_the_head() {
        assert!(tunnel_answer(b"HTTP/1.1 200 Connection established\r\n\r\n", 0).is_ok());
        assert!(tunnel_answer(b"HTTP/1.0 200 OK\r\nVia: squid\r\n\r\n", 0).is_ok());
        let denied = tunnel_answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 0);
        assert_eq!(denied.unwrap_err(), "CONNECT answered 403 Forbidden");
        assert!(tunnel_answer(b"HTTP/1.1 200 OK\r\n\r\n", 3).is_err());
        assert!(tunnel_answer(b"garbage\r\n\r\n", 0).is_err());
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(authority(&Origin::new(true, "::1", 443)), "[::1]:443");
        assert_eq!(authority(&Origin::new(true, "a.test", 443)), "a.test:443");
    }
}
