//! sink: pieces the backends' encoders share: named fields of a record's Pod metadata
//! (`namespace`, `label:<key>` …), name templates (`logs-{namespace}-%Y.%m.%d`), a per-Source
//! cache so each Pod's part of a request is derived once and copied as bytes for every line, and
//! protobuf writing by hand (https://protobuf.dev/programming-guides/encoding/).

use std::num::NonZeroUsize;

use lru::LruCache;

use crate::record::{Source, Stream};

/// One piece of metadata about the file and Pod a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Namespace,
    Pod,
    PodUid,
    Container,
    ContainerId,
    ContainerImage,
    /// The node the Pod runs on (loglet's own node when the API did not tell).
    Node,
    /// The Pod's workload name (Deployment, StatefulSet, DaemonSet, CronJob, Job …), or its
    /// owner's name when the workload is unknown.
    Workload,
    /// The workload's kind (`Deployment` …).
    WorkloadKind,
    /// The application: the Pod label `app.kubernetes.io/name`, else `app`, else `k8s-app`, else
    /// the workload name.
    App,
    /// The file the record was read from.
    File,
    /// `stdout` or `stderr`: the only per-record field.
    Stream,
    Label(String),
    Annotation(String),
    NamespaceLabel(String),
    /// A fixed value.
    Static(String),
}

/// The simple field names, for messages and docs.
pub const FIELD_NAMES: &str = "namespace, pod, pod_uid, container, container_id, container_image, \
     node, workload, workload_kind, app, file, stream, label:<key>, annotation:<key>, \
     namespace_label:<key>, static:<value>";

impl Field {
    pub fn parse(s: &str) -> Result<Field, String> {
        let keyed = |prefix: &str| -> Option<Result<String, String>> {
            let key = s.strip_prefix(prefix)?;
            Some(if key.is_empty() {
                Err(format!("`{s}` needs a key after `{prefix}`"))
            } else {
                Ok(key.to_string())
            })
        };
        if let Some(k) = keyed("label:") {
            return k.map(Field::Label);
        }
        if let Some(k) = keyed("annotation:") {
            return k.map(Field::Annotation);
        }
        if let Some(k) = keyed("namespace_label:") {
            return k.map(Field::NamespaceLabel);
        }
        if let Some(v) = s.strip_prefix("static:") {
            return Ok(Field::Static(v.to_string()));
        }
        Ok(match s {
            "namespace" => Field::Namespace,
            "pod" => Field::Pod,
            "pod_uid" => Field::PodUid,
            "container" => Field::Container,
            "container_id" => Field::ContainerId,
            "container_image" => Field::ContainerImage,
            "node" => Field::Node,
            "workload" => Field::Workload,
            "workload_kind" => Field::WorkloadKind,
            "app" => Field::App,
            "file" => Field::File,
            "stream" => Field::Stream,
            _ => return Err(format!("`{s}` is not a field (one of {FIELD_NAMES})")),
        })
    }

    /// The name a field goes by when the config gives none: the field's own name, or for a keyed
    /// field its key.
    pub fn default_name(&self) -> &str {
        match self {
            Field::Namespace => "namespace",
            Field::Pod => "pod",
            Field::PodUid => "pod_uid",
            Field::Container => "container",
            Field::ContainerId => "container_id",
            Field::ContainerImage => "container_image",
            Field::Node => "node",
            Field::Workload => "workload",
            Field::WorkloadKind => "workload_kind",
            Field::App => "app",
            Field::File => "file",
            Field::Stream => "stream",
            Field::Label(k) | Field::Annotation(k) | Field::NamespaceLabel(k) => k,
            Field::Static(_) => "static",
        }
    }

    /// The field's value for `source` (records of one source share it), `None` when unknown or
    /// empty. `Stream` has no per-source value: use [`Field::value_for`].
    pub fn value<'a>(&'a self, source: &'a Source, node: Option<&'a str>) -> Option<&'a str> {
        let meta = source.pod_meta.as_deref();
        let container = || meta.and_then(|m| m.container(&source.container));
        let pair = |pairs: &'a [(String, String)], key: &str| -> Option<&'a str> {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let v = match self {
            Field::Namespace => Some(source.namespace.as_str()),
            Field::Pod => Some(source.pod.as_str()),
            Field::PodUid => Some(meta.map_or(source.pod_uid.as_str(), |m| m.uid.as_str())),
            Field::Container => Some(source.container.as_str()),
            Field::ContainerId => source
                .container_id
                .as_deref()
                .or_else(|| container().and_then(|c| c.container_id.as_deref())),
            Field::ContainerImage => container().and_then(|c| c.image.as_deref()),
            Field::Node => meta.and_then(|m| m.node_name.as_deref()).or(node),
            Field::Workload => workload(source).map(|(_, name)| name),
            Field::WorkloadKind => workload(source).map(|(kind, _)| kind),
            Field::App => meta
                .and_then(|m| {
                    ["app.kubernetes.io/name", "app", "k8s-app"]
                        .iter()
                        .find_map(|k| pair(&m.labels, k))
                })
                .or_else(|| workload(source).map(|(_, name)| name)),
            Field::File => Some(source.path.as_str()),
            Field::Stream => None,
            Field::Label(k) => meta.and_then(|m| pair(&m.labels, k)),
            Field::Annotation(k) => meta.and_then(|m| pair(&m.annotations, k)),
            Field::NamespaceLabel(k) => meta.and_then(|m| pair(&m.namespace_labels, k)),
            Field::Static(v) => Some(v.as_str()),
        };
        v.filter(|v| !v.is_empty())
    }

    /// The field's value for a record of `source` written to `stream`.
    pub fn value_for<'a>(
        &'a self,
        source: &'a Source,
        stream: Stream,
        node: Option<&'a str>,
    ) -> Option<&'a str> {
        match self {
            Field::Stream => Some(stream.as_str()),
            _ => self.value(source, node),
        }
    }
}

/// The Pod's workload `(kind, name)`, else its owner's.
pub fn workload(source: &Source) -> Option<(&str, &str)> {
    let meta = source.pod_meta.as_deref()?;
    meta.workload
        .as_ref()
        .or(meta.owner.as_ref())
        .map(|(k, n)| (k.as_str(), n.as_str()))
}

/// A field under a name: `namespace`, or `team=label:team`, as written in a sink's list of labels
/// or indexed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedField {
    pub name: String,
    pub field: Field,
}

impl NamedField {
    /// Parses `<field>` or `<name>=<field>`; without a name, a keyed field is named after its key
    /// and the others after themselves.
    pub fn parse(s: &str) -> Result<NamedField, String> {
        let (name, field) = match s.split_once('=') {
            Some((name, field)) if !name.contains(':') => (Some(name.trim()), field.trim()),
            _ => (None, s.trim()),
        };
        let field = Field::parse(field)?;
        if matches!(field, Field::Static(_)) && name.is_none() {
            return Err(format!("`{s}` needs a name: `<name>=static:<value>`"));
        }
        let name = name.unwrap_or_else(|| field.default_name()).to_string();
        if name.is_empty() {
            return Err(format!("`{s}` has an empty name"));
        }
        Ok(NamedField { name, field })
    }
}

/// A name built from metadata and the record's date: `logs-{namespace}-%Y.%m.%d`.
///
/// `{field}` inserts a [`Field`] (`{label:team|shared}` gives `shared` when the Pod has no `team`
/// label; without `|…` a missing field inserts nothing); `%Y`, `%m`, `%d`, `%H` insert the UTC
/// year, month, day and hour of the record; `%%` is a `%`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field, String),
    Year,
    Month,
    Day,
    Hour,
}

const NS_PER_HOUR: i64 = 3_600_000_000_000;
const NS_PER_DAY: i64 = 24 * NS_PER_HOUR;

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let part = match chars.next() {
                        Some('%') => {
                            text.push('%');
                            continue;
                        }
                        Some('Y') => Part::Year,
                        Some('m') => Part::Month,
                        Some('d') => Part::Day,
                        Some('H') => Part::Hour,
                        Some(other) => {
                            return Err(format!(
                                "`%{other}` is not supported (use %Y, %m, %d, %H or %%)"
                            ));
                        }
                        None => return Err("a lone `%` ends the template (write %%)".into()),
                    };
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(part);
                }
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(format!("unclosed `{{` in `{s}`"));
                            }
                            Some(c) => inner.push(c),
                        }
                    }
                    let (field, fallback) = inner.split_once('|').unwrap_or((&inner, ""));
                    let field = Field::parse(field.trim())?;
                    if field == Field::Stream {
                        return Err("`{stream}` is per line and cannot be used in a name".into());
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Field(field, fallback.to_string()));
                }
                '}' => return Err(format!("unmatched `}}` in `{s}`")),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// Whether the template uses the record's date.
    pub fn has_date(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Year | Part::Month | Part::Day | Part::Hour))
    }

    /// The time span over which a rendering for one source stays the same, as
    /// `[start, end)` Unix nanoseconds around `time_ns`: an hour with `%H`, a day with other dates,
    /// forever without.
    pub fn valid_span(&self, time_ns: i64) -> (i64, i64) {
        let step = if self.parts.contains(&Part::Hour) {
            NS_PER_HOUR
        } else if self.has_date() {
            NS_PER_DAY
        } else {
            return (i64::MIN, i64::MAX);
        };
        // Saturating: a time in the first partial hour or day of the i64 range has no start.
        let start = time_ns.div_euclid(step).saturating_mul(step);
        (start, start.saturating_add(step))
    }

    /// Appends the rendering for a record of `source` written at `time_ns`.
    pub fn render(&self, source: &Source, node: Option<&str>, time_ns: i64, out: &mut String) {
        // "YYYY-MM-DDTHH:…": the date's digits at fixed places.
        let mut date = Vec::new();
        if self.has_date() {
            super::json::write_rfc3339(&mut date, time_ns);
        }
        let digits = |r: std::ops::Range<usize>| std::str::from_utf8(&date[r]).unwrap_or("");
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f, fallback) => out.push_str(f.value(source, node).unwrap_or(fallback)),
                Part::Year => out.push_str(digits(0..4)),
                Part::Month => out.push_str(digits(5..7)),
                Part::Day => out.push_str(digits(8..10)),
                Part::Hour => out.push_str(digits(11..13)),
            }
        }
    }

    /// The rendering as a string.
    pub fn to_string_for(&self, source: &Source, node: Option<&str>, time_ns: i64) -> String {
        let mut s = String::new();
        self.render(source, node, time_ns, &mut s);
        s
    }
}

/// What an encoder derived from one `Source`, kept under `Source::id` (unique for the process
/// life) so a Pod's metadata is encoded once, not per line.
pub struct SourceCache<T> {
    map: LruCache<u64, T>,
}

/// Sources alive at once on a busy node: a few hundred containers, each possibly with a new
/// `Source` after a metadata update. 4096 keeps every live one with room.
pub const SOURCE_CACHE_ENTRIES: usize = 4096;

impl<T> SourceCache<T> {
    pub fn new() -> SourceCache<T> {
        SourceCache {
            map: LruCache::new(NonZeroUsize::new(SOURCE_CACHE_ENTRIES).expect("non-zero")),
        }
    }

    /// The entry of `source`, built by `build` on first use.
    pub fn get_or_insert_with(&mut self, source: &Source, build: impl FnOnce() -> T) -> &mut T {
        self.map.get_or_insert_mut(source.id, build)
    }

    pub fn get(&mut self, source: &Source) -> Option<&mut T> {
        self.map.get_mut(&source.id)
    }

    pub fn insert(&mut self, source: &Source, entry: T) {
        self.map.put(source.id, entry);
    }
}

impl<T> Default for SourceCache<T> {
    fn default() -> Self {
        SourceCache::new()
    }
}

/// Why a backend's format could not be set up from its (validated) config.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("sinks.{sink}: {message}")]
    Invalid { sink: String, message: String },
    #[error("sinks.{sink}: failed to read {path}")]
    ReadSecret {
        sink: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a secret (a token, an API key) from a file, trimmed of surrounding whitespace.
pub fn read_secret(sink: &str, path: &std::path::Path) -> Result<String, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|source| FormatError::ReadSecret {
        sink: sink.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(FormatError::Invalid {
            sink: sink.to_string(),
            message: format!("{} is empty", path.display()),
        });
    }
    Ok(secret)
}

/// Parses a sink's list of named fields (validated by the config already).
pub fn parse_fields(sink: &str, list: &[String]) -> Result<Vec<NamedField>, FormatError> {
    list.iter()
        .map(|s| {
            NamedField::parse(s).map_err(|message| FormatError::Invalid {
                sink: sink.to_string(),
                message,
            })
        })
        .collect()
}

/// Parses a sink's template (validated by the config already).
pub fn parse_template(sink: &str, s: &str) -> Result<Template, FormatError> {
    Template::parse(s).map_err(|message| FormatError::Invalid {
        sink: sink.to_string(),
        message,
    })
}

/// The sink's `url` with `path` appended unless the url already ends with it (users paste both
/// forms).
pub fn path_unless_present(url: Option<&str>, path: &str) -> Option<String> {
    let bare = path.split('?').next().unwrap_or(path);
    let given = url
        .and_then(|u| reqwest::Url::parse(u).ok())
        .map(|u| u.path().trim_end_matches('/').to_string())
        .unwrap_or_default();
    if given.ends_with(bare.trim_end_matches('/')) {
        path.split_once('?').map(|(_, query)| format!("?{query}"))
    } else {
        Some(path.to_string())
    }
}

/// Protobuf wire format, written by hand: encoders build request bodies straight into the output
/// buffer (no message structs, no allocation per record); the `proto` modules' prost structs
/// decode them in tests and fake backends.
pub mod pb {
    pub use prost::encoding::{encode_varint, encoded_len_varint, key_len};

    /// Wire type 2 (length-delimited) key.
    pub fn len_key(out: &mut Vec<u8>, tag: u32) {
        encode_varint(u64::from(tag << 3 | 2), out);
    }

    /// A length-delimited field (string, bytes, message) with its content.
    pub fn bytes_field(out: &mut Vec<u8>, tag: u32, content: &[u8]) {
        len_key(out, tag);
        encode_varint(content.len() as u64, out);
        out.extend_from_slice(content);
    }

    /// The key and length prefix of a length-delimited field whose content follows.
    pub fn len_prefix(out: &mut Vec<u8>, tag: u32, len: usize) {
        len_key(out, tag);
        encode_varint(len as u64, out);
    }

    /// The encoded size of a length-delimited field of `len` content bytes.
    pub fn len_field_size(tag: u32, len: usize) -> usize {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }

    /// A varint field (wire type 0); zero is left out as proto3 does.
    pub fn varint_field(out: &mut Vec<u8>, tag: u32, v: u64) {
        if v != 0 {
            encode_varint(u64::from(tag << 3), out);
            encode_varint(v, out);
        }
    }

    pub fn varint_field_size(tag: u32, v: u64) -> usize {
        if v == 0 {
            0
        } else {
            key_len(tag) + encoded_len_varint(v)
        }
    }

    /// A fixed64 field (wire type 1), written even when zero.
    pub fn fixed64_field(out: &mut Vec<u8>, tag: u32, v: u64) {
        encode_varint(u64::from(tag << 3 | 1), out);
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn fixed64_field_size(tag: u32) -> usize {
        key_len(tag) + 8
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::{ContainerMeta, PodMeta};

    /// A Pod as the API tells it: a Deployment's replica with the usual labels.
    pub(crate) fn rich_source() -> Arc<Source> {
        let meta = PodMeta {
            namespace: "shop".into(),
            name: "web-5d8f-x2x".into(),
            uid: "uid-1".into(),
            node_name: Some("node-a".into()),
            labels: vec![
                ("app.kubernetes.io/name".into(), "web".into()),
                ("team".into(), "Payments".into()),
            ],
            annotations: vec![("owner".into(), "alice".into())],
            namespace_labels: vec![("env".into(), "prod".into())],
            owner: Some(("ReplicaSet".into(), "web-5d8f".into())),
            workload: Some(("Deployment".into(), "web".into())),
            containers: vec![ContainerMeta {
                name: "nginx".into(),
                image: Some("nginx:1.27".into()),
                container_id: Some("c0ffee".into()),
            }],
            ..PodMeta::default()
        };
        Arc::new(Source {
            id: Source::next_id(),
            path: "/var/log/pods/shop_web-5d8f-x2x_uid-1/nginx/0.log".into(),
            namespace: "shop".into(),
            pod: "web-5d8f-x2x".into(),
            pod_uid: "uid-1".into(),
            container: "nginx".into(),
            container_id: None,
            restart_count: Some(2),
            pod_meta: Some(Arc::new(meta)),
            routing: Default::default(),
            sidecar: None,
        })
    }

    /// The sink `out` of a config whose sink body is `body` (YAML, indented by four spaces).
    pub(crate) fn sink_config(body: &str) -> crate::config::SinkConfig {
        let text = format!("sinks:\n  out:\n{body}");
        let mut c = crate::config::Config::parse_str(&text, std::path::Path::new("test.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        c.sinks.remove("out").expect("sink out")
    }

    pub(crate) fn record(
        source: &Arc<Source>,
        line: &[u8],
        time_ns: i64,
        stream: Stream,
    ) -> crate::record::Record {
        crate::record::Record {
            line: bytes::Bytes::copy_from_slice(line),
            time_ns,
            stream,
            flags: 0,
            fields: None,
            source: source.clone(),
        }
    }

    /// Another replica of `rich_source`'s Deployment.
    pub(crate) fn replica_source() -> Arc<Source> {
        let rich = rich_source();
        let mut meta = rich.pod_meta.as_deref().cloned().expect("meta");
        meta.name = "web-5d8f-q7q".into();
        meta.uid = "uid-2".into();
        meta.containers[0].container_id = Some("beef".into());
        Arc::new(Source {
            id: Source::next_id(),
            path: "/var/log/pods/shop_web-5d8f-q7q_uid-2/nginx/0.log".into(),
            namespace: "shop".into(),
            pod: "web-5d8f-q7q".into(),
            pod_uid: "uid-2".into(),
            container: "nginx".into(),
            container_id: None,
            restart_count: Some(0),
            pod_meta: Some(Arc::new(meta)),
            routing: Default::default(),
            sidecar: None,
        })
    }

    /// A Pod known only from its log path.
    pub(crate) fn bare_source() -> Arc<Source> {
        Arc::new(Source {
            id: Source::next_id(),
            path: "/var/log/pods/kube-system_etcd-n1_hash/etcd/0.log".into(),
            namespace: "kube-system".into(),
            pod: "etcd-n1".into(),
            pod_uid: "hash".into(),
            container: "etcd".into(),
            container_id: None,
            restart_count: Some(0),
            pod_meta: None,
            routing: Default::default(),
            sidecar: None,
        })
    }

    #[test]
    fn fields_read_the_pod_metadata_with_fallbacks() {
        let rich = rich_source();
        let bare = bare_source();
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("namespace", Some("shop"), Some("kube-system")),
            ("pod", Some("web-5d8f-x2x"), Some("etcd-n1")),
            ("pod_uid", Some("uid-1"), Some("hash")),
            ("container", Some("nginx"), Some("etcd")),
            ("container_id", Some("c0ffee"), None),
            ("container_image", Some("nginx:1.27"), None),
            ("node", Some("node-a"), Some("self-node")),
            ("workload", Some("web"), None),
            ("workload_kind", Some("Deployment"), None),
            ("app", Some("web"), None),
            ("label:team", Some("Payments"), None),
            ("annotation:owner", Some("alice"), None),
            ("namespace_label:env", Some("prod"), None),
            ("static:eu-1", Some("eu-1"), Some("eu-1")),
            ("label:missing", None, None),
        ];
        for (spec, want_rich, want_bare) in cases {
            let f = Field::parse(spec).unwrap();
            assert_eq!(f.value(&rich, Some("self-node")), *want_rich, "{spec} rich");
            assert_eq!(f.value(&bare, Some("self-node")), *want_bare, "{spec} bare");
        }
        let f = Field::parse("stream").unwrap();
        assert_eq!(f.value_for(&rich, Stream::Stderr, None), Some("stderr"));
    }

    #[test]
    fn field_specs_parse_names_and_reject_nonsense() {
        let ok = [
            ("namespace", "namespace", Field::Namespace),
            ("ns=namespace", "ns", Field::Namespace),
            ("label:team", "team", Field::Label("team".into())),
            ("t=label:team", "t", Field::Label("team".into())),
            (
                "cluster=static:prod",
                "cluster",
                Field::Static("prod".into()),
            ),
            ("label:a=b", "a=b", Field::Label("a=b".into())),
        ];
        for (spec, name, field) in ok {
            let nf = NamedField::parse(spec).unwrap();
            assert_eq!((nf.name.as_str(), nf.field), (name, field), "{spec}");
        }
        for bad in ["podname", "label:", "static:x", "=namespace"] {
            assert!(NamedField::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_render_fields_dates_and_fallbacks() {
        let src = rich_source();
        let t = 1_714_521_600_000_000_000 + 13 * NS_PER_HOUR; // 2024-05-01T13:00:00Z
        let cases = [
            ("logs-{namespace}-%Y.%m.%d", "logs-shop-2024.05.01"),
            ("logs-{label:tier|none}-%H", "logs-none-13"),
            ("{label:tier}x", "x"),
            ("100%%-{app}", "100%-web"),
            ("kube:container:{container}", "kube:container:nginx"),
        ];
        for (spec, want) in cases {
            let tpl = Template::parse(spec).unwrap();
            assert_eq!(tpl.to_string_for(&src, None, t), want, "{spec}");
        }
        for bad in ["%q", "a%", "{namespace", "x}", "{podname}", "{stream}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rendering_stays_valid_for_its_hour_or_day() {
        let t = 1_714_521_600_000_000_000 + 13 * NS_PER_HOUR + 5;
        let day = Template::parse("x-%Y.%m.%d").unwrap();
        assert_eq!(
            day.valid_span(t),
            (
                1_714_521_600_000_000_000,
                1_714_521_600_000_000_000 + NS_PER_DAY
            )
        );
        let hour = Template::parse("x-%H").unwrap();
        assert_eq!(hour.valid_span(t).1 - hour.valid_span(t).0, NS_PER_HOUR);
        let none = Template::parse("x-{namespace}").unwrap();
        assert_eq!(none.valid_span(t), (i64::MIN, i64::MAX));
        assert!(!none.has_date());
    }
}
