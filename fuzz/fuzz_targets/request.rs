//! What a client sends first: the head scanner (fed in arbitrary pieces),
//! request-target and authority parsing. None may panic, and the scanner
//! must give the same verdict however the bytes are split.
#![no_main]

use eddy::head_scan::HeadScan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = HeadScan::new(4096).scan(data);
    if data.len() > 1 {
        let cut = usize::from(data[0]) % data.len();
        let mut split = HeadScan::new(4096);
        let first = split.scan(&data[..cut]);
        let second = if first.is_none() {
            split.scan(&data[cut..])
        } else {
            None
        };
        let verdict = first.or(second);
        assert_eq!(whole.map(|r| r.reject), verdict.map(|r| r.reject));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = eddy::config::split_host_port(text);
        if let Ok(uri) = text.parse::<http::Uri>() {
            if let Ok(target) = eddy::proxy::forward_target(&uri) {
                let _ = eddy::proxy::origin_form(&uri);
                assert!(!target.host.is_empty());
            }
        }
    }
});
