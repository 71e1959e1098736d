//! The HTTP/1 server every client connection is read with: the
//! listener's, and the one inside an intercepted tunnel, so both get the
//! same limits from the listener's settings.

use hyper::server::conn::http1;

/// The builder for one listener's client connections: hyper's limits
/// beside the head scanner's, and header names kept as they arrived.
pub(crate) fn http1_builder(
    max_header_bytes: usize,
    max_headers: usize,
    preserve_case: bool,
) -> http1::Builder {
    let mut b = http1::Builder::new();
    // The head scanner refuses heads with more fields (with Proxy-Status);
    // hyper must accept as many. Left unset at hyper's own default (the
    // same 100): hyper then parses into an array on the stack, where any
    // explicit count fills a vector element by element (about 700
    // instructions a request, measured with callgrind).
    if max_headers != crate::head_scan::DEFAULT_MAX_HEADERS {
        b.max_headers(max_headers);
    }
    // Legacy apps and servers sometimes match header names case-sensitively:
    // hyper keeps the case each name arrived in (in the request's
    // extensions, which go upstream with it), and writes the response's
    // names as the origin spelt them.
    b.preserve_header_case(preserve_case);
    // The head scanner enforces the exact limit on every head it sees; this
    // is hyper's backstop for heads it does not see (pipelined requests).
    let hard_cap = max_header_bytes.saturating_mul(2).saturating_add(8192);
    b.header_read_timeout(None)
        .max_header_size(hard_cap)
        .max_buf_size(hard_cap.saturating_add(8192).max(8192))
        .keep_alive(true);
    b
}
