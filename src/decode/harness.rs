//! Decode stage: a driver that feeds arbitrary bytes, as a tailer would, through a decoder and
//! checks its invariants, panicking on a violation. Shared by the fuzz target
//! (`fuzz/fuzz_targets/decode.rs`) and the corpus replay test (`tests/decode_corpus.rs`); not
//! part of loglet's interface.

use std::time::{Duration, Instant};

use bytes::Bytes;
use memchr::memchr;

use super::{Clock, DecodeOptions, DecodeStats, Decoded, Decoder, FileFormat};
use crate::record::{Stream, flags};

/// Options small enough that fuzzed inputs reach the cap, the tailer's cut and the timeout.
pub const FUZZ_OPTIONS: DecodeOptions = DecodeOptions {
    max_line_bytes: 64,
    partial_flush_timeout: Duration::from_secs(3),
};
/// The tailer's cut for fuzzing: a little above the decoder's cap, as framing needs room.
pub const FUZZ_TAILER_CAP: usize = 96;

/// What a run produced.
#[derive(Debug, Default)]
pub struct Summary {
    pub lines_in: usize,
    pub records: Vec<Decoded>,
    pub malformed: u64,
    pub truncated: u64,
    pub merged: u64,
    pub flushed: u64,
}

/// Runs `data` through every format with [`FUZZ_OPTIONS`].
pub fn fuzz(data: &[u8]) {
    for format in [FileFormat::Cri, FileFormat::Docker, FileFormat::Plain] {
        run(data, format, FUZZ_OPTIONS, FUZZ_TAILER_CAP);
    }
}

/// Splits `data` into physical lines, cuts those longer than `tailer_cap` as the tailer does,
/// and pushes them through a decoder of `format`, one simulated second apart, flushing expired
/// partials after each line and everything at the end. Panics when an invariant breaks.
pub fn run(data: &[u8], format: FileFormat, opts: DecodeOptions, tailer_cap: usize) -> Summary {
    let block = Bytes::copy_from_slice(data);
    let mut decoder = Decoder::new(format, opts);
    let mut summary = Summary::default();
    let base = Instant::now();
    let base_wall = 1_700_000_000_000_000_000i64;
    let mut out = Vec::new();
    let mut bytes_in = 0usize;
    let mut pos = 0usize;
    let mut step = 0u64;
    while pos < data.len() {
        let (line_end, next) = match memchr(b'\n', &data[pos..]) {
            Some(i) => (pos + i, pos + i + 1),
            None => (data.len(), data.len()),
        };
        let cut_end = line_end.min(pos + tailer_cap);
        let truncated = cut_end < line_end;
        let clock = Clock {
            now: base + Duration::from_secs(step),
            wall_ns: base_wall + i64::try_from(step).unwrap_or(i64::MAX),
        };
        bytes_in += cut_end - pos;
        let before = out.len();
        decoder.push(
            block.slice(pos..cut_end),
            pos as u64,
            next as u64,
            truncated,
            &clock,
            &mut out,
        );
        summary.lines_in += 1;
        for d in &out[before..] {
            check_record(d, &opts, &clock);
        }
        if format == FileFormat::Plain {
            assert_eq!(out.len(), before + 1, "a plain line is one record");
        }
        if let Some(from) = decoder.pending_from() {
            assert!(
                from <= pos as u64,
                "pending_from {from} is after the line at {pos}"
            );
            assert!(
                decoder.next_deadline().is_some(),
                "a pending line has a deadline"
            );
        } else {
            assert!(
                decoder.next_deadline().is_none(),
                "a deadline without a pending line"
            );
        }
        let before = out.len();
        decoder.flush_expired(&clock, &mut out);
        for d in &out[before..] {
            assert!(
                d.flags & flags::UNTERMINATED != 0,
                "a flush sends unterminated lines"
            );
        }
        if let Some(deadline) = decoder.next_deadline() {
            assert!(deadline > clock.now, "flush_expired left an expired line");
        }
        add(&mut summary, decoder.take_stats());
        pos = next;
        step += 1;
    }
    decoder.flush_all(&mut out);
    assert_eq!(
        decoder.pending_from(),
        None,
        "flush_all leaves nothing pending"
    );
    assert_eq!(
        decoder.next_deadline(),
        None,
        "flush_all leaves no deadline"
    );
    add(&mut summary, decoder.take_stats());

    let count = |bit: u8| out.iter().filter(|d| d.flags & bit != 0).count() as u64;
    assert_eq!(
        summary.malformed,
        count(flags::MALFORMED),
        "malformed count"
    );
    assert_eq!(
        summary.truncated,
        count(flags::TRUNCATED),
        "truncated count"
    );
    assert_eq!(summary.merged, count(flags::MERGED), "merged count");
    assert_eq!(summary.flushed, count(flags::UNTERMINATED), "flushed count");
    let bytes_out: usize = out.iter().map(|d| d.line.len()).sum();
    assert!(
        bytes_out <= bytes_in,
        "{bytes_out} bytes out of {bytes_in} in"
    );
    summary.records = out;
    summary
}

fn check_record(d: &Decoded, opts: &DecodeOptions, clock: &Clock) {
    assert!(
        d.line.len() <= opts.max_line_bytes,
        "a line of {} bytes passed the cap of {}",
        d.line.len(),
        opts.max_line_bytes
    );
    if d.flags & flags::MALFORMED != 0 {
        assert_eq!(d.stream, Stream::Stdout, "malformed lines are stdout");
        assert_eq!(
            d.time_ns, clock.wall_ns,
            "malformed lines take the wall time"
        );
        assert_eq!(
            d.flags & (flags::MERGED | flags::UNTERMINATED),
            0,
            "malformed lines are whole"
        );
    }
}

fn add(summary: &mut Summary, stats: DecodeStats) {
    summary.malformed += stats.malformed;
    summary.truncated += stats.truncated;
    summary.merged += stats.merged;
    summary.flushed += stats.flushed;
    if let Some(sample) = &stats.malformed_sample {
        assert!(stats.malformed > 0, "a sample without a malformed line");
        assert!(
            sample.line.len() <= super::MALFORMED_SAMPLE_BYTES,
            "sample too long"
        );
    }
}
