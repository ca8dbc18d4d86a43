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
        let envelope: Envelope<'a> =
            sonic_rs::from_str(text).map_err(|e| DecodeError::Json(short(&e.to_string())))?;
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
