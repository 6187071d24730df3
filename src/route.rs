//! route: where a container's lines go and what is done to them on the way, decided once per
//! container (and again when its Pod's or Namespace's annotations change), never per line.
//!
//! The operator names routes in the config; each sends to some sinks, with a Loki tenant, an
//! Elasticsearch/HEC index and a HEC source and sourcetype (templates over the Pod's metadata),
//! and the values of each a namespace may choose. Teams steer their own logs with `loglet.io/`
//! annotations on their Namespace or Pod (docs/annotations.md is the contract): a Pod's
//! annotation overrides its Namespace's, which overrides the route's config. An annotation can
//! only choose among what the config allows: a route by name, a tenant from `allowed_tenants`,
//! an index matching `allowed_indices` (a source `allowed_sources`, a sourcetype
//! `allowed_sourcetypes`), all rendered for the Pod's own namespace, so no namespace can write
//! into another's tenant or index. A bad value is reported once (a log line naming the
//! namespace, Pod and annotation, and `loglet_annotation_errors_total`) and the Pod falls back to
//! what it would have without it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{
    Config, DEFAULT_RATE_BURST, DEFAULT_ROUTE, RateLimitConfig, RouteConfig, SinkType,
};
use crate::decode::multiline::Rule;
use crate::metrics::Metrics;
use crate::parse::Parser;
use crate::record::Source;
use crate::sink::encode::Template;

/// The annotations loglet reads, all under one prefix.
pub mod annotation {
    pub const PREFIX: &str = "loglet.io/";
    pub const ROUTE: &str = "loglet.io/route";
    pub const TENANT: &str = "loglet.io/tenant";
    pub const INDEX: &str = "loglet.io/index";
    /// Splunk HEC's `source`.
    pub const SOURCE: &str = "loglet.io/source";
    /// Splunk HEC's `sourcetype`.
    pub const SOURCETYPE: &str = "loglet.io/sourcetype";
    pub const EXCLUDE: &str = "loglet.io/exclude";
    pub const EXCLUDE_CONTAINERS: &str = "loglet.io/exclude-containers";
    pub const RATE_LIMIT_LINES: &str = "loglet.io/rate-limit-lines";
    pub const RATE_LIMIT_BYTES: &str = "loglet.io/rate-limit-bytes";
    /// `loglet.io/sidecar.<container>`: that container is a streaming sidecar.
    pub const SIDECAR: &str = "loglet.io/sidecar";
    /// Also `loglet.io/multiline.<container>` for one container of a Pod.
    pub const MULTILINE: &str = "loglet.io/multiline";
    /// Also `loglet.io/parser.<container>`.
    pub const PARSER: &str = "loglet.io/parser";
    /// `loglet.io/files.<container>`: files in the Pod's emptyDir volumes, read as that
    /// container's logs (Pods only).
    pub const FILES: &str = "loglet.io/files";
}

/// A file (or a glob of files) in one of a Pod's emptyDir volumes, read as a container's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    /// The container its lines are attributed to.
    pub container: String,
    pub volume: String,
    /// The directories below the volume's root, literal (never `.` or `..`).
    pub dirs: Vec<String>,
    /// The file's name, or a glob (`*`, `?`, `[...]`) of names.
    pub name: glob::Pattern,
}

impl VolumeFile {
    /// `<volume>:<path>[, <volume>:<path> ...]`, e.g. `logs:/nginx/access.log, logs:/app/*.log`.
    pub fn parse_list(container: &str, v: &str) -> Result<Vec<VolumeFile>, String> {
        let mut out = Vec::new();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (volume, path) = part
                .split_once(':')
                .ok_or_else(|| format!("`{part}` is not <volume>:<path>"))?;
            let volume = volume.trim();
            let dns_label = !volume.is_empty()
                && volume.len() <= 63
                && volume
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !dns_label {
                return Err(format!("`{volume}` is not a volume name"));
            }
            let mut parts: Vec<&str> = path.trim().trim_start_matches('/').split('/').collect();
            let name = parts.pop().unwrap_or_default();
            if name.is_empty() || parts.iter().any(|d| d.is_empty()) {
                return Err(format!("`{path}` does not name a file in the volume"));
            }
            if parts.iter().chain([&name]).any(|c| *c == "." || *c == "..") {
                return Err(format!("`{path}` leaves the volume (`.` or `..`)"));
            }
            if parts.iter().any(|d| d.contains(['*', '?', '['])) {
                return Err(format!(
                    "`{path}`: only the file name may be a glob, not a directory"
                ));
            }
            let name = glob::Pattern::new(name).map_err(|e| format!("`{path}`: {e}"))?;
            out.push(VolumeFile {
                container: container.to_string(),
                volume: volume.to_string(),
                dirs: parts.into_iter().map(String::from).collect(),
                name,
            });
        }
        if out.is_empty() {
            return Err("names no file".into());
        }
        Ok(out)
    }
}

/// How a streaming sidecar echoes its application's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    /// `tail -F` of one or more files: `==> file <==` headers tell the file.
    Tail,
    /// A loop that prints whole files again and again (`cat`): each line is shipped once.
    Dump,
}

/// A container that echoes the application container `app`'s log files.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarSpec {
    pub app: String,
    pub mode: SidecarMode,
    /// The file it echoes, when tail prints no header (a single file) or for a dump.
    pub file: Option<Arc<str>>,
}

impl SidecarSpec {
    /// `container=<app>[, mode=tail|dump][, file=<path>]`.
    pub fn parse(v: &str) -> Result<SidecarSpec, String> {
        let (mut app, mut mode, mut file) = (None, SidecarMode::Tail, None);
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, val) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not key=value"))?;
            let val = val.trim();
            match k.trim() {
                "container" if !val.is_empty() => app = Some(val.to_string()),
                "mode" => {
                    mode = match val {
                        "tail" => SidecarMode::Tail,
                        "dump" => SidecarMode::Dump,
                        _ => return Err(format!("mode `{val}` is not `tail` or `dump`")),
                    }
                }
                "file" if !val.is_empty() => file = Some(Arc::from(val)),
                other => return Err(format!("`{other}` is not container, mode or file")),
            }
        }
        Ok(SidecarSpec {
            app: app.ok_or("needs container=<application container>")?,
            mode,
            file,
        })
    }
}

/// The sinks a record goes to, one bit per sink in the config's (sorted) order.
pub type SinkMask = u64;

/// The most sinks a config may have: one bit each in a [`SinkMask`].
pub const MAX_SINKS: usize = 64;

/// What one sink does with a container's records, when its route sets more than the sink's own
/// config.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Index of the sink in the config's order.
    pub sink: usize,
    /// The Loki tenant (`X-Scope-OrgID`), rendered for the Pod.
    pub tenant: Option<Arc<str>>,
    /// The Elasticsearch / HEC index template (its date is rendered per record).
    pub index: Option<Arc<Template>>,
    /// The Splunk HEC `source` and `sourcetype` templates.
    pub source: Option<Arc<Template>>,
    pub sourcetype: Option<Arc<Template>>,
}

impl Target {
    /// Whether the route sets anything beyond the sink's own config.
    fn sets_anything(&self) -> bool {
        self.tenant.is_some()
            || self.index.is_some()
            || self.source.is_some()
            || self.sourcetype.is_some()
    }
}

/// A per-namespace token bucket's rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub lines_per_second: Option<u64>,
    pub bytes_per_second: Option<u64>,
    pub burst: Duration,
}

impl Rate {
    fn from_config(c: &RateLimitConfig) -> Option<Rate> {
        let rate = Rate {
            lines_per_second: c.lines_per_second,
            bytes_per_second: c.bytes_per_second.map(|b| b.0),
            burst: c.burst.map_or(DEFAULT_RATE_BURST, |d| d.0),
        };
        (rate.lines_per_second.is_some() || rate.bytes_per_second.is_some()).then_some(rate)
    }

    /// The stricter of two limits, rate by rate.
    fn min(self, other: Rate) -> Rate {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Rate {
            lines_per_second: min(self.lines_per_second, other.lines_per_second),
            bytes_per_second: min(self.bytes_per_second, other.bytes_per_second),
            burst: self.burst.min(other.burst),
        }
    }
}

/// What was decided for one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The first route chosen, for metrics.
    pub route: Arc<str>,
    pub sinks: SinkMask,
    /// Per-sink settings beyond the sink's config (none for a sink that only uses its own).
    pub targets: Vec<Target>,
    /// Nothing of this container is shipped.
    pub excluded: bool,
    /// The namespace's rate limit, if any.
    pub rate: Option<Rate>,
    /// The container is a streaming sidecar of another one.
    pub sidecar: Option<Arc<SidecarSpec>>,
    /// Lines are joined into records by this rule (stack traces).
    pub multiline: Option<Arc<Rule>>,
    /// Fields are lifted from each line by this parser.
    pub parser: Option<Parser>,
    /// The route's extra labels (of the first chosen route that has any).
    pub labels: Arc<[(String, String)]>,
}

impl Default for Decision {
    /// Every sink, as the sinks' configs say: a config without routes, or a record built outside
    /// the tailer (tests, benches).
    fn default() -> Self {
        Decision {
            route: Arc::from(DEFAULT_ROUTE),
            sinks: SinkMask::MAX,
            targets: Vec::new(),
            excluded: false,
            rate: None,
            sidecar: None,
            multiline: None,
            parser: None,
            labels: Arc::new([]),
        }
    }
}

impl Decision {
    /// The route's settings for sink `sink`, if it has any.
    pub fn target(&self, sink: usize) -> Option<&Target> {
        self.targets.iter().find(|t| t.sink == sink)
    }

    pub fn sends_to(&self, sink: usize) -> bool {
        sink < MAX_SINKS && self.sinks & (1 << sink) != 0
    }
}

/// One configured route, parsed.
#[derive(Debug)]
struct Route {
    name: Arc<str>,
    sinks: Vec<usize>,
    tenant: Option<Template>,
    allowed_tenants: Vec<Template>,
    index: Option<Arc<Template>>,
    allowed_indices: Vec<Template>,
    source: Option<Arc<Template>>,
    allowed_sources: Vec<Template>,
    sourcetype: Option<Arc<Template>>,
    allowed_sourcetypes: Vec<Template>,
    /// A Splunk HEC sink is on the route: its index takes no date.
    dateless_index: bool,
    multiline: Option<Arc<Rule>>,
    parser: Option<Parser>,
    labels: Arc<[(String, String)]>,
}

/// The routes of a config, and the memory of which bad annotations were already reported.
pub struct Routes {
    routes: Vec<Route>,
    by_name: HashMap<String, usize>,
    default_route: usize,
    unknown_route: usize,
    ceiling: Option<Rate>,
    node: Option<String>,
    metrics: Arc<Metrics>,
    reported: Mutex<HashSet<String>>,
}

/// Reports kept before the memory is cleared (so a churn of bad Pods cannot grow it forever).
const MAX_REPORTED: usize = 10_000;

/// Where an annotation was read.
#[derive(Clone, Copy)]
enum On {
    Pod,
    Namespace,
}

impl Routes {
    /// The routes of a validated config.
    pub fn new(config: &Config, node: Option<String>, metrics: Arc<Metrics>) -> Routes {
        let (routes, problems) = parse(config);
        debug_assert!(problems.is_empty(), "config not validated: {problems:?}");
        let by_name: HashMap<String, usize> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.to_string(), i))
            .collect();
        let find = |name: &str| by_name.get(name).copied().unwrap_or(0);
        let default_route = find(&config.routing.default_route);
        let unknown_route = config
            .routing
            .unknown_route
            .as_deref()
            .map_or(default_route, find);
        Routes {
            by_name,
            default_route,
            unknown_route,
            ceiling: Rate::from_config(&config.routing.namespace_rate_limit),
            node,
            metrics,
            reported: Mutex::new(HashSet::new()),
            routes,
        }
    }

    /// Decides for the container of `source` from its Pod's and Namespace's annotations.
    pub fn decide(&self, source: &Source) -> Decision {
        let meta = source.pod_meta.as_deref();
        let pod: &[(String, String)] = meta.map_or(&[], |m| &m.loglet_annotations);
        let ns: &[(String, String)] = meta.map_or(&[], |m| &m.namespace_loglet_annotations);
        let ctx = Ctx {
            routes: self,
            source,
            pod,
            ns,
        };

        let chosen = ctx
            .pick(annotation::ROUTE, |v| self.route_names(&ctx, v))
            .unwrap_or_else(|| vec![self.default_route]);

        let tenant = ctx.pick(annotation::TENANT, |v| {
            if v.is_empty() {
                return Err("is empty".into());
            }
            let allowed = chosen.iter().all(|&r| {
                self.routes[r]
                    .allowed_tenants
                    .iter()
                    .any(|t| self.render(t, source) == v)
            });
            if allowed {
                Ok(Arc::<str>::from(v))
            } else {
                Err(format!(
                    "is not among the tenants the route {} allows for this namespace",
                    self.names(&chosen)
                ))
            }
        });

        // Whether every chosen route allows the name `v` among its `allowed` patterns.
        let allows = |v: &str, allowed: fn(&Route) -> &[Template]| {
            chosen.iter().all(|&r| {
                allowed(&self.routes[r])
                    .iter()
                    .any(|p| matches_pattern(&self.render(p, source), v))
            })
        };
        let index = ctx.pick(annotation::INDEX, |v| {
            if v.is_empty() || v.contains(['{', '}']) {
                return Err("must be a non-empty index name (dates such as %Y.%m.%d are allowed, {fields} are not)".into());
            }
            let template = Template::parse(v)?;
            if template.has_date() && chosen.iter().any(|&r| self.routes[r].dateless_index) {
                return Err("has a date, which a Splunk HEC index on this route cannot take".into());
            }
            if allows(v, |r| &r.allowed_indices) {
                Ok(Arc::new(template))
            } else {
                Err(format!(
                    "does not match the indices the route {} allows for this namespace",
                    self.names(&chosen)
                ))
            }
        });
        // Splunk HEC's source and sourcetype: plain names, as the route allows them.
        let hec_name = |key: &str, what: &str, allowed: fn(&Route) -> &[Template]| {
            ctx.pick(key, |v| {
                if v.is_empty() || v.contains(['{', '}', '%']) {
                    return Err(format!(
                        "must be a non-empty {what} ({{fields}} and %dates are not allowed)"
                    ));
                }
                if allows(v, allowed) {
                    Ok(Arc::new(Template::parse(v)?))
                } else {
                    Err(format!(
                        "does not match the {what}s the route {} allows for this namespace",
                        self.names(&chosen)
                    ))
                }
            })
        };
        let hec_source = hec_name(annotation::SOURCE, "source", |r| &r.allowed_sources);
        let hec_sourcetype = hec_name(annotation::SOURCETYPE, "sourcetype", |r| {
            &r.allowed_sourcetypes
        });

        let mut sinks: SinkMask = 0;
        let mut targets = Vec::new();
        for &r in &chosen {
            let route = &self.routes[r];
            for &s in &route.sinks {
                if sinks & (1 << s) != 0 {
                    // A sink on two chosen routes takes the first one's settings.
                    continue;
                }
                sinks |= 1 << s;
                let target = Target {
                    sink: s,
                    tenant: tenant.clone().or_else(|| {
                        route
                            .tenant
                            .as_ref()
                            .map(|t| Arc::from(self.render(t, source)))
                    }),
                    index: index.clone().or_else(|| route.index.clone()),
                    source: hec_source.clone().or_else(|| route.source.clone()),
                    sourcetype: hec_sourcetype.clone().or_else(|| route.sourcetype.clone()),
                };
                if target.sets_anything() {
                    targets.push(target);
                }
            }
        }

        let excluded = ctx.pick(annotation::EXCLUDE, parse_bool).unwrap_or(false)
            || ctx
                .pick(annotation::EXCLUDE_CONTAINERS, |v| {
                    Ok(v.split(',').any(|c| c.trim() == source.container))
                })
                .unwrap_or(false);

        let sidecar_key = format!("{}.{}", annotation::SIDECAR, source.container);
        let sidecar = ctx.pick_on(On::Pod, &sidecar_key, |v| {
            let spec = SidecarSpec::parse(v)?;
            if spec.app == source.container {
                return Err("names the sidecar itself as its application".into());
            }
            Ok(Arc::new(spec))
        });

        // `none` turns a Namespace's or route's rule off for a Pod or container.
        let rule = |v: &str| match v.trim() {
            "none" => Ok(None),
            v => Rule::parse(v).map(|r| Some(Arc::new(r))),
        };
        let multiline_key = format!("{}.{}", annotation::MULTILINE, source.container);
        let multiline = ctx
            .pick_on(On::Pod, &multiline_key, rule)
            .or_else(|| ctx.pick(annotation::MULTILINE, rule))
            .unwrap_or_else(|| self.routes[chosen[0]].multiline.clone());

        let parser = |v: &str| match v.trim() {
            "none" => Ok(None),
            v => Parser::parse(v).map(Some),
        };
        let parser_key = format!("{}.{}", annotation::PARSER, source.container);
        let parser = ctx
            .pick_on(On::Pod, &parser_key, parser)
            .or_else(|| ctx.pick(annotation::PARSER, parser))
            .unwrap_or(self.routes[chosen[0]].parser);

        Decision {
            route: self.routes[chosen[0]].name.clone(),
            sinks,
            targets,
            excluded,
            rate: self.rate(&ctx),
            sidecar,
            multiline,
            parser,
            labels: chosen
                .iter()
                .map(|&r| &self.routes[r].labels)
                .find(|l| !l.is_empty())
                .cloned()
                .unwrap_or_else(|| Arc::new([])),
        }
    }

    /// The namespace's limit: the config's ceiling, lowered by the Namespace's annotations (a
    /// Pod cannot change its namespace's shared bucket).
    fn rate(&self, ctx: &Ctx<'_>) -> Option<Rate> {
        for key in [annotation::RATE_LIMIT_LINES, annotation::RATE_LIMIT_BYTES] {
            if let Some(v) = get(ctx.pod, key) {
                ctx.report(
                    On::Pod,
                    key,
                    v,
                    "applies to Namespaces only (the limit is shared by the namespace's Pods); ignored",
                );
            }
        }
        let lines = ctx.pick_on(On::Namespace, annotation::RATE_LIMIT_LINES, |v| {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| "must be a whole number of lines per second, above 0".to_string())
        });
        let bytes = ctx.pick_on(On::Namespace, annotation::RATE_LIMIT_BYTES, |v| {
            crate::config::ByteSize::parse(v.trim())
                .map(|b| b.0)
                .and_then(|b| {
                    if b > 0 {
                        Ok(b)
                    } else {
                        Err("must be above 0".into())
                    }
                })
        });
        let annotated = (lines.is_some() || bytes.is_some()).then_some(Rate {
            lines_per_second: lines,
            bytes_per_second: bytes,
            burst: self.ceiling.map_or(DEFAULT_RATE_BURST, |c| c.burst),
        });
        match (self.ceiling, annotated) {
            (Some(c), Some(a)) => Some(c.min(a)),
            (c, a) => c.or(a),
        }
    }

    /// The routes a `loglet.io/route` value names; an unknown name goes to the catch-all route.
    fn route_names(&self, ctx: &Ctx<'_>, value: &str) -> Result<Vec<usize>, String> {
        let mut chosen = Vec::new();
        for name in value.split(',').map(str::trim) {
            if name.is_empty() {
                return Err("must be route names separated by commas".into());
            }
            let r = match self.by_name.get(name) {
                Some(&r) => r,
                None => {
                    ctx.report(
                        ctx.on(annotation::ROUTE),
                        annotation::ROUTE,
                        value,
                        &format!(
                            "names no route `{name}` in the config; its lines take the route {}",
                            self.routes[self.unknown_route].name
                        ),
                    );
                    self.unknown_route
                }
            };
            if !chosen.contains(&r) {
                chosen.push(r);
            }
        }
        Ok(chosen)
    }

    fn render(&self, t: &Template, source: &Source) -> String {
        t.to_string_for(source, self.node.as_deref(), 0)
    }

    /// The files a Pod's `loglet.io/files.<container>` annotations name in its emptyDir
    /// volumes. A bad value, or one for a container the Pod does not have, is reported and
    /// skipped; the Pod's other files are still read.
    pub fn volume_files(&self, source: &Source) -> Vec<VolumeFile> {
        let Some(meta) = source.pod_meta.as_deref() else {
            return Vec::new();
        };
        let ctx = Ctx {
            routes: self,
            source,
            pod: &meta.loglet_annotations,
            ns: &meta.namespace_loglet_annotations,
        };
        let prefix = format!("{}.", annotation::FILES);
        let mut out = Vec::new();
        for (key, value) in &meta.loglet_annotations {
            let Some(container) = key.strip_prefix(prefix.as_str()) else {
                if key == annotation::FILES {
                    ctx.report(
                        On::Pod,
                        key,
                        value,
                        "needs a container: loglet.io/files.<container>; ignored",
                    );
                }
                continue;
            };
            if meta.container(container).is_none() && !meta.containers.is_empty() {
                ctx.report(
                    On::Pod,
                    key,
                    value,
                    "names a container this Pod does not have; ignored",
                );
                continue;
            }
            match VolumeFile::parse_list(container, value) {
                Ok(files) => out.extend(files),
                Err(why) => ctx.report(On::Pod, key, value, &format!("{why}; ignored")),
            }
        }
        for (key, value) in &meta.namespace_loglet_annotations {
            if key.starts_with(annotation::FILES) {
                ctx.report(On::Namespace, key, value, "applies to Pods only; ignored");
            }
        }
        out
    }

    fn names(&self, routes: &[usize]) -> String {
        routes
            .iter()
            .map(|&r| self.routes[r].name.as_ref())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What one decision reads from.
struct Ctx<'a> {
    routes: &'a Routes,
    source: &'a Source,
    pod: &'a [(String, String)],
    ns: &'a [(String, String)],
}

impl Ctx<'_> {
    /// Where `key` is set: the Pod if it has it, else the Namespace.
    fn on(&self, key: &str) -> On {
        if get(self.pod, key).is_some() {
            On::Pod
        } else {
            On::Namespace
        }
    }

    /// The value of `key` parsed: the Pod's if it parses, else the Namespace's if it parses; a
    /// value that does not parse is reported and skipped.
    fn pick<T>(&self, key: &str, mut parse: impl FnMut(&str) -> Result<T, String>) -> Option<T> {
        self.pick_on(On::Pod, key, &mut parse)
            .or_else(|| self.pick_on(On::Namespace, key, &mut parse))
    }

    fn pick_on<T>(
        &self,
        on: On,
        key: &str,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Option<T> {
        let list = match on {
            On::Pod => self.pod,
            On::Namespace => self.ns,
        };
        let value = get(list, key)?;
        match parse(value) {
            Ok(v) => Some(v),
            Err(why) => {
                let fallback = match on {
                    On::Pod => "falling back to the Namespace's setting or the default",
                    On::Namespace => "falling back to the default",
                };
                self.report(on, key, value, &format!("{why}; {fallback}"));
                None
            }
        }
    }

    /// Logs a bad annotation once per Pod (or per Namespace) and value, and counts it.
    fn report(&self, on: On, key: &str, value: &str, why: &str) {
        let s = self.source;
        let (what, id) = match on {
            On::Pod => (
                format!("Pod {}/{}", s.namespace, s.pod),
                format!("{}/{}", s.namespace, s.pod_uid),
            ),
            On::Namespace => (format!("Namespace {}", s.namespace), s.namespace.clone()),
        };
        let first = {
            let mut seen = self
                .routes
                .reported
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if seen.len() >= MAX_REPORTED {
                seen.clear();
            }
            seen.insert(format!("{id}\0{key}\0{value}\0{why}"))
        };
        if first {
            // `loglet.io/sidecar.<container>` counts as `loglet.io/sidecar`: bounded labels.
            let base = key
                .strip_prefix(annotation::PREFIX)
                .and_then(|name| name.split_once('.'))
                .map_or(key, |(name, _)| {
                    &key[..annotation::PREFIX.len() + name.len()]
                });
            self.routes
                .metrics
                .annotation_errors
                .with_label_values(&[base])
                .inc();
            tracing::warn!(
                namespace = %s.namespace,
                pod = %s.pod,
                annotation = key,
                "{what}: annotation {key}={value:?} {why}"
            );
        }
    }
}

fn get<'a>(list: &'a [(String, String)], key: &str) -> Option<&'a str> {
    list.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be `true` or `false`".into()),
    }
}

/// `pattern` with a final `*` matches any value it starts; otherwise only itself.
fn matches_pattern(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => value == pattern,
    }
}

/// The routes of `config`, parsed, with every problem found (for `Config::problems`).
fn parse(config: &Config) -> (Vec<Route>, Vec<String>) {
    let mut p = Vec::new();
    let sink_names: Vec<&String> = config.sinks.keys().collect();
    if sink_names.len() > MAX_SINKS {
        p.push(format!("sinks: at most {MAX_SINKS} sinks are supported"));
    }
    let implicit;
    let routes: &BTreeMap<String, RouteConfig> = if config.routes.is_empty() {
        implicit = BTreeMap::from([(
            DEFAULT_ROUTE.to_string(),
            RouteConfig {
                sinks: sink_names.iter().map(|s| s.to_string()).collect(),
                tenant: None,
                allowed_tenants: Vec::new(),
                index: None,
                allowed_indices: Vec::new(),
                source: None,
                allowed_sources: Vec::new(),
                sourcetype: None,
                allowed_sourcetypes: Vec::new(),
                labels: BTreeMap::new(),
                parser: None,
                multiline: None,
            },
        )]);
        &implicit
    } else {
        &config.routes
    };
    let mut out = Vec::new();
    for (name, rc) in routes {
        let key = format!("routes.{name}");
        // `dates: false` for Splunk HEC's source and sourcetype, which take none (and a pattern
        // with one would never match a name an annotation may give).
        let mut template = |what: &str, s: &str, dates: bool| match Template::parse(s) {
            Ok(t) if !dates && t.has_date() => {
                p.push(format!(
                    "{key}.{what}: `{s}`: Splunk HEC's source and sourcetype take no date"
                ));
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                p.push(format!("{key}.{what}: `{s}`: {e}"));
                None
            }
        };
        let mut templates = |what: &str, list: &[String], dates: bool| -> Vec<Template> {
            list.iter()
                .filter_map(|t| template(what, t, dates))
                .collect()
        };
        let allowed_tenants = templates("allowed_tenants", &rc.allowed_tenants, true);
        let allowed_indices = templates("allowed_indices", &rc.allowed_indices, true);
        let allowed_sources = templates("allowed_sources", &rc.allowed_sources, false);
        let allowed_sourcetypes = templates("allowed_sourcetypes", &rc.allowed_sourcetypes, false);
        let mut one = |what: &str, s: &Option<String>, dates: bool| {
            s.as_deref().and_then(|t| template(what, t, dates))
        };
        let tenant = one("tenant", &rc.tenant, true);
        let index = one("index", &rc.index, true);
        let source = one("source", &rc.source, false);
        let sourcetype = one("sourcetype", &rc.sourcetype, false);
        if rc.sinks.is_empty() {
            p.push(format!("{key}.sinks: a route needs at least one sink"));
        }
        let mut sinks = Vec::new();
        for s in &rc.sinks {
            match sink_names.iter().position(|n| *n == s) {
                Some(i) => sinks.push(i),
                None => p.push(format!(
                    "{key}.sinks: `{s}` is not a sink of this config (sinks: {})",
                    sink_names
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        let dateless_index = sinks
            .iter()
            .any(|&i| config.sinks[sink_names[i]].kind == SinkType::SplunkHec);
        if dateless_index && index.as_ref().is_some_and(Template::has_date) {
            p.push(format!(
                "{key}.index: a Splunk HEC sink is on this route, and its index cannot take a date"
            ));
        }
        let multiline = rc.multiline.as_deref().and_then(|m| match Rule::parse(m) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                p.push(format!("{key}.multiline: {e}"));
                None
            }
        });
        let parser = rc.parser.as_deref().and_then(|v| match Parser::parse(v) {
            Ok(p) => Some(p),
            Err(e) => {
                p.push(format!("{key}.parser: {e}"));
                None
            }
        });
        for name in rc.labels.keys() {
            let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                p.push(format!(
                    "{key}.labels: `{name}` is not a label name (letters, digits and _, not starting with a digit)"
                ));
            }
        }
        out.push(Route {
            labels: rc
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            parser,
            multiline,
            dateless_index,
            name: Arc::from(name.as_str()),
            sinks,
            tenant,
            allowed_tenants,
            index: index.map(Arc::new),
            allowed_indices,
            source: source.map(Arc::new),
            allowed_sources,
            sourcetype: sourcetype.map(Arc::new),
            allowed_sourcetypes,
        });
    }
    let r = &config.routing;
    for (key, name) in [
        ("routing.default_route", Some(&r.default_route)),
        ("routing.unknown_route", r.unknown_route.as_ref()),
    ] {
        if let Some(name) = name
            && !routes.contains_key(name)
        {
            p.push(format!(
                "{key}: `{name}` is not a route of this config (routes: {})",
                routes.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let limit = &r.namespace_rate_limit;
    if limit.lines_per_second == Some(0) {
        p.push("routing.namespace_rate_limit.lines_per_second: must be above 0".into());
    }
    if limit.bytes_per_second.is_some_and(|b| b.0 == 0) {
        p.push("routing.namespace_rate_limit.bytes_per_second: must be above 0".into());
    }
    if limit.burst.is_some_and(|b| b.0.is_zero()) {
        p.push("routing.namespace_rate_limit.burst: must be greater than 0".into());
    }
    (out, p)
}

/// The problems of the config's routes, each named by its key.
pub fn config_problems(config: &Config, p: &mut Vec<String>) {
    p.extend(parse(config).1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::PodMeta;

    fn config(yaml: &str) -> Config {
        Config::parse_str(yaml, std::path::Path::new("test.yaml")).unwrap()
    }

    const TWO_ROUTES: &str = "
sinks:
  loki: {type: loki, url: 'http://127.0.0.1:1'}
  es: {type: elasticsearch, url: 'http://127.0.0.1:2'}
routes:
  default: {sinks: [loki], tenant: shared}
  teams:
    sinks: [loki, es]
    labels: {team_route: teams}
    tenant: '{namespace}'
    allowed_tenants: ['{namespace}', '{namespace}-audit']
    index: 'logs-{namespace}-%Y.%m.%d'
    allowed_indices: ['logs-{namespace}-*']
routing:
  namespace_rate_limit: {lines_per_second: 1000}
";

    fn source(pod: &[(&str, &str)], ns: &[(&str, &str)]) -> Source {
        let pairs = |l: &[(&str, &str)]| {
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Source {
            id: Source::next_id(),
            path: "/var/log/pods/shop_web-1_u1/app/0.log".into(),
            namespace: "shop".into(),
            pod: "web-1".into(),
            pod_uid: "u1".into(),
            container: "app".into(),
            container_id: None,
            restart_count: Some(0),
            pod_meta: Some(Arc::new(PodMeta {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "u1".into(),
                loglet_annotations: pairs(pod),
                namespace_loglet_annotations: pairs(ns),
                ..PodMeta::default()
            })),
            routing: Arc::default(),
            sidecar: None,
        }
    }

    fn routes(yaml: &str) -> (Routes, Arc<Metrics>) {
        let m = Metrics::new();
        (Routes::new(&config(yaml), None, m.clone()), m)
    }

    fn errors(m: &Metrics, key: &str) -> u64 {
        m.annotation_errors.with_label_values(&[key]).get()
    }

    #[test]
    fn without_routes_everything_goes_to_every_sink() {
        let (r, _) = routes("sinks: {a: {type: stdout}, b: {type: stdout}}");
        let d = r.decide(&source(&[], &[]));
        assert_eq!(d.sinks, 0b11);
        assert!(d.targets.is_empty());
        assert_eq!(&*d.route, "default");
    }

    #[test]
    fn the_namespace_chooses_a_route_and_the_pod_overrides_it() {
        let (r, _) = routes(TWO_ROUTES);
        let d = r.decide(&source(&[], &[]));
        assert_eq!((d.sinks, &*d.route), (0b10, "default"));
        assert_eq!(d.target(1).unwrap().tenant.as_deref(), Some("shared"));

        let d = r.decide(&source(&[], &[("loglet.io/route", "teams")]));
        assert_eq!((d.sinks, &*d.route), (0b11, "teams"));
        assert_eq!(
            &d.labels[..],
            [("team_route".to_string(), "teams".to_string())]
        );
        assert_eq!(d.target(1).unwrap().tenant.as_deref(), Some("shop"));
        let index = d.target(0).unwrap().index.as_ref().unwrap();
        let s = source(&[], &[]);
        assert_eq!(
            index.to_string_for(&s, None, 1_714_557_600_000_000_000),
            "logs-shop-2024.05.01"
        );

        let d = r.decide(&source(
            &[("loglet.io/route", "default")],
            &[("loglet.io/route", "teams")],
        ));
        assert_eq!(&*d.route, "default");
    }

    #[test]
    fn tenants_and_indices_are_confined_to_what_the_route_allows() {
        let (r, m) = routes(TWO_ROUTES);
        let ns = [("loglet.io/route", "teams")];
        let mut pod = vec![("loglet.io/tenant", "shop-audit")];
        let d = r.decide(&source(&pod, &ns));
        assert_eq!(d.target(1).unwrap().tenant.as_deref(), Some("shop-audit"));

        // Another team's tenant: refused, reported, and the route's default used.
        pod[0].1 = "payments";
        let d = r.decide(&source(&pod, &ns));
        assert_eq!(d.target(1).unwrap().tenant.as_deref(), Some("shop"));
        assert_eq!(errors(&m, "loglet.io/tenant"), 1);
        // Reported once, however many times it is decided.
        r.decide(&source(&pod, &ns));
        assert_eq!(errors(&m, "loglet.io/tenant"), 1);

        let s = source(&[], &[]);
        let index = |pod: &[(&str, &str)]| {
            let d = r.decide(&source(pod, &ns));
            let t = d.target(0).unwrap().index.as_ref().unwrap();
            t.to_string_for(&s, None, 0)
        };
        assert_eq!(
            index(&[("loglet.io/index", "logs-shop-audit-%Y")]),
            "logs-shop-audit-1970"
        );
        for bad in ["logs-payments-x", "logs-{pod}", ""] {
            assert_eq!(
                index(&[("loglet.io/index", bad)]),
                "logs-shop-1970.01.01",
                "{bad}"
            );
        }
        assert_eq!(errors(&m, "loglet.io/index"), 3);
        // The default route allows no tenant choice at all.
        let d = r.decide(&source(&[("loglet.io/tenant", "shop")], &[]));
        assert_eq!(d.target(1).unwrap().tenant.as_deref(), Some("shared"));
    }

    #[test]
    fn hec_source_and_sourcetype_are_set_per_route_and_confined_to_what_it_allows() {
        let (r, m) = routes(
            "
sinks:
  hec: {type: splunk_hec, url: 'http://127.0.0.1:1', splunk_hec: {token: t}}
routes:
  default: {sinks: [hec]}
  teams:
    sinks: [hec]
    index: 'k8s-{namespace}'
    source: 'k8s:{namespace}:{container}'
    sourcetype: 'kube:{namespace}'
    allowed_sources: ['k8s:{namespace}:*']
    allowed_sourcetypes: ['{namespace}:json', 'kube:{namespace}*']
",
        );
        let s = source(&[], &[]);
        let hec = |pod: &[(&str, &str)]| {
            let d = r.decide(&source(pod, &[("loglet.io/route", "teams")]));
            let t = d
                .target(0)
                .expect("the route sets the sink's metadata")
                .clone();
            let show = |t: &Option<Arc<Template>>| t.as_ref().map(|t| t.to_string_for(&s, None, 0));
            (show(&t.index), show(&t.source), show(&t.sourcetype))
        };
        let (k8s_shop, route_source, route_sourcetype) = (
            Some("k8s-shop".to_string()),
            Some("k8s:shop:app".to_string()),
            Some("kube:shop".to_string()),
        );
        assert_eq!(
            hec(&[]),
            (
                k8s_shop.clone(),
                route_source.clone(),
                route_sourcetype.clone()
            )
        );
        assert_eq!(
            hec(&[
                ("loglet.io/source", "k8s:shop:audit"),
                ("loglet.io/sourcetype", "shop:json"),
            ]),
            (
                k8s_shop.clone(),
                Some("k8s:shop:audit".into()),
                Some("shop:json".into())
            )
        );
        // Another namespace's names, fields, dates: refused, counted, the route's own used.
        for (source_v, sourcetype_v) in [
            ("k8s:pay:audit", "pay:json"),
            ("k8s:shop:{pod}", "kube:shop-%Y"),
            ("", "kube:{namespace_label:team}"),
        ] {
            assert_eq!(
                hec(&[
                    ("loglet.io/source", source_v),
                    ("loglet.io/sourcetype", sourcetype_v),
                ]),
                (
                    k8s_shop.clone(),
                    route_source.clone(),
                    route_sourcetype.clone()
                ),
                "{source_v} {sourcetype_v}"
            );
        }
        assert_eq!(errors(&m, "loglet.io/source"), 3);
        assert_eq!(errors(&m, "loglet.io/sourcetype"), 3);
        // The default route allows no choice: the sink's own source and sourcetype stay.
        let d = r.decide(&source(&[("loglet.io/sourcetype", "shop:json")], &[]));
        assert!(d.target(0).is_none(), "{:?}", d.targets);
        assert_eq!(errors(&m, "loglet.io/sourcetype"), 4);
    }

    #[test]
    fn an_unknown_route_takes_the_catch_all_and_a_bad_pod_value_falls_back() {
        let (r, m) = routes(&format!("{TWO_ROUTES}  unknown_route: teams\n"));
        let d = r.decide(&source(&[], &[("loglet.io/route", "nope")]));
        assert_eq!(&*d.route, "teams");
        assert_eq!(errors(&m, "loglet.io/route"), 1);
        let d = r.decide(&source(
            &[("loglet.io/route", " , ")],
            &[("loglet.io/route", "teams")],
        ));
        assert_eq!(&*d.route, "teams");
        assert_eq!(errors(&m, "loglet.io/route"), 2);
    }

    #[test]
    fn exclusion_by_namespace_pod_and_container() {
        let (r, m) = routes(TWO_ROUTES);
        assert!(
            r.decide(&source(&[], &[("loglet.io/exclude", "true")]))
                .excluded
        );
        assert!(
            !r.decide(&source(
                &[("loglet.io/exclude", "false")],
                &[("loglet.io/exclude", "true")]
            ))
            .excluded
        );
        assert!(
            r.decide(&source(
                &[("loglet.io/exclude-containers", "istio-proxy, app")],
                &[]
            ))
            .excluded
        );
        assert!(
            !r.decide(&source(
                &[("loglet.io/exclude-containers", "istio-proxy")],
                &[]
            ))
            .excluded
        );
        // A typo does not exclude, and is reported.
        assert!(
            !r.decide(&source(&[("loglet.io/exclude", "yes")], &[]))
                .excluded
        );
        assert_eq!(errors(&m, "loglet.io/exclude"), 1);
    }

    #[test]
    fn rate_limits_can_only_be_lowered_by_the_namespace() {
        let (r, m) = routes(TWO_ROUTES);
        let d = r.decide(&source(&[], &[]));
        assert_eq!(d.rate.unwrap().lines_per_second, Some(1000));
        let d = r.decide(&source(
            &[],
            &[
                ("loglet.io/rate-limit-lines", "10"),
                ("loglet.io/rate-limit-bytes", "1KiB"),
            ],
        ));
        let rate = d.rate.unwrap();
        assert_eq!(
            (rate.lines_per_second, rate.bytes_per_second),
            (Some(10), Some(1024))
        );
        let d = r.decide(&source(&[], &[("loglet.io/rate-limit-lines", "50000")]));
        assert_eq!(d.rate.unwrap().lines_per_second, Some(1000));
        let d = r.decide(&source(&[("loglet.io/rate-limit-lines", "1")], &[]));
        assert_eq!(d.rate.unwrap().lines_per_second, Some(1000));
        assert_eq!(errors(&m, "loglet.io/rate-limit-lines"), 1);
    }

    #[test]
    fn a_pod_names_its_streaming_sidecars() {
        let (r, m) = routes(TWO_ROUTES);
        let mut s = source(
            &[(
                "loglet.io/sidecar.app",
                "container=nginx, mode=dump, file=/var/log/nginx/access.log",
            )],
            &[],
        );
        let spec = r.decide(&s).sidecar.unwrap();
        assert_eq!(spec.app, "nginx");
        assert_eq!(spec.mode, SidecarMode::Dump);
        assert_eq!(spec.file.as_deref(), Some("/var/log/nginx/access.log"));
        s.container = "other".into();
        assert!(r.decide(&s).sidecar.is_none(), "only the named container");
        for bad in [
            "mode=tail",
            "container=app",
            "container=x, mode=cat",
            "nonsense",
        ] {
            let d = r.decide(&source(&[("loglet.io/sidecar.app", bad)], &[]));
            assert!(d.sidecar.is_none(), "{bad}");
        }
        assert_eq!(errors(&m, "loglet.io/sidecar"), 4);
    }

    #[test]
    fn route_problems_name_their_keys() {
        let text = "
sinks: {a: {type: stdout}, h: {type: splunk_hec, url: 'http://127.0.0.1:1', splunk_hec: {token: t}}}
routes:
  r1: {sinks: [a, b], index: 'x-{nope}'}
  r2: {sinks: []}
  r3: {sinks: [h], index: 'logs-%Y', labels: {'9x': a}}
  r5: {sinks: [h], source: 'k8s-%Y', sourcetype: 'x-{nope}', allowed_sourcetypes: ['k-%d']}
routing: {default_route: r4, namespace_rate_limit: {lines_per_second: 0}}
";
        let err = Config::parse_str(text, std::path::Path::new("t.yaml"))
            .unwrap_err()
            .to_string();
        for want in [
            "routes.r1.sinks: `b` is not a sink",
            "routes.r1.index: `x-{nope}`",
            "routes.r2.sinks: a route needs at least one sink",
            "routing.default_route: `r4` is not a route",
            "routes.r3.index: a Splunk HEC sink is on this route",
            "routes.r3.labels: `9x` is not a label name",
            "routes.r5.source: `k8s-%Y`: Splunk HEC's source and sourcetype take no date",
            "routes.r5.sourcetype: `x-{nope}`",
            "routes.r5.allowed_sourcetypes: `k-%d`: Splunk HEC's source and sourcetype take no date",
            "routing.namespace_rate_limit.lines_per_second: must be above 0",
        ] {
            assert!(err.contains(want), "{want} missing from {err}");
        }
    }

    #[test]
    fn volume_files_name_a_volume_and_a_path_that_stays_inside_it() {
        let files = VolumeFile::parse_list("nginx", "logs:/nginx/access.log, cache:*.log").unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].container, "nginx");
        assert_eq!(files[0].volume, "logs");
        assert_eq!(files[0].dirs, ["nginx"]);
        assert!(files[0].name.matches("access.log"));
        assert!(!files[0].name.matches("access.log.1"));
        assert_eq!(files[1].volume, "cache");
        assert!(files[1].dirs.is_empty());
        assert!(files[1].name.matches("error.log"));
        for (bad, why) in [
            ("", "names no file"),
            ("logs", "is not <volume>:<path>"),
            ("Logs:/a.log", "is not a volume name"),
            ("logs:/", "does not name a file"),
            ("logs:/a//b.log", "does not name a file"),
            ("logs:/../other/x.log", "leaves the volume"),
            ("logs:/a/..", "leaves the volume"),
            ("logs:/*/x.log", "only the file name may be a glob"),
            ("logs:/[.log", "`/[.log`"),
        ] {
            let err = VolumeFile::parse_list("c", bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn files_annotations_for_unknown_containers_or_on_namespaces_are_reported() {
        let (r, m) = routes("sinks: {a: {type: stdout}}");
        let mut s = source(
            &[
                ("loglet.io/files.app", "logs:/a.log"),
                ("loglet.io/files.ghost", "logs:/b.log"),
                ("loglet.io/files.app2", "logs:/../c.log"),
            ],
            &[("loglet.io/files.app", "logs:/ns.log")],
        );
        let meta = Arc::make_mut(s.pod_meta.as_mut().unwrap());
        meta.containers = ["app", "app2"]
            .map(|n| crate::record::ContainerMeta {
                name: n.into(),
                ..Default::default()
            })
            .to_vec();
        let files = r.volume_files(&s);
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].name.matches("a.log"));
        assert_eq!(errors(&m, "loglet.io/files"), 3);
    }
}
