//! pipeline: wires the stages together and shuts them down in order: stop reading, let the sinks
//! deliver what is in flight (bounded by `pipeline.shutdown_grace`), write the checkpoints.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::kube;
use crate::metrics::{self, Metrics};
use crate::sink;
use crate::tail::checkpoint::Checkpoints;
use crate::tail::{Outputs, TailSettings, Tailer};

/// Runs loglet until SIGTERM or SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
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
    runtime.block_on(run_async(config, handle))
}

async fn run_async(config: Config, runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = Metrics::new();
    if config.metrics.enabled {
        let (listener, addr) = metrics::bind(&config.metrics.listen).await?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }
    let self_pod_uid = std::env::var("POD_UID").ok();
    let node_name = config
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok());
    let store = kube::start(&config.kubernetes, node_name.clone(), metrics.clone()).await;
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
            cfg,
            node_name.as_deref(),
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
    let tailer = Tailer::new(
        TailSettings::from_config(&config, self_pod_uid, metadata_wait),
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

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("failed to install the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("failed to install the SIGINT handler")?;
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
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        ok = &mut tail_done => {
            tail_finished = true;
            if !matches!(ok, Ok(true)) {
                tracing::error!("the tail thread stopped unexpectedly");
            }
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
        _ = term.recv() => tracing::warn!("second signal: stopping without waiting for the sinks"),
        _ = int.recv() => tracing::warn!("second signal: stopping without waiting for the sinks"),
    }
    persister.abort();
    checkpoints
        .persist()
        .context("failed to write the final checkpoints")?;
    tracing::info!("stopped");
    Ok(())
}
