//! CloudWatch Logs subscription payloads as delivered to Kinesis (and Kafka):
//! one gzip member holding
//! `{messageType, owner, logGroup, logStream, subscriptionFilters, logEvents:[{id, timestamp, message}]}`.
//!
//! Decoding borrows: event messages point into the decompressed buffer the
//! [`Decoder`] keeps between records, and only strings with JSON escapes are
//! copied. Unknown fields (`extractedFields`, `policyLevel`) are accepted;
//! event ids may be decimal strings (AWS) or integers (emulators). The
//! decompressed size is attacker-influenced and capped.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Kinesis records are at most 1 MiB (10 MiB on raised streams); log text
/// compresses about 10-20x, so 64 MiB leaves room for any honest record and
/// still stops a gzip bomb (which inflates ~1000x) early.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is empty")]
    Empty,
    #[error("record is neither gzip nor JSON (first byte 0x{0:02x})")]
    NotGzipOrJson(u8),
    #[error("gzip stream is truncated or corrupt: {0}")]
    Gzip(String),
    #[error("decompressed size {claimed} exceeds the cap of {cap} bytes")]
    TooLarge { claimed: usize, cap: usize },
    #[error("payload is not valid UTF-8 at byte {0}")]
    Utf8(usize),
    #[error("payload is not a subscription envelope: {0}")]
    Json(String),
    #[error("unknown messageType {0:?}")]
    UnknownMessageType(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Data,
    /// A reachability probe CloudWatch sends when a subscription is created.
    Control,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<'a> {
    #[serde(borrow)]
    pub message_type: Cow<'a, str>,
    #[serde(borrow, default)]
    pub owner: Cow<'a, str>,
    #[serde(borrow, default)]
    pub log_group: Cow<'a, str>,
    #[serde(borrow, default)]
    pub log_stream: Cow<'a, str>,
    #[serde(borrow, default)]
    pub log_events: Vec<LogEvent<'a>>,
}

impl Envelope<'_> {
    pub fn kind(&self) -> Result<MessageType, DecodeError> {
        match &*self.message_type {
            "DATA_MESSAGE" => Ok(MessageType::Data),
            "CONTROL_MESSAGE" => Ok(MessageType::Control),
            other => Err(DecodeError::UnknownMessageType(other.to_owned())),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LogEvent<'a> {
    #[serde(borrow, deserialize_with = "event_id")]
    pub id: Cow<'a, str>,
    /// Milliseconds since the epoch: the event time.
    pub timestamp: i64,
    #[serde(borrow)]
    pub message: Cow<'a, str>,
}

fn event_id<'de, D: Deserializer<'de>>(d: D) -> Result<Cow<'de, str>, D::Error> {
    struct Id;
    impl<'de> Visitor<'de> for Id {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an event id as a string or an integer")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_string()))
        }
    }
    d.deserialize_any(Id)
}

/// Decodes records, reusing its decompressor and output buffer.
pub struct Decoder {
    decompressor: libdeflater::Decompressor,
    buf: Vec<u8>,
    max_decompressed: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_DECOMPRESSED)
    }
}

impl Decoder {
    pub fn new(max_decompressed: usize) -> Self {
        Decoder {
            decompressor: libdeflater::Decompressor::new(),
            buf: Vec::new(),
            max_decompressed,
        }
    }

    /// Decodes one record: gzip (as Kinesis delivers it) or, for captured
    /// payloads, plain JSON.
    pub fn decode<'a>(&'a mut self, record: &'a [u8]) -> Result<Envelope<'a>, DecodeError> {
        let json: &[u8] = match record.first() {
            None => return Err(DecodeError::Empty),
            Some(0x1f) => {
                let n = self.gunzip(record)?;
                &self.buf[..n]
            }
            Some(b'{') | Some(b' ') | Some(b'\n') | Some(b'\t') | Some(b'\r') => record,
            Some(&other) => return Err(DecodeError::NotGzipOrJson(other)),
        };
        // SIMD validation (std's scalar check was 2% of the whole path);
        // std only to say where the first bad byte is.
        let text = simdutf8::basic::from_utf8(json).map_err(|_| {
            DecodeError::Utf8(std::str::from_utf8(json).map_or_else(|e| e.valid_up_to(), str::len))
        })?;
        // CloudWatch writes one compact shape: read it directly, and give
        // anything else (escapes, other value types, odd numbers) to the
        // full parser. Through serde the JSON was a third of the whole path.
        let envelope: Envelope<'a> = match plain_envelope(text) {
            Some(e) => e,
            None => {
                sonic_rs::from_str(text).map_err(|e| DecodeError::Json(short(&e.to_string())))?
            }
        };
        envelope.kind()?;
        Ok(envelope)
    }

    /// Inflates one gzip member into `self.buf`. The output is sized from the
    /// gzip trailer (ISIZE, the size mod 2^32), checked against the cap first;
    /// a trailer that lies makes libdeflate fail rather than overrun. The
    /// buffer only grows (zero-filling it per record cost 4% of the path).
    fn gunzip(&mut self, record: &[u8]) -> Result<usize, DecodeError> {
        if record.len() < 18 {
            return Err(DecodeError::Gzip(format!(
                "{} bytes is shorter than a gzip header and trailer",
                record.len()
            )));
        }
        let trailer = &record[record.len() - 4..];
        let claimed = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as usize;
        if claimed > self.max_decompressed {
            return Err(DecodeError::TooLarge {
                claimed,
                cap: self.max_decompressed,
            });
        }
        if self.buf.len() < claimed {
            self.buf.resize(claimed, 0);
        }
        match self
            .decompressor
            .gzip_decompress(record, &mut self.buf[..claimed])
        {
            Ok(n) if n == claimed => Ok(n),
            Ok(n) => Err(DecodeError::Gzip(format!(
                "inflated {n} bytes but the trailer says {claimed}"
            ))),
            Err(e) => Err(DecodeError::Gzip(e.to_string())),
        }
    }
}

/// The payload when it has the plain shape: an object with `messageType`,
/// `owner`, `logGroup` and `logStream` strings; `logEvents` an array of
/// objects with exactly `id` (a string), `timestamp` (an integer) and
/// `message` (a string), each once; any other key a string or an array of
/// strings; strings without `\u` surrogates; no control character anywhere
/// (not even whitespace between tokens: CloudWatch writes compact JSON, and
/// one vectorised pass over the whole text is cheaper than a check of each
/// string); nothing but spaces after. `None` for anything else, also for JSON serde
/// reads: then serde decides, so this only ever agrees with it
/// (tests::the_plain_reader_agrees_with_serde). Hand-written, beside the
/// crate, because JSON was a third of the whole path and this one shape is
/// what CloudWatch writes: reading it directly cut the whole path's
/// instructions by 15.5% (BENCHMARKS.md, third round).
fn plain_envelope(text: &str) -> Option<Envelope<'_>> {
    // Without an early exit, so that it vectorizes.
    if text.bytes().fold(false, |c, b| c | (b < 0x20)) {
        return None;
    }
    let mut p = Plain {
        text,
        at: 0,
        string_end: StringEnd::new(),
    };
    p.eat(b'{')?;
    let (mut kind, mut owner, mut group, mut stream) = (None, None, None, None);
    let mut events = None;
    loop {
        let key = p.string()?;
        p.eat(b':')?;
        let field = match &*key {
            "messageType" => &mut kind,
            "owner" => &mut owner,
            "logGroup" => &mut group,
            "logStream" => &mut stream,
            "logEvents" if events.is_none() => {
                events = Some(p.events()?);
                if p.next_member()? {
                    continue;
                }
                break;
            }
            "logEvents" => return None,
            _ => {
                p.skip_strings()?;
                if p.next_member()? {
                    continue;
                }
                break;
            }
        };
        if field.is_some() {
            // serde refuses a field named twice.
            return None;
        }
        *field = Some(p.string()?);
        if !p.next_member()? {
            break;
        }
    }
    p.skip_ws();
    if p.at != text.len() {
        return None;
    }
    Some(Envelope {
        message_type: kind?,
        owner: owner.unwrap_or_default(),
        log_group: group.unwrap_or_default(),
        log_stream: stream.unwrap_or_default(),
        log_events: events.unwrap_or_default(),
    })
}

/// A cursor over the text [`plain_envelope`] reads.
struct Plain<'a> {
    text: &'a str,
    at: usize,
    string_end: StringEnd,
}

/// Finds the quote or backslash that ends a string's plain run. On x86-64
/// the AVX2 searcher is made once per record: `memchr2` chooses it again on
/// every call through a function pointer, and two searches per event made
/// that choice 1.7% of the whole path (BENCHMARKS.md, session 14).
#[derive(Clone, Copy)]
struct StringEnd {
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::memchr::Two>,
}

impl StringEnd {
    fn new() -> Self {
        StringEnd {
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::memchr::Two::new(b'"', b'\\'),
        }
    }

    fn find(&self, haystack: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(two) = &self.avx2 {
            return two.find(haystack);
        }
        memchr::memchr2(b'"', b'\\', haystack)
    }
}

impl<'a> Plain<'a> {
    /// Spaces: the other JSON whitespace (tab, newline, return) is a
    /// control character, refused for the whole text before reading.
    fn skip_ws(&mut self) {
        let b = self.text.as_bytes();
        while b.get(self.at) == Some(&b' ') {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.text.as_bytes().get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.at += 1)
    }

    /// After a member: true at a comma (another follows), false at the
    /// closing brace.
    fn next_member(&mut self) -> Option<bool> {
        let more = match self.peek()? {
            b',' => true,
            b'}' => false,
            _ => return None,
        };
        self.at += 1;
        Some(more)
    }

    /// A string: borrowed when it has no escapes, unescaped into an owned
    /// one when it has (sshd's `rdomain ""` is common); `None` at a control
    /// character or a surrogate escape (left to serde).
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        self.string_rest()
    }

    /// The rest of a string whose opening quote was read.
    fn string_rest(&mut self) -> Option<Cow<'a, str>> {
        let start = self.at;
        let rest = self.text.as_bytes().get(start..)?;
        // Control characters were refused for the whole text.
        let len = self.string_end.find(rest)?;
        if rest[len] == b'"' {
            self.at = start + len + 1;
            return self.text.get(start..start + len).map(Cow::Borrowed);
        }
        // Room for what follows the first escape too: sshd's `rdomain ""`
        // ends most escaped messages, and a string sized to the part before
        // it was grown again at the first byte pushed.
        let mut owned = String::with_capacity(len + 64);
        owned.push_str(self.text.get(start..start + len)?);
        self.at = start + len;
        loop {
            let b = self.text.as_bytes();
            match *b.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(Cow::Owned(owned));
                }
                b'\\' => {
                    let c = match *b.get(self.at + 1)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self.text.get(self.at + 2..self.at + 6)?;
                            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                                return None;
                            }
                            let code = u32::from_str_radix(hex, 16).ok()?;
                            self.at += 4;
                            // Surrogates (pairs or lone) are serde's to judge.
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    owned.push(c);
                    self.at += 2;
                }
                _ => {
                    let rest = b.get(self.at..)?;
                    let len = self.string_end.find(rest)?;
                    owned.push_str(self.text.get(self.at..self.at + len)?);
                    self.at += len;
                }
            }
        }
    }

    /// `lit`, exactly (no whitespace before it).
    fn literal<const N: usize>(&mut self, lit: &[u8; N]) -> Option<()> {
        let b = self.text.as_bytes().get(self.at..self.at + N)?;
        (b == lit).then(|| self.at += N)
    }

    /// An event id as CloudWatch writes it, 56 digits and the closing quote
    /// (as in the subscription data AWS shows in the CloudWatch Logs User
    /// Guide, "Subscription filters with Kinesis Data Streams"), checked a
    /// word at a time rather than searched for the quote. `None`, nothing
    /// read, for anything else, which the string reader then reads.
    fn event_id(&mut self) -> Option<&'a str> {
        const DIGITS: usize = 56;
        let b = self.text.as_bytes().get(self.at..self.at + DIGITS + 1)?;
        let mut not = 0;
        for word in b[..DIGITS].chunks_exact(8) {
            not |= not_digits(u64::from_le_bytes(word.try_into().ok()?));
        }
        if not != 0 || b[DIGITS] != b'"' {
            return None;
        }
        let id = self.text.get(self.at..self.at + DIGITS)?;
        self.at += DIGITS + 1;
        Some(id)
    }

    /// A timestamp as CloudWatch writes it: 13 digits (milliseconds from
    /// 2001 to 2286) and the comma after them, read as two words rather
    /// than digit by digit (the digit loop was a tenth of the JSON's
    /// reading). `None`, nothing read, for anything else, which
    /// [`integer`](Self::integer) then reads or refuses.
    fn millis(&mut self) -> Option<i64> {
        let b = self.text.as_bytes().get(self.at..self.at + 16)?;
        let high = u64::from_le_bytes(b[..8].try_into().ok()?);
        let low = u64::from_le_bytes(b[8..].try_into().ok()?);
        // Five digits, then the comma, in the second word.
        let low_digits = 0xFF_FFFF_FFFF;
        if b[0] == b'0'
            || not_digits(high) != 0
            || not_digits(low) & low_digits != 0
            || b[13] != b','
        {
            return None;
        }
        self.at += 13;
        let zeros = 0x30 * ONES;
        // The digits' values; no byte borrows (each is a digit), and what
        // the comma borrows from is masked off. Shifted up, the second
        // word's five read as eight with three leading zeros.
        let millis = eight_digits(high - zeros) * 100_000
            + eight_digits((low.wrapping_sub(zeros) & low_digits) << 24);
        i64::try_from(millis).ok()
    }

    /// An integer of at most 18 digits (no overflow), no fraction or exponent.
    fn integer(&mut self) -> Option<i64> {
        self.skip_ws();
        let b = self.text.as_bytes();
        let negative = b.get(self.at) == Some(&b'-');
        let start = self.at + usize::from(negative);
        let (mut end, mut v) = (start, 0i64);
        while let Some(&c) = b.get(end) {
            if !c.is_ascii_digit() {
                break;
            }
            // Wraps only past 18 digits, which are refused below.
            v = v.wrapping_mul(10).wrapping_add(i64::from(c - b'0'));
            end += 1;
        }
        let digits = end - start;
        if digits == 0 || digits > 18 || (b[start] == b'0' && (digits > 1 || negative)) {
            return None;
        }
        if matches!(b.get(end), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.at = end;
        Some(if negative { -v } else { v })
    }

    /// A string or an array of strings (`subscriptionFilters`, `policyLevel`).
    fn skip_strings(&mut self) -> Option<()> {
        if self.peek()? == b'"' {
            return self.string().map(|_| ());
        }
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.string()?;
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn events(&mut self) -> Option<Vec<LogEvent<'a>>> {
        self.eat(b'[')?;
        // About 200 bytes an event: one allocation for most records.
        let mut events = Vec::with_capacity((self.text.len() - self.at) / 128 + 1);
        if self.peek()? == b']' {
            self.at += 1;
            return Some(events);
        }
        loop {
            events.push(self.event()?);
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(events);
                }
                _ => return None,
            }
        }
    }

    fn event(&mut self) -> Option<LogEvent<'a>> {
        let start = self.at;
        if let Some(e) = self.compact_event() {
            return Some(e);
        }
        self.at = start;
        self.eat(b'{')?;
        let (mut id, mut timestamp, mut message) = (None, None, None);
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            match &*key {
                "id" if id.is_none() => id = Some(self.string()?),
                "timestamp" if timestamp.is_none() => timestamp = Some(self.integer()?),
                "message" if message.is_none() => message = Some(self.string()?),
                _ => return None,
            }
            if !self.next_member()? {
                break;
            }
        }
        Some(LogEvent {
            id: id?,
            timestamp: timestamp?,
            message: message?,
        })
    }

    /// An event exactly as CloudWatch writes it, compact and in its order;
    /// `None` sends it to the general reading above.
    fn compact_event(&mut self) -> Option<LogEvent<'a>> {
        self.skip_ws();
        self.literal(b"{\"id\":\"")?;
        let id = match self.event_id() {
            Some(id) => Cow::Borrowed(id),
            None => self.string_rest()?,
        };
        self.literal(b",\"timestamp\":")?;
        let timestamp = match self.millis() {
            Some(t) => t,
            None => self.integer()?,
        };
        self.literal(b",\"message\":\"")?;
        let message = self.string_rest()?;
        self.literal(b"}")?;
        Some(LogEvent {
            id,
            timestamp,
            message,
        })
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// Nonzero in each byte of `word` that is not an ASCII digit. A byte of
/// UTF-8 text is below 0xF8, so adding 6 carries out of none.
fn not_digits(word: u64) -> u64 {
    let high_nibbles = 0xF0 * ONES;
    ((word & high_nibbles) ^ (0x30 * ONES))
        | ((word.wrapping_add(0x06 * ONES) & high_nibbles) ^ (0x30 * ONES))
}

/// The number that eight digits' values (0-9 a byte, the first digit in
/// the lowest byte, as a little-endian read puts it) write: pairs, then
/// quads, then the halves are added up.
fn eight_digits(d: u64) -> u64 {
    let d = (d * 10 + (d >> 8)) & 0x00FF_00FF_00FF_00FF;
    let d = (d * 100 + (d >> 16)) & 0x0000_FFFF_0000_FFFF;
    (d * 10_000 + (d >> 32)) & 0xFFFF_FFFF
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    const SAMPLE: &str = r#"{"messageType":"DATA_MESSAGE","owner":"123456789012","logGroup":"/var/log/secure","logStream":"i-0abc","subscriptionFilters":["f"],"policyLevel":"ACCOUNT_LEVEL_POLICY","logEvents":[{"id":"36994863456598464547387424364451893728651406227010764800","timestamp":1700000000000,"message":"Nov 14 22:13:20 ip-10-0-0-1 sshd[1]: Invalid user a from 1.2.3.4 port 5","extractedFields":{"a":"b"}},{"id":42,"timestamp":1700000001000,"message":"client user \"dan\""}]}"#;

    #[test]
    fn decodes_every_event_with_either_id_form() {
        let rec = gz(SAMPLE.as_bytes());
        let mut d = Decoder::default();
        let env = d.decode(&rec).unwrap();
        assert_eq!(env.kind(), Ok(MessageType::Data));
        assert_eq!(env.log_stream, "i-0abc");
        assert_eq!(env.owner, "123456789012");
        assert_eq!(env.log_events.len(), 2);
        assert_eq!(env.log_events[0].id.len(), 56);
        assert!(matches!(env.log_events[0].message, Cow::Borrowed(_)));
        assert_eq!(env.log_events[1].id, "42");
        assert_eq!(env.log_events[1].message, "client user \"dan\"");
    }

    proptest::proptest! {
        /// The fuzz target's property on stable: arbitrary bytes, and valid
        /// records with bytes flipped, truncated or appended, decode to a
        /// result or a typed error, never a panic.
        #[test]
        fn never_panics(
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            flips in proptest::collection::vec((0usize..4096, 1u8..=255), 0..4),
            cut in 0usize..4096,
        ) {
            let mut d = Decoder::new(1 << 16);
            let _ = d.decode(&junk);
            let mut rec = gz(SAMPLE.as_bytes());
            for (at, x) in flips {
                let n = rec.len();
                rec[at % n] ^= x;
            }
            let _ = d.decode(&rec);
            let _ = d.decode(&rec[..cut.min(rec.len())]);
            rec.extend_from_slice(&junk);
            let _ = d.decode(&rec);
        }
    }

    /// An envelope's fields and its events' (id, timestamp, message).
    type Parts = (String, String, String, String, Vec<(String, i64, String)>);

    /// What was read, as comparable parts.
    fn parts(e: &Envelope<'_>) -> Parts {
        (
            e.message_type.to_string(),
            e.owner.to_string(),
            e.log_group.to_string(),
            e.log_stream.to_string(),
            e.log_events
                .iter()
                .map(|v| (v.id.to_string(), v.timestamp, v.message.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_plain_reader_reads_what_cloudwatch_writes() {
        let plain = SAMPLE
            .replace(r#","extractedFields":{"a":"b"}"#, "")
            .replace(r#"{"id":42,"#, r#"{"id":"42","#);
        let fast = plain_envelope(&plain).expect("the plain shape");
        let full: Envelope<'_> = sonic_rs::from_str(&plain).unwrap();
        assert_eq!(parts(&fast), parts(&full));
        assert_eq!(fast.log_events.len(), 2);
        assert!(matches!(fast.log_events[0].message, Cow::Borrowed(_)));
        assert_eq!(fast.log_events[1].message, "client user \"dan\"");
        // Integer ids and nested values go to serde.
        assert!(plain_envelope(SAMPLE).is_none());
        // Escapes as a JSON writer makes them are read here, as serde reads them.
        let messages = [
            "Connection from 1.2.3.4 port 5 on 10.0.0.1 port 22 rdomain \"\"",
            "back\\slash, tab\t, newline\n, bell\u{7}, DEL\u{7f}, e\u{301}, \u{1F600}",
            "",
            "/\"/",
        ];
        for m in messages {
            let json = format!(
                r#"{{"messageType":"DATA_MESSAGE","owner":"1","logGroup":"g","logStream":{},"subscriptionFilters":["f"],"logEvents":[{{"id":"1","timestamp":-5,"message":{}}}]}}"#,
                serde_json::to_string(m).unwrap(),
                serde_json::to_string(m).unwrap()
            );
            let fast = plain_envelope(&json).expect("a JSON writer's escapes");
            let full: Envelope<'_> = sonic_rs::from_str(&json).unwrap();
            assert_eq!(parts(&fast), parts(&full));
            assert_eq!(fast.log_events[0].message, m);
            assert_eq!(fast.log_stream, m);
        }
        // `\/` and `\u` escapes as other writers make them.
        let other = r#"{"messageType":"DATA_MESSAGE","logEvents":[{"id":"1","timestamp":0,"message":"a\/b \u00e9 \u0000"}]}"#;
        let fast = plain_envelope(other).expect("other escapes");
        assert_eq!(fast.log_events[0].message, "a/b \u{e9} \u{0}");
        assert_eq!(parts(&fast), parts(&sonic_rs::from_str(other).unwrap()));
        // A control character anywhere sends the text to serde: raw inside a
        // string (which serde refuses too) or as whitespace between tokens
        // (which serde reads, the same as the compact text).
        assert!(plain.contains("dan"));
        let raw = plain.replace("dan", "d\u{1}n");
        assert!(plain_envelope(&raw).is_none());
        assert!(sonic_rs::from_str::<Envelope<'_>>(&raw).is_err());
        let spaced = plain.replacen(',', ",\n\t", 2);
        assert!(plain_envelope(&spaced).is_none());
        let compact = plain_envelope(&plain).expect("the plain shape");
        assert_eq!(
            parts(&sonic_rs::from_str(&spaced).unwrap()),
            parts(&compact)
        );
    }

    proptest::proptest! {
        /// Whenever the plain reader accepts a text, serde reads the same
        /// from it: payloads built from pieces that are (mostly) plain, with
        /// whitespace, escapes, control characters, odd numbers, unknown or
        /// repeated keys and trailing bytes mixed in.
        #[test]
        fn the_plain_reader_agrees_with_serde(
            pieces in proptest::collection::vec(0usize..24, 1..40),
            texts in proptest::collection::vec("[a-z\\\\\"\\x00-\\x1f \\u{e9}\\u{1F600}]{0,12}", 1..8),
            numbers in proptest::collection::vec(proptest::num::i64::ANY, 1..4),
        ) {
            let text = |i: usize| texts[i % texts.len()].as_str();
            let quoted = |i: usize| {
                // Mostly as JSON writes it, sometimes raw (escapes, control bytes).
                if i % 3 == 0 {
                    format!("\"{}\"", text(i))
                } else {
                    serde_json::to_string(text(i)).unwrap()
                }
            };
            let number = |i: usize| match i % 5 {
                0 => "1.5".to_owned(),
                1 => "-0".to_owned(),
                2 => "01".to_owned(),
                3 => "1e3".to_owned(),
                _ => numbers[i % numbers.len()].to_string(),
            };
            let mut json = String::from("{\"messageType\":\"DATA_MESSAGE\"");
            let mut events = Vec::new();
            for (n, &p) in pieces.iter().enumerate() {
                match p {
                    0 => json.push_str(&format!(",\"owner\":{}", quoted(n))),
                    1 => json.push_str(&format!(",\"logGroup\":{}", quoted(n))),
                    2 => json.push_str(&format!(",\"logStream\":{}", quoted(n))),
                    3 => json.push_str(&format!(",\"subscriptionFilters\":[{}]", quoted(n))),
                    4 => json.push_str(&format!(",{}:{}", quoted(n), quoted(n + 1))),
                    5 => json.push_str(" \n"),
                    6 => json.push_str(&format!(",\"x\":{}", number(n))),
                    7 => events.push(format!(
                        "{{\"id\":{},\"timestamp\":{},\"message\":{}}}",
                        quoted(n), number(n), quoted(n + 1)
                    )),
                    8 => events.push(format!("{{\"id\":{},\"timestamp\":1}}", quoted(n))),
                    9 => events.push(format!(
                        "{{ \"message\" : {} , \"id\":\"1\",\"timestamp\":{}}}",
                        quoted(n), numbers[n % numbers.len()]
                    )),
                    10 => events.push(format!(
                        "{{\"id\":{},\"timestamp\":1,\"message\":\"m\",\"id\":\"2\"}}",
                        quoted(n)
                    )),
                    11 => events.push(
                        r#"{"id":"1","timestamp":2,"message":"m","extractedFields":{}}"#.to_owned(),
                    ),
                    _ => events.push(format!(
                        "{{\"id\":\"{n}\",\"timestamp\":{},\"message\":{}}}",
                        numbers[n % numbers.len()], quoted(n)
                    )),
                }
            }
            json.push_str(&format!(",\"logEvents\":[{}]}}", events.join(",")));
            if pieces[0] == 13 {
                json.push_str(" x");
            }
            if pieces[0] == 14 {
                json.push_str(",\"owner\":\"again\"}");
            }
            if let Some(fast) = plain_envelope(&json) {
                let full: Envelope<'_> = sonic_rs::from_str(&json)
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}: {json}")))?;
                proptest::prop_assert_eq!(parts(&fast), parts(&full), "{}", json);
            }
        }
    }

    proptest::proptest! {
        /// Whichever routine the machine gets, a string ends where memchr2
        /// says, in haystacks shorter than one vector, than two, and longer.
        #[test]
        fn a_string_ends_where_memchr_says(
            haystack in proptest::collection::vec(proptest::sample::select(b"\"\\ax".to_vec()), 0..100),
        ) {
            let want = memchr::memchr2(b'"', b'\\', &haystack);
            proptest::prop_assert_eq!(StringEnd::new().find(&haystack), want);
            let portable = StringEnd {
                #[cfg(target_arch = "x86_64")]
                avx2: None,
            };
            proptest::prop_assert_eq!(portable.find(&haystack), want);
        }
    }

    proptest::proptest! {
        /// A timestamp read as two words is what the digit loop reads, and
        /// only the shape CloudWatch writes (13 digits, a comma) is read
        /// that way; anything else is left for the loop, unread.
        #[test]
        fn a_timestamp_read_by_the_word_reads_as_by_the_digit(
            digits in "[0-9]{12,14}",
            after in "(,|[,}a .e\u{e9}]{0,3})[,a-z\"]{0,4}",
        ) {
            let text = format!("{digits}{after}");
            let (mut fast, mut slow) = (plain(&text), plain(&text));
            match fast.millis() {
                Some(v) => {
                    proptest::prop_assert_eq!(slow.integer(), Some(v));
                    proptest::prop_assert_eq!(fast.at, slow.at);
                    proptest::prop_assert_eq!((fast.at, text.as_bytes()[13]), (13, b','));
                }
                None => {
                    proptest::prop_assert_eq!(fast.at, 0);
                    let shape = digits.len() == 13 && !digits.starts_with('0') && after.starts_with(',');
                    proptest::prop_assert!(!shape || text.len() < 16, "{text:?} has the shape");
                }
            }
        }
    }

    proptest::proptest! {
        /// An id read a word at a time is what the string reader reads, and
        /// only 56 digits and a quote are read that way.
        #[test]
        fn an_event_id_read_by_the_word_reads_as_a_string(
            digits in "[0-9]{55,57}",
            after in "(\"|[\\\\a,\u{e9}])[,a-z\"]{0,4}",
        ) {
            let text = format!("{digits}{after}");
            let (mut fast, mut slow) = (plain(&text), plain(&text));
            match fast.event_id() {
                Some(id) => {
                    proptest::prop_assert_eq!(slow.string_rest(), Some(Cow::Borrowed(id)));
                    proptest::prop_assert_eq!(fast.at, slow.at);
                    proptest::prop_assert_eq!((id.len(), text.as_bytes()[56]), (56, b'"'));
                }
                None => {
                    proptest::prop_assert_eq!(fast.at, 0);
                    proptest::prop_assert!(
                        !(digits.len() == 56 && after.starts_with('"')),
                        "{text:?} has the shape"
                    );
                }
            }
        }
    }

    fn plain(text: &str) -> Plain<'_> {
        Plain {
            text,
            at: 0,
            string_end: StringEnd::new(),
        }
    }

    #[test]
    fn a_timestamp_reads_as_its_number() {
        let mut p = plain("1733625600123,\"message\"");
        assert_eq!(p.millis(), Some(1_733_625_600_123));
        assert_eq!(p.at, 13);
    }

    #[test]
    fn a_reused_buffer_never_leaks_the_previous_record() {
        let mut d = Decoder::default();
        let big = SAMPLE.replace("i-0abc", &"i".repeat(5000));
        assert_eq!(
            d.decode(&gz(big.as_bytes())).unwrap().log_stream.len(),
            5000
        );
        assert_eq!(
            d.decode(&gz(SAMPLE.as_bytes())).unwrap().log_stream,
            "i-0abc"
        );
    }

    #[test]
    fn plain_json_and_control_messages() {
        let ctl = r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE: Checking health of destination Kinesis stream."}]}"#;
        let mut d = Decoder::default();
        assert_eq!(
            d.decode(ctl.as_bytes()).unwrap().kind(),
            Ok(MessageType::Control)
        );
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let mut d = Decoder::new(1 << 20);
        assert_eq!(d.decode(b"").unwrap_err(), DecodeError::Empty);
        assert!(matches!(
            d.decode(b"xyz").unwrap_err(),
            DecodeError::NotGzipOrJson(b'x')
        ));
        let good = gz(SAMPLE.as_bytes());
        for cut in [5, 18, good.len() / 2, good.len() - 1] {
            assert!(d.decode(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut corrupt = good.clone();
        corrupt[20] ^= 0xff;
        assert!(matches!(
            d.decode(&corrupt).unwrap_err(),
            DecodeError::Gzip(_)
        ));
        let mut lying = good.clone();
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            d.decode(&lying).unwrap_err(),
            DecodeError::Gzip(_)
        ));
        let bomb = gz(&vec![b' '; 2 << 20]);
        assert!(matches!(
            d.decode(&bomb).unwrap_err(),
            DecodeError::TooLarge { .. }
        ));
        assert!(matches!(
            d.decode(&gz(b"{\"a\":")).unwrap_err(),
            DecodeError::Json(_)
        ));
        assert!(matches!(
            d.decode(&gz(b"[1,2]")).unwrap_err(),
            DecodeError::Json(_)
        ));
        assert!(matches!(
            d.decode(&gz(b"{\"logEvents\":[]}")).unwrap_err(),
            DecodeError::Json(_)
        ));
        assert!(matches!(
            d.decode(&gz(b"{\"messageType\":\"X\",\"logEvents\":[]}"))
                .unwrap_err(),
            DecodeError::UnknownMessageType(_)
        ));
        assert!(matches!(
            d.decode(&gz(b"{\"messageType\":\"\xff\"}")).unwrap_err(),
            DecodeError::Utf8(16)
        ));
        let missing_message =
            r#"{"messageType":"DATA_MESSAGE","logEvents":[{"id":"1","timestamp":1}]}"#;
        assert!(matches!(
            d.decode(&gz(missing_message.as_bytes())).unwrap_err(),
            DecodeError::Json(_)
        ));
    }
}
