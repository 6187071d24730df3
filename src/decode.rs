//! Decode stage: turns the physical lines of a container log file (CRI, Docker json-file or plain
//! text) into log lines: framing parsed, partial chunks merged per stream, size capped. Specs: the
//! CRI log format (<https://github.com/kubernetes/design-proposals-archive/blob/main/node/kubelet-cri-logging.md>)
//! and Docker's json-file driver (<https://docs.docker.com/engine/logging/drivers/json-file/>).
//!
//! The tailer calls [`Decoder::push`] once per physical line, with the line as a slice of the
//! block it read. A full line that needs no merge leaves as a slice of that same block: no copy,
//! no allocation. Partial chunks (`P` in CRI, a `log` without `\n` in Docker) are merged per
//! stream, since stdout and stderr interleave in one file; the merged line takes its first
//! chunk's time, is capped at `max_line_bytes` (the rest of the line is discarded up to its final
//! chunk, so memory never grows beyond the cap), and is flushed as it is after a timeout or when
//! the file ends. A line that does not parse passes through as raw text, flagged and counted:
//! nothing on this path panics or drops a line silently.
//!
//! Line endings: runtimes strip the `\n` that ends a line, and containerd a `\r\n` pair; CRI-O,
//! Docker and plain files keep the `\r`. The decoder strips one `\r` that ends a complete line in
//! every format, so that an application writing CRLF gives the same line whatever the runtime.

mod cri;
mod docker;
#[doc(hidden)]
pub mod harness;
pub mod multiline;
mod time;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::config::LogsConfig;
use crate::record::{Stream, flags};
pub use time::parse_rfc3339_nanos;

/// The format of a log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    /// CRI (containerd, CRI-O): `<time> <stream> <P|F> <content>`.
    Cri,
    /// Docker's json-file driver: one `{"log":…,"stream":…,"time":…}` object per line.
    Docker,
    /// An application's own log file: every line as it is.
    Plain,
}

impl FileFormat {
    /// The format of a container log file, told from its first line: `{` opens a Docker
    /// json-file line, anything else is CRI. (Plain is chosen by callers for application files.)
    pub fn detect(first_line: &[u8]) -> FileFormat {
        if first_line.first() == Some(&b'{') {
            FileFormat::Docker
        } else {
            FileFormat::Cri
        }
    }

    /// The value of the `format` label of `loglet_lines_malformed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::Cri => "cri",
            FileFormat::Docker => "docker",
            FileFormat::Plain => "plain",
        }
    }
}

/// What the decoder needs from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// No line leaves the decoder longer than this (content bytes, after framing).
    pub max_line_bytes: usize,
    /// A partial line whose final chunk has not come this long after its first chunk is flushed.
    pub partial_flush_timeout: Duration,
}

impl DecodeOptions {
    pub fn from_config(logs: &LogsConfig) -> DecodeOptions {
        DecodeOptions {
            max_line_bytes: usize::try_from(logs.max_line_bytes.0).unwrap_or(usize::MAX),
            partial_flush_timeout: logs.partial_flush_timeout.0,
        }
    }
}

/// The time, read once per block by the caller rather than once per line.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// For partial-line timeouts.
    pub now: Instant,
    /// Unix nanoseconds, the time given to lines that carry none (plain and malformed lines).
    pub wall_ns: i64,
}

impl Clock {
    /// Reads both clocks.
    pub fn now() -> Clock {
        let wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Clock {
            now: Instant::now(),
            wall_ns,
        }
    }
}

/// One decoded log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The content, without framing and line ending.
    pub line: Bytes,
    /// Unix nanoseconds: the runtime's time, or the wall clock for lines that carry none.
    pub time_ns: i64,
    pub stream: Stream,
    /// Bits from [`crate::record::flags`].
    pub flags: u8,
    /// File offset of the line's first byte (of its first chunk, for a merged line): a
    /// checkpoint must not pass it while a later stage (multiline joining) still holds the line.
    pub start: u64,
}

/// What the decoder counted since the last [`Decoder::take_stats`]. Each count is of lines out,
/// so a merged line cut to the cap counts once in `merged` and once in `truncated`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DecodeStats {
    /// Lines passed through raw because they did not parse.
    pub malformed: u64,
    /// Lines cut, by the tailer or by the decoder.
    pub truncated: u64,
    /// Lines joined from several partial chunks.
    pub merged: u64,
    /// Partial lines sent without their final chunk (timeout or end of file).
    pub flushed: u64,
    /// The first malformed line counted, for a rate-limited warning by the caller.
    pub malformed_sample: Option<MalformedSample>,
}

/// A malformed line and why it did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedSample {
    pub reason: Malformed,
    /// The start of the line (at most [`MALFORMED_SAMPLE_BYTES`]).
    pub line: Bytes,
}

/// Enough of a bad line to recognise it in a warning.
pub const MALFORMED_SAMPLE_BYTES: usize = 200;

/// Why a line did not parse in its file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not a CRI line: expected `<time> <stream> <tags> <content>`")]
    Framing,
    #[error("invalid RFC 3339 timestamp")]
    Timestamp,
    #[error("unknown stream: expected stdout or stderr")]
    Stream,
    #[error("unknown tag: expected P or F")]
    Tag,
    #[error("invalid JSON")]
    Json,
    #[error("missing field {0}")]
    MissingField(&'static str),
}

/// Decodes the lines of one file. Not shared between files: it holds the file's partial lines.
#[derive(Debug)]
pub struct Decoder {
    format: FileFormat,
    opts: DecodeOptions,
    /// Per stream, indexed by [`slot`].
    partials: [Partial; 2],
    stats: DecodeStats,
    /// Reused for Docker `log` texts that need unescaping.
    scratch: Vec<u8>,
}

/// The state of one stream's line being assembled from partial chunks.
#[derive(Debug, Default)]
enum Partial {
    #[default]
    Idle,
    Assembling(Assembly),
    /// The head of an over-long line was flushed on timeout; the rest of the line, up to its
    /// final chunk, is dropped.
    Discarding,
}

#[derive(Debug)]
struct Assembly {
    /// At most `max_line_bytes`, capacity included.
    buf: Vec<u8>,
    chunks: u32,
    /// The first chunk's time.
    time_ns: i64,
    /// File offset of the first chunk.
    start: u64,
    /// When the first chunk came.
    since: Instant,
    /// Cut by the tailer or by the cap: what comes until the final chunk is dropped.
    truncated: bool,
}

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// Content that is either a slice of the tailer's block or borrowed from the decoder's scratch.
enum Text<'a> {
    Shared(Bytes),
    Borrowed(&'a [u8]),
}

impl Text<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Text::Shared(b) => b,
            Text::Borrowed(s) => s,
        }
    }
}

impl Decoder {
    pub fn new(format: FileFormat, opts: DecodeOptions) -> Decoder {
        Decoder {
            format,
            opts,
            partials: Default::default(),
            stats: DecodeStats::default(),
            scratch: Vec::new(),
        }
    }

    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// Decodes one physical line, without its `\n`. `start`/`end`: file offsets of its first
    /// byte and just past its `\n`. `truncated`: the tailer already cut this physical line to its
    /// cap and discarded the rest up to the newline. Complete lines are appended to `out`.
    pub fn push(
        &mut self,
        line: Bytes,
        start: u64,
        end: u64,
        truncated: bool,
        clock: &Clock,
        out: &mut Vec<Decoded>,
    ) {
        debug_assert!(start <= end, "line offsets out of order: {start}..{end}");
        match self.format {
            FileFormat::Cri => match cri::parse(&line) {
                Ok(c) => {
                    let content = Text::Shared(line.slice(c.content..));
                    self.chunk(
                        c.stream, c.time_ns, c.partial, content, start, truncated, clock, out,
                    );
                }
                Err(reason) => self.malformed(line, reason, start, truncated, clock, out),
            },
            FileFormat::Docker => {
                let mut scratch = std::mem::take(&mut self.scratch);
                match docker::parse(&line, &mut scratch) {
                    Ok(d) => {
                        let content = match d.log {
                            docker::LogText::Raw(r) => Text::Shared(line.slice(r)),
                            docker::LogText::Scratch => Text::Borrowed(&scratch),
                        };
                        self.chunk(
                            d.stream, d.time_ns, d.partial, content, start, truncated, clock, out,
                        );
                    }
                    Err(reason) => self.malformed(line, reason, start, truncated, clock, out),
                }
                self.scratch = scratch;
            }
            FileFormat::Plain => {
                let text = Text::Shared(line);
                self.complete(text, clock.wall_ns, Stream::Stdout, start, truncated, out);
            }
        }
    }

    /// Flushes the partial lines whose first chunk came `partial_flush_timeout` or longer ago.
    pub fn flush_expired(&mut self, clock: &Clock, out: &mut Vec<Decoded>) {
        let timeout = self.opts.partial_flush_timeout;
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Partial::Assembling(a) = &self.partials[slot(stream)] {
                if clock.now.saturating_duration_since(a.since) >= timeout {
                    self.flush(stream, out);
                }
            }
        }
    }

    /// Flushes every partial line: the file is finished (rotated away, or deleted and drained).
    pub fn flush_all(&mut self, out: &mut Vec<Decoded>) {
        let mut streams = [Stream::Stdout, Stream::Stderr];
        streams.sort_by_key(|s| match &self.partials[slot(*s)] {
            Partial::Assembling(a) => a.start,
            _ => u64::MAX,
        });
        for stream in streams {
            self.flush(stream, out);
            self.partials[slot(stream)] = Partial::Idle;
        }
    }

    /// File offset of the first byte of the oldest line still being assembled from partial
    /// chunks: a checkpoint must not pass it, or a restart would lose the line's head.
    pub fn pending_from(&self) -> Option<u64> {
        self.assemblies().map(|a| a.start).min()
    }

    /// When [`Decoder::flush_expired`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.opts.partial_flush_timeout;
        // A timeout too large for an Instant is no deadline at all.
        self.assemblies()
            .filter_map(|a| a.since.checked_add(timeout))
            .min()
    }

    /// What was counted since the last call.
    pub fn take_stats(&mut self) -> DecodeStats {
        std::mem::take(&mut self.stats)
    }

    fn assemblies(&self) -> impl Iterator<Item = &Assembly> {
        self.partials.iter().filter_map(|p| match p {
            Partial::Assembling(a) => Some(a),
            _ => None,
        })
    }

    /// One chunk of a stream's line; `partial`: more chunks follow.
    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &mut self,
        stream: Stream,
        time_ns: i64,
        partial: bool,
        content: Text<'_>,
        start: u64,
        truncated: bool,
        clock: &Clock,
        out: &mut Vec<Decoded>,
    ) {
        let max = self.opts.max_line_bytes;
        let state = &mut self.partials[slot(stream)];
        match (std::mem::take(state), partial) {
            (Partial::Idle, false) => {
                self.complete(content, time_ns, stream, start, truncated, out)
            }
            (Partial::Idle, true) => {
                let chunk = content.as_slice();
                // A partial chunk is followed by at least one more: room for two saves a copy.
                let capacity = max.min(chunk.len().saturating_mul(2));
                let mut a = Assembly {
                    buf: Vec::with_capacity(capacity),
                    chunks: 1,
                    time_ns,
                    start,
                    since: clock.now,
                    truncated,
                };
                append_capped(&mut a, chunk, max);
                *state = Partial::Assembling(a);
            }
            (Partial::Assembling(mut a), true) => {
                a.chunks = a.chunks.saturating_add(1);
                a.truncated |= truncated;
                append_capped(&mut a, content.as_slice(), max);
                *state = Partial::Assembling(a);
            }
            (Partial::Assembling(mut a), false) => {
                a.chunks = a.chunks.saturating_add(1);
                let mut chunk = content.as_slice();
                if !truncated {
                    match chunk {
                        [rest @ .., b'\r'] => chunk = rest,
                        [] if !a.truncated && a.buf.last() == Some(&b'\r') => {
                            a.buf.pop();
                        }
                        _ => {}
                    }
                }
                a.truncated |= truncated;
                append_capped(&mut a, chunk, max);
                let mut flags = flags::MERGED;
                if a.truncated {
                    flags |= flags::TRUNCATED;
                }
                self.emit(Bytes::from(a.buf), a.time_ns, stream, flags, a.start, out);
            }
            (Partial::Discarding, true) => *state = Partial::Discarding,
            (Partial::Discarding, false) => {}
        }
    }

    /// A line that needs no merge: sliced, never copied unless it came from the scratch buffer.
    fn complete(
        &mut self,
        text: Text<'_>,
        time_ns: i64,
        stream: Stream,
        start: u64,
        truncated: bool,
        out: &mut Vec<Decoded>,
    ) {
        let s = text.as_slice();
        let mut len = s.len();
        if !truncated && s.last() == Some(&b'\r') {
            len -= 1;
        }
        let mut flags = 0;
        if truncated {
            flags |= flags::TRUNCATED;
        }
        if len > self.opts.max_line_bytes {
            len = cut_point(s, self.opts.max_line_bytes);
            flags |= flags::TRUNCATED;
        }
        let line = match text {
            Text::Shared(b) => b.slice(..len),
            Text::Borrowed(s) => Bytes::copy_from_slice(&s[..len]),
        };
        self.emit(line, time_ns, stream, flags, start, out);
    }

    /// A line that does not parse: passed on whole (within the cap), as stdout at the wall time.
    fn malformed(
        &mut self,
        line: Bytes,
        reason: Malformed,
        start: u64,
        truncated: bool,
        clock: &Clock,
        out: &mut Vec<Decoded>,
    ) {
        let mut flags = flags::MALFORMED;
        let mut len = line.len();
        if truncated {
            flags |= flags::TRUNCATED;
        }
        if len > self.opts.max_line_bytes {
            len = cut_point(&line, self.opts.max_line_bytes);
            flags |= flags::TRUNCATED;
        }
        if self.stats.malformed_sample.is_none() {
            self.stats.malformed_sample = Some(MalformedSample {
                reason,
                line: line.slice(..cut_point(&line, MALFORMED_SAMPLE_BYTES.min(len))),
            });
        }
        self.emit(
            line.slice(..len),
            clock.wall_ns,
            Stream::Stdout,
            flags,
            start,
            out,
        );
    }

    /// Sends a stream's partial line as it is, without its final chunk.
    fn flush(&mut self, stream: Stream, out: &mut Vec<Decoded>) {
        let state = &mut self.partials[slot(stream)];
        let Partial::Assembling(a) = std::mem::take(state) else {
            return;
        };
        let mut flags = flags::UNTERMINATED;
        if a.chunks > 1 {
            flags |= flags::MERGED;
        }
        if a.truncated {
            flags |= flags::TRUNCATED;
            *state = Partial::Discarding;
        }
        self.emit(Bytes::from(a.buf), a.time_ns, stream, flags, a.start, out);
    }

    fn emit(
        &mut self,
        line: Bytes,
        time_ns: i64,
        stream: Stream,
        flags: u8,
        start: u64,
        out: &mut Vec<Decoded>,
    ) {
        let s = &mut self.stats;
        s.malformed += u64::from(flags & flags::MALFORMED != 0);
        s.truncated += u64::from(flags & flags::TRUNCATED != 0);
        s.merged += u64::from(flags & flags::MERGED != 0);
        s.flushed += u64::from(flags & flags::UNTERMINATED != 0);
        out.push(Decoded {
            line,
            time_ns,
            stream,
            flags,
            start,
        });
    }
}

/// Appends a chunk to a line being assembled, up to `max` bytes; past it, marks the line cut.
/// The buffer grows by doubling but never beyond `max`.
fn append_capped(a: &mut Assembly, chunk: &[u8], max: usize) {
    let room = max.saturating_sub(a.buf.len());
    let take = chunk.len().min(room);
    let needed = a.buf.len() + take;
    if needed > a.buf.capacity() {
        let target = needed.max(a.buf.capacity().saturating_mul(2)).min(max);
        a.buf.reserve_exact(target - a.buf.len());
    }
    a.buf.extend_from_slice(&chunk[..take]);
    if take < chunk.len() {
        a.truncated = true;
        let keep = char_cut(&a.buf, chunk[take]);
        a.buf.truncate(keep);
    }
}

/// Where to cut `s` to at most `max` bytes without splitting a UTF-8 sequence: `max`, or the
/// start of a multi-byte character that would straddle it.
fn cut_point(s: &[u8], max: usize) -> usize {
    match s.get(max) {
        Some(&next) => char_cut(&s[..max], next),
        None => s.len(),
    }
}

/// The length to keep of `head`, when `next` is the first byte cut off: all of it, unless the
/// cut splits a UTF-8 character, which then goes whole. Bytes that are not UTF-8 are cut as they
/// are.
fn char_cut(head: &[u8], next: u8) -> usize {
    let len = head.len();
    if next & 0xC0 != 0x80 {
        return len;
    }
    // `next` continues a sequence: find its lead byte within the three before the cut.
    for back in 1..=len.min(3) {
        let b = head[len - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let width = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return len,
        };
        return if width > back { len - back } else { len };
    }
    len
}

#[cfg(test)]
mod tests;
