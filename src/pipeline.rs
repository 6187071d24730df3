//! pipeline: wires the stages together and shuts them down in order: stop reading, let the sinks
//! deliver what is in flight (bounded by `pipeline.shutdown_grace`), write the checkpoints.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, ConfigError};
use crate::kube;
use crate::metrics::{self, Metrics};
use crate::route::Routes;
use crate::sink;
use crate::tail::checkpoint::Checkpoints;
use crate::tail::{Outputs, TailSettings, Tailer};

/// Where the running config came from, so it can be read again when it changes.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// `--root` from the command line, which wins over the file's `root`.
    pub root: Option<PathBuf>,
}

impl ConfigSource {
    fn load(&self, text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::parse_str(text, &self.path)?;
        if let Some(root) = &self.root {
            c.root = root.clone();
        }
        Ok(c)
    }
}

/// How often the config file is looked at for changes (a ConfigMap update reaches the Pod
/// within the kubelet's sync period, about a minute, so a few seconds add little). SIGHUP looks
/// at once.
pub const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(3);

/// Runs loglet until SIGTERM or SIGINT. With a `source`, a valid change of the config file
/// replaces routes and sinks (see [`run_async`]).
pub fn run(config: Config, source: Option<ConfigSource>) -> anyhow::Result<()> {
    // One TLS crypto provider for the process (reqwest and kube both use rustls); a second
    // install attempt (tests running several pipelines) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loglet-rt")
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let handle = runtime.handle().clone();
    runtime.block_on(run_async(config, source, handle))
}

/// What ended a run of the pipeline.
enum End {
    Stop,
    Reload(Box<Config>, String),
}

/// Runs generations of the pipeline: each one until a signal stops loglet or the config file
/// changes to a valid config. A change is applied by stopping the generation as SIGTERM would
/// (reading stops, the sinks deliver what they hold, checkpoints are written) and starting the
/// next from those checkpoints, so no line is lost or sent twice. The Kubernetes watcher, the
/// metrics server and the process's settings (`root`, `state_dir`, `kubernetes`, `metrics`,
/// `log`, `node_name`) stay as they started: a change there is reported and waits for a restart.
async fn run_async(
    config: Config,
    source: Option<ConfigSource>,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    if config.metrics.enabled {
        let (listener, addr) = metrics::bind(&config.metrics.listen).await?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }
    let node_name = config
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok());
    let store = kube::start(&config.kubernetes, node_name.clone(), metrics.clone()).await;
    let mut signals = Signals::new()?;
    let mut config = config;
    let mut text = match &source {
        Some(s) => std::fs::read_to_string(&s.path).unwrap_or_default(),
        None => String::new(),
    };
    // The config that ran before the last reload, to go back to if the new one cannot start.
    let mut previous: Option<Config> = None;
    loop {
        let run = run_generation(
            &config,
            source.as_ref().map(|s| (s, text.as_str())),
            &store,
            node_name.as_deref(),
            &metrics,
            &mut signals,
            runtime.clone(),
        )
        .await;
        let end = match (run, previous.take()) {
            (Ok(end), _) => end,
            (Err(e), Some(prev)) => {
                // The new config parsed but could not start (a CA file missing, say): the old
                // one runs again, and the file's content is not tried again until it changes.
                metrics.config_reloads.with_label_values(&["invalid"]).inc();
                tracing::error!(error = %format!("{e:#}"), "the new config could not start; going back to the previous one");
                config = prev;
                continue;
            }
            (Err(e), None) => return Err(e),
        };
        match end {
            End::Stop => return Ok(()),
            End::Reload(next, next_text) => {
                let fixed = fixed_settings_changed(&config, &next);
                if !fixed.is_empty() {
                    tracing::warn!(
                        keys = %fixed.join(", "),
                        "these settings change only when loglet restarts; the rest of the new config applies now"
                    );
                }
                let mut next = *next;
                keep_fixed_settings(&config, &mut next);
                metrics.config_reloads.with_label_values(&["applied"]).inc();
                tracing::info!("new config applied");
                previous = Some(std::mem::replace(&mut config, next));
                text = next_text;
            }
        }
    }
}

/// The top-level settings a reload does not change, by key, when the new config changes them.
fn fixed_settings_changed(old: &Config, new: &Config) -> Vec<&'static str> {
    let same = |a: &dyn erased::Ser, b: &dyn erased::Ser| a.yaml() == b.yaml();
    let mut keys = Vec::new();
    if old.root != new.root {
        keys.push("root");
    }
    if old.state_dir != new.state_dir {
        keys.push("state_dir");
    }
    if old.node_name != new.node_name {
        keys.push("node_name");
    }
    if !same(&old.kubernetes, &new.kubernetes) {
        keys.push("kubernetes");
    }
    if !same(&old.metrics, &new.metrics) {
        keys.push("metrics");
    }
    if !same(&old.log, &new.log) {
        keys.push("log");
    }
    keys
}

fn keep_fixed_settings(old: &Config, new: &mut Config) {
    new.root = old.root.clone();
    new.state_dir = old.state_dir.clone();
    new.node_name = old.node_name.clone();
    new.kubernetes = old.kubernetes.clone();
    new.metrics = old.metrics.clone();
    new.log = old.log.clone();
}

/// Comparing config sections by their serialized form (they hold durations, sizes and secrets
/// that do not derive `PartialEq`).
mod erased {
    pub trait Ser {
        fn yaml(&self) -> String;
    }

    impl<T: serde::Serialize> Ser for T {
        fn yaml(&self) -> String {
            serde_saphyr::to_string(self).unwrap_or_default()
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP, installed once for every generation.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())
                .context("failed to install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("failed to install the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("failed to install the SIGHUP handler")?,
        })
    }

    /// The next stopping signal.
    async fn stop(
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> &'static str {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

/// Waits until the config file holds a valid config different from `current`. An invalid one
/// is reported once per content, and the running config stays.
async fn config_change(
    source: &ConfigSource,
    current: &str,
    hup: &mut tokio::signal::unix::Signal,
    metrics: &Metrics,
) -> (Config, String) {
    let mut rejected: Option<String> = None;
    let mut tick = tokio::time::interval(CONFIG_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = hup.recv() => tracing::info!("SIGHUP: reading the config file again"),
        }
        // Read through the path each time: a ConfigMap update swaps a symlink under it.
        let path = source.path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(path)).await;
        let text = match read.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
            Ok(t) => t,
            Err(e) => {
                if rejected.as_deref() != Some("") {
                    tracing::warn!(path = %source.path.display(), error = %e, "cannot read the config file; the running config stays");
                    rejected = Some(String::new());
                }
                continue;
            }
        };
        if text == current || rejected.as_deref() == Some(text.as_str()) {
            continue;
        }
        match source.load(&text) {
            Ok(c) => return (c, text),
            Err(e) => {
                metrics.config_reloads.with_label_values(&["invalid"]).inc();
                tracing::error!(error = %e, "the changed config file is invalid; the running config stays");
                rejected = Some(text);
            }
        }
    }
}

/// One generation of the pipeline, from the checkpoints on disk until a stop or a reload.
async fn run_generation(
    config: &Config,
    source: Option<(&ConfigSource, &str)>,
    store: &kube::PodStore,
    node_name: Option<&str>,
    metrics: &Arc<Metrics>,
    signals: &mut Signals,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<End> {
    let self_pod_uid = std::env::var("POD_UID").ok();
    let store = store.clone();
    // Lines wait for their Pod's metadata only when a watcher can bring it.
    let metadata_wait = if store.is_enabled() {
        config.kubernetes.metadata_wait.0
    } else {
        Duration::ZERO
    };

    let state_dir = config.host_path(&config.state_dir);
    let (checkpoints, restored) = Checkpoints::open(&state_dir, metrics.clone())
        .with_context(|| format!("failed to open the state directory {}", state_dir.display()))?;
    tracing::info!(files = restored.len(), dir = %state_dir.display(), "checkpoints loaded");

    let mut sinks = Vec::new();
    for (name, cfg) in &config.sinks {
        let s = sink::start(
            name,
            sinks.len(),
            cfg,
            node_name,
            config.pipeline.queue_batches,
            metrics.clone(),
        )
        .with_context(|| format!("failed to start sink {name}"))?;
        sinks.push(s);
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let outputs = Outputs {
        sinks: sinks.iter().map(|s| s.queue.clone()).collect(),
        stop: stop_rx,
        runtime,
    };
    let routes = Arc::new(Routes::new(
        config,
        node_name.map(str::to_string),
        metrics.clone(),
    ));
    let tailer = Tailer::new(
        TailSettings::from_config(config, self_pod_uid, metadata_wait, routes),
        restored,
        checkpoints.clone(),
        store,
        metrics.clone(),
    );
    let tail_thread = std::thread::Builder::new()
        .name("loglet-tail".into())
        .spawn(move || tailer.run(outputs))
        .context("failed to start the tail thread")?;
    // The tailer holds the only queue senders now: when it returns, the sinks drain and stop.
    let sink_tasks: Vec<_> = sinks.into_iter().map(|s| (s.name, s.task)).collect();

    let persister = {
        let checkpoints = checkpoints.clone();
        let every = config.pipeline.checkpoint_interval.0;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let c = checkpoints.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || c.persist()).await {
                    tracing::warn!(error = %format!("{e:#}"), "checkpoint write failed; retrying at the next interval");
                }
            }
        })
    };

    let tail_done = {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = tail_thread.join();
            let _ = tx.send(result.is_ok());
        });
        rx
    };
    tokio::pin!(tail_done);
    let mut tail_finished = false;
    let Signals { term, int, hup } = signals;
    let change = async {
        match source {
            Some((s, text)) => Some(config_change(s, text, hup, metrics).await),
            None => std::future::pending().await,
        }
    };
    let mut end = End::Stop;
    tokio::select! {
        sig = Signals::stop(term, int) => tracing::info!("{sig}: stopping"),
        ok = &mut tail_done => {
            tail_finished = true;
            if !matches!(ok, Ok(true)) {
                tracing::error!("the tail thread stopped unexpectedly");
            }
        }
        Some((next, text)) = change => {
            tracing::info!("the config file changed: delivering what is in flight, then switching");
            end = End::Reload(Box::new(next), text);
        }
    }
    let _ = stop_tx.send(true);
    let grace = config.pipeline.shutdown_grace.0;
    let drained = tokio::time::timeout(grace, async {
        if !tail_finished {
            let _ = (&mut tail_done).await;
        }
        for (name, task) in sink_tasks {
            if let Err(e) = task.await {
                tracing::error!(sink = %name, error = %e, "sink task failed");
            }
        }
    });
    tokio::select! {
        r = drained => if r.is_err() {
            tracing::warn!(grace = ?grace, "shutdown grace over with requests still in flight; their lines are read again after a restart");
        },
        sig = Signals::stop(term, int) => {
            tracing::warn!("{sig} again: stopping without waiting for the sinks");
            end = End::Stop;
        }
    }
    persister.abort();
    checkpoints
        .persist()
        .context("failed to write the final checkpoints")?;
    if matches!(end, End::Stop) {
        tracing::info!("stopped");
    }
    Ok(end)
}
