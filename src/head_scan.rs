//! A byte-level check of request heads before hyper parses them.
//!
//! Why not leave it all to hyper: hyper answers a head it cannot parse with a
//! bare 400 or 431 of its own, without the `Proxy-Status` that SPEC section 7
//! promises for every response eddy makes; and it resolves a head carrying
//! both `Content-Length` and `Transfer-Encoding` by dropping the length
//! before eddy sees it, where SPEC wants a 400 (the request-smuggling
//! vector). So the client socket runs every head through this scanner as the
//! bytes arrive. It counts the head's exact size against `max_header_bytes`
//! and rejects what RFC 9112 says a server must reject: a malformed request
//! line, control or non-ASCII bytes in the target, obsolete line folding,
//! whitespace or invalid bytes in a header name, control bytes in a value,
//! and conflicting framing. When it rejects, the listener answers itself and
//! hyper never sees the head.
//!
//! It keeps no buffer: a few bytes of state per connection, one pass over
//! head bytes only (body bytes after the head are not looked at).

/// Longest header name the scanner needs to recognise.
const NAME_CAP: usize = 17; // "transfer-encoding"

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Larger than `max_header_bytes` (431).
    TooLarge,
    /// Not an acceptable HTTP/1 request head (400).
    Malformed(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// More bytes are needed.
    Incomplete,
    /// The head ended and is acceptable; later bytes are body.
    Complete,
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
    Done,
}

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
    verdict: Verdict,
}

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
            verdict: Verdict::Incomplete,
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Feeds bytes as they arrive and returns the verdict so far.
    pub fn feed(&mut self, bytes: &[u8]) -> Verdict {
        for &b in bytes {
            if self.verdict != Verdict::Incomplete {
                break;
            }
            self.seen += 1;
            if self.seen > self.limit {
                self.verdict = Verdict::Reject(Reject::TooLarge);
                break;
            }
            if let Err(why) = self.step(b) {
                self.verdict = Verdict::Reject(Reject::Malformed(why));
            }
        }
        self.verdict
    }

    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        match self.state {
            State::Start => match b {
                b'\r' | b'\n' => {}
                _ if is_tchar(b) => self.state = State::Method,
                _ => return Err("malformed request line"),
            },
            State::Method => match b {
                b' ' => self.state = State::Target,
                _ if is_tchar(b) => {}
                _ => return Err("malformed request method"),
            },
            State::Target => match b {
                b' ' if self.target_len > 0 => self.state = State::Version,
                0x21..=0x7e => self.target_len += 1,
                _ => return Err("invalid byte in the request target"),
            },
            State::Version => match b {
                b'\n' => self.state = State::LineStart,
                b'\r' | 0x21..=0x7e => {}
                _ => return Err("malformed request line"),
            },
            State::LineStart => match b {
                b'\r' => {}
                b'\n' => return self.finish(),
                b' ' | b'\t' => return Err("obsolete line folding"),
                _ if is_tchar(b) => {
                    self.state = State::Name;
                    self.name_len = 0;
                    self.push_name(b);
                }
                _ => return Err("malformed header line"),
            },
            State::Name => match b {
                b':' => {
                    let name = &self.name[..self.name_len.min(NAME_CAP)];
                    if self.name_len <= NAME_CAP {
                        self.content_length |= name == b"content-length";
                        self.transfer_encoding |= name == b"transfer-encoding";
                    }
                    self.state = State::Value;
                }
                _ if is_tchar(b) => self.push_name(b),
                b' ' | b'\t' => return Err("whitespace in a header name"),
                _ => return Err("invalid byte in a header name"),
            },
            State::Value => match b {
                b'\n' => self.state = State::LineStart,
                b'\r' | b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                _ => return Err("control character in a header value"),
            },
            State::Done => {}
        }
        Ok(())
    }

    fn push_name(&mut self, b: u8) {
        if self.name_len < NAME_CAP {
            self.name[self.name_len] = b.to_ascii_lowercase();
            self.name_len += 1;
        } else {
            self.name_len = NAME_CAP + 1;
        }
    }

    fn finish(&mut self) -> Result<(), &'static str> {
        self.state = State::Done;
        if self.content_length && self.transfer_encoding {
            return Err("conflicting Content-Length and Transfer-Encoding");
        }
        self.verdict = Verdict::Complete;
        Ok(())
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
}
