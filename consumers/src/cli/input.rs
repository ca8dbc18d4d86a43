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
    pub reader: Box<dyn BufRead + Send>,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens `path` (`-` is stdin), unwrapping gzip, and settles the format.
pub fn open(path: &str, format: Format) -> anyhow::Result<Input> {
    // `Stdin`, not its lock: `scan` reads on a second thread.
    let raw: Box<dyn Read + Send> = if path == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(Path::new(path)).with_context(|| format!("cannot open {path}"))?)
    };
    // Small on purpose: std's `BufReader` hands a read at least as long as
    // its capacity straight to the file, and `LineBlocks` reads with
    // `read_to_end`, whose first read asks for 8 KiB and each next one for
    // twice as much. With this capacity every byte goes from the file into
    // the block; with a big one it was copied once more through the buffer
    // (2.6% of `scan`'s instructions on the dense log, 6.8% on the auth
    // log). 8 KiB is still enough to tell gzip and the format from the head.
    let mut reader = BufReader::with_capacity(8 << 10, raw);
    let head = reader
        .fill_buf()
        .with_context(|| format!("cannot read {path}"))?;
    let mut reader: Box<dyn BufRead + Send> = if head.starts_with(&GZIP_MAGIC) {
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
pub fn for_each_line(
    reader: &mut (dyn BufRead + Send),
    mut f: impl FnMut(&str, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut blocks = LineBlocks::new(reader);
    let mut block = Block::default();
    while blocks.fill(&mut block, LineBlocks::BLOCK)? {
        for (line, lossy) in block.lines() {
            f(line, lossy)?;
        }
    }
    Ok(())
}

/// An input read as blocks of whole lines: [`for_each_line`] and `scan`'s
/// two threads read through it, so both see the same lines.
///
/// Reads big blocks and splits them with SIMD memchr: `BufRead::read_until`
/// (std's scalar memchr plus a copy per line) was the largest cost of `scan`.
pub struct LineBlocks<'r> {
    reader: &'r mut (dyn BufRead + Send),
    /// The bytes after the last whole line of the block before.
    carry: Vec<u8>,
    eof: bool,
}

/// Whole lines, each ended by `\n` (the input's last line is given one),
/// as valid UTF-8.
#[derive(Debug, Default)]
pub struct Block {
    text: String,
    /// Where the lines read with U+FFFD start, in order.
    lossy: Vec<usize>,
}

impl<'r> LineBlocks<'r> {
    /// How much one read asks for, and [`for_each_line`]'s block size.
    pub const BLOCK: usize = 1 << 20;
    /// A log line is never 16 MiB: a longer one is read in pieces of at
    /// least this much, not refused.
    const MAX_LINE: usize = 16 << 20;

    pub fn new(reader: &'r mut (dyn BufRead + Send)) -> Self {
        LineBlocks {
            reader,
            carry: Vec::new(),
            eof: false,
        }
    }

    /// Replaces `block`'s lines with the next `min` bytes or more of whole
    /// lines (fewer at the end of the input). False when nothing is left.
    pub fn fill(&mut self, block: &mut Block, min: usize) -> anyhow::Result<bool> {
        let mut buf = std::mem::take(&mut block.text).into_bytes();
        buf.clear();
        block.lossy.clear();
        buf.append(&mut self.carry);
        let mut complete = memchr::memrchr(b'\n', &buf).map_or(0, |i| i + 1);
        while !self.eof && complete < min && buf.len() - complete < Self::MAX_LINE {
            let before = buf.len();
            // `read_to_end` fills the spare capacity without zeroing it first.
            let n = loop {
                match (&mut *self.reader)
                    .take(Self::BLOCK as u64)
                    .read_to_end(&mut buf)
                {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("read failed"),
                }
            };
            self.eof = n == 0;
            if let Some(i) = memchr::memrchr(b'\n', &buf[before..]) {
                complete = before + i + 1;
            }
        }
        // The last line without a newline, or a piece of an overlong line.
        let end = if self.eof || buf.len() - complete >= Self::MAX_LINE {
            buf.len()
        } else {
            complete
        };
        self.carry.extend_from_slice(&buf[end..]);
        buf.truncate(end);
        if end > complete {
            buf.push(b'\n');
        }
        // One UTF-8 check per block (newlines are char boundaries); per-line
        // checks only for a block that holds invalid bytes.
        block.text = match String::from_utf8(buf) {
            Ok(text) => text,
            Err(e) => {
                let bytes = e.into_bytes();
                let mut text = String::with_capacity(bytes.len() + 64);
                for line in bytes.split_inclusive(|&c| c == b'\n') {
                    match std::str::from_utf8(line) {
                        Ok(s) => text.push_str(s),
                        Err(_) => {
                            block.lossy.push(text.len());
                            text.push_str(&String::from_utf8_lossy(line));
                        }
                    }
                }
                text
            }
        };
        Ok(!block.text.is_empty())
    }
}

impl Block {
    /// Each line without its line end, and whether it was read with U+FFFD.
    pub fn lines(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        let mut start = 0;
        let mut lossy = self.lossy.iter().peekable();
        memchr::memchr_iter(b'\n', self.text.as_bytes()).map(move |end| {
            let line = &self.text[start..end];
            let bad = lossy.next_if_eq(&&start).is_some();
            start = end + 1;
            (line.strip_suffix('\r').unwrap_or(line), bad)
        })
    }

    /// Lines read with U+FFFD.
    pub fn lossy_lines(&self) -> usize {
        self.lossy.len()
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
    reader: &mut (dyn BufRead + Send),
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

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// The lines of `data` by the definition: split at `\n`, a `\r` before
    /// it dropped, the last line kept even without `\n`, invalid UTF-8
    /// read with U+FFFD and flagged.
    fn naive(data: &[u8]) -> Vec<(String, bool)> {
        let mut lines: Vec<&[u8]> = data.split(|&c| c == b'\n').collect();
        if lines.last() == Some(&&b""[..]) {
            lines.pop();
        }
        lines
            .into_iter()
            .map(|l| {
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                (
                    String::from_utf8_lossy(l).into_owned(),
                    std::str::from_utf8(l).is_err(),
                )
            })
            .collect()
    }

    #[test]
    fn blocks_of_any_size_read_the_same_lines() {
        let data: &[u8] = b"one\r\n\ntwo \xff\xfe\nthree\r\n\xe2\x82\nfour\n\xe2\x82\xac five";
        for step in [1, 2, 3, 7, 64] {
            for min in [1, 2, 5, 16, 1 << 20] {
                let mut reader = io::BufReader::with_capacity(4, Trickle { data, step });
                let mut blocks = LineBlocks::new(&mut reader);
                let mut block = Block::default();
                let mut seen = Vec::new();
                while blocks.fill(&mut block, min).unwrap() {
                    seen.extend(block.lines().map(|(l, bad)| (l.to_owned(), bad)));
                }
                assert_eq!(seen, naive(data), "step {step}, min {min}");
            }
        }
    }

    #[test]
    fn an_overlong_line_is_read_in_pieces_not_refused() {
        let mut data = vec![b'x'; LineBlocks::MAX_LINE * 2 + 10];
        data.extend_from_slice(b"\nafter\n");
        let mut pieces = Vec::new();
        for_each_line(&mut &data[..], |l, _| {
            pieces.push(l.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            pieces.iter().sum::<usize>(),
            LineBlocks::MAX_LINE * 2 + 10 + 5
        );
        assert!(pieces.len() >= 3, "{pieces:?}");
        assert!(pieces[..pieces.len() - 2]
            .iter()
            .all(|&n| n >= LineBlocks::MAX_LINE));
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
