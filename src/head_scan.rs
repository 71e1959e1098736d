//! A byte-level check of request heads before hyper parses them.
//!
//! Why not leave it all to hyper: hyper answers a head it cannot parse with a
//! bare 400 or 431 of its own, without the `Proxy-Status` header that every
//! response eddy makes itself carries (see `error.rs`); and it resolves a head
//! carrying both `Content-Length` and `Transfer-Encoding` by dropping the
//! length before eddy sees it, where eddy must answer 400 and close the
//! connection (the request-smuggling vector). So the client socket runs every
//! head through this scanner as the bytes arrive. It counts the head's exact
//! size against `max_header_bytes` and rejects what RFC 9112 says a server must
//! reject: a malformed request line, control or non-ASCII bytes in the target,
//! obsolete line folding, whitespace or invalid bytes in a header name, control
//! bytes in a value, a CR not followed by LF, conflicting framing, and what
//! hyper would refuse with a bare answer of its own: an HTTP version other
//! than 1.0 and 1.1 (the HTTP/2 preface among them), a `Transfer-Encoding`
//! other than one `chunked` (or on an HTTP/1.0 request), a `Content-Length`
//! that is not one number, and more header fields than `max_headers`. When
//! it rejects, the listener answers itself, with `Proxy-Status`, and hyper
//! never sees the head.
//!
//! Pipelined requests are checked too: after a head, the scanner follows the
//! body's framing (Content-Length, or chunked sizes) to the next head. A
//! refused head that follows another request in the same read is reported
//! with its offset, so the listener can let the earlier requests through and
//! close the connection before the refused one (it is never forwarded).
//!
//! It keeps no buffer: a few bytes of state per connection, one pass over
//! the bytes (body bytes are counted, never looked at).

/// Longest header name the scanner needs to recognise.
const NAME_CAP: usize = 17; // "transfer-encoding"

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Larger than `max_header_bytes` (431).
    TooLarge,
    /// More header fields than `max_headers` (431).
    TooManyHeaders,
    /// Not an acceptable HTTP/1 request head (400).
    Malformed(&'static str),
}

/// Where the head being scanned stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// More bytes are needed.
    Incomplete,
    /// The head ended and is acceptable; later bytes are body.
    Complete,
    /// The head must be refused, for this reason.
    Reject(Reject),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the request line (stray CRLFs are tolerated, RFC 9112 §2.2).
    Start,
    Method,
    Target,
    Version,
    LineStart,
    Name,
    Value,
    /// The head ended (set by `feed`; `scan` moves on to the body).
    Done,
    /// Skipping a Content-Length body.
    Body(u64),
    ChunkSize,
    ChunkExt,
    ChunkData(u64),
    ChunkDataEnd,
    Trailer,
    TrailerLine,
    /// The framing could not be followed; the rest is left to hyper.
    Lost,
}

/// What a scan found in one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reject: Reject,
    /// Offset in the read where the refused head began (0 if it began in an
    /// earlier read).
    pub at: usize,
    /// Another request came before it on this connection in the same run:
    /// it must not be answered out of order.
    pub pipelined: bool,
}

/// Scans the bytes of a client connection for request heads, one read at
/// a time, without buffering them.
#[derive(Debug, Clone)]
pub struct HeadScan {
    limit: usize,
    seen: usize,
    state: State,
    target_len: usize,
    name: [u8; NAME_CAP],
    /// Bytes of the current header name; `NAME_CAP + 1` once too long to be
    /// one of the names we look for.
    name_len: usize,
    content_length: bool,
    transfer_encoding: bool,
    /// The head asks to switch protocols (`Upgrade:`).
    upgrade: bool,
    /// Reading a Content-Length value.
    in_length: bool,
    length_digits: usize,
    length: Option<u64>,
    chunk: u64,
    verdict: Verdict,
    /// Heads completed since the scan started.
    heads: usize,
    /// The request method's first bytes (to notice CONNECT).
    method: [u8; 7],
    method_len: usize,
    /// The last byte of the head, or of chunked framing, was a CR: the
    /// next must be LF.
    cr: bool,
    /// The request line's version (`HTTP/1.1`), and whether it is 1.0.
    version: [u8; 8],
    version_len: usize,
    http10: bool,
    /// Header fields so far, and how many are allowed.
    fields: usize,
    max_fields: usize,
    /// Reading a Transfer-Encoding value: the bytes of its one coding
    /// (lower-case), and whether whitespace followed them.
    in_te: bool,
    te: [u8; 7],
    te_len: usize,
    te_gap: bool,
    /// Whitespace followed a Content-Length's digits.
    length_gap: bool,
}

/// hyper's own default, kept unless `max_headers` says otherwise.
pub const DEFAULT_MAX_HEADERS: usize = 100;

impl HeadScan {
    /// A scanner for one head of at most `limit` bytes.
    pub fn new(limit: usize) -> HeadScan {
        HeadScan {
            limit,
            seen: 0,
            state: State::Start,
            target_len: 0,
            name: [0; NAME_CAP],
            name_len: 0,
            content_length: false,
            transfer_encoding: false,
            upgrade: false,
            in_length: false,
            length_digits: 0,
            length: None,
            chunk: 0,
            verdict: Verdict::Incomplete,
            heads: 0,
            method: [0; 7],
            method_len: 0,
            cr: false,
            version: [0; 8],
            version_len: 0,
            http10: false,
            fields: 0,
            max_fields: DEFAULT_MAX_HEADERS,
            in_te: false,
            te: [0; 7],
            te_len: 0,
            te_gap: false,
            length_gap: false,
        }
    }

    /// The same, allowing at most `max` header fields per head.
    pub fn with_max_headers(mut self, max: usize) -> HeadScan {
        self.max_fields = max;
        self
    }

    /// Whether the stream is between requests (not inside a head or a
    /// body): only then may a new scan start there.
    pub fn at_head_boundary(&self) -> bool {
        self.state == State::Start && self.seen == 0
    }

    /// Starts over at the next head of a pipelined stream.
    fn next_head(&mut self) {
        let (heads, max_fields) = (self.heads, self.max_fields);
        *self = HeadScan::new(self.limit).with_max_headers(max_fields);
        self.heads = heads;
    }

    /// Feeds a read and follows the stream across pipelined requests.
    /// Returns a refusal if any head in it is refused; bytes after a
    /// refusal are not looked at.
    pub fn scan(&mut self, bytes: &[u8]) -> Option<Refusal> {
        let mut i = 0;
        let mut head_start = 0;
        while i < bytes.len() {
            match self.state {
                State::Lost => return None,
                State::Body(n) => {
                    let take = (n as usize).min(bytes.len() - i);
                    i += take;
                    let left = n - take as u64;
                    if left == 0 {
                        self.next_head();
                        head_start = i;
                    } else {
                        self.state = State::Body(left);
                    }
                    continue;
                }
                State::ChunkData(n) => {
                    let take = (n as usize).min(bytes.len() - i);
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(left)
                    };
                    continue;
                }
                State::ChunkSize
                | State::ChunkExt
                | State::ChunkDataEnd
                | State::Trailer
                | State::TrailerLine => {
                    if self.step_body(bytes[i]) {
                        self.next_head();
                        head_start = i + 1;
                    }
                    i += 1;
                    continue;
                }
                _ => {}
            }
            if self.state == State::Start && head_start < i && matches!(bytes[i], b'\r' | b'\n') {
                head_start = i + 1;
            }
            let run = self.plain_run(&bytes[i..]);
            if run > 0 {
                i += run;
                continue;
            }
            match self.head_byte(bytes[i]) {
                Verdict::Incomplete => {}
                Verdict::Complete => {
                    self.heads += 1;
                    if self.upgrade || (self.method_len == 7 && &self.method == b"CONNECT") {
                        // What follows may be tunnelled or upgraded bytes
                        // (or a new request after a refusal): not ours to
                        // parse.
                        self.state = State::Lost;
                        return None;
                    }
                    self.state = if self.transfer_encoding {
                        State::ChunkSize
                    } else {
                        match self.length {
                            Some(n) if n > 0 => State::Body(n),
                            _ => State::Start,
                        }
                    };
                    if self.state == State::Start {
                        self.next_head();
                        head_start = i + 1;
                    } else {
                        self.verdict = Verdict::Incomplete;
                    }
                }
                Verdict::Reject(reject) => {
                    return Some(Refusal {
                        reject,
                        at: head_start.min(i),
                        pipelined: self.heads > 0,
                    })
                }
            }
            i += 1;
        }
        None
    }

    /// Skips the run of bytes at the start of `bytes` that cannot change
    /// the state: the rest of a request target, or of a header value that
    /// is not a Content-Length. Most of a head is such runs, and this loop
    /// is what keeps the scanner cheap; `head_byte` sees every other byte.
    /// Never runs past the size limit, so the byte over it still refuses.
    #[inline]
    fn plain_run(&mut self, bytes: &[u8]) -> usize {
        let table = match self.state {
            State::Target => &TARGET_BYTE,
            State::Value if !self.in_length && !self.in_te => &VALUE_BYTE,
            _ => return 0,
        };
        if self.verdict != Verdict::Incomplete {
            return 0;
        }
        let room = self.limit.saturating_sub(self.seen);
        let bytes = &bytes[..bytes.len().min(room)];
        let run = bytes
            .iter()
            .position(|&b| !table[usize::from(b)])
            .unwrap_or(bytes.len());
        self.seen += run;
        if self.state == State::Target {
            self.target_len += run;
        }
        run
    }

    /// One byte of chunked framing; true when the body (and trailers) ended.
    fn step_body(&mut self, b: u8) -> bool {
        // hyper takes chunked framing only with CRLF line ends, and reads a
        // bare LF where the trailers end as the start of a trailer line.
        // Where the two parsers would part ways, the scanner stops
        // following: the stream is never again at a request boundary, so
        // the connection is never parked mid-body.
        if b == b'\n' && !self.cr {
            self.state = State::Lost;
            return false;
        }
        self.cr = b == b'\r';
        match self.state {
            State::ChunkSize => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    match self
                        .chunk
                        .checked_mul(16)
                        .and_then(|c| c.checked_add(digit))
                    {
                        Some(c) => self.chunk = c,
                        None => self.state = State::Lost,
                    }
                }
                b';' | b' ' | b'\t' => self.state = State::ChunkExt,
                b'\r' => {}
                b'\n' => {
                    self.state = if self.chunk == 0 {
                        State::Trailer
                    } else {
                        State::ChunkData(self.chunk)
                    };
                    self.chunk = 0;
                }
                _ => self.state = State::Lost,
            },
            State::ChunkExt if b == b'\n' => {
                self.state = if self.chunk == 0 {
                    State::Trailer
                } else {
                    State::ChunkData(self.chunk)
                };
                self.chunk = 0;
            }
            State::ChunkDataEnd => match b {
                b'\r' => {}
                b'\n' => self.state = State::ChunkSize,
                _ => self.state = State::Lost,
            },
            State::Trailer => match b {
                b'\r' => {}
                b'\n' => return true,
                _ => self.state = State::TrailerLine,
            },
            State::TrailerLine if b == b'\n' => self.state = State::Trailer,
            _ => {}
        }
        false
    }

    /// The verdict on the head scanned so far.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Feeds bytes as they arrive and returns the verdict so far.
    pub fn feed(&mut self, bytes: &[u8]) -> Verdict {
        let mut i = 0;
        while i < bytes.len() && self.verdict == Verdict::Incomplete {
            let run = self.plain_run(&bytes[i..]);
            if run > 0 {
                i += run;
                continue;
            }
            self.head_byte(bytes[i]);
            i += 1;
        }
        self.verdict
    }

    /// One byte of a head (the hot loop: no slicing, no iterator).
    #[inline]
    fn head_byte(&mut self, b: u8) -> Verdict {
        if self.verdict != Verdict::Incomplete {
            return self.verdict;
        }
        self.seen += 1;
        if self.seen > self.limit {
            self.verdict = Verdict::Reject(Reject::TooLarge);
        } else if let Err(why) = self.step(b) {
            self.verdict = Verdict::Reject(if why == TOO_MANY_FIELDS {
                Reject::TooManyHeaders
            } else {
                Reject::Malformed(why)
            });
        }
        self.verdict
    }

    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        if self.cr && b != b'\n' {
            return Err("a CR not followed by LF");
        }
        self.cr = b == b'\r';
        match self.state {
            State::Start => match b {
                b'\r' | b'\n' => {}
                _ if is_tchar(b) => {
                    self.state = State::Method;
                    self.push_method(b);
                }
                _ => return Err("malformed request line"),
            },
            State::Method => match b {
                b' ' => self.state = State::Target,
                _ if is_tchar(b) => self.push_method(b),
                _ => return Err("malformed request method"),
            },
            State::Target => match b {
                b' ' if self.target_len > 0 => self.state = State::Version,
                0x21..=0x7e => self.target_len += 1,
                _ => return Err("invalid byte in the request target"),
            },
            State::Version => {
                match b {
                    b'\n' => {
                        match &self.version[..self.version_len.min(8)] {
                            b"HTTP/1.1" if self.version_len == 8 => {}
                            b"HTTP/1.0" if self.version_len == 8 => self.http10 = true,
                            b"HTTP/2.0" => return Err(
                                "HTTP/2 without TLS (prior knowledge) is not served: use HTTP/1.1",
                            ),
                            _ => {
                                return Err(
                                    "unsupported HTTP version (HTTP/1.0 and HTTP/1.1 are served)",
                                )
                            }
                        }
                        self.state = State::LineStart;
                    }
                    b'\r' => {}
                    0x21..=0x7e => {
                        if self.version_len < 8 {
                            self.version[self.version_len] = b;
                        }
                        self.version_len += 1;
                    }
                    _ => return Err("malformed request line"),
                }
            }
            State::LineStart => match b {
                b'\r' => {}
                b'\n' => return self.finish(),
                b' ' | b'\t' => return Err("obsolete line folding"),
                _ if is_tchar(b) => {
                    self.fields += 1;
                    if self.fields > self.max_fields {
                        return Err(TOO_MANY_FIELDS);
                    }
                    self.state = State::Name;
                    self.name_len = 0;
                    self.push_name(b);
                }
                _ => return Err("malformed header line"),
            },
            State::Name => match b {
                b':' => {
                    let name = &self.name[..self.name_len.min(NAME_CAP)];
                    self.in_length = false;
                    if self.name_len <= NAME_CAP {
                        if name == b"content-length" {
                            self.content_length = true;
                            self.in_length = true;
                            self.chunk = 0;
                            self.length_digits = 0;
                            self.length_gap = false;
                        }
                        if name == b"transfer-encoding" {
                            if self.transfer_encoding {
                                return Err("more than one Transfer-Encoding header");
                            }
                            self.transfer_encoding = true;
                            self.in_te = true;
                            self.te_len = 0;
                            self.te_gap = false;
                        }
                        self.upgrade |= name == b"upgrade";
                    }
                    self.state = State::Value;
                }
                _ if is_tchar(b) => self.push_name(b),
                b' ' | b'\t' => return Err("whitespace in a header name"),
                _ => return Err("invalid byte in a header name"),
            },
            State::Value => match b {
                b'\n' => {
                    if self.in_length {
                        self.end_length()?;
                    }
                    if self.in_te {
                        self.in_te = false;
                        if &self.te[..self.te_len.min(7)] != b"chunked" || self.te_len != 7 {
                            return Err("unsupported Transfer-Encoding (only chunked is accepted)");
                        }
                    }
                    self.state = State::LineStart;
                }
                b' ' | b'\t' | b'\r' if self.in_te => self.te_gap |= self.te_len > 0,
                0x21..=0x7e if self.in_te => {
                    if self.te_gap {
                        return Err("unsupported Transfer-Encoding (only chunked is accepted)");
                    }
                    if self.te_len < 7 {
                        self.te[self.te_len] = b.to_ascii_lowercase();
                    }
                    self.te_len += 1;
                }
                _ if self.in_te => return Err("invalid Transfer-Encoding"),
                b'0'..=b'9' if self.in_length && self.length_gap => {
                    return Err("invalid Content-Length")
                }
                b'0'..=b'9' if self.in_length => {
                    self.length_digits += 1;
                    self.chunk = self
                        .chunk
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(b - b'0')))
                        .ok_or("Content-Length too large")?;
                }
                b'\r' | b' ' | b'\t' if self.in_length => self.length_gap |= self.length_digits > 0,
                _ if self.in_length => return Err("invalid Content-Length"),
                b'\r' | b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                _ => return Err("control character in a header value"),
            },
            State::Done => {}
            _ => {}
        }
        Ok(())
    }

    fn push_method(&mut self, b: u8) {
        if self.method_len < self.method.len() {
            self.method[self.method_len] = b;
        }
        self.method_len += 1;
    }

    fn push_name(&mut self, b: u8) {
        if self.name_len < NAME_CAP {
            self.name[self.name_len] = b.to_ascii_lowercase();
            self.name_len += 1;
        } else {
            self.name_len = NAME_CAP + 1;
        }
    }

    /// A Content-Length line ended: one value, equal to any earlier one.
    fn end_length(&mut self) -> Result<(), &'static str> {
        self.in_length = false;
        if self.length_digits == 0 {
            return Err("invalid Content-Length");
        }
        let value = self.chunk;
        self.chunk = 0;
        match self.length {
            Some(earlier) if earlier != value => Err("conflicting Content-Length values"),
            _ => {
                self.length = Some(value);
                Ok(())
            }
        }
    }

    fn finish(&mut self) -> Result<(), &'static str> {
        self.state = State::Done;
        if self.content_length && self.transfer_encoding {
            return Err("conflicting Content-Length and Transfer-Encoding");
        }
        if self.http10 && self.transfer_encoding {
            return Err("Transfer-Encoding in an HTTP/1.0 request");
        }
        self.verdict = Verdict::Complete;
        Ok(())
    }
}

/// RFC 9110 `tchar`, as a table: this runs for every byte of every head.
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
};

/// Bytes that continue a request target without ending it (`step`'s
/// `State::Target` arm: visible ASCII, not the space that ends it).
const TARGET_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0x21;
    while i <= 0x7e {
        t[i] = true;
        i += 1;
    }
    t
};

/// The step error that stands for [`Reject::TooManyHeaders`].
const TOO_MANY_FIELDS: &str = "too many header fields";

/// Bytes that continue a header value without ending it (`step`'s
/// `State::Value` arm: anything but the line feed and control bytes other
/// than HTAB; a CR goes through `step`, which checks that LF follows).
const VALUE_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = matches!(b, b'\t' | 0x20..=0x7e | 0x80..=0xff);
        i += 1;
    }
    t
};

#[inline]
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(limit: usize, parts: &[&[u8]]) -> Verdict {
        let mut s = HeadScan::new(limit);
        for p in parts {
            s.feed(p);
        }
        s.verdict()
    }

    fn malformed(v: Verdict) -> bool {
        matches!(v, Verdict::Reject(Reject::Malformed(_)))
    }

    /// The skipped runs must change nothing: every head gets the verdict
    /// that feeding it one byte at a time through `step` gives.
    #[test]
    fn skipping_plain_runs_changes_no_verdict() {
        let heads: &[&[u8]] = &[
            b"GET http://h:80/a?b=c HTTP/1.1\r\nHost: h\r\nX-Y: z \t\xe9\r\n\r\n",
            b"GET /a\x7fb HTTP/1.1\r\n\r\n",
            b"GET /a\xffb HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: long value that runs past the limit\r\n\r\n",
            b"GET /a-long-target-that-runs-past-the-limit HTTP/1.1\r\n\r\n",
        ];
        for head in heads {
            for limit in [16, 30, 40, 1024] {
                let mut bytewise = HeadScan::new(limit);
                for &b in *head {
                    bytewise.head_byte(b);
                }
                for cut in 0..head.len() {
                    let v = scan(limit, &[&head[..cut], &head[cut..]]);
                    assert_eq!(v, bytewise.verdict(), "{head:?} limit {limit} cut {cut}");
                    let mut s = HeadScan::new(limit);
                    let got = s.scan(&head[..cut]).or_else(|| s.scan(&head[cut..]));
                    let expected = match bytewise.verdict() {
                        Verdict::Reject(r) => Some(r),
                        _ => None,
                    };
                    assert_eq!(got.map(|r| r.reject), expected, "{head:?} limit {limit}");
                }
            }
        }
    }

    #[test]
    fn the_tchar_table_is_rfc_9110() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_tchar(b), expected, "{b}");
        }
    }

    #[test]
    fn ordinary_heads_pass_in_any_split() {
        let head = b"GET http://h:80/a?b=c HTTP/1.1\r\nHost: h\r\nX-Y: z \t\xe9\r\n\r\nBODY bytes \x00 ignored";
        for cut in 0..head.len() {
            assert_eq!(
                scan(1024, &[&head[..cut], &head[cut..]]),
                Verdict::Complete,
                "cut at {cut}"
            );
        }
        assert_eq!(scan(1024, &[b"\r\nGET / HTTP/1.0\n\n"]), Verdict::Complete);
    }

    #[test]
    fn both_framing_headers_are_refused_across_reads() {
        let v = scan(
            1024,
            &[
                b"POST http://x/ HTTP/1.1\r\nContent-Len",
                b"gth: 5\r\nTRANSFER-encoding: chunked\r\n\r\n",
            ],
        );
        assert_eq!(
            v,
            Verdict::Reject(Reject::Malformed(
                "conflicting Content-Length and Transfer-Encoding"
            ))
        );
        let ok = scan(1024, &[b"GET http://h/ HTTP/1.1\r\nX-Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        assert_eq!(ok, Verdict::Complete);
    }

    #[test]
    fn the_size_limit_is_exact() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(scan(head.len(), &[head]), Verdict::Complete);
        assert_eq!(
            scan(head.len() - 1, &[head]),
            Verdict::Reject(Reject::TooLarge)
        );
    }

    fn scan_all(parts: &[&[u8]]) -> Option<(usize, Refusal)> {
        let mut s = HeadScan::new(1024);
        parts
            .iter()
            .enumerate()
            .find_map(|(n, p)| s.scan(p).map(|r| (n, r)))
    }

    #[test]
    fn pipelined_heads_are_followed_through_bodies() {
        let good = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: v\r\n\r\nGET /d HTTP/1.1\r\n\r\n";
        assert_eq!(scan_all(&[good]), None);
        for cut in 0..good.len() {
            assert_eq!(
                scan_all(&[&good[..cut], &good[cut..]]),
                None,
                "cut at {cut}"
            );
        }
        let bad = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (_, r) = scan_all(&[bad]).expect("refused");
        assert!(r.pipelined);
        assert_eq!(r.at, 28, "the refused head starts after the first request");
        let first = b"POST /b HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        let (_, r) = scan_all(&[first]).expect("refused");
        assert!(!r.pipelined);
        assert_eq!(
            r.reject,
            Reject::Malformed("conflicting Content-Length values")
        );
    }

    /// Chunked framing with a bare LF is where hyper (CRLF only) and a
    /// lenient reading would part ways: the scanner stops following, so
    /// the stream is never taken for a request boundary mid-body.
    #[test]
    fn a_bare_lf_in_chunked_framing_is_not_followed() {
        let head = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5;x\nhello\r\n0\r\n\r\n",
            b"0\r\nT: v\n\r\n",
            b"0\r\n\n",
        ] {
            let mut scan = HeadScan::new(1024);
            assert_eq!(scan.scan(head), None);
            assert_eq!(scan.scan(body), None);
            assert!(
                !scan.at_head_boundary(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let mut scan = HeadScan::new(1024);
        assert_eq!(scan.scan(head), None);
        assert_eq!(scan.scan(b"5;x\r\nhello\r\n0\r\nT: v\r\n\r\n"), None);
        assert!(
            scan.at_head_boundary(),
            "CRLF framing is followed to its end"
        );
    }

    #[test]
    fn smuggling_shapes_are_malformed() {
        for bad in [
            &b"GET http://h/ HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n"[..],
            b"GET http://h/ HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET http://h/\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET http://h/a b HTTP/1.1\r\n\r\n\r\n",
            b"GET  http://h/ HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET http://h/ HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                malformed(scan(1024, &[bad])),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn what_hyper_would_refuse_bare_is_refused_here() {
        for bad in [
            &b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n"[..],
            b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chun ked\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
            b"POST http://h/ HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET http://h/ HTTP/1.1\rHost: h\r\n\r\n",
            b"POST http://h/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET http://h/ HTTP/1.2\r\n\r\n",
            b"GET http://h/ HTTP/1.10\r\n\r\n",
        ] {
            assert!(
                malformed(scan(1024, &[bad])),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // What stays accepted.
        for good in [
            &b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n"[..],
            b"POST http://h/ HTTP/1.1\r\nContent-Length:  12 \r\n\r\n",
            b"GET http://h/ HTTP/1.0\r\nHost: h\r\n\r\n",
        ] {
            assert_eq!(
                scan(1024, &[good]),
                Verdict::Complete,
                "{:?}",
                String::from_utf8_lossy(good)
            );
        }
    }

    #[test]
    fn the_header_count_is_bounded() {
        let head = |n: usize| {
            let mut h = b"GET http://h/ HTTP/1.1\r\n".to_vec();
            for i in 0..n {
                h.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            }
            h.extend_from_slice(b"\r\n");
            h
        };
        let mut ok = HeadScan::new(1 << 20).with_max_headers(100);
        assert_eq!(ok.feed(&head(100)), Verdict::Complete);
        let mut over = HeadScan::new(1 << 20).with_max_headers(100);
        assert_eq!(
            over.feed(&head(101)),
            Verdict::Reject(Reject::TooManyHeaders)
        );
        let mut raised = HeadScan::new(1 << 20).with_max_headers(200);
        assert_eq!(raised.feed(&head(150)), Verdict::Complete);
    }
}
