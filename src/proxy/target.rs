//! Where a client's request is going, and whether that is eddy itself.
//!
//! A forward listener takes absolute-form targets (`GET http://host:port/p`),
//! as every `HTTP_PROXY` client sends them; a route listener sends everything
//! to its configured upstream. The loop guard (`crate::upstream::LoopGuard`) knows eddy's own bound
//! listener addresses, so a request for eddy itself is answered with 508
//! instead of being relayed to itself until file descriptors run out.

use http::uri::PathAndQuery;
use http::Uri;

use crate::config::split_host_port;
use crate::error::ProxyError;

/// The origin a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Lower-case, without IPv6 brackets.
    pub host: String,
    /// The port (80 when the target names none).
    pub port: u16,
    /// The `Host` header to send upstream.
    pub authority: String,
    /// Reach it over TLS (a route listener's `https://` upstream).
    pub tls: bool,
}

/// Parses an absolute-form `http://` target.
pub fn forward_target(uri: &Uri) -> Result<Target, ProxyError> {
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(s) if s.eq_ignore_ascii_case("https") => {
            return Err(ProxyError::BadRequest(
                "https:// targets go through a CONNECT tunnel, not a plain proxy request",
            ))
        }
        Some(_) => {
            return Err(ProxyError::BadRequest(
                "only http:// targets can be proxied",
            ))
        }
        None => {
            return Err(ProxyError::BadRequest(
                "a forward proxy expects absolute-form targets (GET http://host/path)",
            ))
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(ProxyError::BadRequest("the target has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(ProxyError::BadRequest(
            "user information in the target is not allowed",
        ));
    }
    let Some((host, port)) = split_host_port(authority.as_str()) else {
        return Err(ProxyError::BadRequest(
            "the target's host or port is malformed",
        ));
    };
    Ok(Target {
        host,
        port: port.unwrap_or(80),
        authority: authority.as_str().to_string(),
        tls: false,
    })
}

/// The origin-form (`/path?query`) of a request target.
pub fn origin_form(uri: &Uri) -> Uri {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if pq.as_str().is_empty() || !pq.as_str().starts_with('/') {
        return Uri::from_static("/");
    }
    Uri::from(pq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Target, ProxyError> {
        forward_target(&s.parse::<Uri>().expect("uri"))
    }

    #[test]
    fn absolute_form_targets_parse() {
        let t = parse("http://Example.COM:8080/a?b").expect("target");
        assert_eq!((t.host.as_str(), t.port), ("example.com", 8080));
        assert_eq!(parse("http://example.com/").expect("t").port, 80);
        assert_eq!(parse("http://[::1]:81/").expect("t").host, "::1");
    }

    #[test]
    fn other_targets_are_bad_requests() {
        assert!(parse("/just/a/path").is_err());
        assert!(parse("https://example.com/").is_err());
        assert!(parse("http://user:pw@example.com/").is_err());
    }

    #[test]
    fn origin_form_keeps_path_and_query() {
        let u: Uri = "http://h/a/b?c=d".parse().expect("uri");
        assert_eq!(origin_form(&u), "/a/b?c=d");
        let bare: Uri = "http://h".parse().expect("uri");
        assert_eq!(origin_form(&bare), "/");
    }
}
