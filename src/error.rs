//! Every failure eddy answers for itself, and how it is answered.
//!
//! One enum, one variant per kind of failure (docs/design.md has the table):
//! each variant knows its HTTP status and its RFC 9209 `Proxy-Status` error
//! type, so the response, the log line and the `eddy_errors_total{error}` label
//! can never disagree. Details are for the one-line body and the logs; they
//! never carry secrets.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Why eddy answered a request itself instead of relaying the origin's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Malformed request (400).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Request head larger than `max_header_bytes` (431).
    #[error("request head exceeds max_header_bytes ({limit} bytes)")]
    HeadTooLarge { limit: usize },
    /// More header fields than `max_headers` (431).
    #[error("request head has more than max_headers ({limit}) header fields")]
    TooManyHeaders { limit: usize },
    /// The origin's name did not resolve (502).
    #[error("DNS lookup for {host} failed: {reason}")]
    Dns { host: String, reason: String },
    /// The origin refused (or could not be reached for) the connection (502).
    #[error("connection to {origin} refused: {reason}")]
    ConnectionRefused { origin: String, reason: String },
    /// The upstream connection closed or reset mid-exchange (502).
    #[error("upstream connection to {origin} terminated: {reason}")]
    ConnectionTerminated { origin: String, reason: String },
    /// The origin's certificate was not accepted (502).
    #[error("TLS certificate of {origin} not accepted: {reason}")]
    TlsCertificate { origin: String, reason: String },
    /// The TLS handshake failed for another reason (502).
    #[error("TLS handshake with {origin} failed: {reason}")]
    TlsProtocol { origin: String, reason: String },
    /// The origin's response could not be parsed (502).
    #[error("malformed response from {origin}: {reason}")]
    HttpProtocol { origin: String, reason: String },
    /// The per-origin wait queue was full (503).
    #[error("connection pool for {origin} is full ({pending} requests waiting)")]
    QueueFull { origin: String, pending: usize },
    /// No connection became free within `pending_timeout` (503).
    #[error("no connection to {origin} became free within pending_timeout")]
    PendingTimeout { origin: String },
    /// No local port was free toward the origin (`EADDRNOTAVAIL`); for a
    /// pooled request, none came free within `pending_timeout` either (503).
    #[error("no local port free toward {origin} (EADDRNOTAVAIL: local ports exhausted)")]
    NoLocalPort { origin: String },
    /// TCP connect did not finish within `connect_timeout` (504).
    #[error("connecting to {origin} timed out")]
    ConnectTimeout { origin: String },
    /// No response head within `response_header_timeout` (504).
    #[error("{origin} sent no response head within response_header_timeout")]
    ResponseTimeout { origin: String },
    /// The destination is not allowed (403).
    #[error("destination not allowed: {0}")]
    Denied(&'static str),
    /// Every address the destination resolved to is in `deny_cidrs` (403).
    #[error("{0} resolves only to addresses in security.deny_cidrs")]
    Prohibited(String),
    /// The request is addressed to eddy itself (508).
    #[error("request addressed to eddy's own listener {0}")]
    Loop(String),
}

/// `e` and its sources, outermost first: where the cause of an upstream
/// failure is looked for (a TLS alert, an HTTP/2 reset, an I/O error kind).
pub(crate) fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge { .. } | ProxyError::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::Dns { .. }
            | ProxyError::ConnectionRefused { .. }
            | ProxyError::ConnectionTerminated { .. }
            | ProxyError::TlsCertificate { .. }
            | ProxyError::TlsProtocol { .. }
            | ProxyError::HttpProtocol { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::QueueFull { .. }
            | ProxyError::PendingTimeout { .. }
            | ProxyError::NoLocalPort { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Loop(_) => StatusCode::LOOP_DETECTED,
            ProxyError::Denied(_) | ProxyError::Prohibited(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The RFC 9209 error type, also the `error` metric label.
    pub fn proxy_status(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::HeadTooLarge { .. }
            | ProxyError::TooManyHeaders { .. } => "http_request_error",
            ProxyError::Dns { .. } => "dns_error",
            ProxyError::ConnectionRefused { .. } => "connection_refused",
            ProxyError::ConnectionTerminated { .. } => "connection_terminated",
            ProxyError::HttpProtocol { .. } => "http_protocol_error",
            ProxyError::TlsCertificate { .. } => "tls_certificate_error",
            ProxyError::TlsProtocol { .. } => "tls_protocol_error",
            ProxyError::QueueFull { .. } | ProxyError::PendingTimeout { .. } => {
                "connection_limit_reached"
            }
            // RFC 9209: "an internal error unrelated to the origin". The
            // origin is fine; eddy's host ran out of ports toward it.
            ProxyError::NoLocalPort { .. } => "proxy_internal_error",
            ProxyError::ConnectTimeout { .. } => "connection_timeout",
            ProxyError::ResponseTimeout { .. } => "http_response_timeout",
            ProxyError::Loop(_) => "proxy_loop_detected",
            ProxyError::Denied(_) => "http_request_denied",
            ProxyError::Prohibited(_) => "destination_ip_prohibited",
        }
    }

    /// Whether the client connection must be closed after the answer (the
    /// request's framing can no longer be trusted).
    pub fn closes_client(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::HeadTooLarge { .. }
                | ProxyError::TooManyHeaders { .. }
        )
    }

    /// The one-line text body: `502 Bad Gateway: <what happened>`.
    fn body_line(&self) -> String {
        let status = self.status();
        format!(
            "{} {}: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self
        )
    }

    /// The same response as raw HTTP/1.1 bytes, for answers written straight
    /// to a client socket (request heads refused before hyper saw them).
    /// Always closes the connection.
    pub fn to_wire(&self) -> Vec<u8> {
        let status = self.status();
        let body = self.body_line();
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nProxy-Status: eddy; error={}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.proxy_status(),
            body.len()
        )
        .into_bytes()
    }

    /// The response eddy sends: status, `Proxy-Status`, one line of text.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let status = self.status();
        let body = self.body_line();
        let proxy_status = format!("eddy; error={}", self.proxy_status());
        let mut resp = Response::new(B::from(Bytes::from(body)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&proxy_status) {
            h.insert("proxy-status", v);
        }
        if self.closes_client() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn each_error_maps_onto_its_status_and_proxy_status_type() {
        let e = ProxyError::QueueFull {
            origin: "http://a:80".into(),
            pending: 3,
        };
        let r: Response<Full<Bytes>> = e.to_response();
        assert_eq!(r.status(), 503);
        assert_eq!(
            r.headers()["proxy-status"],
            "eddy; error=connection_limit_reached"
        );
        assert_eq!(ProxyError::Loop("x".into()).status(), 508);
        assert_eq!(
            ProxyError::ResponseTimeout { origin: "o".into() }.proxy_status(),
            "http_response_timeout"
        );
    }

    /// One of each kind of error. The `match` has no wildcard arm, so a new
    /// variant does not compile until it has a place here, and the places
    /// must all be taken, so it must be in the list too (and with it in the
    /// errors reference).
    fn one_of_each() -> Vec<ProxyError> {
        let o = || "http://a:80".to_string();
        let all = vec![
            ProxyError::BadRequest("x"),
            ProxyError::HeadTooLarge { limit: 1 },
            ProxyError::TooManyHeaders { limit: 1 },
            ProxyError::Dns {
                host: o(),
                reason: o(),
            },
            ProxyError::ConnectionRefused {
                origin: o(),
                reason: o(),
            },
            ProxyError::ConnectionTerminated {
                origin: o(),
                reason: o(),
            },
            ProxyError::TlsCertificate {
                origin: o(),
                reason: o(),
            },
            ProxyError::TlsProtocol {
                origin: o(),
                reason: o(),
            },
            ProxyError::HttpProtocol {
                origin: o(),
                reason: o(),
            },
            ProxyError::QueueFull {
                origin: o(),
                pending: 1,
            },
            ProxyError::PendingTimeout { origin: o() },
            ProxyError::NoLocalPort { origin: o() },
            ProxyError::ConnectTimeout { origin: o() },
            ProxyError::ResponseTimeout { origin: o() },
            ProxyError::Denied("x"),
            ProxyError::Prohibited(o()),
            ProxyError::Loop(o()),
        ];
        // Each variant's place in the list; all places taken means every
        // variant is in it.
        let index = |e: &ProxyError| match e {
            ProxyError::BadRequest(_) => 0,
            ProxyError::HeadTooLarge { .. } => 1,
            ProxyError::TooManyHeaders { .. } => 2,
            ProxyError::Dns { .. } => 3,
            ProxyError::ConnectionRefused { .. } => 4,
            ProxyError::ConnectionTerminated { .. } => 5,
            ProxyError::TlsCertificate { .. } => 6,
            ProxyError::TlsProtocol { .. } => 7,
            ProxyError::HttpProtocol { .. } => 8,
            ProxyError::QueueFull { .. } => 9,
            ProxyError::PendingTimeout { .. } => 10,
            ProxyError::NoLocalPort { .. } => 11,
            ProxyError::ConnectTimeout { .. } => 12,
            ProxyError::ResponseTimeout { .. } => 13,
            ProxyError::Denied(_) => 14,
            ProxyError::Prohibited(_) => 15,
            ProxyError::Loop(_) => 16,
        };
        let places: Vec<usize> = all.iter().map(index).collect();
        assert_eq!(
            places,
            (0..17).collect::<Vec<_>>(),
            "one of each variant, in order"
        );
        all
    }

    /// docs/errors.md documents every status and Proxy-Status type eddy
    /// answers with, each in a section of its own, and no other.
    #[test]
    fn the_errors_reference_documents_every_error_and_no_other() {
        let doc = include_str!("../docs/errors.md");
        let mut rows = std::collections::BTreeSet::new();
        for line in doc.lines() {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            if let [status, ty, _] = cells[..] {
                if let Ok(status) = status.parse::<u16>() {
                    rows.insert((status, ty.trim_matches('`').to_string()));
                }
            }
        }
        let made: std::collections::BTreeSet<(u16, String)> = one_of_each()
            .iter()
            .map(|e| (e.status().as_u16(), e.proxy_status().to_string()))
            .collect();
        assert_eq!(rows, made, "docs/errors.md's summary against ProxyError");
        for (_, ty) in &made {
            assert!(
                doc.contains(&format!("\n## `{ty}`")),
                "docs/errors.md has no section for {ty}"
            );
        }
    }
}
