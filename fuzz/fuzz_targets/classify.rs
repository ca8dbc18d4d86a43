//! Holds the hand-written scanner to the regex oracle on arbitrary UTF-8:
//! both must return identical `Classified` values (and neither may panic),
//! for the input as a whole log line through the prefix parser and as a bare
//! sshd message (so the fuzzer need not first learn a syslog prefix).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sshwarden_pipeline::classify::{oracle, scanner};
use sshwarden_pipeline::prefix::parse_line;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(line) = parse_line(text) {
        agree(line.message);
    }
    agree(text);
});

fn agree(message: &str) {
    let s = scanner::classify(message);
    let o = oracle::classify(message);
    assert_eq!(s, o, "scanner and oracle disagree on {message:?}");
}
