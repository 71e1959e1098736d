//! Hop-by-hop headers, stripped from requests and responses alike.
//!
//! They describe one connection, not the message, so they never cross eddy in
//! either direction: eddy decides each side's persistence and framing itself.
//! That includes every header the `Connection` header names, which is how a
//! client marks its own extensions as hop-by-hop.

use http::header::{
    HeaderMap, HeaderName, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers removed in every message.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
    TE,
    TRAILER,
    UPGRADE,
    TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those named by `Connection`.
///
/// This runs twice per proxied request, and a legacy client's request and a
/// keep-alive origin's response each carry `Connection`: one pass over the
/// names records which hop-by-hop headers are present, only those are
/// removed, and the usual `Connection` tokens (`close`, `keep-alive`) name
/// nothing further to look up.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for key in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == key) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // HOP_BY_HOP[0] is `Connection`. `Vec::new` allocates only if a
        // token names a header of the client's own.
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Turns the client's request head into the one eddy sends upstream, the
/// same for every kind of request (plain, upgrade): origin-form target,
/// HTTP/1.1, no hop-by-hop headers, the target's `Host`, and eddy's own
/// `Via` entry (which is how a request that loops back is recognised).
pub(super) fn rewrite_for_upstream(
    parts: &mut http::request::Parts,
    authority: &str,
    via: &http::HeaderValue,
) -> Result<(), crate::error::ProxyError> {
    let host = http::HeaderValue::from_str(authority).map_err(|_| {
        crate::error::ProxyError::BadRequest("the target's host is not a valid header value")
    })?;
    parts.uri = super::origin_form(&parts.uri);
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(http::header::HOST, host);
    parts.headers.append(http::header::VIA, via.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn connection_named_and_standard_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("x-foo, keep-alive"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(PROXY_AUTHORIZATION, HeaderValue::from_static("Basic eA=="));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn every_connection_value_and_token_case_counts() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("Close"));
        h.append(CONNECTION, HeaderValue::from_static(" X-A ,, KEEP-ALIVE"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(
            "close",
            HeaderValue::from_static("an end-to-end header named close"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("close"));
    }
}
