//! parse: lifts the fields of a structured log line (JSON, logfmt) into the record, chosen by
//! `loglet.io/parser` (docs/annotations.md). The fields come out as the members of a JSON object
//! without its braces, ready to splice into the event a JSON sink writes, so each sink copies
//! bytes instead of walking a map. A JSON line whose keys clash with nothing is lifted without a
//! copy (a slice of the line); the original line is always kept as the message, so a line that
//! does not parse loses nothing.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::sink::json::write_str;

/// A line format whose fields can be lifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parser {
    Json,
    Logfmt,
}

impl Parser {
    /// `json` or `logfmt`.
    pub fn parse(s: &str) -> Result<Parser, String> {
        match s.trim() {
            "json" => Ok(Parser::Json),
            "logfmt" => Ok(Parser::Logfmt),
            other => Err(format!("`{other}` is not a parser (json or logfmt)")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Parser::Json => "json",
            Parser::Logfmt => "logfmt",
        }
    }
}

/// The keys loglet's JSON events use at their top level: a lifted key equal to one of them is
/// written with a leading `_` (`_message`), so an event never has a duplicate key (which
/// Elasticsearch refuses).
pub const RESERVED: &[&str] = &[
    "@timestamp",
    "time",
    "stream",
    "message",
    "truncated",
    "kubernetes",
    "file",
    "labels",
];

/// The fields of `line` as JSON object members without braces (`"level":"info","n":3`), or
/// `None` when it does not parse or has none. Keys in `reserved` get a leading `_`; of keys
/// repeated in the line, the last wins.
pub fn lift(parser: Parser, line: &Bytes, reserved: &[&str]) -> Option<Bytes> {
    match parser {
        Parser::Json => lift_json(line, reserved),
        Parser::Logfmt => lift_logfmt(line, reserved),
    }
}

/// A JSON object key, borrowed from the line when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of a JSON object, values as their raw text.
struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

fn lift_json(line: &Bytes, reserved: &[&str]) -> Option<Bytes> {
    let start = line.iter().position(|b| !b.is_ascii_whitespace())?;
    let end = line.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
    if line[start] != b'{' {
        return None;
    }
    let text = std::str::from_utf8(&line[start..end]).ok()?;
    let Members(members) = serde_json::from_str(text).ok()?;
    if members.is_empty() {
        return None;
    }
    let clean = members.iter().enumerate().all(|(i, (k, _))| {
        !reserved.contains(&k.0.as_ref()) && !members[..i].iter().any(|(o, _)| o.0 == k.0)
    });
    if clean {
        // The object's own text between its braces: no copy.
        return Some(line.slice(start + 1..end - 1));
    }
    let mut out = Vec::with_capacity(text.len() + 8);
    for (i, (k, v)) in members.iter().enumerate() {
        if members[i + 1..].iter().any(|(o, _)| o.0 == k.0) {
            continue;
        }
        member_key(&mut out, &k.0, reserved);
        out.extend_from_slice(v.get().as_bytes());
    }
    Some(Bytes::from(out))
}

fn member_key(out: &mut Vec<u8>, key: &str, reserved: &[&str]) {
    if !out.is_empty() {
        out.push(b',');
    }
    if reserved.contains(&key) {
        let renamed = format!("_{key}");
        write_str(out, renamed.as_bytes());
    } else {
        write_str(out, key.as_bytes());
    }
    out.push(b':');
}

/// `key=value key2="quoted \" value" flag`: values as strings, a bare key is `true`.
fn lift_logfmt(line: &Bytes, reserved: &[&str]) -> Option<Bytes> {
    let s: &[u8] = line;
    let mut pairs: Vec<(&[u8], Cow<'_, [u8]>)> = Vec::new();
    let mut any_eq = false;
    let mut i = 0;
    while i < s.len() {
        while i < s.len() && s[i] == b' ' {
            i += 1;
        }
        let k0 = i;
        while i < s.len() && !matches!(s[i], b' ' | b'=' | b'"') {
            i += 1;
        }
        let key = &s[k0..i];
        if i < s.len() && s[i] == b'"' {
            // A quote inside a key: not logfmt.
            return None;
        }
        if key.is_empty() {
            if i < s.len() {
                i += 1;
            }
            continue;
        }
        if i < s.len() && s[i] == b'=' {
            any_eq = true;
            i += 1;
            if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                let mut closed = false;
                while i < s.len() {
                    match s[i] {
                        b'\\' if i + 1 < s.len() => {
                            v.push(match s[i + 1] {
                                b'n' => b'\n',
                                b't' => b'\t',
                                c => c,
                            });
                            i += 2;
                        }
                        b'"' => {
                            closed = true;
                            i += 1;
                            break;
                        }
                        c => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                if !closed {
                    return None;
                }
                pairs.push((key, Cow::Owned(v)));
            } else {
                let v0 = i;
                while i < s.len() && s[i] != b' ' {
                    i += 1;
                }
                pairs.push((key, Cow::Borrowed(&s[v0..i])));
            }
        } else {
            pairs.push((key, Cow::Borrowed(b"true")));
        }
    }
    if !any_eq {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() + 4 * pairs.len());
    for (n, (k, v)) in pairs.iter().enumerate() {
        if pairs[n + 1..].iter().any(|(o, _)| o == k) {
            continue;
        }
        member_key(&mut out, &String::from_utf8_lossy(k), reserved);
        write_str(&mut out, v);
    }
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lifted(p: Parser, line: &str) -> Option<String> {
        lift(p, &Bytes::copy_from_slice(line.as_bytes()), RESERVED)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    fn object(members: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&format!("{{{members}}}")).unwrap()
    }

    #[test]
    fn a_json_line_is_lifted_without_a_copy_when_nothing_clashes() {
        let line = Bytes::from_static(br#"  {"level":"info","n":3,"req":{"path":"/x"}} "#);
        let got = lift(Parser::Json, &line, RESERVED).unwrap();
        assert_eq!(&got[..], br#""level":"info","n":3,"req":{"path":"/x"}"#);
        assert_eq!(got.as_ptr(), line[3..].as_ptr(), "a slice of the line");
    }

    #[test]
    fn clashing_and_repeated_keys_are_renamed_and_deduplicated() {
        let got = lifted(
            Parser::Json,
            r#"{"message":"m","a":1,"a":2,"t\u0069me":"x"}"#,
        )
        .unwrap();
        let o = object(&got);
        assert_eq!(o["_message"], "m");
        assert_eq!(o["a"], 2);
        assert_eq!(o["_time"], "x");
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn what_is_not_a_json_object_is_not_lifted() {
        for l in [
            "",
            "plain text",
            "[1,2]",
            "\"s\"",
            "{}",
            "{\"a\":",
            "{\"a\":1} trailing",
            "{\"a\":\"\u{fffd}\"",
            "{\"a\":1}}",
        ] {
            assert_eq!(lifted(Parser::Json, l), None, "{l}");
        }
        let deep = format!("{}{}", "{\"a\":".repeat(200), "}".repeat(200));
        assert_eq!(lifted(Parser::Json, &deep), None);
        let bad_utf8 = Bytes::from_static(b"{\"a\":\"\xff\"}");
        assert_eq!(lift(Parser::Json, &bad_utf8, RESERVED), None);
    }

    #[test]
    fn logfmt_pairs_quoted_values_and_bare_keys() {
        let got = lifted(
            Parser::Logfmt,
            r#"level=info msg="hello \"you\"" dur=1.5ms message=x debug a=1 a=2"#,
        )
        .unwrap();
        let o = object(&got);
        assert_eq!(o["level"], "info");
        assert_eq!(o["msg"], "hello \"you\"");
        assert_eq!(o["dur"], "1.5ms");
        assert_eq!(o["_message"], "x");
        assert_eq!(o["debug"], "true");
        assert_eq!(o["a"], "2");
        for l in ["just words here", "", "k=\"unclosed", "a\"b=1"] {
            assert_eq!(lifted(Parser::Logfmt, l), None, "{l}");
        }
        assert_eq!(Parser::parse("json"), Ok(Parser::Json));
        assert!(Parser::parse("xml").is_err());
    }

    proptest! {
        /// Whatever the line, what is lifted is the inside of a valid JSON object with no
        /// duplicate and no reserved key.
        #[test]
        fn lifted_fields_always_make_a_valid_object(line in proptest::collection::vec(any::<u8>(), 0..120), json in any::<bool>()) {
            let p = if json { Parser::Json } else { Parser::Logfmt };
            let mut text = line.clone();
            if json && !text.is_empty() {
                text[0] = b'{';
            }
            if let Some(f) = lift(p, &Bytes::from(text), RESERVED) {
                let whole = format!("{{{}}}", String::from_utf8(f.to_vec()).unwrap());
                let keys: Vec<String> = serde_json::from_str::<Members<'_>>(&whole)
                    .expect("valid object")
                    .0
                    .into_iter()
                    .map(|(k, _)| k.0.into_owned())
                    .collect();
                let mut sorted = keys.clone();
                sorted.sort();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), keys.len(), "duplicate keys in {}", whole);
                prop_assert!(keys.iter().all(|k| !RESERVED.contains(&k.as_str())));
            }
        }
    }
}
