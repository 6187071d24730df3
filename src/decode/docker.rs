//! Decode stage: Docker's json-file log line (dockershim, cri-dockerd), one JSON object per line.
//! Spec: <https://docs.docker.com/engine/logging/drivers/json-file/>, writer of reference: moby
//! `daemon/logger/jsonfilelog` (`{"log":"...\n","stream":"stdout","time":"<RFC3339Nano>"}`).
//!
//! `log` holds the message with its `\n`; moby splits messages at 16 KiB and every chunk but the
//! last lacks the `\n`, which is how a partial chunk is told. Field order may vary and other fields
//! (`attrs`) are skipped. The parser is hand-written rather than serde_json so that the common
//! line costs no allocation, bytes that are not UTF-8 stay content instead of failing the line,
//! and a lone surrogate escape becomes U+FFFD instead of an error (as Go's decoder does).

use std::ops::Range;

use memchr::{memchr, memchr2};

use super::{Malformed, time::parse_rfc3339_nanos};
use crate::record::Stream;

/// Where the unescaped `log` text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogText {
    /// `line[range]` as is: the string had no escape other than its final `\n`.
    Raw(Range<usize>),
    /// In the scratch buffer passed to [`parse`].
    Scratch,
}

/// One parsed json-file line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DockerLine {
    pub time_ns: i64,
    pub stream: Stream,
    /// The text of `log` without its final `\n`.
    pub log: LogText,
    /// `log` did not end in `\n`: the message continues in the next line of the same stream.
    pub partial: bool,
}

/// Nesting allowed inside skipped fields; deeper is refused rather than tracked.
const MAX_DEPTH: u32 = 128;

/// Parses one physical json-file line (without its `\n`). When the `log` text needs unescaping
/// it is written to `scratch` (cleared first), so that a decoder can reuse one buffer.
pub(crate) fn parse(line: &[u8], scratch: &mut Vec<u8>) -> Result<DockerLine, Malformed> {
    let mut p = Parser { s: line, i: 0 };
    p.ws();
    p.expect(b'{')?;
    let mut log: Option<JsonStr> = None;
    let mut stream: Option<JsonStr> = None;
    let mut time: Option<JsonStr> = None;
    let mut buf = Vec::new();
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            match key.text(line, &mut buf)? {
                b"log" => log = Some(p.string()?),
                b"stream" => stream = Some(p.string()?),
                b"time" => time = Some(p.string()?),
                _ => p.skip_value()?,
            }
            p.ws();
            match p.next() {
                Some(b',') => {}
                Some(b'}') => break,
                _ => return Err(Malformed::Json),
            }
        }
    }
    p.ws();
    if p.i != line.len() {
        return Err(Malformed::Json);
    }

    let log = log.ok_or(Malformed::MissingField("log"))?;
    let stream = stream.ok_or(Malformed::MissingField("stream"))?;
    let time = time.ok_or(Malformed::MissingField("time"))?;

    let stream = match stream.text(line, &mut buf)? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return Err(Malformed::Stream),
    };
    let time_ns = parse_rfc3339_nanos(time.text(line, &mut buf)?).ok_or(Malformed::Timestamp)?;

    let raw = &line[log.raw.clone()];
    let (log, partial) = if !log.escaped {
        (LogText::Raw(log.raw), true)
    } else if raw.len() >= 2 && memchr(b'\\', raw) == Some(raw.len() - 2) && raw.ends_with(b"\\n") {
        // The usual line: plain text and its newline; no copy.
        (LogText::Raw(log.raw.start..log.raw.end - 2), false)
    } else {
        scratch.clear();
        unescape(raw, scratch)?;
        let partial = scratch.last() != Some(&b'\n');
        if !partial {
            scratch.pop();
        }
        (LogText::Scratch, partial)
    };
    Ok(DockerLine {
        time_ns,
        stream,
        log,
        partial,
    })
}

/// A JSON string in the line: the bytes between its quotes.
#[derive(Debug, Clone)]
struct JsonStr {
    raw: Range<usize>,
    escaped: bool,
}

impl JsonStr {
    /// The unescaped text: borrowed from the line when it has no escape, else written to `buf`.
    /// Only `log` is ever escaped in what Docker writes; keys and the other values are compared
    /// unescaped all the same, escapes being legal JSON.
    fn text<'a>(&self, line: &'a [u8], buf: &'a mut Vec<u8>) -> Result<&'a [u8], Malformed> {
        let raw = &line[self.raw.clone()];
        if !self.escaped {
            return Ok(raw);
        }
        buf.clear();
        unescape(raw, buf)?;
        Ok(&buf[..])
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    #[inline]
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, want: u8) -> Result<(), Malformed> {
        if self.next() == Some(want) {
            Ok(())
        } else {
            Err(Malformed::Json)
        }
    }

    /// A string starting at the cursor; escapes are checked for shape only (`\` then any byte),
    /// [`unescape`] validates them when the text is needed.
    fn string(&mut self) -> Result<JsonStr, Malformed> {
        self.expect(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            let rest = self.s.get(self.i..).unwrap_or_default();
            let at = memchr2(b'"', b'\\', rest).ok_or(Malformed::Json)?;
            self.i += at;
            if rest[at] == b'"' {
                let raw = start..self.i;
                self.i += 1;
                return Ok(JsonStr { raw, escaped });
            }
            escaped = true;
            if self.i + 1 >= self.s.len() {
                return Err(Malformed::Json);
            }
            self.i += 2;
        }
    }

    /// Skips any JSON value: scalars are checked for their alphabet, containers for balanced
    /// brackets and well-formed strings (not for their inner grammar: only `log`, `stream` and
    /// `time` matter, the rest is skipped as cheaply as can be done safely).
    fn skip_value(&mut self) -> Result<(), Malformed> {
        // Closing brackets expected, innermost last: bit set = '}' (object), clear = ']'.
        let mut closers: u128 = 0;
        let mut depth: u32 = 0;
        loop {
            match self.peek().ok_or(Malformed::Json)? {
                b'"' => {
                    self.string()?;
                }
                open @ (b'{' | b'[') => {
                    if depth == MAX_DEPTH {
                        return Err(Malformed::Json);
                    }
                    closers = (closers << 1) | u128::from(open == b'{');
                    depth += 1;
                    self.i += 1;
                }
                close @ (b'}' | b']') => {
                    if depth == 0 {
                        // The end of the enclosing object: the value was empty.
                        return Err(Malformed::Json);
                    }
                    if (closers & 1 == 1) != (close == b'}') {
                        return Err(Malformed::Json);
                    }
                    closers >>= 1;
                    depth -= 1;
                    self.i += 1;
                }
                b',' | b':' | b' ' | b'\t' | b'\r' | b'\n' if depth > 0 => self.i += 1,
                _ => {
                    let scalar = self.s[self.i..]
                        .iter()
                        .take_while(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')
                        })
                        .count();
                    let text = &self.s[self.i..self.i + scalar];
                    let is_literal = matches!(text, b"true" | b"false" | b"null");
                    let is_number = !text.is_empty()
                        && text.iter().all(|b| {
                            b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')
                        });
                    if !is_literal && !is_number {
                        return Err(Malformed::Json);
                    }
                    self.i += scalar;
                }
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }
}

/// Unescapes the inside of a JSON string into `out`. Bytes that are not escapes are copied as
/// they are (invalid UTF-8 included); a lone surrogate becomes U+FFFD; an unknown escape or a
/// bad `\u` is an error.
pub(crate) fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    out.reserve(raw.len());
    let mut i = 0;
    while let Some(at) = memchr(b'\\', &raw[i..]) {
        out.extend_from_slice(&raw[i..i + at]);
        i += at + 1;
        let esc = *raw.get(i).ok_or(Malformed::Json)?;
        i += 1;
        let simple = match esc {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let hi = hex4(raw.get(i..i + 4))?;
                i += 4;
                let c = if (0xD800..0xDC00).contains(&hi) {
                    // A high surrogate: valid only when a low one follows.
                    match raw.get(i..i + 2) {
                        Some(b"\\u") => match hex4(raw.get(i + 2..i + 6)) {
                            Ok(lo) if (0xDC00..0xE000).contains(&lo) => {
                                i += 6;
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            }
                            // Another escape follows: leave it for the next round.
                            Ok(_) => 0xFFFD,
                            Err(e) => return Err(e),
                        },
                        _ => 0xFFFD,
                    }
                } else if (0xDC00..0xE000).contains(&hi) {
                    0xFFFD
                } else {
                    hi
                };
                let ch = char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                continue;
            }
            _ => return Err(Malformed::Json),
        };
        out.push(simple);
    }
    out.extend_from_slice(&raw[i..]);
    Ok(())
}

fn hex4(digits: Option<&[u8]>) -> Result<u32, Malformed> {
    let digits = digits.ok_or(Malformed::Json)?;
    let mut v = 0u32;
    for &d in digits {
        let x = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(Malformed::Json),
        };
        v = (v << 4) | u32::from(x);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2019-01-01T11:11:11Z in Unix nanoseconds.
    const T0: i64 = 1_546_341_071_000_000_000;

    fn text(line: &[u8], d: &DockerLine, scratch: &[u8]) -> Vec<u8> {
        match &d.log {
            LogText::Raw(r) => line[r.clone()].to_vec(),
            LogText::Scratch => scratch.to_vec(),
        }
    }

    #[test]
    fn well_formed_lines_are_parsed_in_any_field_order() {
        // (line, log text, partial, stream, time)
        let cases: &[(&str, &str, bool, Stream, i64)] = &[
            (
                r#"{"log":"hello world\n","stream":"stdout","time":"2019-01-01T11:11:11.111111111Z"}"#,
                "hello world",
                false,
                Stream::Stdout,
                T0 + 111_111_111,
            ),
            (
                r#"{"stream":"stderr","time":"2019-01-01T11:11:11Z","log":"reordered\n"}"#,
                "reordered",
                false,
                Stream::Stderr,
                T0,
            ),
            (
                r#"{"log":"chunk without newline","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                "chunk without newline",
                true,
                Stream::Stdout,
                T0,
            ),
            (
                r#"{"log":"\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                "",
                false,
                Stream::Stdout,
                T0,
            ),
            (
                r#"{"log":"","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                "",
                true,
                Stream::Stdout,
                T0,
            ),
            (
                r#"{"log":"caf\u00e9 \"q\" back\\slash\ttab\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                "café \"q\" back\\slash\ttab",
                false,
                Stream::Stdout,
                T0,
            ),
            (
                r#"{"log":"pair \ud83d\ude00 go \u003cb\u003e \u0026\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                "pair 😀 go <b> &",
                false,
                Stream::Stdout,
                T0,
            ),
            (
                r#"{"log":"lone \ud83d high, lone \ude00 low, \ud83d\u0041\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                "lone \u{FFFD} high, lone \u{FFFD} low, \u{FFFD}A",
                false,
                Stream::Stdout,
                T0,
            ),
            (
                r#"{"log":"ends in escaped backslash n \\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                "ends in escaped backslash n \\n",
                true,
                Stream::Stdout,
                T0,
            ),
            (
                r#"{"log":"crlf\r\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                "crlf\r",
                false,
                Stream::Stdout,
                T0,
            ),
            (
                r#"{"log":"\/\b\f\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                "/\u{8}\u{c}",
                false,
                Stream::Stdout,
                T0,
            ),
            (
                r#" { "log" : "spaced\n" , "stream" : "stdout" , "time" : "2019-01-01T11:11:11Z" } "#,
                "spaced",
                false,
                Stream::Stdout,
                T0,
            ),
            (
                r#"{"log":"with attrs\n","stream":"stdout","attrs":{"tag":"x","n":[1,-2.5e3,true,null,{"a":[]}]},"time":"2019-01-01T11:11:11Z"}"#,
                "with attrs",
                false,
                Stream::Stdout,
                T0,
            ),
            (
                r#"{"log":"first","log":"last wins\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
                "last wins",
                false,
                Stream::Stdout,
                T0,
            ),
            (
                r#"{"\u006cog":"escaped key\n","stream":"std\u006fut","time":"2019-01-01T11:11:11Z"}"#,
                "escaped key",
                false,
                Stream::Stdout,
                T0,
            ),
        ];
        for (line, want, partial, stream, time_ns) in cases {
            let mut scratch = Vec::new();
            let got =
                parse(line.as_bytes(), &mut scratch).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(
                String::from_utf8_lossy(&text(line.as_bytes(), &got, &scratch)),
                *want,
                "{line}"
            );
            assert_eq!(got.partial, *partial, "{line}");
            assert_eq!(got.stream, *stream, "{line}");
            assert_eq!(got.time_ns, *time_ns, "{line}");
        }
    }

    #[test]
    fn plain_lines_and_chunks_need_no_copy() {
        for line in [
            &br#"{"log":"plain\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#[..],
            br#"{"log":"a 16 KiB chunk","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#,
        ] {
            let got = parse(line, &mut Vec::new()).expect("parsed");
            assert!(matches!(got.log, LogText::Raw(_)), "{got:?}");
        }
    }

    #[test]
    fn invalid_utf8_and_nul_in_log_are_content() {
        let line = b"{\"log\":\"\xff\xfe \\u0000 \x00\\n\",\"stream\":\"stdout\",\"time\":\"2019-01-01T11:11:11Z\"}";
        let mut scratch = Vec::new();
        let got = parse(line, &mut scratch).expect("parsed");
        assert_eq!(text(line, &got, &scratch), b"\xff\xfe \0 \0");
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        let t = r#""time":"2019-01-01T11:11:11Z""#;
        let cases: Vec<(String, Malformed)> = vec![
            (String::new(), Malformed::Json),
            (
                "2019-01-01T11:11:11Z stdout F a cri line".into(),
                Malformed::Json,
            ),
            ("{".into(), Malformed::Json),
            (r#"{"log":"cut mid-str"#.into(), Malformed::Json),
            (
                format!(r#"{{"log":"x\n","stream":"stdout",{t}"#),
                Malformed::Json,
            ),
            (
                format!(r#"{{"log":"x\n","stream":"stdout",{t}}} trailing"#),
                Malformed::Json,
            ),
            (
                format!(r#"{{"log":"x\n","stream":"stdout",{t},}}"#),
                Malformed::Json,
            ),
            (
                format!(r#"{{"log":"x\n" "stream":"stdout",{t}}}"#),
                Malformed::Json,
            ),
            (
                format!(r#"{{"log":"bad \x escape\n","stream":"stdout",{t}}}"#),
                Malformed::Json,
            ),
            (
                format!(r#"{{"log":"bad \u12g4\n","stream":"stdout",{t}}}"#),
                Malformed::Json,
            ),
            (
                format!(r#"{{"log":"short \u12","stream":"stdout",{t}}}"#),
                Malformed::Json,
            ),
            (
                format!(r#"{{"log":"x\n","stream":"stdout","attrs":{{"a":[}}}},{t}}}"#),
                Malformed::Json,
            ),
            (
                format!(r#"{{"log":"x\n","stream":"stdout","attrs":bogus,{t}}}"#),
                Malformed::Json,
            ),
            (
                format!(r#"{{"log":"x\n","stream":"stdout","attrs":,{t}}}"#),
                Malformed::Json,
            ),
            (
                format!(r#"{{"log":1,"stream":"stdout",{t}}}"#),
                Malformed::Json,
            ),
            (
                format!(
                    r#"{{"log":"x\n","stream":"stdout","deep":{}{}{t}}}"#,
                    "[".repeat(200),
                    "]".repeat(200)
                ),
                Malformed::Json,
            ),
            (
                format!(r#"{{"stream":"stdout",{t}}}"#),
                Malformed::MissingField("log"),
            ),
            (
                format!(r#"{{"log":"x\n",{t}}}"#),
                Malformed::MissingField("stream"),
            ),
            (
                r#"{"log":"x\n","stream":"stdout"}"#.into(),
                Malformed::MissingField("time"),
            ),
            ("{}".into(), Malformed::MissingField("log")),
            (
                format!(r#"{{"log":"x\n","stream":"stdin",{t}}}"#),
                Malformed::Stream,
            ),
            (
                format!(r#"{{"log":"x\n","stream":"std\u0069n",{t}}}"#),
                Malformed::Stream,
            ),
            (
                r#"{"log":"x\n","stream":"stdout","time":"2019-13-01T11:11:11Z"}"#.into(),
                Malformed::Timestamp,
            ),
            (
                r#"{"log":"x\n","stream":"stdout","time":"yesterday"}"#.into(),
                Malformed::Timestamp,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line.as_bytes(), &mut Vec::new()), Err(want), "{line}");
        }
    }

    #[test]
    fn deep_but_bounded_nesting_in_skipped_fields_is_accepted() {
        let line = format!(
            r#"{{"attrs":{}{},"log":"x\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(parse(line.as_bytes(), &mut Vec::new()).is_ok());
    }
}
