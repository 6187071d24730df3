//! kube (enrich): turns Pod and Namespace objects from the API into the compact metadata records
//! carry. Only what enrichment and routing need is kept; the workload is derived from owner
//! references and labels, with no extra API call (the conventions of the Deployment, CronJob and
//! kubelet controllers: <https://kubernetes.io/docs/concepts/workloads/>).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerStatus, Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::record::{ContainerMeta, PodMeta};

/// Annotations that steer loglet (routes, parsers, sidecars) share this prefix; they are kept on
/// every Pod and Namespace whatever `kubernetes.annotations` selects.
pub const ANNOTATION_PREFIX: &str = "loglet.io/";
/// On a mirror Pod, the hash of the static Pod's manifest: the UID in its log directory.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// The label the Deployment controller puts on a ReplicaSet's Pods, and suffixes its name with.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The CronJob controller names a Job `<cronjob>-<minutes since the epoch>`: eight digits from 1989
/// to 2160. Requiring eight keeps a hand-made `migrate-2` from passing as a CronJob.
const CRONJOB_SUFFIX_MIN_DIGITS: usize = 8;

/// What a Namespace contributes to its Pods' metadata.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NamespaceMeta {
    pub labels: Vec<(String, String)>,
    /// Its `loglet.io/` annotations, keys with the prefix.
    pub loglet_annotations: Vec<(String, String)>,
}

impl NamespaceMeta {
    pub fn from_namespace(ns: &Namespace) -> NamespaceMeta {
        NamespaceMeta {
            labels: pairs(ns.metadata.labels.as_ref(), |_| true),
            loglet_annotations: pairs(ns.metadata.annotations.as_ref(), |k| {
                k.starts_with(ANNOTATION_PREFIX)
            }),
        }
    }
}

/// Which Pod annotations are copied into records (`kubernetes.annotations`).
#[derive(Debug, Default, Clone)]
pub struct AnnotationFilter {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl AnnotationFilter {
    pub fn new(keys: &[String]) -> AnnotationFilter {
        let mut f = AnnotationFilter::default();
        for k in keys {
            match k.strip_suffix('*') {
                Some(prefix) => f.prefixes.push(prefix.to_string()),
                None => f.exact.push(k.clone()),
            }
        }
        f
    }

    fn matches(&self, key: &str) -> bool {
        self.exact.iter().any(|k| k == key) || self.prefixes.iter().any(|p| key.starts_with(p))
    }
}

/// A Pod's identity in the cache, and the log-directory key of a static Pod.
#[derive(Debug)]
pub struct PodKey {
    pub uid: String,
    /// For a mirror Pod, the config hash its static Pod's log directory carries.
    pub config_hash: Option<String>,
}

/// Builds the compact metadata of a Pod; `None` for an object without UID, name or namespace
/// (never sent by a real API server, but not worth a panic).
pub fn pod_meta(
    pod: &Pod,
    filter: &AnnotationFilter,
    namespace: Option<&NamespaceMeta>,
) -> Option<(PodKey, PodMeta)> {
    let md = &pod.metadata;
    let uid = md.uid.clone().filter(|u| !u.is_empty())?;
    let name = md.name.clone()?;
    let namespace_name = md.namespace.clone()?;
    let labels = pairs(md.labels.as_ref(), |_| true);
    let annotations = md.annotations.as_ref();
    let config_hash = annotations.and_then(|a| {
        a.get(MIRROR_ANNOTATION)
            .or_else(|| a.get(CONFIG_HASH_ANNOTATION))
            .filter(|h| !h.is_empty() && **h != uid)
            .cloned()
    });
    let owner = controller_owner(md.owner_references.as_deref());
    let workload = owner
        .as_ref()
        .and_then(|(kind, name)| workload(kind, name, md.labels.as_ref()));
    let meta = PodMeta {
        namespace: namespace_name,
        name,
        uid: uid.clone(),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        labels,
        annotations: pairs(annotations, |k| filter.matches(k)),
        loglet_annotations: pairs(annotations, |k| k.starts_with(ANNOTATION_PREFIX)),
        namespace_labels: namespace.map(|n| n.labels.clone()).unwrap_or_default(),
        namespace_loglet_annotations: namespace
            .map(|n| n.loglet_annotations.clone())
            .unwrap_or_default(),
        owner,
        workload,
        containers: containers(pod),
    };
    Some((PodKey { uid, config_hash }, meta))
}

fn pairs(
    map: Option<&BTreeMap<String, String>>,
    keep: impl Fn(&str) -> bool,
) -> Vec<(String, String)> {
    let Some(map) = map else {
        return Vec::new();
    };
    // BTreeMap order: records and encoders see labels sorted, the same on every run.
    let mut v: Vec<(String, String)> = map
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.shrink_to_fit();
    v
}

/// The controller owner, or the first owner when none is marked controller.
fn controller_owner(refs: Option<&[OwnerReference]>) -> Option<(String, String)> {
    let refs = refs?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
        .map(|r| (r.kind.clone(), r.name.clone()))
}

/// The workload behind a Pod's owner, from names and labels alone.
fn workload(
    kind: &str,
    name: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<(String, String)> {
    match kind {
        // A mirror Pod is owned by its Node: a static Pod has no workload.
        "Node" => None,
        "ReplicaSet" => {
            let hash = labels.and_then(|l| l.get(POD_TEMPLATE_HASH));
            match hash.and_then(|h| name.strip_suffix(h.as_str())?.strip_suffix('-')) {
                Some(deployment) if !deployment.is_empty() => {
                    Some(("Deployment".into(), deployment.into()))
                }
                _ => Some((kind.into(), name.into())),
            }
        }
        "Job" => match name.rsplit_once('-') {
            Some((cronjob, digits))
                if !cronjob.is_empty()
                    && digits.len() >= CRONJOB_SUFFIX_MIN_DIGITS
                    && digits.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Some(("CronJob".into(), cronjob.into()))
            }
            _ => Some((kind.into(), name.into())),
        },
        // StatefulSet, DaemonSet, ReplicationController and custom controllers own their Pods.
        _ => Some((kind.into(), name.into())),
    }
}

fn containers(pod: &Pod) -> Vec<ContainerMeta> {
    let mut out = Vec::new();
    let status = pod.status.as_ref();
    let ids = |statuses: Option<&Vec<ContainerStatus>>, name: &str| {
        statuses
            .and_then(|s| s.iter().find(|c| c.name == name))
            .and_then(|c| c.container_id.as_deref())
            .map(strip_runtime)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
    };
    if let Some(spec) = &pod.spec {
        for c in &spec.containers {
            out.push(ContainerMeta {
                name: c.name.clone(),
                image: c.image.clone(),
                container_id: ids(status.and_then(|s| s.container_statuses.as_ref()), &c.name),
            });
        }
        for c in spec.init_containers.iter().flatten() {
            out.push(ContainerMeta {
                name: c.name.clone(),
                image: c.image.clone(),
                container_id: ids(
                    status.and_then(|s| s.init_container_statuses.as_ref()),
                    &c.name,
                ),
            });
        }
        for c in spec.ephemeral_containers.iter().flatten() {
            out.push(ContainerMeta {
                name: c.name.clone(),
                image: c.image.clone(),
                container_id: ids(
                    status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
                    &c.name,
                ),
            });
        }
    }
    out.shrink_to_fit();
    out
}

/// `containerd://abc` → `abc` (also `cri-o://`, `docker://`).
fn strip_runtime(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn owner(kind: &str, name: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("{name}-uid"),
            controller,
            block_owner_deletion: None,
        }
    }

    fn pod(owners: Vec<OwnerReference>, pod_labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-5d8f9c7b4-x2x9q".into()),
                namespace: Some("shop".into()),
                uid: Some("3f1c-uid".into()),
                labels: labels(pod_labels),
                owner_references: Some(owners),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                containers: vec![Container {
                    name: "nginx".into(),
                    image: Some("nginx:1.27".into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn the_workload_is_derived_from_owner_and_labels() {
        let hash = [("pod-template-hash", "5d8f9c7b4")];
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [(&'a str, &'a str)],
            Option<(&'a str, &'a str)>,
        );
        let cases: &[Case] = &[
            (
                "ReplicaSet",
                "web-5d8f9c7b4",
                &hash,
                Some(("Deployment", "web")),
            ),
            (
                "ReplicaSet",
                "my-app-v2-5d8f9c7b4",
                &hash,
                Some(("Deployment", "my-app-v2")),
            ),
            // A bare ReplicaSet (no hash label, or a hash its name does not end with).
            (
                "ReplicaSet",
                "web-5d8f9c7b4",
                &[],
                Some(("ReplicaSet", "web-5d8f9c7b4")),
            ),
            (
                "ReplicaSet",
                "web-abc",
                &hash,
                Some(("ReplicaSet", "web-abc")),
            ),
            (
                "ReplicaSet",
                "5d8f9c7b4",
                &hash,
                Some(("ReplicaSet", "5d8f9c7b4")),
            ),
            ("Job", "backup-29016480", &[], Some(("CronJob", "backup"))),
            (
                "Job",
                "nightly-report-29016480",
                &[],
                Some(("CronJob", "nightly-report")),
            ),
            ("Job", "migrate-2", &[], Some(("Job", "migrate-2"))),
            ("Job", "migrate", &[], Some(("Job", "migrate"))),
            ("Job", "-29016480", &[], Some(("Job", "-29016480"))),
            ("StatefulSet", "db", &[], Some(("StatefulSet", "db"))),
            ("DaemonSet", "agent", &[], Some(("DaemonSet", "agent"))),
            ("Node", "node-a", &[], None),
        ];
        for (kind, name, l, want) in cases {
            let p = pod(vec![owner(kind, name, Some(true))], l);
            let (_, m) = pod_meta(&p, &AnnotationFilter::default(), None).unwrap();
            assert_eq!(
                m.owner,
                Some((kind.to_string(), name.to_string())),
                "{kind} {name}"
            );
            let want = want.map(|(k, n)| (k.to_string(), n.to_string()));
            assert_eq!(m.workload, want, "{kind} {name} {l:?}");
        }
    }

    #[test]
    fn the_controller_owner_is_preferred_over_the_first() {
        let p = pod(
            vec![
                owner("ConfigMap", "cm", None),
                owner("StatefulSet", "db", Some(true)),
            ],
            &[],
        );
        let (_, m) = pod_meta(&p, &AnnotationFilter::default(), None).unwrap();
        assert_eq!(m.owner, Some(("StatefulSet".into(), "db".into())));
        let p = pod(vec![owner("Rollout", "r", Some(false))], &[]);
        let (_, m) = pod_meta(&p, &AnnotationFilter::default(), None).unwrap();
        assert_eq!(m.owner, Some(("Rollout".into(), "r".into())));
        let p = pod(vec![], &[]);
        let (_, m) = pod_meta(&p, &AnnotationFilter::default(), None).unwrap();
        assert_eq!((m.owner, m.workload), (None, None));
    }

    #[test]
    fn container_ids_lose_their_runtime_prefix_and_images_come_from_the_spec() {
        let mut p = pod(vec![], &[]);
        let spec = p.spec.as_mut().unwrap();
        spec.init_containers = Some(vec![Container {
            name: "init".into(),
            image: Some("busybox".into()),
            ..Container::default()
        }]);
        p.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "nginx".into(),
                container_id: Some("containerd://abc123".into()),
                image: "docker.io/library/nginx:1.27".into(),
                ..ContainerStatus::default()
            }]),
            init_container_statuses: Some(vec![ContainerStatus {
                name: "init".into(),
                container_id: Some("cri-o://def".into()),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        let (_, m) = pod_meta(&p, &AnnotationFilter::default(), None).unwrap();
        let nginx = m.container("nginx").unwrap();
        assert_eq!(nginx.container_id.as_deref(), Some("abc123"));
        assert_eq!(nginx.image.as_deref(), Some("nginx:1.27"));
        assert_eq!(
            m.container("init").unwrap().container_id.as_deref(),
            Some("def")
        );
        assert_eq!(m.node_name.as_deref(), Some("node-a"));
    }

    #[test]
    fn only_selected_annotations_are_copied_and_loglet_ones_are_always_kept() {
        let mut p = pod(vec![], &[]);
        p.metadata.annotations = labels(&[
            ("team", "payments"),
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "9090"),
            ("kubectl.kubernetes.io/last-applied-configuration", "{…}"),
            ("loglet.io/route", "audit"),
        ]);
        let f = AnnotationFilter::new(&["team".into(), "prometheus.io/*".into()]);
        let (_, m) = pod_meta(&p, &f, None).unwrap();
        let keys: Vec<&str> = m.annotations.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["prometheus.io/port", "prometheus.io/scrape", "team"]);
        assert_eq!(
            m.loglet_annotations,
            vec![("loglet.io/route".to_string(), "audit".to_string())]
        );
        let (_, m) = pod_meta(&p, &AnnotationFilter::default(), None).unwrap();
        assert!(m.annotations.is_empty());
    }

    #[test]
    fn a_mirror_pod_is_keyed_by_its_config_hash_too() {
        let mut p = pod(vec![owner("Node", "node-a", Some(true))], &[]);
        p.metadata.annotations = labels(&[
            ("kubernetes.io/config.hash", "9f8e7d"),
            ("kubernetes.io/config.mirror", "9f8e7d"),
            ("kubernetes.io/config.source", "file"),
        ]);
        let (key, m) = pod_meta(&p, &AnnotationFilter::default(), None).unwrap();
        assert_eq!(key.uid, "3f1c-uid");
        assert_eq!(key.config_hash.as_deref(), Some("9f8e7d"));
        assert_eq!(m.workload, None);
        let (key, _) = pod_meta(&pod(vec![], &[]), &AnnotationFilter::default(), None).unwrap();
        assert_eq!(key.config_hash, None);
    }

    #[test]
    fn namespace_labels_are_folded_in_and_objects_without_uid_are_refused() {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                labels: labels(&[("team", "payments")]),
                annotations: labels(&[("loglet.io/route", "audit"), ("owner", "x")]),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let nm = NamespaceMeta::from_namespace(&ns);
        let (_, m) = pod_meta(&pod(vec![], &[]), &AnnotationFilter::default(), Some(&nm)).unwrap();
        assert_eq!(m.namespace_labels, vec![("team".into(), "payments".into())]);
        assert_eq!(
            m.namespace_loglet_annotations,
            vec![("loglet.io/route".into(), "audit".into())]
        );
        let mut p = pod(vec![], &[]);
        p.metadata.uid = None;
        assert!(pod_meta(&p, &AnnotationFilter::default(), None).is_none());
    }
}
