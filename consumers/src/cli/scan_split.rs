//! `scan`'s lines through the engine's two halves ([`Engine::split`]): the
//! reading half does what needs no event time (prefix, classification, the
//! connection tracker), the counting half counts its lines in the same
//! order (event time, windows, policy). Exact by construction: each half
//! sees each line in input order, as one [`Engine::process_line`] would.
//!
//! On two threads, work goes by block of the input (the reader thread's
//! lines borrow it): each block is one scope of the two threads; while the
//! counter finishes a block the reader already reads the next. On one
//! thread, the halves take turns over a few dozen lines at a time.

use std::sync::mpsc;

use sshwarden_pipeline::command::Origin;
use sshwarden_pipeline::policy::Decision;
use sshwarden_pipeline::{Engine, LineCounter, ReadLine, Stats, TextLine};

use super::input::{Block, LineBlocks};

/// Bytes of whole lines per block: the two blocks in flight are what this
/// path adds to `scan`'s memory.
const BLOCK_BYTES: usize = 8 << 20;
/// Lines per hand-over between the threads.
const CHUNK: usize = 1024;
/// Chunks the reader may run ahead of the counter.
const AHEAD: usize = 16;

/// What [`scan_lines`] read.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinesRead {
    pub lines: u64,
    pub lossy: u64,
}

/// Scans `reader`'s lines through `engine` on `threads` threads (one or
/// two). `line` gives every line's instance and arrival; positions go on
/// from its `position`. `progress` is called now and then with the
/// position reached.
pub fn scan_lines(
    threads: u8,
    reader: &mut (dyn std::io::BufRead + Send),
    engine: &mut Engine,
    line: TextLine<'_>,
    origin: &Origin,
    decisions: &mut Vec<Decision>,
    progress: impl FnMut(u64, &dyn Fn() -> Stats),
) -> anyhow::Result<LinesRead> {
    if threads > 1 {
        on_two_threads(
            reader,
            engine,
            line,
            origin,
            decisions,
            progress,
            BLOCK_BYTES,
        )
    } else {
        on_one_thread(reader, engine, line, origin, decisions, progress)
    }
}

fn on_two_threads(
    reader: &mut (dyn std::io::BufRead + Send),
    engine: &mut Engine,
    line: TextLine<'_>,
    origin: &Origin,
    decisions: &mut Vec<Decision>,
    mut progress: impl FnMut(u64, &dyn Fn() -> Stats),
    block_bytes: usize,
) -> anyhow::Result<LinesRead> {
    let (mut line_reader, mut counter) = engine.split();
    let mut blocks = LineBlocks::new(reader);
    let (mut block, mut next) = (Block::default(), Block::default());
    let mut read = LinesRead::default();
    let mut more = blocks.fill(&mut block, block_bytes)?;
    while more {
        let first = line.position + read.lines;
        let (block_ref, next_ref, blocks_ref, reader_ref) =
            (&block, &mut next, &mut blocks, &mut line_reader);
        more = std::thread::scope(|s| -> anyhow::Result<bool> {
            let (tx, rx) = mpsc::sync_channel::<Vec<ReadLine<'_>>>(AHEAD);
            let (spare_tx, spare_rx) = mpsc::channel::<Vec<ReadLine<'_>>>();
            let worker = s.spawn(move || {
                let mut chunk = Vec::with_capacity(CHUNK);
                for (position, (text, _)) in (first + 1..).zip(block_ref.lines()) {
                    chunk.push(reader_ref.read(TextLine {
                        position,
                        line: text,
                        ..line
                    }));
                    if chunk.len() == CHUNK {
                        if tx.send(chunk).is_err() {
                            // The counter is gone (it panicked, and the
                            // scope reports that): stop reading.
                            return Ok(false);
                        }
                        chunk = spare_rx
                            .try_recv()
                            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
                    }
                }
                if !chunk.is_empty() && tx.send(chunk).is_err() {
                    return Ok(false);
                }
                drop(tx);
                blocks_ref.fill(next_ref, block_bytes)
            });
            for mut chunk in rx {
                count_read(
                    &mut counter,
                    &mut chunk,
                    (origin, line.position),
                    decisions,
                    &mut read,
                    &mut progress,
                );
                // The reader may have finished: a chunk it no longer needs.
                let _ = spare_tx.send(chunk);
            }
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("scan's reading thread panicked"))?
        })?;
        read.lossy += block.lossy_lines() as u64;
        std::mem::swap(&mut block, &mut next);
    }
    Ok(read)
}

/// Lines per turn of [`on_one_thread`]: enough that each half's code
/// stays in the instruction cache for a turn, few enough that the read
/// lines (about 250 bytes each) stay in the data cache.
const TURN: usize = 64;

/// Scans `reader`'s lines through `engine` on this thread, as
/// [`on_two_threads`] does on two: the reading half over [`TURN`] lines,
/// then the counting half over the same lines.
///
/// Line by line, each half evicted the other's code: under cachegrind, 68
/// instruction-cache misses a line of the dense benchmark log, 19 this way
/// (BENCHMARKS.md, session 11).
fn on_one_thread(
    reader: &mut (dyn std::io::BufRead + Send),
    engine: &mut Engine,
    line: TextLine<'_>,
    origin: &Origin,
    decisions: &mut Vec<Decision>,
    mut progress: impl FnMut(u64, &dyn Fn() -> Stats),
) -> anyhow::Result<LinesRead> {
    let (mut line_reader, mut counter) = engine.split();
    let mut blocks = LineBlocks::new(reader);
    let mut block = Block::default();
    let mut read = LinesRead::default();
    while blocks.fill(&mut block, LineBlocks::BLOCK)? {
        // The read lines borrow the block: one buffer per block.
        let mut turn = Vec::with_capacity(TURN);
        let mut lines = block.lines();
        loop {
            let first = line.position + read.lines;
            for (position, (text, _)) in (first + 1..).zip(lines.by_ref().take(TURN)) {
                turn.push(line_reader.read(TextLine {
                    position,
                    line: text,
                    ..line
                }));
            }
            if turn.is_empty() {
                break;
            }
            count_read(
                &mut counter,
                &mut turn,
                (origin, line.position),
                decisions,
                &mut read,
                &mut progress,
            );
        }
        read.lossy += block.lossy_lines() as u64;
    }
    Ok(read)
}

/// The counting half over `lines` (emptied, its allocation kept), then
/// `progress` when a multiple of 65,536 lines was passed; `position` is
/// where the scan's positions start.
fn count_read(
    counter: &mut LineCounter<'_>,
    lines: &mut Vec<ReadLine<'_>>,
    (origin, position): (&Origin, u64),
    decisions: &mut Vec<Decision>,
    read: &mut LinesRead,
    progress: &mut impl FnMut(u64, &dyn Fn() -> Stats),
) {
    let before = read.lines;
    read.lines += lines.len() as u64;
    for r in lines.drain(..) {
        counter.count(r, origin, decisions);
    }
    if before / 65_536 != read.lines / 65_536 {
        progress(position + read.lines, &|| counter.stats());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::input::for_each_line;
    use sshwarden_loadgen::encode::auth_log;
    use sshwarden_loadgen::fleet::{Fleet, FleetConfig};
    use sshwarden_pipeline::{EngineConfig, LineInput};

    /// A generated fleet's auth.log (every scenario, background, benign
    /// lines, several hosts) with what a real file adds: CRLF, invalid
    /// UTF-8, a line longer than a block, no newline at the end.
    fn log() -> Vec<u8> {
        let fleet = Fleet::generate(&FleetConfig::default()).unwrap();
        let mut log = auth_log(fleet.events()).into_bytes();
        let tail = log.split_off(log.len() / 2);
        log.extend_from_slice(
            b"Nov 14 22:15:00 ip-10-0-0-1 sshd[7]: Invalid user \xff\xfe from 198.51.100.7 port 1\r\n",
        );
        log.extend_from_slice(&tail);
        log.extend_from_slice(b"Nov 14 22:16:00 ip-10-0-0-1 sshd[8]: Invalid user ");
        log.extend_from_slice(&vec![b'a'; 40_000]);
        log.extend_from_slice(b" from 198.51.100.8 port 2\nlast line without newline");
        log
    }

    fn config() -> EngineConfig {
        EngineConfig {
            keep_totals: true,
            default_year: 2023,
            ..EngineConfig::default()
        }
    }

    fn line(position: u64) -> TextLine<'static> {
        TextLine {
            instance: "auth.log",
            instance_from_host: true,
            arrival_ms: Some(1_800_000_000_000),
            position,
            line: "",
        }
    }

    /// Lines, then a failed read: the error reaches the caller.
    struct FailsAfter<'a>(&'a [u8]);

    impl std::io::Read for FailsAfter<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("disk gone"));
            }
            let n = out.len().min(self.0.len()).min(4096);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_read_error_is_returned_on_one_thread_and_on_two() {
        // More than one read's worth (1 MiB): the first block is whole, the
        // error comes with a later one (on two threads, while the reading
        // thread reads ahead).
        let log = log().repeat(3);
        assert!(log.len() > LineBlocks::BLOCK);
        for threads in [1, 2] {
            let mut reader = std::io::BufReader::new(FailsAfter(&log));
            let mut engine = Engine::new(config()).unwrap();
            let (origin, mut out) = (Origin::default(), Vec::new());
            let err = match threads {
                1 => on_one_thread(
                    &mut reader,
                    &mut engine,
                    line(0),
                    &origin,
                    &mut out,
                    |_, _| {},
                ),
                _ => on_two_threads(
                    &mut reader,
                    &mut engine,
                    line(0),
                    &origin,
                    &mut out,
                    |_, _| {},
                    16 << 10,
                ),
            }
            .unwrap_err();
            assert!(
                format!("{err:#}").contains("disk gone"),
                "{threads}: {err:#}"
            );
            assert!(
                engine.stats().events > 0,
                "{threads}: the first blocks were counted"
            );
        }
    }

    /// `log` through [`Engine::process_line`], line by line: the engine,
    /// its decisions, the lines and the lines read with U+FFFD.
    fn line_by_line(log: &[u8], origin: &Origin) -> (Engine, Vec<Decision>, u64, u64) {
        let mut one = Engine::new(config()).unwrap();
        let (mut expected, mut position, mut lossy) = (Vec::new(), 0, 0);
        for_each_line(&mut &log[..], |text, bad| {
            position += 1;
            lossy += u64::from(bad);
            let input = LineInput::from(TextLine {
                line: text,
                ..line(position)
            });
            one.process_line(&input, origin, &mut expected);
            Ok(())
        })
        .unwrap();
        assert!(expected.len() > 5, "the fleet's attacks fire rules");
        assert_eq!(lossy, 1);
        (one, expected, position, lossy)
    }

    #[test]
    fn one_thread_in_turns_counts_what_line_by_line_counts() {
        let log = log();
        let origin = Origin::default();
        let (one, expected, position, lossy) = line_by_line(&log, &origin);
        let mut staged = Engine::new(config()).unwrap();
        let mut got = Vec::new();
        let read = on_one_thread(
            &mut &log[..],
            &mut staged,
            line(0),
            &origin,
            &mut got,
            |_, _| {},
        )
        .unwrap();
        assert!(position > 10 * TURN as u64, "many turns");
        assert_eq!((read.lines, read.lossy), (position, lossy));
        assert_eq!(got, expected);
        assert_eq!(staged.stats(), one.stats());
        let (a, b) = (one.totals().unwrap(), staged.totals().unwrap());
        assert_eq!(a.instances, b.instances);
        assert_eq!(a.sources, b.sources);
        assert_eq!(staged.live_connections(), one.live_connections());
    }

    #[test]
    fn two_threads_count_what_one_counts() {
        let log = log();
        let origin = Origin::default();
        let (one, expected, position, lossy) = line_by_line(&log, &origin);
        // Blocks far smaller than the input: many hand-overs, and lines
        // that straddle the reads.
        for block_bytes in [4 << 10, 64 << 10, 8 << 20] {
            let mut two = Engine::new(config()).unwrap();
            let mut got = Vec::new();
            let mut ticks = 0;
            let read = on_two_threads(
                &mut &log[..],
                &mut two,
                line(0),
                &origin,
                &mut got,
                |_, _| ticks += 1,
                block_bytes,
            )
            .unwrap();
            assert_eq!((read.lines, read.lossy), (position, lossy));
            assert_eq!(got, expected, "decisions, block {block_bytes}");
            assert_eq!(two.stats(), one.stats(), "statistics, block {block_bytes}");
            let (a, b) = (one.totals().unwrap(), two.totals().unwrap());
            assert_eq!(a.instances, b.instances);
            assert_eq!(a.sources, b.sources);
            assert_eq!(two.live_connections(), one.live_connections());
        }
    }
}
