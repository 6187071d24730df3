//! Decode stage: the CRI container log line written by containerd and CRI-O, as the kubelet
//! parses it. Spec: <https://github.com/kubernetes/design-proposals-archive/blob/main/node/kubelet-cri-logging.md>,
//! parser of reference: kubelet `pkg/kubelet/kuberuntime/logs/logs.go` (`parseCRILog`).
//!
//! `<RFC3339Nano> SP <stdout|stderr> SP <tags> SP <content>`: single-space delimiters, tags a
//! `:`-separated list whose first element is `P` (partial) or `F` (full), unknown trailing tags
//! ignored, content raw bytes (may be empty, may contain spaces). This module only frames one
//! physical line; partial chunks are merged by the decoder.

use memchr::memchr;

use super::{Malformed, time::parse_rfc3339_nanos};
use crate::record::Stream;

/// One parsed CRI line: a borrowed view, the content is `line[content..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CriLine {
    pub time_ns: i64,
    pub stream: Stream,
    /// The first tag was `P`: the content continues in the next chunk of the same stream.
    pub partial: bool,
    /// Offset of the content's first byte (the line's length when the content is empty).
    pub content: usize,
}

/// Frames one physical CRI line (without its `\n`).
pub(crate) fn parse(line: &[u8]) -> Result<CriLine, Malformed> {
    let ts_end = memchr(b' ', line).ok_or(Malformed::Framing)?;
    let time_ns = parse_rfc3339_nanos(&line[..ts_end]).ok_or(Malformed::Timestamp)?;

    let rest = &line[ts_end + 1..];
    let stream = match rest.get(..7) {
        Some(b"stdout ") => Stream::Stdout,
        Some(b"stderr ") => Stream::Stderr,
        _ if rest == b"stdout" || rest == b"stderr" => return Err(Malformed::Framing),
        _ => return Err(Malformed::Stream),
    };

    let tags_start = ts_end + 8;
    let tags = &line[tags_start..];
    // The usual case is a one-byte tag followed by its space: no search.
    let tags_len = match tags {
        [_, b' ', ..] => 1,
        _ => memchr(b' ', tags).unwrap_or(tags.len()),
    };
    let first_tag = tags[..tags_len]
        .split(|&b| b == b':')
        .next()
        .unwrap_or_default();
    let partial = match first_tag {
        b"P" => true,
        b"F" => false,
        _ => return Err(Malformed::Tag),
    };
    // A line that stops right after its tags (no space) has empty content; the kubelet rejects
    // it, but it loses nothing to read it as the empty line it evidently is.
    let content = (tags_start + tags_len + 1).min(line.len());
    Ok(CriLine {
        time_ns,
        stream,
        partial,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2016-10-06T00:17:09Z in Unix nanoseconds.
    const T0: i64 = 1_475_713_029_000_000_000;

    #[test]
    fn well_formed_lines_are_framed() {
        // (line, time, stream, partial, content)
        let cases: &[(&str, i64, Stream, bool, &str)] = &[
            (
                "2016-10-06T00:17:09.669794202Z stdout P log content 1",
                T0 + 669_794_202,
                Stream::Stdout,
                true,
                "log content 1",
            ),
            (
                "2016-10-06T00:17:09.669794203Z stderr F log content 2",
                T0 + 669_794_203,
                Stream::Stderr,
                false,
                "log content 2",
            ),
            (
                "2016-10-05T19:17:09.505201169-05:00 stdout F standalone crio line",
                T0 + 505_201_169,
                Stream::Stdout,
                false,
                "standalone crio line",
            ),
            (
                "2016-10-06T05:47:09+05:30 stdout F no fraction, india offset",
                T0,
                Stream::Stdout,
                false,
                "no fraction, india offset",
            ),
            (
                "2016-10-06T00:17:09Z stdout F ",
                T0,
                Stream::Stdout,
                false,
                "",
            ),
            (
                "2016-10-06T00:17:09Z stdout F",
                T0,
                Stream::Stdout,
                false,
                "",
            ),
            (
                "2016-10-06T00:17:09Z stdout P ",
                T0,
                Stream::Stdout,
                true,
                "",
            ),
            (
                "2016-10-06T00:17:09Z stdout F   leading  and trailing spaces  ",
                T0,
                Stream::Stdout,
                false,
                "  leading  and trailing spaces  ",
            ),
            (
                "2016-10-06T00:17:09Z stdout F:x:y unknown tags are ignored",
                T0,
                Stream::Stdout,
                false,
                "unknown tags are ignored",
            ),
            (
                "2016-10-06T00:17:09Z stderr P:future partial with tags",
                T0,
                Stream::Stderr,
                true,
                "partial with tags",
            ),
            (
                "2016-10-06T00:17:09Z stdout F {\"msg\":\"json content\"}",
                T0,
                Stream::Stdout,
                false,
                "{\"msg\":\"json content\"}",
            ),
            (
                "2016-10-06T00:17:09Z stdout F content with\ttab and \0 nul",
                T0,
                Stream::Stdout,
                false,
                "content with\ttab and \0 nul",
            ),
        ];
        for (line, time_ns, stream, partial, content) in cases {
            let got = parse(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(got.time_ns, *time_ns, "{line:?}");
            assert_eq!(got.stream, *stream, "{line:?}");
            assert_eq!(got.partial, *partial, "{line:?}");
            assert_eq!(
                &line.as_bytes()[got.content..],
                content.as_bytes(),
                "{line:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_content_is_framed_like_any_other() {
        let line = b"2016-10-06T00:17:09Z stdout F \xff\xfe\xc3(";
        let got = parse(line).expect("framed");
        assert_eq!(&line[got.content..], b"\xff\xfe\xc3(");
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        let cases: &[(&[u8], Malformed)] = &[
            (b"", Malformed::Framing),
            (b"no-spaces-at-all", Malformed::Framing),
            (
                b"plain text written straight to the file",
                Malformed::Timestamp,
            ),
            (
                b"2016-10-06T00:17:09.669794202 stdout F no zone",
                Malformed::Timestamp,
            ),
            (
                b"2016-13-06T00:17:09Z stdout F month 13",
                Malformed::Timestamp,
            ),
            (
                b"2016-10-32T00:17:09Z stdout F day 32",
                Malformed::Timestamp,
            ),
            (
                b"2016-10-06T25:17:09Z stdout F hour 25",
                Malformed::Timestamp,
            ),
            (
                b" 2016-10-06T00:17:09Z stdout F leading space",
                Malformed::Timestamp,
            ),
            (
                b"2016-10-06T00:17:09Z stdin F unknown stream",
                Malformed::Stream,
            ),
            (
                b"2016-10-06T00:17:09Z STDOUT F upper case",
                Malformed::Stream,
            ),
            (
                b"2016-10-06T00:17:09Z  stdout F two spaces",
                Malformed::Stream,
            ),
            (b"2016-10-06T00:17:09Z", Malformed::Framing),
            (b"2016-10-06T00:17:09Z ", Malformed::Stream),
            (b"2016-10-06T00:17:09Z stdout", Malformed::Framing),
            (b"2016-10-06T00:17:09Z stdout ", Malformed::Tag),
            (b"2016-10-06T00:17:09Z stdout  empty tag", Malformed::Tag),
            (b"2016-10-06T00:17:09Z stdout X unknown tag", Malformed::Tag),
            (
                b"2016-10-06T00:17:09Z stdout PF two letters",
                Malformed::Tag,
            ),
            (
                b"2016-10-06T00:17:09Z stdout :F empty first tag",
                Malformed::Tag,
            ),
            (b"2016-10-06T00:17:09Z stdout p lower case", Malformed::Tag),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse(line),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
