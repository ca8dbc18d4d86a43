//! Offline inputs for `scan` and `classify`: files or stdin, gzip read
//! directly, and the format told apart from the first bytes: raw sshd lines
//! (syslog, rsyslog, journalctl exports) or captured subscription payloads
//! (one JSON envelope after another, or one base64 gzip record per line).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use anyhow::Context;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Decide from the first bytes.
    Auto,
    /// Raw log lines: syslog, rsyslog ISO 8601, RFC 5424, journalctl short formats.
    Lines,
    /// Subscription payloads: JSON envelopes, or base64-encoded gzip records one per line.
    Payloads,
}

/// A readable input with its format settled.
pub struct Input {
    pub format: Format,
    pub reader: Box<dyn BufRead>,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens `path` (`-` is stdin), unwrapping gzip, and settles the format.
pub fn open(path: &str, format: Format) -> anyhow::Result<Input> {
    let raw: Box<dyn Read> = if path == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(Path::new(path)).with_context(|| format!("cannot open {path}"))?)
    };
    let mut reader = BufReader::with_capacity(1 << 20, raw);
    let head = reader
        .fill_buf()
        .with_context(|| format!("cannot read {path}"))?;
    let mut reader: Box<dyn BufRead> = if head.starts_with(&GZIP_MAGIC) {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(reader),
        ))
    } else {
        Box::new(reader)
    };
    let format = match format {
        Format::Auto => {
            let head = reader
                .fill_buf()
                .with_context(|| format!("cannot read {path} (corrupt gzip?)"))?;
            detect(head)
        }
        f => f,
    };
    Ok(Input { format, reader })
}

fn detect(head: &[u8]) -> Format {
    let start = head
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(head.len());
    let head = &head[start..];
    if head.first() == Some(&b'{') {
        return Format::Payloads;
    }
    let first_line = &head[..memchr::memchr(b'\n', head).unwrap_or(head.len())];
    // "H4sI" is base64 of the gzip magic and deflate method.
    if first_line.starts_with(b"H4sI")
        && first_line
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'\r'))
    {
        return Format::Payloads;
    }
    Format::Lines
}

/// Calls `f` with each line (without its newline). Invalid UTF-8 is replaced
/// (U+FFFD) and reported through the flag, so a line is never dropped.
///
/// Reads big blocks and splits them with SIMD memchr: `BufRead::read_until`
/// (std's scalar memchr plus a copy per line) was the largest cost of `scan`.
pub fn for_each_line(
    reader: &mut dyn BufRead,
    mut f: impl FnMut(&str, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    const BLOCK: usize = 1 << 20;
    const MAX_LINE: usize = 16 << 20;
    // `buf[..len]` holds unread bytes; the vector itself only grows, so
    // reads never pay for zero-filling.
    let mut buf: Vec<u8> = vec![0; 2 * BLOCK];
    let mut len = 0;
    let mut eof = false;
    while !eof {
        if buf.len() < len + BLOCK {
            buf.resize(len + BLOCK, 0);
        }
        let n = loop {
            match reader.read(&mut buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("read failed"),
            }
        };
        len += n;
        eof = n == 0;
        let data = &buf[..len];
        let mut start = 0;
        let complete = memchr::memrchr(b'\n', data).map_or(0, |i| i + 1);
        // One UTF-8 check per block (newlines are char boundaries); per-line
        // checks only for a block that holds invalid bytes.
        if let Ok(text) = std::str::from_utf8(&data[..complete]) {
            for end in memchr::memchr_iter(b'\n', text.as_bytes()) {
                let line = &text[start..end];
                f(line.strip_suffix('\r').unwrap_or(line), false)?;
                start = end + 1;
            }
        } else {
            for end in memchr::memchr_iter(b'\n', &data[..complete]) {
                emit(&data[start..end], &mut f)?;
                start = end + 1;
            }
        }
        // The last line without a newline, or a line too long to hold
        // (a log line is never 16 MiB; it is read in pieces, not refused).
        if (eof || len - start >= MAX_LINE) && start < data.len() {
            emit(&data[start..], &mut f)?;
            start = data.len();
        }
        buf.copy_within(start..len, 0);
        len -= start;
    }
    Ok(())
}

fn emit(line: &[u8], f: &mut impl FnMut(&str, bool) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match std::str::from_utf8(line) {
        Ok(s) => f(s, false),
        Err(_) => f(&String::from_utf8_lossy(line), true),
    }
}

/// One captured payload: the bytes the engine decodes (JSON or gzip).
pub enum Payload {
    Record(Vec<u8>),
    /// A piece of the input that is not a payload, with why.
    Bad(String),
}

/// Calls `f` with each payload of a payload-format input.
pub fn for_each_payload(
    reader: &mut dyn BufRead,
    mut f: impl FnMut(Payload) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let head = reader.fill_buf().context("read failed")?;
    let start = head
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(head.len());
    if head.get(start) == Some(&b'{') {
        let stream = serde_json::Deserializer::from_reader(reader)
            .into_iter::<Box<serde_json::value::RawValue>>();
        for value in stream {
            match value {
                Ok(raw) => f(Payload::Record(raw.get().as_bytes().to_vec()))?,
                Err(e) if e.is_io() => return Err(e).context("read failed"),
                Err(e) => {
                    // The stream cannot be resynchronised inside broken JSON.
                    f(Payload::Bad(format!(
                        "invalid JSON, rest of input skipped: {e}"
                    )))?;
                    return Ok(());
                }
            }
        }
        return Ok(());
    }
    use base64::Engine as _;
    for_each_line(reader, |line, _| {
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        match base64::engine::general_purpose::STANDARD.decode(line) {
            Ok(bytes) => f(Payload::Record(bytes)),
            Err(e) => f(Payload::Bad(format!("not base64: {e}"))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(detect(b"  {\"messageType\""), Format::Payloads);
        assert_eq!(detect(b"H4sIAAAAAAAA/6tW\nH4sI"), Format::Payloads);
        assert_eq!(detect(b"Feb 25 14:34:10 belka sshd[1]: x"), Format::Lines);
        assert_eq!(detect(b""), Format::Lines);
    }

    #[test]
    fn invalid_utf8_lines_are_kept_and_flagged() {
        let mut r: &[u8] = b"a\n\xff b\r\nc";
        let mut seen = Vec::new();
        for_each_line(&mut r, |l, bad| {
            seen.push((l.to_owned(), bad));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ("a".into(), false),
                ("\u{fffd} b".into(), true),
                ("c".into(), false)
            ]
        );
    }
}
