//! sink: the JSON every JSON-speaking sink shares: string escaping (one pass, valid UTF-8 out
//! whatever comes in), RFC 3339 timestamps, and the Pod metadata of a `Source` encoded once and
//! copied as bytes into each record (RFC 8259; Go's `time.RFC3339Nano` for times).

use std::num::NonZeroUsize;

use lru::LruCache;

use crate::record::{Record, Source, flags};

/// Bytes that need escaping in a JSON string: control characters, `"` and `\`.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string, quotes included. Invalid UTF-8 becomes U+FFFD, so the output is
/// always valid JSON whatever a container wrote.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    write_escaped(out, s);
    out.push(b'"');
}

/// Appends the escaped content of a JSON string, without quotes.
pub fn write_escaped(out: &mut Vec<u8>, s: &[u8]) {
    match std::str::from_utf8(s) {
        Ok(valid) => escape_valid(out, valid.as_bytes()),
        Err(_) => escape_valid(out, String::from_utf8_lossy(s).as_bytes()),
    }
}

fn escape_valid(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    let mut start = 0;
    let mut i = 0;
    while let Some(at) = next_escape(s, i) {
        let b = s[at];
        out.extend_from_slice(&s[start..at]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]),
        }
        start = at + 1;
        i = at + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// The index of the first byte at or after `from` that needs escaping. Scans eight bytes at a
/// time (SWAR): a word without a control character, `"` or `\` is skipped in a few operations.
#[inline]
fn next_escape(s: &[u8], from: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while i + 8 <= s.len() {
        let w = u64::from_le_bytes(s[i..i + 8].try_into().expect("eight bytes"));
        // A byte below 0x20, or equal to `"` (0x22) or `\` (0x5c): the classic zero-byte test on
        // `w - 0x20` and on `w ^ b` for each b, restricted to ASCII bytes (`& !w`).
        let ctl = w.wrapping_sub(LO * 0x20);
        let quote = (w ^ (LO * 0x22)).wrapping_sub(LO);
        let backslash = (w ^ (LO * 0x5c)).wrapping_sub(LO);
        let hit = (ctl | quote | backslash) & !w & HI;
        if hit != 0 {
            // A candidate in this word (the test may flag a byte after a real hit, never miss
            // one): find the exact byte.
            return s[i..i + 8]
                .iter()
                .position(|&b| NEEDS_ESCAPE[b as usize])
                .map(|p| i + p)
                .or_else(|| next_escape(s, i + 8));
        }
        i += 8;
    }
    s[i..]
        .iter()
        .position(|&b| NEEDS_ESCAPE[b as usize])
        .map(|p| i + p)
}

/// Appends `ns` (Unix nanoseconds) as RFC 3339 in UTC the way Go's `RFC3339Nano` writes it: the
/// fraction without trailing zeros, none when it is zero. No quotes.
pub fn write_rfc3339(out: &mut Vec<u8>, ns: i64) {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    // Consecutive records mostly share their second: reuse its `YYYY-MM-DDTHH:MM:SS`.
    LAST_SECOND.with(|last| {
        let (cached, text) = last.get();
        if cached == secs && text[0] != 0 {
            out.extend_from_slice(&text);
        } else {
            let start = out.len();
            write_date_time(out, secs);
            if out.len() - start == 19 {
                let mut t = [0u8; 19];
                t.copy_from_slice(&out[start..]);
                last.set((secs, t));
            }
        }
    });
    write_fraction(out, nanos);
    out.push(b'Z');
}

thread_local! {
    static LAST_SECOND: std::cell::Cell<(i64, [u8; 19])> = const { std::cell::Cell::new((0, [0; 19])) };
}

/// `YYYY-MM-DDTHH:MM:SS` of Unix seconds.
fn write_date_time(out: &mut Vec<u8>, secs: i64) {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let mut buf = itoa::Buffer::new();
    let year = buf.format(y);
    for _ in year.len()..4 {
        out.push(b'0');
    }
    out.extend_from_slice(year.as_bytes());
    out.push(b'-');
    two(out, m);
    out.push(b'-');
    two(out, d);
    out.push(b'T');
    two(out, sod / 3600);
    out.push(b':');
    two(out, sod / 60 % 60);
    out.push(b':');
    two(out, sod % 60);
}

/// `.fffffffff` without trailing zeros; nothing when `nanos` is 0.
fn write_fraction(out: &mut Vec<u8>, nanos: u32) {
    if nanos != 0 {
        let mut digits = [0u8; 9];
        let mut n = nanos;
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        let len = 9 - digits.iter().rev().take_while(|&&c| c == b'0').count();
        out.push(b'.');
        out.extend_from_slice(&digits[..len]);
    }
}

fn two(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Appends `"key":{"k":"v",...}` for a list of pairs.
fn write_map(out: &mut Vec<u8>, key: &str, pairs: &[(String, String)]) {
    write_str(out, key.as_bytes());
    out.extend_from_slice(b":{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k.as_bytes());
        out.push(b':');
        write_str(out, v.as_bytes());
    }
    out.push(b'}');
}

fn write_field(out: &mut Vec<u8>, first: &mut bool, key: &str, value: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    write_str(out, key.as_bytes());
    out.push(b':');
    write_str(out, value.as_bytes());
}

/// The JSON object members describing a source, without braces:
/// `"kubernetes":{"namespace":…,"pod":…,…},"file":"…"`. Members with no value are left out.
pub fn source_members(source: &Source, out: &mut Vec<u8>) {
    let meta = source.pod_meta.as_deref();
    let container = meta.and_then(|m| m.container(&source.container));
    out.extend_from_slice(b"\"kubernetes\":{");
    let mut first = true;
    write_field(out, &mut first, "namespace", &source.namespace);
    write_field(out, &mut first, "pod", &source.pod);
    write_field(
        out,
        &mut first,
        "pod_uid",
        meta.map_or(&source.pod_uid, |m| &m.uid),
    );
    write_field(out, &mut first, "container", &source.container);
    if let Some(sidecar) = &source.sidecar {
        write_field(out, &mut first, "sidecar", sidecar);
    }
    let container_id = source
        .container_id
        .as_deref()
        .or_else(|| container.and_then(|c| c.container_id.as_deref()));
    if let Some(id) = container_id {
        write_field(out, &mut first, "container_id", id);
    }
    if let Some(image) = container.and_then(|c| c.image.as_deref()) {
        write_field(out, &mut first, "container_image", image);
    }
    if let Some(n) = source.restart_count {
        out.extend_from_slice(b",\"restart_count\":");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
    if let Some(m) = meta {
        if let Some(node) = &m.node_name {
            write_field(out, &mut first, "node", node);
        }
        for (key, pairs) in [
            ("labels", &m.labels),
            ("namespace_labels", &m.namespace_labels),
            ("annotations", &m.annotations),
        ] {
            if !pairs.is_empty() {
                out.push(b',');
                write_map(out, key, pairs);
            }
        }
        for (key, kind_name) in [("owner", &m.owner), ("workload", &m.workload)] {
            if let Some((kind, name)) = kind_name {
                out.push(b',');
                write_str(out, key.as_bytes());
                out.extend_from_slice(b":{");
                let mut first = true;
                write_field(out, &mut first, "kind", kind);
                write_field(out, &mut first, "name", name);
                out.push(b'}');
            }
        }
    }
    out.extend_from_slice(b"},\"file\":");
    write_str(out, source.path.as_bytes());
    let labels = &source.routing.labels;
    if !labels.is_empty() {
        out.push(b',');
        write_str(out, b"labels");
        out.extend_from_slice(b":{");
        let mut first = true;
        for (k, v) in labels.iter() {
            write_field(out, &mut first, k, v);
        }
        out.push(b'}');
    }
}

/// Per-source byte fragments, computed once per `Source::id` and reused for every record.
pub struct FragmentCache {
    cache: LruCache<u64, Vec<u8>>,
    build: fn(&Source, &mut Vec<u8>),
    /// The last source asked for and its fragment: consecutive records mostly share a file.
    last: Option<(u64, Vec<u8>)>,
}

/// Sources alive at once on a busy node: a few hundred containers, each possibly with a new
/// `Source` after a metadata update. 4096 keeps every live one with room.
const FRAGMENT_CACHE_ENTRIES: usize = 4096;

impl FragmentCache {
    pub fn new(build: fn(&Source, &mut Vec<u8>)) -> FragmentCache {
        FragmentCache {
            cache: LruCache::new(NonZeroUsize::new(FRAGMENT_CACHE_ENTRIES).expect("non-zero")),
            build,
            last: None,
        }
    }

    /// The fragment of `source`, built on first use.
    pub fn get(&mut self, source: &Source) -> &[u8] {
        if self.last.as_ref().is_none_or(|(id, _)| *id != source.id) {
            let build = self.build;
            let fragment = self.cache.get_or_insert(source.id, || {
                let mut v = Vec::with_capacity(256);
                build(source, &mut v);
                v
            });
            let mut copy = self.last.take().map(|(_, v)| v).unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(fragment);
            self.last = Some((source.id, copy));
        }
        &self.last.as_ref().expect("just set").1
    }
}

/// Splices a record's lifted fields (`loglet.io/parser`) into the event being written, after a
/// member: `,"level":"info",…`.
pub fn write_fields(out: &mut Vec<u8>, r: &Record) {
    if let Some(f) = &r.fields {
        out.push(b',');
        out.extend_from_slice(f.as_ref());
    }
}

/// Encodes records as loglet's JSON event, one object per line (NDJSON):
/// `{"time":…,"stream":…,"message":…,"kubernetes":{…},"file":…}`; used by the `http` and
/// `stdout` sinks.
pub struct NdjsonEncoder {
    fragments: FragmentCache,
}

impl NdjsonEncoder {
    pub fn new() -> NdjsonEncoder {
        NdjsonEncoder {
            fragments: FragmentCache::new(source_members),
        }
    }
}

impl Default for NdjsonEncoder {
    fn default() -> Self {
        NdjsonEncoder::new()
    }
}

impl super::format::Encoder for NdjsonEncoder {
    fn encode(&mut self, records: &[&Record], out: &mut Vec<u8>) {
        for r in records {
            out.extend_from_slice(b"{\"time\":\"");
            write_rfc3339(out, r.time_ns);
            out.extend_from_slice(b"\",\"stream\":\"");
            out.extend_from_slice(r.stream.as_str().as_bytes());
            out.extend_from_slice(b"\",\"message\":");
            write_str(out, &r.line);
            if r.flags & flags::TRUNCATED != 0 {
                out.extend_from_slice(b",\"truncated\":true");
            }
            write_fields(out, r);
            out.push(b',');
            out.extend_from_slice(self.fragments.get(&r.source));
            out.extend_from_slice(b"}\n");
        }
    }
}

/// loglet's own JSON event as NDJSON, for the `http` and `stdout` sinks.
pub struct NdjsonFormat;

impl super::format::Format for NdjsonFormat {
    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn encoder(&self) -> Box<dyn super::format::Encoder> {
        Box::new(NdjsonEncoder::new())
    }

    fn outcome(
        &self,
        status: reqwest::StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        _records: usize,
    ) -> super::format::Outcome {
        super::format::outcome_from_status(status, headers, body)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::{ContainerMeta, PodMeta, Stream};
    use crate::sink::format::Encoder;

    fn escaped(s: &[u8]) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        let cases: &[(&[u8], &str)] = &[
            (b"plain", r#""plain""#),
            (b"a\"b\\c", r#""a\"b\\c""#),
            (b"tab\there\nnl\r", r#""tab\there\nnl\r""#),
            (b"\x00\x1f", r#""\u0000\u001f""#),
            ("é ü 日本".as_bytes(), "\"é ü 日本\""),
            (b"bad \xff utf8", "\"bad \u{fffd} utf8\""),
            (b"", r#""""#),
        ];
        for (input, want) in cases {
            let got = escaped(input);
            assert_eq!(&got, want);
            let parsed: String = serde_json::from_str(&got).unwrap();
            assert_eq!(parsed, String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn the_word_scan_finds_every_byte_that_needs_escaping() {
        // Every position and every byte value, inside and across eight-byte words.
        for len in 0..20 {
            for pos in 0..len {
                for b in 0u8..=255 {
                    let mut s = vec![b'a'; len];
                    s[pos] = b;
                    let want = NEEDS_ESCAPE[b as usize].then_some(pos);
                    assert_eq!(next_escape(&s, 0), want, "len {len} pos {pos} byte {b:#x}");
                }
            }
        }
        // High bytes (UTF-8) next to a hit must not hide it.
        let s = "é\"日本\n".as_bytes();
        assert_eq!(next_escape(s, 0), Some(2));
        assert_eq!(next_escape(s, 3), Some(9));
    }

    #[test]
    fn times_are_written_like_go_rfc3339nano() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (1_475_713_029_669_794_202, "2016-10-06T00:17:09.669794202Z"),
            (1_475_713_029_500_000_000, "2016-10-06T00:17:09.5Z"),
            (951_782_400_000_000_000, "2000-02-29T00:00:00Z"),
            (-1, "1969-12-31T23:59:59.999999999Z"),
            (4_102_444_800_000_000_000, "2100-01-01T00:00:00Z"),
        ];
        for (ns, want) in cases {
            let mut out = Vec::new();
            write_rfc3339(&mut out, ns);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{ns}");
        }
    }

    fn source(meta: Option<PodMeta>) -> Arc<Source> {
        Arc::new(Source {
            id: Source::next_id(),
            path: "/var/log/pods/shop_web-1_uid-1/nginx/0.log".into(),
            namespace: "shop".into(),
            pod: "web-1".into(),
            pod_uid: "uid-1".into(),
            container: "nginx".into(),
            container_id: Some("abc".into()),
            restart_count: Some(0),
            pod_meta: meta.map(Arc::new),
            routing: Default::default(),
            sidecar: None,
        })
    }

    #[test]
    fn ndjson_records_carry_line_stream_time_and_pod() {
        let meta = PodMeta {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: "uid-1".into(),
            node_name: Some("node-a".into()),
            labels: vec![("app".into(), "web".into())],
            owner: Some(("ReplicaSet".into(), "web-5d8f".into())),
            workload: Some(("Deployment".into(), "web".into())),
            containers: vec![ContainerMeta {
                name: "nginx".into(),
                image: Some("nginx:1.27".into()),
                container_id: Some("abc".into()),
            }],
            ..PodMeta::default()
        };
        let src = source(Some(meta));
        let recs = [
            Record {
                line: bytes::Bytes::from_static(b"GET / \"200\""),
                time_ns: 1_475_713_029_669_794_202,
                stream: Stream::Stdout,
                flags: 0,
                fields: None,
                source: src.clone(),
            },
            Record {
                line: bytes::Bytes::from_static(b"oops"),
                time_ns: 0,
                stream: Stream::Stderr,
                flags: flags::TRUNCATED,
                fields: None,
                source: src,
            },
        ];
        let mut out = Vec::new();
        NdjsonEncoder::new().encode(&recs.iter().collect::<Vec<_>>(), &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["message"], "GET / \"200\"");
        assert_eq!(lines[0]["time"], "2016-10-06T00:17:09.669794202Z");
        assert_eq!(lines[0]["stream"], "stdout");
        let k = &lines[0]["kubernetes"];
        assert_eq!(k["namespace"], "shop");
        assert_eq!(k["pod"], "web-1");
        assert_eq!(k["container_image"], "nginx:1.27");
        assert_eq!(k["labels"]["app"], "web");
        assert_eq!(k["workload"]["kind"], "Deployment");
        assert_eq!(k["node"], "node-a");
        assert_eq!(k["restart_count"], 0);
        assert_eq!(
            lines[0]["file"],
            "/var/log/pods/shop_web-1_uid-1/nginx/0.log"
        );
        assert_eq!(lines[1]["stream"], "stderr");
        assert_eq!(lines[1]["truncated"], true);
        assert!(lines[0].get("truncated").is_none());
    }

    #[test]
    fn sources_without_api_metadata_still_name_their_pod() {
        let mut out = b"{".to_vec();
        source_members(&source(None), &mut out);
        out.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["kubernetes"]["pod_uid"], "uid-1");
        assert_eq!(v["kubernetes"]["container_id"], "abc");
        assert!(v["kubernetes"].get("labels").is_none());
    }
}
