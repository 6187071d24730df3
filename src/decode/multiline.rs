//! Decode stage: multiline joining. A stack trace is one event written as many lines; this
//! joins them back into one record per stream, after the CRI partial merge, by rules that
//! tell whether a line continues the record before it. The built-in rules follow what Java,
//! Python, Go and Node.js print (Fluent Bit's built-in `java`, `python` and `go` multiline
//! parsers cover the same shapes); `regex:<pattern>` names the start of a record instead.
//!
//! A record is held until a line that does not continue it arrives, or `flush_timeout` after
//! its last line, or it reaches `max_lines` or `max_bytes` (the rest of an over-long record is
//! cut and flagged). A joined record takes its first line's time and offset, so a checkpoint
//! never passes a held record ([`Joiner::pending_from`]). A line that joins nothing leaves as it
//! came, without a copy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::bytes::Regex;

use super::Decoded;
use crate::record::{Stream, flags};

/// How a record's lines are recognised.
#[derive(Debug, Clone)]
pub enum Rule {
    Java,
    Python,
    Go,
    Node,
    /// A line matching the pattern starts a record; any other continues the current one.
    Start(Regex),
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        match (self, other) {
            (Rule::Start(a), Rule::Start(b)) => a.as_str() == b.as_str(),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl Rule {
    /// `java`, `python`, `go`, `node` or `regex:<start pattern>`.
    pub fn parse(s: &str) -> Result<Rule, String> {
        match s.trim() {
            "java" => Ok(Rule::Java),
            "python" => Ok(Rule::Python),
            "go" => Ok(Rule::Go),
            "node" => Ok(Rule::Node),
            other => match other.strip_prefix("regex:") {
                Some(p) => Regex::new(p)
                    .map(Rule::Start)
                    .map_err(|e| format!("`{p}` is not a valid regex: {e}")),
                None => Err(format!(
                    "`{other}` is not a multiline rule (java, python, go, node or regex:<pattern>)"
                )),
            },
        }
    }

    /// Whether `line` continues a record that began with `first` and ended with `last`.
    fn continues(&self, first: &[u8], last: &[u8], line: &[u8]) -> bool {
        match self {
            Rule::Java => {
                java_frame(line)
                    || starts(line, b"Caused by: ")
                    // An exception printed right after the log line that reports it.
                    || (!java_frame(last) && exception_header(line) && !exception_header(first))
            }
            Rule::Python => {
                if !starts(first, b"Traceback (most recent call last):")
                    && !starts(first, b"During handling of the above exception")
                {
                    return false;
                }
                // The traceback ends with its exception line, not indented.
                let ended = !last.is_empty()
                    && !indented(last)
                    && !starts(last, b"Traceback")
                    && !starts(last, b"During handling")
                    && !starts(last, b"The above exception");
                !ended
                    && (indented(line)
                        || line.is_empty()
                        || starts(line, b"During handling")
                        || starts(line, b"The above exception")
                        || starts(line, b"Traceback")
                        || python_exception(line))
            }
            Rule::Go => {
                (starts(first, b"panic: ") || starts(first, b"fatal error: "))
                    && (line.is_empty()
                        || line[0] == b'\t'
                        || starts(line, b"goroutine ")
                        || starts(line, b"created by ")
                        || starts(line, b"[signal ")
                        || starts(line, b"exit status ")
                        || go_function(line))
            }
            Rule::Node => indented(line) && trim_start(line).starts_with(b"at "),
            Rule::Start(re) => !re.is_match(line),
        }
    }
}

fn starts(line: &[u8], prefix: &[u8]) -> bool {
    line.starts_with(prefix)
}

fn indented(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

fn trim_start(line: &[u8]) -> &[u8] {
    let n = line.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &line[n..]
}

/// `\tat com.x.Y.z(Y.java:1)`, `\t... 12 more`, `\tSuppressed: …`, `\t... 3 common frames omitted`.
fn java_frame(line: &[u8]) -> bool {
    if !indented(line) {
        return false;
    }
    let t = trim_start(line);
    t.starts_with(b"at ") || t.starts_with(b"... ") || t.starts_with(b"Suppressed: ")
}

/// `java.lang.IllegalStateException: boom`, `Exception in thread "main" java.lang.Error`.
fn exception_header(line: &[u8]) -> bool {
    if line.starts_with(b"Exception in thread ") {
        return true;
    }
    let name_len = line
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'$' | b'_'))
        .count();
    let name = &line[..name_len];
    let rest = &line[name_len..];
    name.contains(&b'.')
        && (name.ends_with(b"Exception")
            || name.ends_with(b"Error")
            || name.ends_with(b"Throwable"))
        && (rest.is_empty() || rest.starts_with(b": "))
}

/// `ValueError: bad`, `KeyError`, `requests.exceptions.HTTPError: 500`.
fn python_exception(line: &[u8]) -> bool {
    let name_len = line
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_'))
        .count();
    name_len > 0
        && line[0].is_ascii_alphabetic()
        && (line.len() == name_len || line[name_len..].starts_with(b":"))
}

/// `main.main()`, `net/http.(*conn).serve(0xc000)`: a Go frame's function line.
fn go_function(line: &[u8]) -> bool {
    !indented(line) && line.ends_with(b")") && line.contains(&b'(') && !line.contains(&b' ')
}

/// Limits of one joined record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultilineOptions {
    /// A held record goes out this long after its last line.
    pub flush_timeout: Duration,
    pub max_bytes: usize,
    pub max_lines: usize,
}

/// 1000 frames: deeper traces (runaway recursion) are cut, not held without end.
pub const DEFAULT_MAX_LINES: usize = 1000;

/// The record being gathered on one stream.
#[derive(Debug)]
struct Group {
    first: Decoded,
    /// The joined text, once a second line came.
    joined: Option<Vec<u8>>,
    /// The last line's text (for rules that look at it), as an offset into the joined text.
    last_from: usize,
    lines: usize,
    cut: bool,
    since: Instant,
}

impl Group {
    fn text(&self) -> &[u8] {
        self.joined.as_deref().unwrap_or(&self.first.line)
    }

    fn last(&self) -> &[u8] {
        &self.text()[self.last_from..]
    }

    fn finish(self) -> Decoded {
        let mut d = self.first;
        if let Some(j) = self.joined {
            d.line = bytes::Bytes::from(j);
            d.flags |= flags::MULTILINE;
        }
        if self.cut {
            d.flags |= flags::TRUNCATED;
        }
        d
    }
}

/// Joins the lines of one file, per stream.
#[derive(Debug)]
pub struct Joiner {
    rule: Arc<Rule>,
    opts: MultilineOptions,
    groups: [Option<Group>; 2],
}

fn slot(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Joiner {
    pub fn new(rule: Arc<Rule>, opts: MultilineOptions) -> Joiner {
        Joiner {
            rule,
            opts,
            groups: [None, None],
        }
    }

    pub fn rule(&self) -> &Arc<Rule> {
        &self.rule
    }

    /// Takes one line in file order; appends the records it completes.
    pub fn push(&mut self, d: Decoded, now: Instant, out: &mut Vec<Decoded>) {
        let i = slot(d.stream);
        if let Some(g) = &mut self.groups[i] {
            let joins = g.lines < self.opts.max_lines
                && self.rule.continues(&g.first.line, g.last(), &d.line);
            if joins {
                let text = g.joined.get_or_insert_with(|| g.first.line.to_vec());
                g.lines += 1;
                g.since = now;
                g.first.flags |= d.flags & !flags::MERGED;
                let room = self.opts.max_bytes.saturating_sub(text.len() + 1);
                if room == 0 || g.cut {
                    g.cut = true;
                } else {
                    text.push(b'\n');
                    g.last_from = text.len();
                    let take = cut_point(&d.line, room);
                    text.extend_from_slice(&d.line[..take]);
                    g.cut |= take < d.line.len();
                }
                return;
            }
            out.push(self.groups[i].take().expect("present").finish());
        }
        self.groups[i] = Some(Group {
            first: d,
            joined: None,
            last_from: 0,
            lines: 1,
            cut: false,
            since: now,
        });
    }

    /// Sends the records whose last line came `flush_timeout` or longer ago.
    pub fn flush_expired(&mut self, now: Instant, out: &mut Vec<Decoded>) {
        let timeout = self.opts.flush_timeout;
        let mut done: Vec<Decoded> = Vec::new();
        for g in &mut self.groups {
            if g.as_ref()
                .is_some_and(|g| now.saturating_duration_since(g.since) >= timeout)
            {
                done.push(g.take().expect("present").finish());
            }
        }
        done.sort_by_key(|d| d.start);
        out.extend(done);
    }

    /// Sends everything held, in file order: the file is finished.
    pub fn flush_all(&mut self, out: &mut Vec<Decoded>) {
        let mut done: Vec<Decoded> = self
            .groups
            .iter_mut()
            .filter_map(|g| g.take().map(Group::finish))
            .collect();
        done.sort_by_key(|d| d.start);
        out.extend(done);
    }

    /// The offset of the oldest line held.
    pub fn pending_from(&self) -> Option<u64> {
        self.groups.iter().flatten().map(|g| g.first.start).min()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups
            .iter()
            .flatten()
            .filter_map(|g| g.since.checked_add(self.opts.flush_timeout))
            .min()
    }
}

/// The longest prefix of `s` of at most `max` bytes that does not split a UTF-8 character.
fn cut_point(s: &[u8], max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut at = max;
    while at > 0 && (s[at] & 0xC0) == 0x80 {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn opts() -> MultilineOptions {
        MultilineOptions {
            flush_timeout: Duration::from_secs(1),
            max_bytes: 64 * 1024,
            max_lines: DEFAULT_MAX_LINES,
        }
    }

    /// Feeds `lines` (stream, text) and flushes; returns the records' texts per stream.
    fn join(rule: &str, lines: &[(Stream, &str)], o: MultilineOptions) -> Vec<Decoded> {
        let mut j = Joiner::new(Arc::new(Rule::parse(rule).unwrap()), o);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut at = 0;
        for (s, l) in lines {
            j.push(
                Decoded {
                    line: Bytes::copy_from_slice(l.as_bytes()),
                    time_ns: at as i64,
                    stream: *s,
                    flags: 0,
                    start: at,
                },
                now,
                &mut out,
            );
            at += l.len() as u64 + 1;
        }
        j.flush_all(&mut out);
        out
    }

    fn texts(lines: &[&str], rule: &str) -> Vec<String> {
        let l: Vec<(Stream, &str)> = lines.iter().map(|l| (Stream::Stdout, *l)).collect();
        join(rule, &l, opts())
            .into_iter()
            .map(|d| String::from_utf8(d.line.to_vec()).unwrap())
            .collect()
    }

    const JAVA: &[&str] = &[
        "2024-05-01 10:00:00 ERROR [main] c.e.App - request failed",
        "java.lang.IllegalStateException: boom",
        "\tat com.example.App.handle(App.java:42)",
        "\tat com.example.App.main(App.java:10)",
        "Caused by: java.io.IOException: disk full",
        "\tat com.example.Store.write(Store.java:7)",
        "\t... 2 more",
        "2024-05-01 10:00:01 INFO [main] c.e.App - recovered",
    ];

    #[test]
    fn a_java_stack_trace_with_its_cause_is_one_record() {
        let got = texts(JAVA, "java");
        assert_eq!(got.len(), 2, "{got:#?}");
        assert_eq!(got[0], JAVA[..7].join("\n"));
        assert_eq!(got[1], JAVA[7]);
        let plain = texts(
            &[
                "Exception in thread \"main\" java.lang.Error: x",
                "\tat A.b(A.java:1)",
            ],
            "java",
        );
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn a_python_traceback_ends_with_its_exception_line() {
        let lines = [
            "Traceback (most recent call last):",
            "  File \"/app/main.py\", line 3, in <module>",
            "    main()",
            "ValueError: bad input",
            "INFO next request",
        ];
        let got = texts(&lines, "python");
        assert_eq!(got, [lines[..4].join("\n"), lines[4].to_string()]);
    }

    #[test]
    fn a_go_panic_with_two_goroutines_is_one_record() {
        let lines = [
            "panic: runtime error: index out of range [3] with length 3",
            "",
            "goroutine 1 [running]:",
            "main.main()",
            "\t/app/main.go:8 +0x1d",
            "",
            "goroutine 6 [chan receive]:",
            "net/http.(*conn).serve(0xc000)",
            "\t/usr/local/go/src/net/http/server.go:2009 +0x5f4",
            "exit status 2",
            "level=info msg=restarted",
        ];
        let got = texts(&lines, "go");
        assert_eq!(got, [lines[..10].join("\n"), lines[10].to_string()]);
    }

    #[test]
    fn a_node_error_and_its_frames_are_one_record() {
        let lines = [
            "TypeError: Cannot read properties of undefined (reading 'id')",
            "    at handler (/app/index.js:10:15)",
            "    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)",
            "listening on 8080",
        ];
        let got = texts(&lines, "node");
        assert_eq!(got, [lines[..3].join("\n"), lines[3].to_string()]);
    }

    #[test]
    fn a_start_pattern_joins_until_the_next_start() {
        let lines = ["[2024] a", "more a", "[2024] b", "[2024] c", "more c"];
        let got = texts(&lines, r"regex:^\[\d+\]");
        assert_eq!(got, ["[2024] a\nmore a", "[2024] b", "[2024] c\nmore c"]);
        assert!(Rule::parse("regex:(").is_err());
        assert!(Rule::parse("ruby").is_err());
    }

    #[test]
    fn streams_join_apart_and_records_keep_the_first_lines_time_and_offset() {
        let lines = [
            (Stream::Stdout, "java.lang.Error: out"),
            (Stream::Stderr, "java.lang.Error: err"),
            (Stream::Stdout, "\tat A.out(A.java:1)"),
            (Stream::Stderr, "\tat A.err(A.java:1)"),
        ];
        let got = join("java", &lines, opts());
        assert_eq!(got.len(), 2);
        assert_eq!(
            &got[0].line[..],
            b"java.lang.Error: out\n\tat A.out(A.java:1)"
        );
        assert_eq!((got[0].start, got[0].time_ns), (0, 0));
        assert_eq!(got[1].stream, Stream::Stderr);
        assert_eq!(got[1].start, 21);
        assert!(got[0].flags & flags::MULTILINE != 0);
    }

    #[test]
    fn caps_cut_a_record_and_the_timeout_sends_a_held_one() {
        let mut o = opts();
        o.max_bytes = 40;
        let lines: Vec<(Stream, &str)> = JAVA[1..4].iter().map(|l| (Stream::Stdout, *l)).collect();
        let got = join("java", &lines, o);
        assert_eq!(got.len(), 1);
        assert!(got[0].line.len() <= 40);
        assert!(got[0].flags & flags::TRUNCATED != 0);
        o = opts();
        o.max_lines = 2;
        assert_eq!(join("java", &lines, o).len(), 2);

        let mut j = Joiner::new(Arc::new(Rule::Java), opts());
        let t0 = Instant::now();
        let mut out = Vec::new();
        let d = Decoded {
            line: Bytes::from_static(b"java.lang.Error: x"),
            time_ns: 1,
            stream: Stream::Stdout,
            flags: 0,
            start: 7,
        };
        j.push(d, t0, &mut out);
        assert!(out.is_empty());
        assert_eq!(j.pending_from(), Some(7));
        j.flush_expired(t0 + Duration::from_millis(500), &mut out);
        assert!(out.is_empty());
        j.flush_expired(t0 + Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(j.pending_from(), None);
    }

    proptest! {
        /// Whatever the lines, nothing is lost or reordered: split on `\n`, the records of each
        /// stream are its lines.
        #[test]
        fn no_line_is_lost_or_reordered(
            lines in proptest::collection::vec(
                (any::<bool>(), prop::sample::select(vec![
                    "java.lang.Error: e", "\tat A.b(A.java:1)", "Caused by: x", "\t... 3 more",
                    "plain", "", "Traceback (most recent call last):", "  File x", "KeyError: k",
                    "panic: p", "goroutine 1 [running]:", "\tf.go:1", "    at f (x.js:1)",
                ])),
                0..60,
            ),
            rule in prop::sample::select(vec!["java", "python", "go", "node", "regex:^[a-z]"]),
        ) {
            let input: Vec<(Stream, &str)> = lines
                .iter()
                .map(|(err, l)| (if *err { Stream::Stderr } else { Stream::Stdout }, *l))
                .collect();
            let out = join(rule, &input, opts());
            for s in [Stream::Stdout, Stream::Stderr] {
                let want: Vec<&str> = input.iter().filter(|(t, _)| *t == s).map(|(_, l)| *l).collect();
                let got: Vec<String> = out
                    .iter()
                    .filter(|d| d.stream == s)
                    .flat_map(|d| String::from_utf8(d.line.to_vec()).unwrap().split('\n').map(str::to_string).collect::<Vec<_>>())
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
