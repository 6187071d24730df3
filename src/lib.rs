//! loglet: a Kubernetes node-level log collector. It tails the container logs the kubelet and the
//! runtime write on a node, enriches each line with its Pod's metadata, and ships it in batches
//! to central backends, at least once. See docs/ARCHITECTURE.md for the map of the modules.
#![forbid(unsafe_code)]

pub mod config;
pub mod decode;
pub mod discover;
pub mod kube;
pub mod metrics;
pub mod parse;
pub mod pipeline;
pub mod pool;
pub mod record;
pub mod route;
pub mod sidecar;
pub mod sink;
pub mod tail;
