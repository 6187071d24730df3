//! Sidecar stage: makes sense of what a streaming sidecar container prints, between the decoder
//! and the records. A sidecar echoes an application's own log files to its stdout (the
//! Kubernetes "streaming sidecar" pattern, <https://kubernetes.io/docs/concepts/cluster-administration/logging/#streaming-sidecar-container>),
//! so its container log holds the application's lines mixed with the echoing tool's own output.
//! Two shapes are handled, each by a pure, per-stream state machine the tailer drives:
//!
//! - [`TailDemux`], for `tail -F a.log b.log`: tells which application file each line belongs
//!   to from the `==> a.log <==` headers, and drops the headers, the empty line tail prints
//!   before each header, and tail's notices (`tail: 'a.log' has been replaced;  following new
//!   file`, `…: file truncated`, …). Formats from GNU coreutils `src/tail.c` (9.x; older
//!   releases differ only in quoting) and busybox `coreutils/tail.c`.
//! - [`DumpDedupe`], for `while true; do cat a.log; sleep 30; done`: each round re-prints the
//!   whole file; only what was not shipped before is let through.
//!
//! # The empty line before a header
//!
//! tail writes `"\n==> b.log <==\n"` in one call when it switches files (not before the first
//! header). The empty line is framing, but an application's log may also hold empty lines, and
//! the two are told apart only by what follows: a separator is an empty stdout line
//! *immediately* followed by a header. So [`TailDemux`] holds at most one empty stdout line until
//! the next stdout line arrives: a header drops it, anything else releases it first. tail's
//! notices, on stderr or on stdout with `2>&1`, leave the held line held. The caller releases a
//! held line with [`TailDemux::flush`] when no line has come for a while and when the file is
//! finished, and keeps its checkpoint at or before [`TailDemux::pending_from`].
//!
//! # Deduplication of periodic dumps
//!
//! The dump stream (the sidecar's stdout; stderr lines pass through untouched, since they
//! interleave at random with stdout) is cut into rounds by time: a gap of more than
//! [`DedupeOptions::round_gap`] between two lines' `time_ns` (the runtime's write time) starts a
//! new round. The state is a *prefix summary* of what was shipped: its line count `n`, byte
//! count, a running 64-bit hash (FNV-1a over each line's length and bytes) and the running
//! hash at every power-of-two line count (at most 64 of them). During a round the same summary
//! is computed over the round's lines, and
//!
//! - at a power-of-two line `k < n`, a hash that differs from the shipped one at `k` (or more
//!   bytes than the whole shipped prefix) proves the round is not a replay: its lines are new
//!   content (the file was truncated or replaced) and are shipped from the round's start;
//! - at `k == n`, equal hashes and byte counts prove lines `1..=n` are the shipped ones: they
//!   are dropped, and every later line of the round is new, shipped, and added to the prefix;
//! - a round that ends before `n` lines is a shorter file: its lines are shipped.
//!
//! Until one of those verdicts the round's lines are *held* (a rotated file is told at its first
//! line, a diverging one by the next power of two), so memory grows with the size of the dump,
//! bounded by [`DedupeOptions::max_held_bytes`]. This design was chosen over a stored list of
//! per-line hashes because it keeps [`DumpState`] small enough to persist in the checkpoint
//! file (a few hundred bytes whatever the file's size) and needs no per-line memory between
//! rounds; the cost is that a mismatch is detected at the next power of two rather than at the
//! exact line, which only delays (never changes) what is shipped.
//!
//! When the held lines would pass `max_held_bytes`, they are shipped, and the rest of the
//! round up to the verdict is shipped as it comes without proof ([`DedupeStats::unverified`]):
//! duplicates, never a loss. Dedupe thus works for dumps up to `max_held_bytes`; a bigger file
//! is shipped in part again each round (counted in [`DedupeStats::overflows`]).
//!
//! # Checkpoints
//!
//! The caller persists [`DumpDedupe::state`] in the same update as the file offset it has
//! shipped up to, both taken at the same moment (after pushing the lines up to that offset and
//! before pushing more), and keeps that offset at or before [`DumpDedupe::pending_from`]. The
//! state describes exactly the lines before that offset: while lines are held (always from the
//! round's first line) it is the shipped prefix as it was before the round, so the replay from
//! the checkpoint starts the round again and reaches the same verdict. A round in progress
//! without held lines is saved too, with the time of its last line, so that a replay that
//! continues it within `round_gap` continues the round rather than starting a new one.
//! [`TailDemux::state`] is persisted the same way: it names the file the replayed lines belong
//! to until tail's next header.
//!
//! # Limits
//!
//! - The tail demultiplexer takes any line of the form `==> NAME <==` for a header (unless
//!   built with [`TailDemux::with_files`]) and any `tail: …` line matching a known notice for a
//!   notice; an application line that looks the same is lost. A separator flushed by the
//!   caller's timeout before its header arrived is shipped as an empty line.
//! - Rounds are told by time only. A `sleep` no longer than `round_gap` merges rounds (the
//!   second copy is taken for growth: duplicates); a stall longer than `round_gap` inside one
//!   dump splits it (each part is taken for a rewrite: duplicates). A caller calling
//!   [`DumpDedupe::end_of_round`] while a dump is still being read has the same effect.
//! - A file rewritten so that its new content starts with all of the content already shipped
//!   is indistinguishable from growth: only the lines past the old end are shipped. A file
//!   that gets new lines and, in the same round, an identical copy of its old content (or a
//!   rewrite to exactly its old content) ships nothing for that part.
//! - With several files in one `cat`, the stream is their concatenation: growth of any but the
//!   last file makes the round differ from the shipped prefix, and the whole round is shipped
//!   again. Use `tail -F` for several files.
//! - Equality is by 64-bit hash: a collision (about 2^-64 per comparison for non-adversarial
//!   lines) would drop new lines. FNV-1a is not keyed, so an application that crafts
//!   colliding lines can hide its own lines, nothing more.
//! - Without a restored state (first start, lost checkpoint) the first round is all new:
//!   the whole file is shipped again. stderr lines passing through are re-shipped after a
//!   restart if they came after held stdout lines.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use memchr::memmem;
use serde::{Deserialize, Serialize};

use crate::decode::Decoded;
use crate::record::Stream;

// ---------------------------------------------------------------------------------------------
// A. tail -F demultiplexing
// ---------------------------------------------------------------------------------------------

/// What one line of `tail`'s output is, by its content alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailLine<'a> {
    /// `==> NAME <==`: the lines that follow are NAME's.
    Header(&'a [u8]),
    /// One of tail's own messages: a file replaced, truncated, gone, back.
    Notice,
    /// An empty line: a real one, or the separator tail prints before a header.
    Empty,
    /// Anything else: a line of the file being followed.
    Text,
}

/// Classifies one line of `tail`'s output, without context (see [`TailDemux`] for the empty
/// line that precedes a header).
pub fn classify(line: &[u8]) -> TailLine<'_> {
    if line.is_empty() {
        TailLine::Empty
    } else if let Some(name) = header_name(line) {
        TailLine::Header(name)
    } else if is_notice(line) {
        TailLine::Notice
    } else {
        TailLine::Text
    }
}

/// The NAME of a `==> NAME <==` header (GNU and busybox print it the same way, unquoted).
fn header_name(line: &[u8]) -> Option<&[u8]> {
    let name = line.strip_prefix(b"==> ")?.strip_suffix(b" <==")?;
    (!name.is_empty()).then_some(name)
}

/// Parts of the messages GNU tail (`recheck`, `tail_forever*`, `check_fspec`) and busybox tail
/// print while following, after the `tail: ` prefix; file names are quoted (`'a.log'`, or
/// `‘a.log’` and `` `a.log' `` in older GNU releases) or not (busybox, `quotef`), so they are
/// matched around the name.
const NOTICE_PARTS: &[&[u8]] = &[
    b" has become inaccessible", // GNU: the name is gone (rotation in progress)
    b" has become accessible",   // GNU: back after an error other than ENOENT
    b" has appeared;", // GNU `;  following new file`, busybox `; following end of new file`
    b" has been replaced", // GNU and busybox, also `… with an untailable file`
    b" has been renamed or deleted", // busybox
    b" was replaced",  // GNU, --follow=descriptor
    b": file truncated", // GNU
    b"cannot follow end of this type", // GNU
    b"directory containing watched file was removed",
    b"inotify resources exhausted",
    b"inotify cannot be used",
    b"reverting to polling",
];

/// Messages known by how they start.
const NOTICE_STARTS: &[&[u8]] = &[
    b"cannot open ", // GNU `cannot open 'a.log' for reading: …`
    b"can't open ",  // busybox `can't open 'a.log': …`
    b"cannot watch ",
    b"cannot fstat ",
    b"error reading ",
    b"read error",
    b"no files",
    b"warning: ",
];

/// GNU prints `tail: a.log: <strerror>` when the error on a name changes; these are the
/// errors a followed name meets.
const NOTICE_ERRNO_ENDS: &[&[u8]] = &[
    b": No such file or directory",
    b": Permission denied",
    b": Is a directory",
    b": Not a directory",
    b": Stale file handle",
    b": Input/output error",
    b": Too many levels of symbolic links",
];

/// Whether `line` is a message of tail itself: `tail: …` (or `/usr/bin/tail: …`, as GNU prints
/// its `argv[0]`) followed by one of the known messages.
fn is_notice(line: &[u8]) -> bool {
    let Some(colon) = memmem::find(line, b": ") else {
        return false;
    };
    let (program, msg) = (&line[..colon], &line[colon + 2..]);
    let is_tail = program == b"tail" || (program.ends_with(b"/tail") && !program.contains(&b' '));
    is_tail
        && (NOTICE_PARTS.iter().any(|p| memmem::find(msg, p).is_some())
            || NOTICE_STARTS.iter().any(|p| msg.starts_with(p))
            || NOTICE_ERRNO_ENDS.iter().any(|p| msg.ends_with(p)))
}

/// How many file names a [`TailDemux`] keeps to share between headers; more (only possible
/// with header-looking application lines) are allocated per header.
const MAX_NAMES: usize = 64;

/// A line to ship and the application file it belongs to: `None` before any header (a
/// single-file `tail -F`, where the caller uses the file configured for the sidecar).
pub type Routed = (Decoded, Option<Arc<str>>);

/// What a [`TailDemux`] needs after a restart: the file the lines at the checkpoint belong to
/// (tail prints a header only when it switches files, so the replay from the checkpoint may
/// start after the last one). Stored by the caller beside the file's offset, taken with it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TailState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Demultiplexes the output of `tail -F` (one per sidecar container log): see the module doc.
#[derive(Debug, Default)]
pub struct TailDemux {
    current: Option<Arc<str>>,
    /// An empty stdout line that may be the separator before a header, with its file.
    held: Option<Routed>,
    names: Vec<Arc<str>>,
    /// Only headers naming one of `names` are headers.
    only_known: bool,
    stats: TailStats,
}

/// What a [`TailDemux`] counted since the last [`TailDemux::stats`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TailStats {
    /// `==> NAME <==` headers dropped.
    pub headers: u64,
    /// Empty lines dropped as the separator before a header.
    pub separators: u64,
    /// tail's notices dropped.
    pub notices: u64,
    /// The first notice counted, for a rate-limited log line by the caller (a file replaced or
    /// truncated is worth telling).
    pub notice_sample: Option<Bytes>,
}

impl TailDemux {
    /// A demultiplexer that takes any `==> NAME <==` line for a header.
    pub fn new() -> TailDemux {
        TailDemux::default()
    }

    /// A demultiplexer that takes only headers naming one of `files` (as written on tail's
    /// command line): other header-looking lines are log lines.
    pub fn with_files(files: impl IntoIterator<Item = Arc<str>>) -> TailDemux {
        TailDemux {
            names: files.into_iter().collect(),
            only_known: true,
            ..TailDemux::default()
        }
    }

    /// Continues from a [`TailDemux::state`] saved with the checkpoint the tailer resumes from.
    pub fn resume(mut self, state: TailState) -> TailDemux {
        self.current = state.file.map(|f| {
            let known = self.names.iter().find(|n| ***n == *f).cloned();
            known.unwrap_or_else(|| {
                let f: Arc<str> = f.into();
                if self.names.len() < MAX_NAMES {
                    self.names.push(f.clone());
                }
                f
            })
        });
        self
    }

    /// What to persist with the offset shipped up to (kept at or before
    /// [`TailDemux::pending_from`]): a held line belongs to the current file, so the state is
    /// right for it too.
    pub fn state(&self) -> TailState {
        TailState {
            file: self.current.as_deref().map(str::to_owned),
        }
    }

    /// The file the next log line belongs to.
    pub fn current_file(&self) -> Option<&Arc<str>> {
        self.current.as_ref()
    }

    /// Takes one decoded line of the sidecar's log; appends to `out` the lines to ship, in
    /// order, each with its file. At most one empty stdout line is kept back until the next
    /// stdout line shows whether it was a separator (see [`TailDemux::pending_from`]).
    pub fn push(&mut self, d: Decoded, out: &mut Vec<Routed>) {
        let kind = classify(&d.line);
        if kind == TailLine::Notice {
            self.count_notice(&d.line);
            return;
        }
        if d.stream == Stream::Stderr {
            // tail writes only its notices to stderr; whatever else comes there is not framing
            // and does not tell anything about a held stdout line.
            out.push((d, self.current.clone()));
            return;
        }
        match kind {
            TailLine::Header(name) => {
                if let Some(file) = self.header_file(name) {
                    if self.held.take().is_some() {
                        self.stats.separators += 1;
                    }
                    self.stats.headers += 1;
                    self.current = Some(file);
                    return;
                }
                self.release(out);
                out.push((d, self.current.clone()));
            }
            TailLine::Empty => {
                self.release(out);
                self.held = Some((d, self.current.clone()));
            }
            TailLine::Text | TailLine::Notice => {
                self.release(out);
                out.push((d, self.current.clone()));
            }
        }
    }

    /// Releases the held empty line as a log line. Call when no line has come for a while (the
    /// partial-line timeout is a good choice: tail writes a separator and its header together)
    /// and when the file is finished; not at every end of a read, where the header may simply
    /// not have been read yet.
    pub fn flush(&mut self, out: &mut Vec<Routed>) {
        self.release(out);
    }

    /// The file offset of the held line: a checkpoint must not pass it.
    pub fn pending_from(&self) -> Option<u64> {
        self.held.as_ref().map(|(d, _)| d.start)
    }

    /// What was counted since the last call (take and reset).
    pub fn stats(&mut self) -> TailStats {
        std::mem::take(&mut self.stats)
    }

    fn release(&mut self, out: &mut Vec<Routed>) {
        if let Some(held) = self.held.take() {
            out.push(held);
        }
    }

    fn count_notice(&mut self, line: &Bytes) {
        if self.stats.notices == 0 {
            self.stats.notice_sample = Some(line.clone());
        }
        self.stats.notices += 1;
    }

    fn header_file(&mut self, name: &[u8]) -> Option<Arc<str>> {
        if let Some(known) = self.names.iter().find(|n| n.as_bytes() == name) {
            return Some(known.clone());
        }
        if self.only_known {
            return None;
        }
        let file: Arc<str> = String::from_utf8_lossy(name).into();
        if self.names.len() < MAX_NAMES {
            self.names.push(file.clone());
        }
        Some(file)
    }
}

// ---------------------------------------------------------------------------------------------
// B. Periodic-dump deduplication
// ---------------------------------------------------------------------------------------------

/// Lines of one dump come within microseconds of each other; `sleep` in a dump loop is seconds.
pub const DEFAULT_ROUND_GAP: Duration = Duration::from_secs(1);
/// Enough to deduplicate the dump of a busy application's file; a bigger one costs duplicates,
/// not memory.
pub const DEFAULT_MAX_HELD_BYTES: usize = 16 << 20;

/// How a [`DumpDedupe`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeOptions {
    /// A gap longer than this between two lines' `time_ns` starts a new round. Must be shorter
    /// than the sidecar's sleep and longer than any stall inside one dump.
    pub round_gap: Duration,
    /// Lines held while a round is compared with what was shipped, at most (content bytes plus
    /// the size of a [`Decoded`] per line).
    pub max_held_bytes: usize,
}

impl Default for DedupeOptions {
    fn default() -> DedupeOptions {
        DedupeOptions {
            round_gap: DEFAULT_ROUND_GAP,
            max_held_bytes: DEFAULT_MAX_HELD_BYTES,
        }
    }
}

/// What a [`DumpDedupe`] counted since the last [`DumpDedupe::stats`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DedupeStats {
    /// stdout lines shipped (including `unverified` ones).
    pub shipped: u64,
    /// Lines dropped as repeats of lines shipped in an earlier round.
    pub skipped: u64,
    /// Rounds started.
    pub rounds: u64,
    /// Rounds that were not a replay of what was shipped (file truncated or replaced): shipped
    /// from their start.
    pub resets: u64,
    /// Rounds whose held lines passed `max_held_bytes`.
    pub overflows: u64,
    /// Lines shipped without proof that they are new, after an overflow: some are duplicates.
    pub unverified: u64,
    /// stderr lines passed through.
    pub passed: u64,
}

/// What survives a restart: a summary of the dump content shipped so far, and of the round in
/// progress if any. A few hundred bytes of JSON; the caller stores it beside the file's offset
/// (see the module doc for when to take it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DumpState {
    shipped: Prefix,
    /// `time_ns` of the last line this state covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_time_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    round: Option<RoundState>,
}

impl DumpState {
    /// Lines of the dump content known as shipped.
    pub fn shipped_lines(&self) -> u64 {
        self.shipped.lines
    }

    /// Whether the state is one this module can have written: a damaged one is better dropped
    /// (the next round is shipped whole) than trusted.
    fn is_consistent(&self) -> bool {
        self.shipped.is_consistent()
            && match &self.round {
                Some(RoundState::Unverified { seen }) => {
                    seen.is_consistent()
                        && seen.lines < self.shipped.lines
                        && seen.bytes <= self.shipped.bytes
                }
                Some(RoundState::Extending) | None => true,
            }
    }
}

/// A round in progress, as saved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case", tag = "phase")]
enum RoundState {
    /// Past the shipped prefix: every further line of the round is new.
    Extending,
    /// Compared with the shipped prefix, lines shipped as they come (after an overflow).
    Unverified { seen: Prefix },
}

/// A summary of a sequence of lines: enough to tell whether another sequence starts with it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Prefix {
    lines: u64,
    bytes: u64,
    /// Running hash of lines `1..=lines`.
    #[serde(with = "hex::u64")]
    hash: u64,
    /// `marks[i]`: the running hash at line `2^i`.
    #[serde(with = "hex::vec")]
    marks: Vec<u64>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

impl Prefix {
    fn empty() -> Prefix {
        Prefix {
            lines: 0,
            bytes: 0,
            hash: FNV_OFFSET,
            marks: Vec::new(),
        }
    }

    fn push(&mut self, line: &[u8]) {
        // The length first, so that line boundaries are part of what is hashed.
        self.hash = fnv1a(self.hash, &(line.len() as u64).to_le_bytes());
        self.hash = fnv1a(self.hash, line);
        self.lines += 1;
        self.bytes += line.len() as u64;
        if self.lines.is_power_of_two() {
            self.marks.push(self.hash);
        }
    }

    /// The running hash at line `k`, if `k` is a power of two not past the end.
    fn mark(&self, k: u64) -> Option<u64> {
        if k.is_power_of_two() && k <= self.lines {
            self.marks.get(k.trailing_zeros() as usize).copied()
        } else {
            None
        }
    }

    fn is_consistent(&self) -> bool {
        let expected_marks = (u64::BITS - self.lines.leading_zeros()) as usize;
        self.marks.len() == expected_marks && (self.lines > 0 || self.hash == FNV_OFFSET)
    }
}

#[derive(Debug)]
enum Round {
    /// Comparing the round with the shipped prefix; `seen` is the round so far.
    Matching {
        seen: Prefix,
        /// The held lines passed `max_held_bytes`: lines are shipped as they come.
        overflowed: bool,
        /// `time_ns` of the line before the round, for [`DumpDedupe::state`] while holding.
        prev_time_ns: Option<i64>,
    },
    /// Past (or off) the shipped prefix: each line is new, shipped, and added to it.
    Extending,
}

/// Deduplicates a periodic dump of an application's log file (one per sidecar container log):
/// see the module doc.
#[derive(Debug)]
pub struct DumpDedupe {
    opts: DedupeOptions,
    round_gap_ns: i64,
    shipped: Prefix,
    round: Option<Round>,
    last_time_ns: Option<i64>,
    /// stdout lines of the current round waiting for a verdict, from its first line.
    held: VecDeque<Decoded>,
    held_bytes: usize,
    stats: DedupeStats,
}

impl DumpDedupe {
    /// A deduplicator that knows what `restored` says was shipped (`None`: nothing, so the next
    /// round is shipped whole). A damaged state is dropped, with the same effect.
    pub fn new(opts: DedupeOptions, restored: Option<DumpState>) -> DumpDedupe {
        let restored = restored.filter(DumpState::is_consistent);
        let (shipped, last_time_ns, round) = match restored {
            Some(s) => (
                s.shipped,
                s.last_time_ns,
                s.round.map(|r| match r {
                    RoundState::Extending => Round::Extending,
                    RoundState::Unverified { seen } => Round::Matching {
                        seen,
                        overflowed: true,
                        prev_time_ns: None,
                    },
                }),
            ),
            None => (Prefix::empty(), None, None),
        };
        DumpDedupe {
            opts,
            round_gap_ns: i64::try_from(opts.round_gap.as_nanos()).unwrap_or(i64::MAX),
            shipped,
            round,
            last_time_ns,
            held: VecDeque::new(),
            held_bytes: 0,
            stats: DedupeStats::default(),
        }
    }

    /// Takes one decoded line of the sidecar's log; appends to `out` the lines to ship, in
    /// order. stderr lines pass through. A stdout line coming more than `round_gap` after the
    /// previous one ends the round in progress first.
    pub fn push(&mut self, d: Decoded, out: &mut Vec<Decoded>) {
        if d.stream == Stream::Stderr {
            self.stats.passed += 1;
            out.push(d);
            return;
        }
        if let (Some(_), Some(last)) = (&self.round, self.last_time_ns)
            && d.time_ns.saturating_sub(last) > self.round_gap_ns
        {
            self.end_of_round(out);
        }
        let prev_time_ns = self.last_time_ns.replace(d.time_ns);
        let round = match &mut self.round {
            Some(round) => round,
            None => {
                self.stats.rounds += 1;
                self.round.insert(if self.shipped.lines == 0 {
                    Round::Extending
                } else {
                    Round::Matching {
                        seen: Prefix::empty(),
                        overflowed: false,
                        prev_time_ns,
                    }
                })
            }
        };
        let Round::Matching {
            seen, overflowed, ..
        } = round
        else {
            self.ship_new(d, out);
            return;
        };

        seen.push(&d.line);
        let k = seen.lines;
        let replay = if seen.bytes > self.shipped.bytes {
            Some(false)
        } else if k == self.shipped.lines {
            Some(seen.hash == self.shipped.hash && seen.bytes == self.shipped.bytes)
        } else {
            self.shipped
                .mark(k)
                .and_then(|m| (m != seen.hash).then_some(false))
        };
        match replay {
            None if *overflowed => {
                self.stats.unverified += 1;
                self.stats.shipped += 1;
                out.push(d);
            }
            None => {
                let size = d.line.len() + std::mem::size_of::<Decoded>();
                if self.held_bytes + size > self.opts.max_held_bytes {
                    *overflowed = true;
                    self.stats.overflows += 1;
                    self.stats.unverified += self.held.len() as u64 + 1;
                    self.release_held(out);
                    self.stats.shipped += 1;
                    out.push(d);
                } else {
                    self.held_bytes += size;
                    self.held.push_back(d);
                }
            }
            Some(true) => {
                // Lines 1..=n are the shipped ones: drop them; what follows is new.
                self.stats.skipped += self.held.len() as u64 + 1;
                self.held.clear();
                self.held_bytes = 0;
                self.round = Some(Round::Extending);
            }
            Some(false) => {
                // Not a replay: the file was truncated or replaced. Its content is new from
                // the round's start, and becomes what was shipped.
                let Some(Round::Matching { seen, .. }) = self.round.take() else {
                    unreachable!("matching round")
                };
                self.stats.resets += 1;
                self.release_held(out);
                self.stats.shipped += 1;
                out.push(d);
                self.shipped = seen;
                self.round = Some(Round::Extending);
            }
        }
    }

    /// Ends the round in progress: a round that ended before reaching the end of what was
    /// shipped is a shorter file, shipped. Call when no line has come for `round_gap` (at the
    /// end of the file, by wall clock) and when the file is finished; a later line more than
    /// `round_gap` after the previous one has the same effect.
    pub fn end_of_round(&mut self, out: &mut Vec<Decoded>) {
        if let Some(Round::Matching { seen, .. }) = self.round.take() {
            self.stats.resets += 1;
            self.release_held(out);
            self.shipped = seen;
        }
    }

    /// What to persist with the offset shipped up to: see the module doc.
    pub fn state(&self) -> DumpState {
        if let Some(Round::Matching { prev_time_ns, .. }) = &self.round
            && !self.held.is_empty()
        {
            // Lines are held from the round's first line: the checkpoint stays before it, and
            // the replay starts the round again.
            return DumpState {
                shipped: self.shipped.clone(),
                last_time_ns: *prev_time_ns,
                round: None,
            };
        }
        DumpState {
            shipped: self.shipped.clone(),
            last_time_ns: self.last_time_ns,
            round: self.round.as_ref().map(|r| match r {
                Round::Extending => RoundState::Extending,
                Round::Matching { seen, .. } => RoundState::Unverified { seen: seen.clone() },
            }),
        }
    }

    /// The file offset of the first held line: a checkpoint must not pass it.
    pub fn pending_from(&self) -> Option<u64> {
        self.held.front().map(|d| d.start)
    }

    /// What was counted since the last call (take and reset).
    pub fn stats(&mut self) -> DedupeStats {
        std::mem::take(&mut self.stats)
    }

    fn ship_new(&mut self, d: Decoded, out: &mut Vec<Decoded>) {
        self.shipped.push(&d.line);
        self.stats.shipped += 1;
        out.push(d);
    }

    fn release_held(&mut self, out: &mut Vec<Decoded>) {
        self.stats.shipped += self.held.len() as u64;
        out.extend(self.held.drain(..));
        self.held_bytes = 0;
    }
}

/// Hashes as 16 hex digits, as in the checkpoint file (JSON readers other than serde's lose
/// precision on integers above 2^53).
mod hex {
    pub mod u64 {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&format!("{v:016x}"))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
            let s = String::deserialize(d)?;
            u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
        }
    }

    pub mod vec {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|h| format!("{h:016x}")))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
            Vec::<String>::deserialize(d)?
                .iter()
                .map(|s| u64::from_str_radix(s, 16).map_err(serde::de::Error::custom))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests;
