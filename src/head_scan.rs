//! A byte-level look at request heads for what hyper normalises away.
//!
//! hyper resolves a head that carries both `Content-Length` and
//! `Transfer-Encoding` by dropping the length (RFC 9112 §6.3) before the
//! request reaches eddy. SPEC section 7 wants such a request refused with
//! 400, since a proxy that forwards it is a request-smuggling vector. The
//! scanner reads the same bytes hyper reads, up to the end of the head, and
//! notes which framing headers it saw. It keeps no buffer: a few bytes of
//! state per connection, a single pass over head bytes only.

/// Longest header name the scanner needs to recognise.
const NAME_CAP: usize = 17; // "transfer-encoding"

#[derive(Debug, Clone)]
pub struct HeadScan {
    name: [u8; NAME_CAP],
    /// Bytes of the current line's name seen so far; `NAME_CAP + 1` once the
    /// name is too long to matter.
    name_len: usize,
    in_name: bool,
    line_empty: bool,
    done: bool,
    content_length: bool,
    transfer_encoding: bool,
}

impl Default for HeadScan {
    fn default() -> Self {
        HeadScan {
            name: [0; NAME_CAP],
            name_len: 0,
            in_name: true,
            line_empty: true,
            done: false,
            content_length: false,
            transfer_encoding: false,
        }
    }
}

impl HeadScan {
    /// Feeds bytes as they arrive; bytes after the head's end are ignored.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done {
                return;
            }
            match b {
                b'\n' => {
                    if self.line_empty {
                        self.done = true;
                    }
                    self.name_len = 0;
                    self.in_name = true;
                    self.line_empty = true;
                }
                b'\r' => {}
                _ => {
                    self.line_empty = false;
                    if !self.in_name {
                        continue;
                    }
                    if b == b':' {
                        self.in_name = false;
                        let name = &self.name[..self.name_len.min(NAME_CAP)];
                        if self.name_len <= NAME_CAP {
                            self.content_length |= name == b"content-length";
                            self.transfer_encoding |= name == b"transfer-encoding";
                        }
                    } else if self.name_len < NAME_CAP {
                        self.name[self.name_len] = b.to_ascii_lowercase();
                        self.name_len += 1;
                    } else {
                        self.name_len = NAME_CAP + 1;
                    }
                }
            }
        }
    }

    /// Whether the head carried both framing headers.
    pub fn conflicting_framing(&self) -> bool {
        self.content_length && self.transfer_encoding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> HeadScan {
        let mut s = HeadScan::default();
        for p in parts {
            s.feed(p);
        }
        s
    }

    #[test]
    fn both_framing_headers_are_noticed_across_reads() {
        let s = scan(&[
            b"POST http://x/ HTTP/1.1\r\nContent-Len",
            b"gth: 5\r\nTRANSFER-encoding: chunked\r\n\r\n",
        ]);
        assert!(s.conflicting_framing());
    }

    #[test]
    fn one_framing_header_is_fine_and_body_bytes_are_ignored() {
        let s =
            scan(&[b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\ntransfer-encoding: chunked\r\n"]);
        assert!(!s.conflicting_framing());
        let s = scan(&[b"GET http://h:80/a HTTP/1.1\r\nX-Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        assert!(!s.conflicting_framing());
    }
}
