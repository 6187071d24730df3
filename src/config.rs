//! Configuration: the YAML file (a ConfigMap in a cluster), its defaults and its validation.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere); validation is a second pass that collects
//! every problem, each named by its key path, so one run of `loglet check-config` shows them all.
//! Every default is a named constant beside its field with the reason for its value;
//! docs/configuration.md documents every key and a test checks that it does.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The host's root as seen by loglet; every host path below is taken relative to it.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// The node loglet runs on (default: the `NODE_NAME` environment variable).
    #[serde(default)]
    pub node_name: Option<String>,
    /// Where checkpoints are kept (under `root`); must survive Pod restarts (a hostPath).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub logs: LogsConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: OwnLogConfig,
    /// Where records go, by name. Default: one `stdout` sink.
    #[serde(default = "default_sinks")]
    pub sinks: BTreeMap<String, SinkConfig>,
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// Named routes: which sinks a Pod's lines go to, with what tenant, index and processing.
    /// Absent: one route, `default`, to every sink.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    #[serde(default)]
    pub routing: RoutingConfig,
}

/// One route: the sinks it sends to and what a namespace on it may choose (docs/annotations.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Names from `sinks`.
    pub sinks: Vec<String>,
    /// The Loki tenant (`X-Scope-OrgID`), a template such as `{namespace}`; default: the sink's
    /// `loki.tenant`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The tenants `loglet.io/tenant` may choose, as templates (`team-{namespace_label:team}`).
    #[serde(default)]
    pub allowed_tenants: Vec<String>,
    /// The Elasticsearch index and Splunk HEC index, a template such as
    /// `logs-{namespace}-%Y.%m.%d`; default: the sink's own.
    #[serde(default)]
    pub index: Option<String>,
    /// The indices `loglet.io/index` may choose: templates, where a final `*` matches any rest
    /// (`logs-{namespace}-*`).
    #[serde(default)]
    pub allowed_indices: Vec<String>,
    /// The Splunk HEC `source`, a template without dates; default: the sink's
    /// `splunk_hec.source`.
    #[serde(default)]
    pub source: Option<String>,
    /// The sources `loglet.io/source` may choose, written as `allowed_indices` are.
    #[serde(default)]
    pub allowed_sources: Vec<String>,
    /// The Splunk HEC `sourcetype`, a template without dates; default: the sink's
    /// `splunk_hec.sourcetype`.
    #[serde(default)]
    pub sourcetype: Option<String>,
    /// The sourcetypes `loglet.io/sourcetype` may choose, written as `allowed_indices` are.
    #[serde(default)]
    pub allowed_sourcetypes: Vec<String>,
    /// Labels added to every record of the route: Loki stream labels, and a `labels` object in
    /// JSON events.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `json` or `logfmt`: lift the fields of each line into the record (JSON sinks).
    #[serde(default)]
    pub parser: Option<String>,
    /// Multiline rule applied to every container on the route: `java`, `python`, `go`, `node`
    /// or `regex:<start pattern>`.
    #[serde(default)]
    pub multiline: Option<String>,
}

/// How routes are chosen, and the limits every namespace shares.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The route of namespaces that choose none.
    pub default_route: String,
    /// The route of namespaces that name a route the config does not have (default:
    /// `default_route`).
    pub unknown_route: Option<String>,
    /// The most a namespace may ship per second; `loglet.io/rate-limit-*` may only lower it.
    pub namespace_rate_limit: RateLimitConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            default_route: DEFAULT_ROUTE.to_string(),
            unknown_route: None,
            namespace_rate_limit: RateLimitConfig::default(),
        }
    }
}

/// The route the config has when it names none, and the default `routing.default_route`.
pub const DEFAULT_ROUTE: &str = "default";

/// A token bucket per namespace: lines and bytes per second, with a burst of `burst` seconds'
/// worth. Unset rates do not limit.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub lines_per_second: Option<u64>,
    pub bytes_per_second: Option<ByteSize>,
    pub burst: Option<Dur>,
}

/// Two seconds' worth: absorbs a short spike (a stack trace, a restart's banner) without drops.
pub const DEFAULT_RATE_BURST: Duration = Duration::from_secs(2);

fn default_root() -> PathBuf {
    PathBuf::from("/")
}

/// The kubelet's and the DaemonSet's conventional place for node agents' state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/loglet";

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn default_sinks() -> BTreeMap<String, SinkConfig> {
    BTreeMap::from([("stdout".to_string(), SinkConfig::stdout())])
}

/// What to read and how.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// The kubelet's Pod log directory, relative to `root`.
    pub pods_dir: PathBuf,
    /// The `/var/log/containers` symlinks (read for container IDs only), relative to `root`.
    pub containers_dir: PathBuf,
    /// The kubelet's root directory, relative to `root`: files that Pods name with the
    /// `loglet.io/files.<container>` annotation are read from their emptyDir volumes under
    /// `<kubelet_root>/pods/<uid>/volumes/kubernetes.io~empty-dir/`.
    pub kubelet_root: PathBuf,
    /// Globs over `<namespace>/<pod>/<container>`; empty means everything.
    pub include: Vec<String>,
    /// Globs over `<namespace>/<pod>/<container>`; applied after `include`.
    pub exclude: Vec<String>,
    /// Where to start in a file that has no checkpoint.
    pub read_from: ReadFrom,
    /// Files without a checkpoint last modified longer ago than this are not read (0: no limit).
    pub ignore_older_than: Dur,
    /// How files are noticed: inotify with a rescan as safety net, or polling only.
    pub watch: WatchMode,
    /// The safety-net rescan of the directories (inotify can miss events).
    pub rescan_interval: Dur,
    /// How often open files are checked for growth when nothing signals it (poll mode, or the
    /// safety net under inotify).
    pub poll_interval: Dur,
    /// Lines longer than this are cut (and counted); bounds memory per partial line.
    pub max_line_bytes: ByteSize,
    /// A partial line whose rest never comes is flushed after this long.
    pub partial_flush_timeout: Dur,
    /// At most this many files are held open at once.
    pub max_open_files: usize,
    /// Deleted files are held open until drained, but hold at most this much disk between them;
    /// beyond it the oldest are released and their unread bytes counted as lost.
    pub max_deleted_bytes_held: ByteSize,
    /// How much one file may read in its turn before the next file gets its turn (fairness).
    pub read_chunk_bytes: ByteSize,
}

/// The kubelet's `--root-dir` default.
pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";
/// Reading 256 KiB blocks amortises the syscall over ~1000 lines and stays cache friendly.
pub const DEFAULT_READ_CHUNK_BYTES: u64 = 256 * 1024;
/// Loki's default `max_line_size`; larger lines are rejected by most backends anyway.
pub const DEFAULT_MAX_LINE_BYTES: u64 = 256 * 1024;
/// Long enough for a runtime to finish a line it is writing in chunks, short enough for an
/// operator watching a stream without newline.
pub const DEFAULT_PARTIAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// A fraction of a typical `ulimit -n` of 65536 that still covers several hundred containers with
/// their rotated files.
pub const DEFAULT_MAX_OPEN_FILES: usize = 1024;
/// Five kubelet-rotated files of 10 MiB for 40 busy containers: bounded, yet far above normal.
pub const DEFAULT_MAX_DELETED_BYTES_HELD: u64 = 2 * 1024 * 1024 * 1024;
/// inotify misses events under overflow; a slow rescan is the safety net, cheap at 10 s.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// Quick enough for sub-second lag in poll mode, a few hundred `fstat`s a second at worst.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            pods_dir: PathBuf::from("/var/log/pods"),
            containers_dir: PathBuf::from("/var/log/containers"),
            kubelet_root: PathBuf::from(DEFAULT_KUBELET_ROOT),
            include: Vec::new(),
            exclude: Vec::new(),
            read_from: ReadFrom::Beginning,
            ignore_older_than: Dur(Duration::ZERO),
            watch: WatchMode::Inotify,
            rescan_interval: Dur(DEFAULT_RESCAN_INTERVAL),
            poll_interval: Dur(DEFAULT_POLL_INTERVAL),
            max_line_bytes: ByteSize(DEFAULT_MAX_LINE_BYTES),
            partial_flush_timeout: Dur(DEFAULT_PARTIAL_FLUSH_TIMEOUT),
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            max_deleted_bytes_held: ByteSize(DEFAULT_MAX_DELETED_BYTES_HELD),
            read_chunk_bytes: ByteSize(DEFAULT_READ_CHUNK_BYTES),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    Beginning,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchMode {
    Inotify,
    Poll,
}

/// Batching between the tailer and the sinks, and checkpointing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// A batch from the tailer holds at most this many records.
    pub batch_max_records: usize,
    /// A batch from the tailer holds at most this many bytes of log content.
    pub batch_max_bytes: ByteSize,
    /// How many batches may wait for the sinks; when full, the tailer stops reading.
    pub queue_batches: usize,
    /// How often acknowledged positions are written to the state directory.
    pub checkpoint_interval: Dur,
    /// On SIGTERM, how long in-flight batches may take to be delivered before loglet exits.
    pub shutdown_grace: Dur,
}

/// ~1000 lines of a typical 240 bytes: big enough to amortise, small enough for low latency.
pub const DEFAULT_BATCH_MAX_RECORDS: usize = 1024;
pub const DEFAULT_BATCH_MAX_BYTES: u64 = 512 * 1024;
/// Two batches of 512 KiB bound what waits per sink to 1 MiB (each pins about twice that in read
/// blocks). The catch-up benchmark ships within a tenth as fast with two as with eight, at a
/// third less peak RSS (docs/performance.md).
pub const DEFAULT_QUEUE_BATCHES: usize = 2;
/// A crash re-sends at most about a second of acknowledged lines.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Below the DaemonSet's terminationGracePeriodSeconds (30) with room to write checkpoints.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_max_records: DEFAULT_BATCH_MAX_RECORDS,
            batch_max_bytes: ByteSize(DEFAULT_BATCH_MAX_BYTES),
            queue_batches: DEFAULT_QUEUE_BATCHES,
            checkpoint_interval: Dur(DEFAULT_CHECKPOINT_INTERVAL),
            shutdown_grace: Dur(DEFAULT_SHUTDOWN_GRACE),
        }
    }
}

/// The HTTP server for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port`; the DaemonSet's config sets `0.0.0.0:9464` so probes and Prometheus reach it.
    pub listen: String,
    /// Set false to run without the HTTP server.
    pub enabled: bool,
}

/// The port everything agrees on: the code, the Dockerfile and the manifests (a test checks).
pub const METRICS_PORT: u16 = 9464;

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: format!("127.0.0.1:{METRICS_PORT}"),
            enabled: true,
        }
    }
}

/// loglet's own log output (on stderr).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnLogConfig {
    /// A `tracing` filter such as `info` or `loglet::tail=debug` (`RUST_LOG` overrides it).
    pub level: String,
    pub format: OwnLogFormat,
}

impl Default for OwnLogConfig {
    fn default() -> Self {
        OwnLogConfig {
            level: "info".to_string(),
            format: OwnLogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnLogFormat {
    Text,
    Json,
}

/// One sink: its type, the options every HTTP sink shares, and its type's own options.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// The endpoint (for `http`, the full URL; for the others, the base URL of the backend).
    #[serde(default)]
    pub url: Option<String>,
    /// Unset: the format's own choice (gzip for OTLP, as the Collector's exporter; snappy for
    /// Loki's protobuf; none for the others).
    #[serde(default)]
    pub compression: Option<Compression>,
    #[serde(default)]
    pub batch: SinkBatchConfig,
    #[serde(default)]
    pub request: RequestConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Extra HTTP headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Options of a `loki` sink.
    #[serde(default)]
    pub loki: Option<LokiOptions>,
    /// Options of an `elasticsearch` sink.
    #[serde(default)]
    pub elasticsearch: Option<ElasticsearchOptions>,
    /// Options of an `otlp` sink.
    #[serde(default)]
    pub otlp: Option<OtlpOptions>,
    /// Options of a `splunk_hec` sink.
    #[serde(default)]
    pub splunk_hec: Option<SplunkHecOptions>,
}

impl SinkConfig {
    pub fn stdout() -> Self {
        SinkConfig {
            kind: SinkType::Stdout,
            url: None,
            compression: None,
            batch: SinkBatchConfig::default(),
            request: RequestConfig::default(),
            tls: TlsConfig::default(),
            auth: None,
            headers: BTreeMap::new(),
            loki: None,
            elasticsearch: None,
            otlp: None,
            splunk_hec: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkType {
    /// One JSON object per line on loglet's stdout.
    Stdout,
    /// NDJSON POSTed to a URL.
    Http,
    /// Grafana Loki's push API.
    Loki,
    /// Elasticsearch or OpenSearch `_bulk`.
    Elasticsearch,
    /// OTLP/HTTP logs.
    Otlp,
    /// Splunk HTTP Event Collector (and HEC-compatible backends).
    SplunkHec,
}

impl SinkType {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkType::Stdout => "stdout",
            SinkType::Http => "http",
            SinkType::Loki => "loki",
            SinkType::Elasticsearch => "elasticsearch",
            SinkType::Otlp => "otlp",
            SinkType::SplunkHec => "splunk_hec",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
    Snappy,
}

/// How a sink groups records into requests.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkBatchConfig {
    pub max_records: usize,
    /// Before compression.
    pub max_bytes: ByteSize,
    /// A request is sent at the latest this long after its first record arrived.
    pub timeout: Dur,
}

/// Log bytes, before the metadata each record carries: 256 KiB of lines make a body of about
/// 1 MiB once encoded with Pod metadata, well inside every backend's limits (ES recommends
/// 5–15 MiB, Loki's gRPC limit is 4 MiB compressed). Measured against 1 MiB, it halves the
/// catch-up time and cuts peak RSS by a third (docs/performance.md).
pub const DEFAULT_SINK_MAX_BYTES: u64 = 256 * 1024;
pub const DEFAULT_SINK_MAX_RECORDS: usize = 10_000;
/// Sub-second delivery under light load.
pub const DEFAULT_SINK_BATCH_TIMEOUT: Duration = Duration::from_millis(500);

impl Default for SinkBatchConfig {
    fn default() -> Self {
        SinkBatchConfig {
            max_records: DEFAULT_SINK_MAX_RECORDS,
            max_bytes: ByteSize(DEFAULT_SINK_MAX_BYTES),
            timeout: Dur(DEFAULT_SINK_BATCH_TIMEOUT),
        }
    }
}

/// How a sink sends and retries.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestConfig {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// A request that takes longer is abandoned and retried.
    pub timeout: Dur,
    /// The first retry waits this long; each next one twice as long, with jitter.
    pub retry_initial_backoff: Dur,
    pub retry_max_backoff: Dur,
}

/// Two requests in flight hide one round trip without piling load on a struggling backend.
pub const DEFAULT_CONCURRENCY: usize = 2;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRY_INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// Retries never stop (the files are the buffer), but never wait more than 30 s apart.
pub const DEFAULT_RETRY_MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Default for RequestConfig {
    fn default() -> Self {
        RequestConfig {
            concurrency: DEFAULT_CONCURRENCY,
            timeout: Dur(DEFAULT_REQUEST_TIMEOUT),
            retry_initial_backoff: Dur(DEFAULT_RETRY_INITIAL_BACKOFF),
            retry_max_backoff: Dur(DEFAULT_RETRY_MAX_BACKOFF),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of CA certificates to trust in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM files of a client certificate and its key, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. Only for tests; never the default.
    pub insecure_skip_verify: bool,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum AuthConfig {
    Basic {
        user: String,
        #[serde(serialize_with = "redact")]
        password: Option<String>,
        password_file: Option<PathBuf>,
    },
    /// `Authorization: Bearer <token>`; a token file is re-read when it changes (projected
    /// service-account tokens rotate).
    Bearer {
        #[serde(default, serialize_with = "redact")]
        token: Option<String>,
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthConfig::Basic {
                user,
                password_file,
                ..
            } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &"<redacted>")
                .field("password_file", password_file)
                .finish(),
            AuthConfig::Bearer { token_file, .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .field("token_file", token_file)
                .finish(),
        }
    }
}

/// Secrets never leave loglet through `check-config` or logs.
fn redact<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

/// A duration written with a unit: `250ms`, `5s`, `1m`, `2h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("`{s}` has no unit (use ms, s, m or h)"))?;
        let (num, unit) = s.split_at(split);
        let per_unit: u128 = match unit.trim() {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(format!(
                    "`{other}` is not a duration unit (use ms, s, m or h)"
                ));
            }
        };
        // Decimal, not floating point: what `Display` prints reads back to the same value.
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        let bad = || format!("`{s}` is not a number followed by a unit");
        if whole.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(bad());
        }
        let digits = |d: &str| -> Result<u128, String> {
            if d.len() > 30 {
                return Err(format!("`{s}` is out of range"));
            }
            if d.is_empty() {
                Ok(0)
            } else {
                d.parse().map_err(|_| bad())
            }
        };
        let frac = &frac[..frac.len().min(18)];
        let nanos = digits(whole)?.saturating_mul(per_unit)
            + digits(frac)?.saturating_mul(per_unit) / 10u128.pow(frac.len() as u32);
        if nanos > 1_000_000_000 * 1_000_000_000 {
            return Err(format!("`{s}` is out of range"));
        }
        Ok(Dur(Duration::from_nanos(nanos as u64)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 || ms == 0 {
            write!(f, "{ms}ms")
        } else if ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size in bytes: `1048576`, `512KiB`, `10Mi`, `1MB`, `2GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size (e.g. 512KiB, 10MiB)"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KB" => 1000,
            "Ki" | "KiB" => 1 << 10,
            "M" | "MB" => 1000 * 1000,
            "Mi" | "MiB" => 1 << 20,
            "G" | "GB" => 1000 * 1000 * 1000,
            "Gi" | "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "`{other}` is not a size unit (use B, KiB, MiB, GiB)"
                ));
            }
        };
        value
            .checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is out of range"))
    }

    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b != 0 && b % (1 << 30) == 0 {
            write!(f, "{}GiB", b >> 30)
        } else if b != 0 && b % (1 << 20) == 0 {
            write!(f, "{}MiB", b >> 20)
        } else if b != 0 && b % (1 << 10) == 0 {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid configuration:\n  {}", problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Config {
    /// The embedded default: read every container log under `/var/log/pods`, print to stdout.
    pub fn embedded_default() -> Config {
        Config::parse_str("{}", Path::new("<embedded default>")).expect("the default parses")
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse_str(&text, path)
    }

    /// Parse and validate config text; `path` names it in messages.
    pub fn parse_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // An empty file is the default config, as `{}` is.
        let text = if text.trim().is_empty() { "{}" } else { text };
        let config: Config = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// Every semantic problem, each prefixed by its key path.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let logs = &self.logs;
        for (key, globs) in [
            ("logs.include", &logs.include),
            ("logs.exclude", &logs.exclude),
        ] {
            for (i, g) in globs.iter().enumerate() {
                if let Err(e) = glob::Pattern::new(g) {
                    p.push(format!("{key}[{i}]: `{g}` is not a valid glob: {e}"));
                }
            }
        }
        if logs.max_line_bytes.0 < 1024 {
            p.push("logs.max_line_bytes: must be at least 1KiB".into());
        }
        if logs.read_chunk_bytes.0 < 4096 || logs.read_chunk_bytes.0 > 64 << 20 {
            p.push("logs.read_chunk_bytes: must be between 4KiB and 64MiB".into());
        }
        if logs.max_open_files < 8 {
            p.push("logs.max_open_files: must be at least 8".into());
        }
        for (key, d) in [
            ("logs.rescan_interval", logs.rescan_interval),
            ("logs.poll_interval", logs.poll_interval),
            ("logs.partial_flush_timeout", logs.partial_flush_timeout),
            (
                "pipeline.checkpoint_interval",
                self.pipeline.checkpoint_interval,
            ),
        ] {
            if d.0.is_zero() {
                p.push(format!("{key}: must be greater than 0"));
            }
        }
        if self.pipeline.batch_max_records == 0 {
            p.push("pipeline.batch_max_records: must be at least 1".into());
        }
        if self.pipeline.queue_batches == 0 {
            p.push("pipeline.queue_batches: must be at least 1".into());
        }
        if self.metrics.enabled && self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "metrics.listen: `{}` is not an address such as 0.0.0.0:{METRICS_PORT}",
                self.metrics.listen
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            p.push(format!(
                "log.level: `{}` is not a valid filter: {e}",
                self.log.level
            ));
        }
        if self.sinks.is_empty() {
            p.push("sinks: at least one sink is needed".into());
        }
        for (name, sink) in &self.sinks {
            sink.problems(&format!("sinks.{name}"), &mut p);
        }
        self.kubernetes.problems("kubernetes", &mut p);
        crate::route::config_problems(self, &mut p);
        p
    }

    /// A host path (as configured, absolute on the host) under `root`.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        self.root.join(rel)
    }
}

/// A value sent in an HTTP header (a key, a token) must be one, or the sink fails at start;
/// the message does not repeat the value, which may be a secret.
fn secret_header_problem(key: &str, value: &str, p: &mut Vec<String>) {
    if reqwest::header::HeaderValue::from_str(value).is_err() {
        p.push(format!(
            "{key}: not a valid HTTP header value (a line break or control character?)"
        ));
    }
}

impl SinkConfig {
    fn problems(&self, key: &str, p: &mut Vec<String>) {
        match self.kind {
            SinkType::Stdout => {
                if self.url.is_some() {
                    p.push(format!("{key}.url: a stdout sink has no url"));
                }
                // Set, they would be ignored: a stdout sink sends no HTTP request.
                let tls = &self.tls;
                let with_tls = tls.ca_file.is_some()
                    || tls.cert_file.is_some()
                    || tls.key_file.is_some()
                    || tls.insecure_skip_verify;
                for (set, what) in [
                    (with_tls, "tls"),
                    (self.auth.is_some(), "auth"),
                    (!self.headers.is_empty(), "headers"),
                ] {
                    if set {
                        p.push(format!(
                            "{key}.{what}: a stdout sink sends no HTTP requests"
                        ));
                    }
                }
            }
            _ => match self.url.as_deref().map(reqwest::Url::parse) {
                None => p.push(format!(
                    "{key}.url: required for a {} sink",
                    self.kind.as_str()
                )),
                Some(Err(e)) => p.push(format!("{key}.url: {e}")),
                Some(Ok(u)) if !matches!(u.scheme(), "http" | "https") => p.push(format!(
                    "{key}.url: scheme must be http or https, not {}",
                    u.scheme()
                )),
                Some(Ok(_)) => {}
            },
        }
        if self.batch.max_records == 0 {
            p.push(format!("{key}.batch.max_records: must be at least 1"));
        }
        if self.request.concurrency == 0 || self.request.concurrency > 64 {
            p.push(format!(
                "{key}.request.concurrency: must be between 1 and 64"
            ));
        }
        if self.request.timeout.0.is_zero() {
            p.push(format!("{key}.request.timeout: must be greater than 0"));
        }
        if self.request.retry_initial_backoff > self.request.retry_max_backoff {
            p.push(format!(
                "{key}.request.retry_initial_backoff: must not exceed retry_max_backoff"
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            p.push(format!("{key}.tls: cert_file and key_file go together"));
        }
        match &self.auth {
            Some(AuthConfig::Basic {
                password,
                password_file,
                ..
            }) if password.is_some() == password_file.is_some() => p.push(format!(
                "{key}.auth.basic: exactly one of password and password_file is needed"
            )),
            Some(AuthConfig::Bearer { token, token_file })
                if token.is_some() == token_file.is_some() =>
            {
                p.push(format!(
                    "{key}.auth.bearer: exactly one of token and token_file is needed"
                ))
            }
            _ => {}
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(format!(
                    "{key}.headers: `{name}` is not a valid header name"
                ));
            }
            secret_header_problem(&format!("{key}.headers.{name}"), value, p);
        }
        if let Some(AuthConfig::Bearer { token: Some(t), .. }) = &self.auth {
            secret_header_problem(&format!("{key}.auth.bearer.token"), t, p);
        }
        if let Some(Secret(k)) = self.elasticsearch.as_ref().and_then(|o| o.api_key.as_ref()) {
            secret_header_problem(&format!("{key}.elasticsearch.api_key"), k, p);
        }
        if let Some(Secret(t)) = self.splunk_hec.as_ref().and_then(|o| o.token.as_ref()) {
            secret_header_problem(&format!("{key}.splunk_hec.token"), t, p);
        }
        backend_problems(self, key, p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_str(text, Path::new("test.yaml"))
    }

    #[test]
    fn empty_config_is_the_embedded_default() {
        let c = parse("").unwrap();
        assert_eq!(c.sinks.len(), 1);
        assert_eq!(c.sinks["stdout"].kind, SinkType::Stdout);
        assert_eq!(c.logs.pods_dir, PathBuf::from("/var/log/pods"));
    }

    #[test]
    fn durations_and_sizes_take_units() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("5 weeks").is_err());
        for bad in [".s", "1..2s", "1.2.3s"] {
            assert!(Dur::parse(bad).is_err(), "{bad}");
        }
        // Exact decimals: what is printed reads back the same (found by fuzzing).
        let d = Dur::parse("99999998.8s").unwrap();
        assert_eq!(d.0, Duration::from_millis(99_999_998_800));
        assert_eq!(Dur::parse(&d.to_string()).unwrap(), d);
        assert_eq!(ByteSize::parse("10Mi").unwrap().0, 10 << 20);
        assert_eq!(ByteSize::parse("512KiB").unwrap().0, 512 << 10);
        assert_eq!(ByteSize::parse("1MB").unwrap().0, 1_000_000);
        assert!(ByteSize::parse("1TB").is_err());
        assert!(ByteSize::parse("99999999999999GiB").is_err());
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let e = parse("logs:\n  max_line_byte: 1KiB\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_line_byte"), "{e}");
        assert!(e.starts_with("test.yaml:"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let e = parse(
            "logs:\n  include: ['[']\n  poll_interval: 0ms\nsinks:\n  out:\n    type: http\n    url: 'not a url'\n    request: {concurrency: 0}\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "logs.include[0]",
            "logs.poll_interval: must be greater than 0",
            "sinks.out.url",
            "sinks.out.request.concurrency",
        ] {
            assert!(e.contains(want), "missing {want} in {e}");
        }
    }

    #[test]
    fn http_options_on_a_stdout_sink_are_refused_not_ignored() {
        let e = parse(
            "sinks:\n  out:\n    type: stdout\n    tls: {insecure_skip_verify: true}\n    auth: {bearer: {token: t}}\n    headers: {X-A: b}\n",
        )
        .unwrap_err()
        .to_string();
        for want in ["sinks.out.tls", "sinks.out.auth", "sinks.out.headers"] {
            assert!(
                e.contains(&format!("{want}: a stdout sink sends no HTTP requests")),
                "missing {want} in {e}"
            );
        }
        assert!(parse("sinks:\n  out:\n    type: stdout\n    batch: {timeout: 1s}\n").is_ok());
    }

    #[test]
    fn bad_values_name_what_was_expected() {
        let e = parse("logs:\n  rescan_interval: soon\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon"), "{e}");
        let e = parse("logs:\n  watch: fanotify\n").unwrap_err().to_string();
        assert!(e.contains("fanotify"), "{e}");
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let c = parse(
            "sinks:\n  out:\n    type: http\n    url: http://x/\n    auth: {bearer: {token: s3cret}}\n",
        )
        .unwrap();
        let printed = serde_saphyr::to_string(&c).unwrap();
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}

// ---- sinks ----

/// A secret from the config file (a token, an API key): printed as `<redacted>` by `Debug` and by
/// `check-config`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// `loki` sink: Grafana Loki's push API (`/loki/api/v1/push`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LokiOptions {
    /// Stream labels, each a field (`namespace`, `label:team` …) or `<name>=<field>`. Only
    /// per-Pod fields with few values: a stream per Pod is what Loki's docs warn against.
    pub labels: Vec<String>,
    /// At most this many distinct label sets (streams) per sink and node; beyond, a new Pod's
    /// streams keep only the first label and the others go to structured metadata.
    pub max_label_sets: usize,
    /// `X-Scope-OrgID`, for a multi-tenant Loki.
    pub tenant: Option<String>,
    pub encoding: LokiEncoding,
    /// Send the fields that are not labels (pod, pod_uid, container_id, stream …) as structured
    /// metadata. Needs Loki 3 (or 2.9 with schema v13 and `allow_structured_metadata`).
    pub structured_metadata: bool,
}

/// Low-cardinality fields that identify an application: Loki's own recommendation.
pub const DEFAULT_LOKI_LABELS: &[&str] = &["namespace", "container", "app", "node"];
/// A node runs at most a few hundred containers; 1000 sets leave room for label changes while
/// stopping a runaway label (a build ID, a Pod name) long before Loki's 10000 streams per tenant.
pub const DEFAULT_LOKI_MAX_LABEL_SETS: usize = 1000;

impl Default for LokiOptions {
    fn default() -> Self {
        LokiOptions {
            labels: DEFAULT_LOKI_LABELS.iter().map(|s| s.to_string()).collect(),
            max_label_sets: DEFAULT_LOKI_MAX_LABEL_SETS,
            tenant: None,
            encoding: LokiEncoding::Protobuf,
            structured_metadata: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LokiEncoding {
    /// `logproto.PushRequest`, snappy-compressed: Loki's native and cheapest form.
    Protobuf,
    Json,
}

/// `elasticsearch` sink: the `_bulk` API of Elasticsearch or OpenSearch.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchOptions {
    /// The index (or data stream) of each record: `{field}`, `{field|fallback}`, `%Y`, `%m`,
    /// `%d`, `%H` (the record's UTC date). Rendered lower case.
    pub index: String,
    pub action: EsAction,
    /// An ingest pipeline for every document.
    pub pipeline: Option<String>,
    /// `Authorization: ApiKey <api_key>` (the `encoded` value Elasticsearch returns).
    pub api_key: Option<Secret>,
    /// A file holding the API key (a mounted Secret); read at start.
    pub api_key_file: Option<PathBuf>,
    /// Leave `_type` out of the actions (Elasticsearch 7+, OpenSearch); `false` sends
    /// `"_type":"_doc"` for Elasticsearch 6.
    pub suppress_type_name: bool,
    /// Ask for errors and statuses only (`filter_path=errors,items.*.error,items.*.status`).
    pub filter_path: bool,
    /// Replace `.` by `_` in label and annotation keys: `app` and `app.kubernetes.io/name` would
    /// otherwise map to conflicting object and text fields.
    pub replace_dots: bool,
}

/// A daily index per namespace: the common layout, easy to expire with ILM or ISM.
pub const DEFAULT_ES_INDEX: &str = "logs-{namespace}-%Y.%m.%d";

impl Default for ElasticsearchOptions {
    fn default() -> Self {
        ElasticsearchOptions {
            index: DEFAULT_ES_INDEX.to_string(),
            action: EsAction::Create,
            pipeline: None,
            api_key: None,
            api_key_file: None,
            suppress_type_name: true,
            filter_path: true,
            replace_dots: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EsAction {
    /// Works for indices and data streams (which accept nothing else).
    Create,
    Index,
}

/// `otlp` sink: OTLP/HTTP logs (`/v1/logs`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpOptions {
    pub encoding: OtlpEncoding,
    /// Take `service.name` from the well-known labels `app.kubernetes.io/instance` and
    /// `app.kubernetes.io/name` before the workload name (opt-in, as the semantic conventions ask).
    pub service_name_from_labels: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpEncoding {
    #[default]
    Protobuf,
    Json,
}

/// `splunk_hec` sink: Splunk's HTTP Event Collector (`/services/collector/event`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplunkHecOptions {
    /// The HEC token (`Authorization: Splunk <token>`).
    pub token: Option<Secret>,
    /// A file holding the token (a mounted Secret); read at start.
    pub token_file: Option<PathBuf>,
    /// The index, a template like the Elasticsearch index without dates; none: the token's default.
    pub index: Option<String>,
    pub source: String,
    pub sourcetype: String,
    pub host: String,
    /// Indexed fields, as Loki labels are given: `<field>` or `<name>=<field>`.
    pub fields: Vec<String>,
    /// The endpoint path appended to `url` (`/api/v1/ingest/hec` for Falcon LogScale).
    pub path: String,
}

/// What Splunk's own Kubernetes collectors send, so existing searches and apps keep working.
pub const DEFAULT_HEC_SOURCETYPE: &str = "kube:container:{container}";
pub const DEFAULT_HEC_SOURCE: &str = "{file}";
pub const DEFAULT_HEC_HOST: &str = "{node}";
pub const DEFAULT_HEC_FIELDS: &[&str] = &[
    "namespace",
    "pod",
    "pod_uid",
    "container",
    "container_id",
    "node",
    "stream",
];
pub const DEFAULT_HEC_PATH: &str = "/services/collector/event";

impl Default for SplunkHecOptions {
    fn default() -> Self {
        SplunkHecOptions {
            token: None,
            token_file: None,
            index: None,
            source: DEFAULT_HEC_SOURCE.to_string(),
            sourcetype: DEFAULT_HEC_SOURCETYPE.to_string(),
            host: DEFAULT_HEC_HOST.to_string(),
            fields: DEFAULT_HEC_FIELDS.iter().map(|s| s.to_string()).collect(),
            path: DEFAULT_HEC_PATH.to_string(),
        }
    }
}

/// The problems of the backend-specific options of one sink.
fn backend_problems(sink: &SinkConfig, key: &str, p: &mut Vec<String>) {
    use crate::sink::encode::{Field, NamedField, Template};
    let kind = sink.kind;
    for (block, given, owner) in [
        ("loki", sink.loki.is_some(), SinkType::Loki),
        (
            "elasticsearch",
            sink.elasticsearch.is_some(),
            SinkType::Elasticsearch,
        ),
        ("otlp", sink.otlp.is_some(), SinkType::Otlp),
        ("splunk_hec", sink.splunk_hec.is_some(), SinkType::SplunkHec),
    ] {
        if given && kind != owner {
            p.push(format!(
                "{key}.{block}: options for a {block} sink, but this sink's type is {}",
                kind.as_str()
            ));
        }
    }
    let compression_ok: &[Compression] = match kind {
        // Loki always snappy-decodes protobuf: `none` is taken to mean its default, snappy.
        SinkType::Loki
            if sink
                .loki
                .as_ref()
                .is_none_or(|l| l.encoding == LokiEncoding::Protobuf) =>
        {
            &[Compression::None, Compression::Snappy]
        }
        SinkType::Loki | SinkType::Elasticsearch | SinkType::SplunkHec => {
            &[Compression::None, Compression::Gzip]
        }
        SinkType::Otlp | SinkType::Http => {
            &[Compression::None, Compression::Gzip, Compression::Zstd]
        }
        SinkType::Stdout => &[Compression::None],
    };
    if let Some(c) = sink.compression
        && !compression_ok.contains(&c)
    {
        let names: Vec<&str> = compression_ok
            .iter()
            .map(|c| match c {
                Compression::None => "none",
                Compression::Gzip => "gzip",
                Compression::Zstd => "zstd",
                Compression::Snappy => "snappy",
            })
            .collect();
        p.push(format!(
            "{key}.compression: {} sinks support {}",
            kind.as_str(),
            names.join(", ")
        ));
    }
    let named_fields = |list: &[String], what: &str, p: &mut Vec<String>| -> Vec<NamedField> {
        let mut out: Vec<NamedField> = Vec::new();
        for (i, spec) in list.iter().enumerate() {
            match NamedField::parse(spec) {
                Ok(nf) if out.iter().any(|o| o.name == nf.name) => {
                    p.push(format!("{key}.{what}[{i}]: `{}` is given twice", nf.name))
                }
                Ok(nf) => out.push(nf),
                Err(e) => p.push(format!("{key}.{what}[{i}]: {e}")),
            }
        }
        out
    };
    let template = |t: &str, what: &str, dates: bool, p: &mut Vec<String>| match Template::parse(t)
    {
        Ok(tpl) if !dates && tpl.has_date() => {
            p.push(format!("{key}.{what}: dates (%Y …) are not supported here"))
        }
        Ok(_) => {}
        Err(e) => p.push(format!("{key}.{what}: {e}")),
    };
    match kind {
        SinkType::Loki => {
            let o = sink.loki.clone().unwrap_or_default();
            let labels = named_fields(&o.labels, "loki.labels", p);
            if o.labels.is_empty() {
                p.push(format!("{key}.loki.labels: at least one label is needed"));
            }
            for (i, nf) in labels.iter().enumerate() {
                let explicit = o.labels[i].contains('=');
                if explicit && !crate::sink::loki::valid_label_name(&nf.name) {
                    p.push(format!(
                        "{key}.loki.labels[{i}]: `{}` is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)",
                        nf.name
                    ));
                }
                if nf.field == Field::File {
                    p.push(format!(
                        "{key}.loki.labels[{i}]: `file` makes a stream per file; keep it out of labels"
                    ));
                }
            }
            if o.max_label_sets == 0 {
                p.push(format!("{key}.loki.max_label_sets: must be at least 1"));
            }
            if let Some(t) = &o.tenant {
                if t.is_empty() || reqwest::header::HeaderValue::from_str(t).is_err() {
                    p.push(format!(
                        "{key}.loki.tenant: `{t}` is not a valid header value"
                    ));
                }
            }
        }
        SinkType::Elasticsearch => {
            let o = sink.elasticsearch.clone().unwrap_or_default();
            template(&o.index, "elasticsearch.index", true, p);
            if o.index.is_empty() {
                p.push(format!("{key}.elasticsearch.index: must not be empty"));
            }
            if o.api_key.is_some() && o.api_key_file.is_some() {
                p.push(format!(
                    "{key}.elasticsearch: api_key and api_key_file exclude each other"
                ));
            }
            if (o.api_key.is_some() || o.api_key_file.is_some()) && sink.auth.is_some() {
                p.push(format!(
                    "{key}.elasticsearch.api_key: the sink also has `auth`; use one"
                ));
            }
            if o.pipeline.as_deref() == Some("") {
                p.push(format!("{key}.elasticsearch.pipeline: must not be empty"));
            }
        }
        SinkType::Otlp => {}
        SinkType::SplunkHec => {
            let o = sink.splunk_hec.clone().unwrap_or_default();
            if o.token.is_some() == o.token_file.is_some() {
                p.push(format!(
                    "{key}.splunk_hec: exactly one of token and token_file is needed"
                ));
            }
            if sink.auth.is_some() {
                p.push(format!(
                    "{key}.auth: a splunk_hec sink authenticates with splunk_hec.token"
                ));
            }
            if let Some(index) = &o.index {
                template(index, "splunk_hec.index", false, p);
            }
            template(&o.source, "splunk_hec.source", false, p);
            template(&o.sourcetype, "splunk_hec.sourcetype", false, p);
            template(&o.host, "splunk_hec.host", false, p);
            named_fields(&o.fields, "splunk_hec.fields", p);
            if !o.path.starts_with('/') {
                p.push(format!("{key}.splunk_hec.path: must start with /"));
            }
        }
        SinkType::Stdout | SinkType::Http => {}
    }
}

#[cfg(test)]
mod sink_option_tests {
    use super::*;

    fn problems(sink_body: &str) -> String {
        let text = format!("sinks:\n  out:\n{sink_body}");
        match Config::parse_str(&text, Path::new("test.yaml")) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn backend_blocks_parse_with_their_defaults() {
        let text = "sinks:\n  l:\n    type: loki\n    url: http://loki:3100\n  e:\n    type: elasticsearch\n    url: http://es:9200\n  o:\n    type: otlp\n    url: http://otel:4318\n  s:\n    type: splunk_hec\n    url: https://splunk:8088\n    splunk_hec: {token: t}\n";
        let c = Config::parse_str(text, Path::new("t.yaml")).unwrap();
        assert_eq!(c.sinks["l"].kind, SinkType::Loki);
        assert_eq!(c.sinks["e"].kind, SinkType::Elasticsearch);
        assert_eq!(c.sinks["o"].kind, SinkType::Otlp);
        assert_eq!(c.sinks["s"].kind, SinkType::SplunkHec);
        assert_eq!(LokiOptions::default().labels, DEFAULT_LOKI_LABELS);
        assert_eq!(ElasticsearchOptions::default().index, DEFAULT_ES_INDEX);
        assert_eq!(
            c.sinks["s"].splunk_hec.as_ref().unwrap().sourcetype,
            DEFAULT_HEC_SOURCETYPE
        );
    }

    #[test]
    fn backend_option_problems_name_their_key() {
        let cases = [
            (
                "    type: http\n    url: http://x/\n    loki: {}\n",
                "sinks.out.loki: options for a loki sink, but this sink's type is http",
            ),
            (
                "    type: splunk_hec\n    url: http://x/\n",
                "sinks.out.splunk_hec: exactly one of token and token_file is needed",
            ),
            (
                "    type: loki\n    url: http://x/\n    loki: {labels: ['1bad=namespace']}\n",
                "sinks.out.loki.labels[0]: `1bad` is not a label name",
            ),
            (
                "    type: loki\n    url: http://x/\n    loki: {labels: [namespace, 'namespace=pod']}\n",
                "sinks.out.loki.labels[1]: `namespace` is given twice",
            ),
            (
                "    type: loki\n    url: http://x/\n    loki: {labels: [podname]}\n",
                "sinks.out.loki.labels[0]: `podname` is not a field",
            ),
            (
                "    type: loki\n    url: http://x/\n    loki: {labels: []}\n",
                "sinks.out.loki.labels: at least one label is needed",
            ),
            (
                "    type: loki\n    url: http://x/\n    compression: gzip\n",
                "sinks.out.compression: loki sinks support none, snappy",
            ),
            (
                "    type: elasticsearch\n    url: http://x/\n    elasticsearch: {index: 'logs-%Q'}\n",
                "sinks.out.elasticsearch.index: `%Q` is not supported",
            ),
            (
                "    type: elasticsearch\n    url: http://x/\n    compression: zstd\n",
                "sinks.out.compression: elasticsearch sinks support none, gzip",
            ),
            (
                "    type: splunk_hec\n    url: http://x/\n    splunk_hec: {token: t, index: 'k-%Y'}\n",
                "sinks.out.splunk_hec.index: dates (%Y …) are not supported here",
            ),
            (
                "    type: splunk_hec\n    url: http://x/\n    auth: {bearer: {token: x}}\n    splunk_hec: {token: t}\n",
                "sinks.out.auth: a splunk_hec sink authenticates with splunk_hec.token",
            ),
            (
                "    type: loki\n    url: http://x/\n    loki: {max_label_sets: 0}\n",
                "sinks.out.loki.max_label_sets: must be at least 1",
            ),
        ];
        for (body, want) in cases {
            let got = problems(body);
            assert!(got.contains(want), "want `{want}` in:\n{got}");
        }
        assert_eq!(
            problems(
                "    type: loki\n    url: http://x/\n    loki: {encoding: json}\n    compression: gzip\n"
            ),
            ""
        );
    }

    #[test]
    fn secrets_that_cannot_be_headers_are_problems_without_their_value() {
        let p = problems(
            "    type: elasticsearch\n    url: http://es/\n    elasticsearch: {api_key: \"abc\\ndef\"}\n",
        );
        assert!(
            p.contains("sinks.out.elasticsearch.api_key: not a valid HTTP header value"),
            "{p}"
        );
        assert!(!p.contains("abc"), "{p}");
        let p = problems(
            "    type: splunk_hec\n    url: http://h/\n    splunk_hec: {token: \"t\\u0007\"}\n",
        );
        assert!(p.contains("sinks.out.splunk_hec.token: not a valid"), "{p}");
    }

    #[test]
    fn backend_secrets_are_redacted_when_printed() {
        let c = Config::parse_str(
            "sinks:\n  s:\n    type: splunk_hec\n    url: http://x/\n    splunk_hec: {token: hec-s3cret}\n  e:\n    type: elasticsearch\n    url: http://x/\n    elasticsearch: {api_key: es-s3cret}\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        let printed = serde_saphyr::to_string(&c).unwrap();
        let debug = format!("{c:?}");
        for secret in ["hec-s3cret", "es-s3cret"] {
            assert!(!printed.contains(secret), "{printed}");
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}

// ---- kube ----

/// Pod and Namespace metadata from the Kubernetes API (see docs/kubernetes.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// `auto`: use the API when a service account or a kubeconfig is found, else run on with
    /// file-name metadata; `true`: the same, but `/readyz` fails while there is no API; `false`:
    /// never ask the API.
    pub enabled: KubernetesEnabled,
    /// A kubeconfig file (default: `KUBECONFIG`, then the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// Watch Namespaces too, for their labels and `loglet.io/` annotations (one cluster-wide watch
    /// per node; turn off where Namespace metadata is not wanted).
    pub watch_namespaces: bool,
    /// Pod annotation keys copied into every record (a trailing `*` matches a prefix).
    pub annotations: Vec<String>,
    /// How long the lines of a file whose Pod is not in the cache yet wait for the watcher before
    /// they go out with what the file name tells.
    pub metadata_wait: Dur,
    /// `/readyz` waits at most this long for the first list of Pods (and Namespaces).
    pub ready_timeout: Dur,
    /// A deleted Pod's metadata stays available this long, for files found after the deletion.
    pub deleted_pod_grace: Dur,
    /// At most this many deleted Pods are kept (least recently deleted go first).
    pub max_deleted_pods: usize,
}

/// The kubelet writes the file and the API learns of the Pod within the same second or two; a
/// line waits no longer than that so a missing API costs little latency.
pub const DEFAULT_METADATA_WAIT: Duration = Duration::from_secs(2);
/// A Pod list from the API server's watch cache takes well under a second; 30 s covers a slow
/// control plane without holding a DaemonSet rollout for long.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The kubelet removes a deleted Pod's logs within about a minute; five minutes also covers a
/// rescan cycle and a loglet restart catching up, at ~1 KiB per retained Pod.
pub const DEFAULT_DELETED_POD_GRACE: Duration = Duration::from_secs(300);
/// Ten times the kubelet's default 110 Pods per node: a busy Job node's five minutes of deletions,
/// at most ~1 MiB.
pub const DEFAULT_MAX_DELETED_PODS: usize = 1024;

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: KubernetesEnabled::Auto,
            kubeconfig: None,
            watch_namespaces: true,
            annotations: Vec::new(),
            metadata_wait: Dur(DEFAULT_METADATA_WAIT),
            ready_timeout: Dur(DEFAULT_READY_TIMEOUT),
            deleted_pod_grace: Dur(DEFAULT_DELETED_POD_GRACE),
            max_deleted_pods: DEFAULT_MAX_DELETED_PODS,
        }
    }
}

impl KubernetesConfig {
    fn problems(&self, key: &str, p: &mut Vec<String>) {
        if self.metadata_wait.0 > Duration::from_secs(60) {
            p.push(format!(
                "{key}.metadata_wait: at most 1m (lines of an unknown Pod wait this long)"
            ));
        }
        if self.ready_timeout.0.is_zero() {
            p.push(format!("{key}.ready_timeout: must be greater than 0"));
        }
        if self.max_deleted_pods == 0 {
            p.push(format!("{key}.max_deleted_pods: must be at least 1"));
        }
        for (i, a) in self.annotations.iter().enumerate() {
            let name = a.strip_suffix('*').unwrap_or(a);
            if a.is_empty()
                || a.len() > 317
                || name.contains(|c: char| c.is_whitespace() || c == '*')
            {
                p.push(format!(
                    "{key}.annotations[{i}]: `{a}` is not an annotation key (or a prefix ending in *)"
                ));
            }
        }
        if self
            .kubeconfig
            .as_ref()
            .is_some_and(|k| k.as_os_str().is_empty())
        {
            p.push(format!("{key}.kubeconfig: must not be empty"));
        }
    }
}

/// `kubernetes.enabled`: `auto`, `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KubernetesEnabled {
    #[default]
    Auto,
    /// Required: without an API, loglet still runs but is not ready.
    True,
    False,
}

impl<'de> Deserialize<'de> for KubernetesEnabled {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(KubernetesEnabled::True),
            Raw::Bool(false) => Ok(KubernetesEnabled::False),
            Raw::Str(s) if s == "auto" => Ok(KubernetesEnabled::Auto),
            Raw::Str(s) => Err(serde::de::Error::custom(format!(
                "`{s}` is not one of auto, true, false"
            ))),
        }
    }
}

impl Serialize for KubernetesEnabled {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KubernetesEnabled::Auto => s.serialize_str("auto"),
            KubernetesEnabled::True => s.serialize_bool(true),
            KubernetesEnabled::False => s.serialize_bool(false),
        }
    }
}

#[cfg(test)]
mod kubernetes_tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_str(text, Path::new("test.yaml"))
    }

    #[test]
    fn kubernetes_defaults_apply_when_the_section_is_absent() {
        let k = parse("").unwrap().kubernetes;
        assert_eq!(k.enabled, KubernetesEnabled::Auto);
        assert!(k.watch_namespaces);
        assert!(k.annotations.is_empty());
        assert_eq!(k.metadata_wait.0, DEFAULT_METADATA_WAIT);
        assert_eq!(k.deleted_pod_grace.0, DEFAULT_DELETED_POD_GRACE);
    }

    #[test]
    fn kubernetes_enabled_takes_auto_true_and_false() {
        for (text, want) in [
            ("auto", KubernetesEnabled::Auto),
            ("true", KubernetesEnabled::True),
            ("false", KubernetesEnabled::False),
        ] {
            let c = parse(&format!("kubernetes:\n  enabled: {text}\n")).unwrap();
            assert_eq!(c.kubernetes.enabled, want, "{text}");
            let printed = serde_saphyr::to_string(&c.kubernetes).unwrap();
            assert!(printed.contains(&format!("enabled: {text}")), "{printed}");
        }
        let e = parse("kubernetes:\n  enabled: maybe\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("maybe"), "{e}");
    }

    #[test]
    fn kubernetes_problems_name_their_keys() {
        let e = parse(
            "kubernetes:\n  max_deleted_pods: 0\n  ready_timeout: 0s\n  metadata_wait: 5m\n  annotations: ['a b', 'x/*', '']\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "kubernetes.max_deleted_pods",
            "kubernetes.ready_timeout",
            "kubernetes.metadata_wait",
            "kubernetes.annotations[0]",
            "kubernetes.annotations[2]",
        ] {
            assert!(e.contains(want), "missing {want} in {e}");
        }
        assert!(!e.contains("annotations[1]"), "{e}");
    }
}
