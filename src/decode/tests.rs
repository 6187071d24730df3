//! Decode stage: tests of the decoder as the tailer drives it (framing, merge, caps, timeouts).

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::record::flags::{MALFORMED, MERGED, TRUNCATED, UNTERMINATED};

/// 2016-10-06T00:17:09Z in Unix nanoseconds.
const T0: i64 = 1_475_713_029_000_000_000;
const WALL: i64 = 1_700_000_000_000_000_000;
const TIMEOUT: Duration = Duration::from_secs(5);

fn opts(max_line_bytes: usize) -> DecodeOptions {
    DecodeOptions {
        max_line_bytes,
        partial_flush_timeout: TIMEOUT,
    }
}

/// A fake clock: `at(s)` is `s` seconds after the test's start.
struct FakeClock(Instant);

impl FakeClock {
    fn new() -> FakeClock {
        FakeClock(Instant::now())
    }
    fn at(&self, secs: u64) -> Clock {
        Clock {
            now: self.0 + Duration::from_secs(secs),
            wall_ns: WALL + i64::try_from(secs).unwrap_or_default(),
        }
    }
}

/// Feeds lines as a tailer would (offsets as if they were one file) and returns what came out.
struct Feed {
    dec: Decoder,
    clock: FakeClock,
    offset: u64,
    out: Vec<Decoded>,
}

impl Feed {
    fn new(format: FileFormat, max: usize) -> Feed {
        Feed {
            dec: Decoder::new(format, opts(max)),
            clock: FakeClock::new(),
            offset: 0,
            out: Vec::new(),
        }
    }

    /// Pushes one physical line at simulated second `secs`; returns its start offset.
    fn push_at(&mut self, line: impl AsRef<[u8]>, secs: u64, truncated: bool) -> u64 {
        let line = Bytes::copy_from_slice(line.as_ref());
        let start = self.offset;
        self.offset += line.len() as u64 + 1;
        let clock = self.clock.at(secs);
        self.dec
            .push(line, start, self.offset, truncated, &clock, &mut self.out);
        start
    }

    fn push(&mut self, line: impl AsRef<[u8]>) -> u64 {
        self.push_at(line, 0, false)
    }

    /// The records out so far, with `start` zeroed (tests of offsets use `take_with_starts`).
    fn take(&mut self) -> Vec<Decoded> {
        let mut out = self.take_with_starts();
        for d in &mut out {
            d.start = 0;
        }
        out
    }

    fn take_with_starts(&mut self) -> Vec<Decoded> {
        std::mem::take(&mut self.out)
    }
}

fn decoded(line: &[u8], time_ns: i64, stream: Stream, flags: u8) -> Decoded {
    Decoded {
        line: Bytes::copy_from_slice(line),
        time_ns,
        stream,
        flags,
        start: 0,
    }
}

fn stdout(line: &str, time_ns: i64, flags: u8) -> Decoded {
    decoded(line.as_bytes(), time_ns, Stream::Stdout, flags)
}

fn stderr(line: &str, time_ns: i64, flags: u8) -> Decoded {
    decoded(line.as_bytes(), time_ns, Stream::Stderr, flags)
}

#[test]
fn format_is_detected_from_the_first_line() {
    let cases: &[(&[u8], FileFormat)] = &[
        (b"2016-10-06T00:17:09Z stdout F x", FileFormat::Cri),
        (
            br#"{"log":"x\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
            FileFormat::Docker,
        ),
        (b"", FileFormat::Cri),
        (b"plain text", FileFormat::Cri),
    ];
    for (line, want) in cases {
        assert_eq!(
            FileFormat::detect(line),
            *want,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn full_cri_lines_are_slices_of_the_block_without_copy() {
    let block = Bytes::from_static(b"2016-10-06T00:17:09.5Z stdout F hello world\n");
    let line = block.slice(..block.len() - 1);
    let mut dec = Decoder::new(FileFormat::Cri, opts(1024));
    let mut out = Vec::new();
    dec.push(
        line,
        0,
        block.len() as u64,
        false,
        &FakeClock::new().at(0),
        &mut out,
    );
    assert_eq!(out, [stdout("hello world", T0 + 500_000_000, 0)]);
    let range = block.as_ptr_range();
    assert!(range.contains(&out[0].line.as_ptr()), "the line was copied");
}

#[test]
fn every_timestamp_form_gives_the_line_its_utc_time() {
    let cases: &[(&str, i64)] = &[
        ("2016-10-06T00:17:09Z", T0),
        ("2016-10-06T00:17:09.1Z", T0 + 100_000_000),
        ("2016-10-06T00:17:09.12Z", T0 + 120_000_000),
        ("2016-10-06T00:17:09.123Z", T0 + 123_000_000),
        ("2016-10-06T00:17:09.1234Z", T0 + 123_400_000),
        ("2016-10-06T00:17:09.12345Z", T0 + 123_450_000),
        ("2016-10-06T00:17:09.123456Z", T0 + 123_456_000),
        ("2016-10-06T00:17:09.1234567Z", T0 + 123_456_700),
        ("2016-10-06T00:17:09.12345678Z", T0 + 123_456_780),
        ("2016-10-06T00:17:09.123456789Z", T0 + 123_456_789),
        ("2016-10-06T05:47:09.5+05:30", T0 + 500_000_000),
        ("2016-10-05T19:17:09.000000001-05:00", T0 + 1),
        // CRI-O writes the node's local offset.
        ("2016-10-06T02:17:09.669794202+02:00", T0 + 669_794_202),
    ];
    for (ts, want) in cases {
        let mut feed = Feed::new(FileFormat::Cri, 1024);
        feed.push(format!("{ts} stdout F line"));
        assert_eq!(feed.take(), [stdout("line", *want, 0)], "{ts}");
    }
}

#[test]
fn content_is_kept_as_written() {
    let cases: &[(&str, &str)] = &[
        ("2016-10-06T00:17:09Z stdout F ", ""),
        ("2016-10-06T00:17:09Z stdout F", ""),
        (
            "2016-10-06T00:17:09Z stdout F  two  spaces  inside ",
            " two  spaces  inside ",
        ),
        (
            "2016-10-06T00:17:09Z stdout F:tag2:tag3 unknown tags ignored",
            "unknown tags ignored",
        ),
        ("2016-10-06T00:17:09Z stdout F a\rb", "a\rb"),
        ("2016-10-06T00:17:09Z stdout F crlf\r", "crlf"),
        ("2016-10-06T00:17:09Z stdout F two cr\r\r", "two cr\r"),
        ("2016-10-06T00:17:09Z stdout F nul \0 byte", "nul \0 byte"),
    ];
    for (line, want) in cases {
        let mut feed = Feed::new(FileFormat::Cri, 1024);
        feed.push(line);
        assert_eq!(feed.take(), [stdout(want, T0, 0)], "{line:?}");
    }
}

#[test]
fn partial_chunks_are_merged_with_the_first_chunks_time() {
    let mut feed = Feed::new(FileFormat::Cri, 1024);
    feed.push("2016-10-06T00:17:09.1Z stdout P first ");
    feed.push("2016-10-06T00:17:09.2Z stdout P second ");
    assert_eq!(feed.take(), []);
    feed.push("2016-10-06T00:17:09.3Z stdout F third");
    assert_eq!(
        feed.take(),
        [stdout("first second third", T0 + 100_000_000, MERGED)]
    );
    assert_eq!(feed.dec.take_stats().merged, 1);
}

#[test]
fn interleaved_stdout_and_stderr_partials_merge_separately() {
    let mut feed = Feed::new(FileFormat::Cri, 1024);
    feed.push("2016-10-06T00:17:09.1Z stdout P out-1 ");
    feed.push("2016-10-06T00:17:09.2Z stderr P err-1 ");
    feed.push("2016-10-06T00:17:09.3Z stdout P out-2 ");
    feed.push("2016-10-06T00:17:09.4Z stderr F err-2");
    feed.push("2016-10-06T00:17:09.5Z stdout F out-3");
    assert_eq!(
        feed.take(),
        [
            stderr("err-1 err-2", T0 + 200_000_000, MERGED),
            stdout("out-1 out-2 out-3", T0 + 100_000_000, MERGED),
        ]
    );
}

#[test]
fn a_malformed_line_between_chunks_does_not_disturb_the_merge() {
    let mut feed = Feed::new(FileFormat::Cri, 1024);
    feed.push("2016-10-06T00:17:09Z stdout P head ");
    feed.push("garbage in the middle");
    feed.push("2016-10-06T00:17:09Z stdout F tail");
    assert_eq!(
        feed.take(),
        [
            stdout("garbage in the middle", WALL, MALFORMED),
            stdout("head tail", T0, MERGED)
        ]
    );
}

#[test]
fn crlf_split_across_chunks_is_stripped_once() {
    let cases: &[(&[&str], &str)] = &[
        (&["P a", "F b\r"], "ab"),
        (&["P a\r", "F "], "a"),
        (&["P a\r", "F \r"], "a\r"),
        (&["P a\r", "F b"], "a\rb"),
    ];
    for (chunks, want) in cases {
        let mut feed = Feed::new(FileFormat::Cri, 1024);
        for c in *chunks {
            feed.push(format!("2016-10-06T00:17:09Z stdout {c}"));
        }
        assert_eq!(feed.take(), [stdout(want, T0, MERGED)], "{chunks:?}");
    }
}

#[test]
fn merged_lines_are_capped_counted_once_and_the_rest_dropped_until_the_final_chunk() {
    let mut feed = Feed::new(FileFormat::Cri, 10);
    feed.push("2016-10-06T00:17:09Z stdout P 123456");
    feed.push("2016-10-06T00:17:09Z stdout P 789abc");
    if let Partial::Assembling(a) = &feed.dec.partials[0] {
        assert!(
            a.buf.capacity() <= 10,
            "the buffer grew to {}",
            a.buf.capacity()
        );
    } else {
        panic!("no line being assembled");
    }
    feed.push("2016-10-06T00:17:09Z stdout P defghi");
    feed.push("2016-10-06T00:17:09Z stdout F jkl\r");
    feed.push("2016-10-06T00:17:09Z stdout F next line");
    assert_eq!(
        feed.take(),
        [
            stdout("123456789a", T0, MERGED | TRUNCATED),
            stdout("next line", T0, 0)
        ]
    );
    let stats = feed.dec.take_stats();
    assert_eq!((stats.truncated, stats.merged), (1, 1));
}

#[test]
fn lines_are_cut_at_the_cap_without_splitting_a_character() {
    // "é" is 2 bytes, "€" 3, "😀" 4.
    let cases: &[(&str, usize, &str)] = &[
        ("abcdefgh", 4, "abcd"),
        ("abé", 3, "ab"),
        ("abé", 4, "abé"),
        ("a€", 3, "a"),
        ("a€b", 4, "a€"),
        ("😀😀", 7, "😀"),
        ("😀😀", 8, "😀😀"),
        ("", 0, ""),
        ("abc", 0, ""),
    ];
    for (content, max, want) in cases {
        let mut feed = Feed::new(FileFormat::Cri, *max);
        feed.push(format!("2016-10-06T00:17:09Z stdout F {content}"));
        let flags = if want.len() < content.len() {
            TRUNCATED
        } else {
            0
        };
        assert_eq!(feed.take(), [stdout(want, T0, flags)], "{content} at {max}");

        // Split in two chunks, possibly inside a character.
        let mut feed = Feed::new(FileFormat::Cri, *max);
        let (head, tail) = content.as_bytes().split_at(content.len() / 2);
        feed.push([&b"2016-10-06T00:17:09Z stdout P "[..], head].concat());
        feed.push([&b"2016-10-06T00:17:09Z stdout F "[..], tail].concat());
        let flags = flags | MERGED;
        assert_eq!(
            feed.take(),
            [stdout(want, T0, flags)],
            "merged {content} at {max}"
        );
    }
}

#[test]
fn bytes_that_are_not_utf8_are_cut_at_the_cap_as_they_are() {
    let cases: &[(&[u8], usize, &[u8])] = &[
        (b"\xff\xff\xff", 2, b"\xff\xff"),
        (b"a\x80\x80\x80\x80", 3, b"a\x80\x80"),
        (b"\xc3\xa9\xa9", 2, b"\xc3\xa9"),
    ];
    for (content, max, want) in cases {
        assert_eq!(
            &content[..cut_point(content, *max)],
            *want,
            "{content:?} at {max}"
        );
    }
}

#[test]
fn a_partial_line_without_its_final_chunk_is_flushed_after_the_timeout() {
    let mut feed = Feed::new(FileFormat::Cri, 1024);
    feed.push_at(
        "2016-10-06T00:17:09Z stdout P no newline at exit",
        10,
        false,
    );
    assert_eq!(feed.dec.next_deadline(), Some(feed.clock.at(15).now));

    feed.dec.flush_expired(&feed.clock.at(14), &mut feed.out);
    assert_eq!(feed.take(), [], "flushed before its time");

    feed.dec.flush_expired(&feed.clock.at(15), &mut feed.out);
    assert_eq!(
        feed.take(),
        [stdout("no newline at exit", T0, UNTERMINATED)]
    );
    assert_eq!(feed.dec.next_deadline(), None);
    assert_eq!(feed.dec.pending_from(), None);
    assert_eq!(feed.dec.take_stats().flushed, 1);

    // What comes next is a line of its own.
    feed.push_at("2016-10-06T00:17:09Z stdout F later", 16, false);
    assert_eq!(feed.take(), [stdout("later", T0, 0)]);
}

#[test]
fn the_timeout_counts_from_the_first_chunk_not_the_last() {
    let mut feed = Feed::new(FileFormat::Cri, 1024);
    feed.push_at("2016-10-06T00:17:09Z stdout P a", 0, false);
    feed.push_at("2016-10-06T00:17:09Z stdout P b", 4, false);
    feed.dec.flush_expired(&feed.clock.at(5), &mut feed.out);
    assert_eq!(feed.take(), [stdout("ab", T0, MERGED | UNTERMINATED)]);
}

#[test]
fn a_cut_line_flushed_on_timeout_drops_its_rest_until_the_final_chunk() {
    let mut feed = Feed::new(FileFormat::Cri, 4);
    feed.push_at("2016-10-06T00:17:09Z stdout P 123456", 0, false);
    feed.dec.flush_expired(&feed.clock.at(5), &mut feed.out);
    assert_eq!(feed.take(), [stdout("1234", T0, TRUNCATED | UNTERMINATED)]);
    assert_eq!(feed.dec.pending_from(), None, "nothing is held");
    feed.push_at("2016-10-06T00:17:09Z stdout P 789", 6, false);
    feed.push_at("2016-10-06T00:17:09Z stderr F other stream", 6, false);
    feed.push_at("2016-10-06T00:17:09Z stdout F end", 6, false);
    feed.push_at("2016-10-06T00:17:09Z stdout F new", 6, false);
    assert_eq!(
        feed.take(),
        [stderr("othe", T0, TRUNCATED), stdout("new", T0, 0)]
    );
}

#[test]
fn flush_all_sends_every_partial_oldest_first() {
    let mut feed = Feed::new(FileFormat::Cri, 1024);
    feed.push("2016-10-06T00:17:09Z stderr P err");
    feed.push("2016-10-06T00:17:09Z stdout P out");
    feed.push("2016-10-06T00:17:09Z stdout P more");
    feed.dec.flush_all(&mut feed.out);
    assert_eq!(
        feed.take(),
        [
            stderr("err", T0, UNTERMINATED),
            stdout("outmore", T0, MERGED | UNTERMINATED)
        ]
    );
    assert_eq!(feed.dec.pending_from(), None);
    feed.dec.flush_all(&mut feed.out);
    assert_eq!(feed.take(), [], "a second flush has nothing to send");
}

#[test]
fn pending_from_is_the_start_of_the_oldest_line_being_assembled() {
    let mut feed = Feed::new(FileFormat::Cri, 1024);
    assert_eq!(feed.dec.pending_from(), None);
    feed.push("2016-10-06T00:17:09Z stdout F full");
    assert_eq!(feed.dec.pending_from(), None);
    let out_start = feed.push("2016-10-06T00:17:09Z stdout P out");
    assert_eq!(feed.dec.pending_from(), Some(out_start));
    let err_start = feed.push("2016-10-06T00:17:09Z stderr P err");
    feed.push("2016-10-06T00:17:09Z stdout P out");
    assert_eq!(
        feed.dec.pending_from(),
        Some(out_start),
        "the first chunk, not the last"
    );
    feed.push("2016-10-06T00:17:09Z stdout F out");
    assert_eq!(feed.dec.pending_from(), Some(err_start));
    feed.push("2016-10-06T00:17:09Z stderr F err");
    assert_eq!(feed.dec.pending_from(), None);
}

#[test]
fn malformed_lines_pass_through_raw_with_the_wall_time() {
    let cases: &[(&str, Malformed)] = &[
        ("plain text written to the file", Malformed::Timestamp),
        ("nospace", Malformed::Framing),
        ("2016-10-06T00:17:09Z", Malformed::Framing),
        (
            "2016-13-06T00:17:09Z stdout F month 13",
            Malformed::Timestamp,
        ),
        ("2016-10-32T00:17:09Z stdout F day 32", Malformed::Timestamp),
        (
            "2016-10-06T25:17:09Z stdout F hour 25",
            Malformed::Timestamp,
        ),
        ("2016-10-06T00:17:09Z stdin F x", Malformed::Stream),
        ("2016-10-06T00:17:09Z stdout X x", Malformed::Tag),
        ("", Malformed::Framing),
    ];
    for (line, reason) in cases {
        let mut feed = Feed::new(FileFormat::Cri, 1024);
        feed.push(line);
        assert_eq!(feed.take(), [stdout(line, WALL, MALFORMED)], "{line}");
        let stats = feed.dec.take_stats();
        assert_eq!(stats.malformed, 1, "{line}");
        let sample = stats.malformed_sample.expect("a sample");
        assert_eq!(
            (sample.reason, &sample.line[..]),
            (*reason, line.as_bytes()),
            "{line}"
        );
    }
}

#[test]
fn malformed_docker_lines_pass_through_raw() {
    let cases: &[(&str, Malformed)] = &[
        (r#"{"log":"x\n","stream":"stdout""#, Malformed::Json),
        (
            r#"{"log":"x\n","time":"2019-01-01T11:11:11Z"}"#,
            Malformed::MissingField("stream"),
        ),
        (
            r#"{"log":"x\n","stream":"stdin","time":"2019-01-01T11:11:11Z"}"#,
            Malformed::Stream,
        ),
        (
            r#"{"log":"x\n","stream":"stdout","time":"2019-02-30T11:11:11Z"}"#,
            Malformed::Timestamp,
        ),
        (
            "2016-10-06T00:17:09Z stdout F a CRI line in a Docker file",
            Malformed::Json,
        ),
    ];
    for (line, reason) in cases {
        let mut feed = Feed::new(FileFormat::Docker, 1024);
        feed.push(line);
        assert_eq!(feed.take(), [stdout(line, WALL, MALFORMED)], "{line}");
        let stats = feed.dec.take_stats();
        assert_eq!(
            stats.malformed_sample.map(|s| s.reason),
            Some(*reason),
            "{line}"
        );
    }
}

#[test]
fn malformed_lines_are_capped_and_their_sample_is_short() {
    let line = "x".repeat(1000);
    let mut feed = Feed::new(FileFormat::Cri, 300);
    feed.push(&line);
    assert_eq!(
        feed.take(),
        [stdout(&line[..300], WALL, MALFORMED | TRUNCATED)]
    );
    let stats = feed.dec.take_stats();
    assert_eq!((stats.malformed, stats.truncated), (1, 1));
    assert_eq!(
        stats.malformed_sample.map(|s| s.line.len()),
        Some(MALFORMED_SAMPLE_BYTES)
    );
}

#[test]
fn a_line_cut_by_the_tailer_is_parsed_and_flagged() {
    let mut feed = Feed::new(FileFormat::Cri, 1024);
    feed.push_at(
        "2016-10-06T00:17:09Z stdout F head of a long line\r",
        0,
        true,
    );
    assert_eq!(
        feed.take(),
        [stdout("head of a long line\r", T0, TRUNCATED)]
    );
    assert_eq!(feed.dec.take_stats().truncated, 1);

    // A cut partial chunk cuts its whole line.
    feed.push_at("2016-10-06T00:17:09Z stdout P head", 0, true);
    feed.push_at("2016-10-06T00:17:09Z stdout F tail", 0, false);
    assert_eq!(feed.take(), [stdout("headtail", T0, MERGED | TRUNCATED)]);
    assert_eq!(feed.dec.take_stats().truncated, 1);

    // Cut inside the framing: nothing to parse.
    feed.push_at("2016-10-06T00:17", 0, true);
    assert_eq!(
        feed.take(),
        [stdout("2016-10-06T00:17", WALL, MALFORMED | TRUNCATED)]
    );
}

#[test]
fn a_docker_line_cut_by_the_tailer_is_malformed_and_truncated() {
    let mut feed = Feed::new(FileFormat::Docker, 1024);
    let cut = r#"{"log":"a very long mess"#;
    feed.push_at(cut, 0, true);
    assert_eq!(feed.take(), [stdout(cut, WALL, MALFORMED | TRUNCATED)]);
    let stats = feed.dec.take_stats();
    assert_eq!((stats.malformed, stats.truncated), (1, 1));
}

#[test]
fn docker_lines_are_unescaped_and_lose_their_newline() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"log":"plain\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
            "plain",
        ),
        (
            r#"{"log":"caf\u00e9\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
            "café",
        ),
        (
            r#"{"log":"\"q\" \\ \t\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
            "\"q\" \\ \t",
        ),
        (
            r#"{"log":"\ud83d\ude00\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
            "😀",
        ),
        (
            r#"{"log":"crlf\r\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
            "crlf",
        ),
        (
            r#"{"time":"2019-01-01T11:11:11Z","stream":"stdout","log":"order\n"}"#,
            "order",
        ),
        (
            r#"{"log":"a\n","attrs":{"k":"v"},"stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
            "a",
        ),
    ];
    for (line, want) in cases {
        let mut feed = Feed::new(FileFormat::Docker, 1024);
        feed.push(line);
        assert_eq!(
            feed.take(),
            [stdout(want, 1_546_341_071_000_000_000, 0)],
            "{line}"
        );
    }
}

#[test]
fn docker_split_chunks_are_merged_per_stream() {
    let t = r#""time":"2019-01-01T11:11:11.5Z""#;
    let mut feed = Feed::new(FileFormat::Docker, 1024);
    feed.push(format!(
        r#"{{"log":"out 16k chunk ","stream":"stdout",{t}}}"#
    ));
    feed.push(format!(r#"{{"log":"err \u00e9 ","stream":"stderr",{t}}}"#));
    feed.push(r#"{"log":"out \"end\"\n","stream":"stdout","time":"2019-01-01T11:11:12Z"}"#);
    feed.push(format!(r#"{{"log":"err end\n","stream":"stderr",{t}}}"#));
    let time = 1_546_341_071_500_000_000;
    assert_eq!(
        feed.take(),
        [
            stdout("out 16k chunk out \"end\"", time, MERGED),
            stderr("err é err end", time, MERGED),
        ]
    );
}

#[test]
fn docker_chunks_are_capped_like_cri_chunks() {
    let t = r#""time":"2019-01-01T11:11:11Z""#;
    let mut feed = Feed::new(FileFormat::Docker, 6);
    feed.push(format!(r#"{{"log":"abcd","stream":"stdout",{t}}}"#));
    feed.push(format!(r#"{{"log":"\u00e9\u00e9","stream":"stdout",{t}}}"#));
    feed.push(format!(r#"{{"log":"end\n","stream":"stdout",{t}}}"#));
    feed.push(format!(r#"{{"log":"0123456789\n","stream":"stdout",{t}}}"#));
    let time = 1_546_341_071_000_000_000;
    assert_eq!(
        feed.take(),
        [
            stdout("abcdé", time, MERGED | TRUNCATED),
            stdout("012345", time, TRUNCATED)
        ]
    );
}

#[test]
fn plain_lines_are_stdout_at_the_wall_time() {
    let cases: &[(&str, &str, u8)] = &[
        ("an app's own log line", "an app's own log line", 0),
        (
            "2016-10-06T00:17:09Z stdout F looks like CRI",
            "2016-10-06T00:17:09Z stdout F looks like CRI",
            0,
        ),
        ("windows\r", "windows", 0),
        ("", "", 0),
        (&"0123456789".repeat(7), &"0123456789".repeat(6), TRUNCATED),
    ];
    for (line, want, flags) in cases {
        let mut feed = Feed::new(FileFormat::Plain, 60);
        feed.push(line);
        assert_eq!(feed.take(), [stdout(want, WALL, *flags)], "{line}");
    }
}

#[test]
fn stats_count_since_the_last_take() {
    let mut feed = Feed::new(FileFormat::Cri, 4);
    feed.push("bad");
    feed.push("2016-10-06T00:17:09Z stdout F 123456");
    feed.push("2016-10-06T00:17:09Z stdout P a");
    feed.push("2016-10-06T00:17:09Z stdout F b");
    feed.push("2016-10-06T00:17:09Z stderr P c");
    feed.dec.flush_all(&mut feed.out);
    let stats = feed.dec.take_stats();
    assert_eq!(
        (
            stats.malformed,
            stats.truncated,
            stats.merged,
            stats.flushed
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(feed.dec.take_stats(), DecodeStats::default());
}

#[test]
fn a_zero_cap_or_a_huge_timeout_does_not_panic() {
    let mut dec = Decoder::new(
        FileFormat::Cri,
        DecodeOptions {
            max_line_bytes: 0,
            partial_flush_timeout: Duration::MAX,
        },
    );
    let clock = FakeClock::new();
    let mut out = Vec::new();
    dec.push(
        Bytes::from_static(b"2016-10-06T00:17:09Z stdout P abc"),
        0,
        10,
        false,
        &clock.at(0),
        &mut out,
    );
    assert_eq!(dec.next_deadline(), None);
    dec.flush_expired(&clock.at(1_000_000), &mut out);
    dec.flush_all(&mut out);
    assert_eq!(out, [stdout("", T0, TRUNCATED | UNTERMINATED)]);
}

/// Fragments that make random input reach deep into the parsers.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..24),
        Just(b"\n".to_vec()),
        Just(b"2016-10-06T00:17:09.123Z stdout P ".to_vec()),
        Just(b"2016-10-06T00:17:09Z stderr F ".to_vec()),
        Just(b"2016-10-06T00:17:09+05:30 stdout F:x ".to_vec()),
        Just(br#"{"log":"#.to_vec()),
        Just(br#","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#.to_vec()),
        Just(br#"\ud83d\ude00\u00e9\"\\\n"#.to_vec()),
        Just("é€😀\r".as_bytes().to_vec()),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_keep_the_invariants(
        fragments in proptest::collection::vec(fragment(), 0..40),
    ) {
        harness::fuzz(&fragments.concat());
    }
}

/// A line of content: any bytes but `\n`, multi-byte characters and spaces likely.
fn content() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..8),
        Just(b" ".to_vec()),
        Just("é😀".as_bytes().to_vec()),
        Just(b"\r".to_vec()),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

/// Lines of one stream, each with the cut points of its chunks.
fn stream_lines() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<usize>)>> {
    proptest::collection::vec(
        (content(), proptest::collection::vec(any::<usize>(), 0..4)),
        0..6,
    )
}

/// The chunks of a line, cut at `cuts` (taken modulo its length).
fn chunks(content: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (content.len() + 1)).collect();
    at.sort_unstable();
    let mut prev = 0;
    let mut out = Vec::new();
    for a in at {
        out.push(content[prev..a].to_vec());
        prev = a;
    }
    out.push(content[prev..].to_vec());
    out
}

fn strip_cr(content: &[u8]) -> &[u8] {
    content.strip_suffix(b"\r").unwrap_or(content)
}

/// Physical lines for every stream's lines, interleaved by `order`; with what each stream must
/// give back: (content, time, flags).
type Model = (Vec<Vec<u8>>, [Vec<(Vec<u8>, i64, u8)>; 2]);

fn interleave(
    streams: [&[(Vec<u8>, Vec<usize>)]; 2],
    order: &[bool],
    frame: impl Fn(Stream, &[u8], bool, i64) -> Vec<u8>,
) -> Model {
    let mut physical: [Vec<Vec<u8>>; 2] = Default::default();
    let mut want: [Vec<(Vec<u8>, i64, u8)>; 2] = Default::default();
    let mut n = 0i64;
    for (s, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
        for (content, cuts) in streams[s] {
            let parts = chunks(content, cuts);
            let first_time = T0 + n;
            for (i, part) in parts.iter().enumerate() {
                physical[s].push(frame(stream, part, i + 1 < parts.len(), T0 + n));
                n += 1;
            }
            let flags = if parts.len() > 1 { MERGED } else { 0 };
            want[s].push((strip_cr(content).to_vec(), first_time, flags));
        }
    }
    let mut lines = Vec::new();
    let [mut a, mut b] = physical.map(|v| v.into_iter());
    for &pick_b in order.iter().chain(std::iter::repeat(&false)) {
        let next = if pick_b {
            b.next().or_else(|| a.next())
        } else {
            a.next().or_else(|| b.next())
        };
        match next {
            Some(line) => lines.push(line),
            None => break,
        }
    }
    (lines, want)
}

fn by_stream(out: &[Decoded]) -> [Vec<(Vec<u8>, i64, u8)>; 2] {
    let mut got: [Vec<(Vec<u8>, i64, u8)>; 2] = Default::default();
    for d in out {
        got[slot(d.stream)].push((d.line.to_vec(), d.time_ns, d.flags));
    }
    got
}

fn nanos_ts(t: i64) -> String {
    format!("2016-10-06T00:17:09.{:09}Z", t - T0)
}

fn json_escape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

proptest! {
    #[test]
    fn cri_chunks_in_any_interleaving_come_back_whole_per_stream(
        out_lines in stream_lines(),
        err_lines in stream_lines(),
        order in proptest::collection::vec(any::<bool>(), 0..64),
    ) {
        let (lines, want) = interleave([&out_lines, &err_lines], &order, |stream, part, partial, t| {
            let tag = if partial { "P" } else { "F" };
            let mut line = format!("{} {} {tag} ", nanos_ts(t), stream.as_str()).into_bytes();
            line.extend_from_slice(part);
            line
        });
        let mut feed = Feed::new(FileFormat::Cri, 1 << 20);
        for line in &lines {
            feed.push(line);
        }
        prop_assert_eq!(feed.dec.pending_from(), None);
        prop_assert_eq!(by_stream(&feed.take()), want);
    }

    #[test]
    fn docker_chunks_in_any_interleaving_come_back_whole_per_stream(
        out_lines in stream_lines(),
        err_lines in stream_lines(),
        order in proptest::collection::vec(any::<bool>(), 0..64),
    ) {
        let (lines, want) = interleave([&out_lines, &err_lines], &order, |stream, part, partial, t| {
            let mut line = br#"{"log":""#.to_vec();
            line.extend_from_slice(&json_escape(part));
            if !partial {
                line.extend_from_slice(b"\\n");
            }
            line.extend_from_slice(
                format!(r#"","stream":"{}","time":"{}"}}"#, stream.as_str(), nanos_ts(t)).as_bytes(),
            );
            line
        });
        let mut feed = Feed::new(FileFormat::Docker, 1 << 20);
        for line in &lines {
            feed.push(line);
        }
        prop_assert_eq!(feed.dec.pending_from(), None);
        prop_assert_eq!(by_stream(&feed.take()), want);
    }

    #[test]
    fn merged_lines_keep_exactly_the_first_max_bytes(
        len in 0usize..300,
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        max in 1usize..120,
    ) {
        let content: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let parts = chunks(&content, &cuts);
        let mut feed = Feed::new(FileFormat::Cri, max);
        for (i, part) in parts.iter().enumerate() {
            let tag = if i + 1 < parts.len() { "P" } else { "F" };
            let mut line = format!("2016-10-06T00:17:09Z stdout {tag} ").into_bytes();
            line.extend_from_slice(part);
            feed.push(line);
        }
        let mut flags = if parts.len() > 1 { MERGED } else { 0 };
        if len > max {
            flags |= TRUNCATED;
        }
        let want = decoded(&content[..len.min(max)], T0, Stream::Stdout, flags);
        prop_assert_eq!(feed.take(), vec![want]);
    }
}

#[test]
fn records_carry_the_offset_of_their_first_byte() {
    let mut f = Feed::new(FileFormat::Cri, 1024);
    let a = f.push("2024-05-01T10:00:00.000000001Z stdout F one");
    let b = f.push("2024-05-01T10:00:00.000000002Z stderr P two-");
    f.push("2024-05-01T10:00:00.000000003Z stdout F three");
    f.push("2024-05-01T10:00:00.000000004Z stderr F end");
    let c = f.push("not cri at all");
    let starts: Vec<(String, u64)> = f
        .take_with_starts()
        .into_iter()
        .map(|d| (String::from_utf8_lossy(&d.line).into_owned(), d.start))
        .collect();
    let three = a
        + "2024-05-01T10:00:00.000000001Z stdout F one\n".len() as u64
        + "2024-05-01T10:00:00.000000002Z stderr P two-\n".len() as u64;
    assert_eq!(
        starts,
        [
            ("one".to_string(), a),
            ("three".to_string(), three),
            ("two-end".to_string(), b),
            ("not cri at all".to_string(), c),
        ]
    );
}
