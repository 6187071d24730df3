//! kube (enrich): Pod metadata from a cached Kubernetes API watcher. One list and one watch of
//! this node's Pods (`fieldSelector=spec.nodeName=<node>`) and, optionally, of Namespaces, served
//! from the API server's watch cache (`resourceVersion=0`), resumed with bookmarks, re-listed on
//! `410 Gone`, retried with jittered exponential backoff; kube's runtime watcher does the protocol
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>),
//! this module keeps only a compact index keyed by Pod UID. See docs/kubernetes.md.

mod meta;
mod store;
mod watcher;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::{KubernetesConfig, KubernetesEnabled};
use crate::metrics::Metrics;

pub use meta::{ANNOTATION_PREFIX, CONFIG_HASH_ANNOTATION, MIRROR_ANNOTATION, NamespaceMeta};
pub use store::PodStore;

/// The readiness condition this module holds while the first list is pending.
pub const READINESS: &str = "kubernetes";

/// The server ends each watch after this long and the watcher resumes it from the last
/// resourceVersion (no list): kube's default, under the API server's own 30 min cap.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// A request that has read nothing for this long is abandoned (a hung list, a dead connection);
/// above the watch timeout so a quiet watch is never cut.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the API cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "no Kubernetes API configuration: no in-cluster service account (KUBERNETES_SERVICE_HOST unset) and no kubeconfig (kubernetes.kubeconfig, KUBECONFIG)"
    )]
    NoConfig,
    #[error(
        "the node name is unknown: set NODE_NAME from the downward API (spec.nodeName) or node_name in the config"
    )]
    NoNodeName,
    #[error("failed to load kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("failed to load the in-cluster service account configuration")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("failed to build the Kubernetes API client")]
    Client(#[source] kube::Error),
}

/// Starts the watchers on the current tokio runtime and returns the store they fill.
///
/// Never fails the process: without an API configuration or a node name it logs one warning and
/// returns [`PodStore::disabled`] (with `kubernetes.enabled: true`, `/readyz` also fails, saying
/// why). Until the first list is done, or `kubernetes.ready_timeout` has passed, the readiness
/// condition [`READINESS`] fails.
pub async fn start(
    cfg: &KubernetesConfig,
    node_name: Option<String>,
    metrics: Arc<Metrics>,
) -> PodStore {
    if cfg.enabled == KubernetesEnabled::False {
        tracing::info!(
            "kubernetes.enabled is false: records carry only what the log path tells (namespace, pod, container)"
        );
        return PodStore::disabled();
    }
    let client = match node_name
        .filter(|n| !n.is_empty())
        .ok_or(KubeError::NoNodeName)
    {
        Ok(node) => client(cfg).await.map(|c| (c, node)),
        Err(e) => Err(e),
    };
    let (client, node) = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                error = %format!("{:#}", anyhow::Error::from(e)),
                "running without Pod metadata from the Kubernetes API: records carry only what the log path tells (namespace, pod, container)"
            );
            if cfg.enabled == KubernetesEnabled::True {
                metrics.readiness.fail(
                    READINESS,
                    "kubernetes.enabled is true but the API is not configured (see the log)".into(),
                );
            }
            return PodStore::disabled();
        }
    };
    start_with_client(cfg, client, node, metrics)
}

/// Starts the watchers with a client of the caller's (tests, tools).
pub fn start_with_client(
    cfg: &KubernetesConfig,
    client: kube::Client,
    node_name: String,
    metrics: Arc<Metrics>,
) -> PodStore {
    let shared = Arc::new(store::Shared::new(
        meta::AnnotationFilter::new(&cfg.annotations),
        cfg.deleted_pod_grace.0,
        cfg.max_deleted_pods,
        cfg.watch_namespaces,
    ));
    metrics
        .readiness
        .fail(READINESS, "waiting for the first list of Pods".into());
    tracing::info!(
        node = %node_name,
        namespaces = cfg.watch_namespaces,
        "watching this node's Pods for metadata"
    );
    let pods = watch_config().fields(&format!("spec.nodeName={node_name}"));
    let mut tasks = vec![
        tokio::spawn(watcher::run::<Pod>(
            kube::Api::all(client.clone()),
            pods,
            shared.clone(),
            metrics.clone(),
        ))
        .abort_handle(),
    ];
    if cfg.watch_namespaces {
        let namespaces = watch_config();
        tasks.push(
            tokio::spawn(watcher::run::<Namespace>(
                kube::Api::all(client),
                namespaces,
                shared.clone(),
                metrics.clone(),
            ))
            .abort_handle(),
        );
    }
    tasks.push(
        tokio::spawn(watcher::readiness(
            shared.clone(),
            cfg.ready_timeout.0,
            metrics.clone(),
        ))
        .abort_handle(),
    );
    tasks.push(
        tokio::spawn(watcher::prune(
            shared.clone(),
            cfg.deleted_pod_grace.0,
            metrics,
        ))
        .abort_handle(),
    );
    PodStore::enabled(shared, store::TaskGuard(tasks))
}

/// Lists from the API server's watch cache (`resourceVersion=0`, `resourceVersionMatch=NotOlderThan`),
/// bookmarks on, the server-side watch timeout. Unpaged: kube drops `resourceVersion=0` from a
/// list that has a `limit` (a paged list is a quorum read from etcd), and the watch cache answers
/// an unpaged list from memory. One node's Pods are ~100 objects; Namespaces are small.
fn watch_config() -> kube::runtime::watcher::Config {
    let mut config = kube::runtime::watcher::Config::default()
        .any_semantic()
        .timeout(WATCH_TIMEOUT_SECS);
    config.page_size = None;
    config
}

/// The client from, in order: `kubernetes.kubeconfig`, `KUBECONFIG`, the in-cluster service
/// account. `~/.kube/config` is not read implicitly: a node agent should not pick up whichever
/// cluster a developer's shell points at.
pub async fn client(cfg: &KubernetesConfig) -> Result<kube::Client, KubeError> {
    let opts = KubeConfigOptions::default();
    let from_file = |path: String, source| KubeError::Kubeconfig { path, source };
    let mut config = if let Some(path) = &cfg.kubeconfig {
        let shown = path.display().to_string();
        let kc = Kubeconfig::read_from(path).map_err(|e| from_file(shown.clone(), e))?;
        kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .map_err(|e| from_file(shown, e))?
    } else if let Some(kc) = Kubeconfig::from_env().map_err(|e| from_file(env_kubeconfig(), e))? {
        kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .map_err(|e| from_file(env_kubeconfig(), e))?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        kube::Config::incluster().map_err(KubeError::InCluster)?
    } else {
        return Err(KubeError::NoConfig);
    };
    // One retry policy, the watcher's jittered backoff, instead of the client's own quick
    // retries of 429/503/504 underneath it.
    config.default_retry = false;
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    // kube and reqwest both use rustls; the process needs one crypto provider (a second install
    // attempt is harmless).
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_from(config).map_err(KubeError::Client)
}

fn env_kubeconfig() -> String {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .map_or_else(|| "KUBECONFIG".into(), |p| p.display().to_string())
}
