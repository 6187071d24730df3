//! Deployment: renders manifests/ and every overlay with `kubectl kustomize`, parses each object
//! into its Kubernetes API type (failing on unknown or misspelled fields), and checks that the
//! manifests, the ConfigMap's config, the Dockerfile and the code agree.
//! Kustomize: https://kubectl.docs.kubernetes.io/references/kustomize/kustomization/
//!
//! Needs `kubectl` on the PATH (Debian: `apt-get install kubernetes-client`), or its path in the
//! `KUBECTL` environment variable. The manifests are written for kustomize v2 (kubectl 1.20, as
//! Debian ships it) through v5, and this test runs with whichever is installed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Probe, ResourceQuota, Service, ServiceAccount,
    Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use loglet::config::{Config, METRICS_PORT};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The kubelet's Pod directories, where emptyDir volumes live; the emptyDir reader looks there
/// (docs/ARCHITECTURE.md). When the config names it, the walk over the config covers it as well.
const KUBELET_PODS_DIR: &str = "/var/lib/kubelet/pods";

/// The overlays under manifests/overlays/, each with its own test below.
const OVERLAYS: &[&str] = &[
    "cri-dockerd",
    "elasticsearch",
    "loki",
    "prometheus-operator",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

/// Runs the real binary's `loglet check-config` on a rendered ConfigMap's config, as an operator
/// would on a copy: the command's own loading, validation and printing, not only the library's.
/// (tests/docs.rs runs it on the example files and the docs' configs; the rendered ConfigMaps are
/// checked here, where they are rendered.)
fn check_config_binary(origin: &str, text: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, text).expect("write the config");
    let out = Command::new(env!("CARGO_BIN_EXE_loglet"))
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run loglet check-config");
    assert!(
        out.status.success(),
        "{origin}: `loglet check-config` fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- rendering and strict parsing ----

fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string())
}

/// `kubectl kustomize <dir>`, as YAML documents.
fn render(rel: &str) -> Vec<Value> {
    let dir = repo().join(rel);
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "failed to run `{} kustomize`: {e}; install kubectl (Debian: apt-get install \
                 kubernetes-client) or set KUBECTL to its path",
                kubectl()
            )
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl kustomize {rel} failed: {stderr}"
    );
    let text = String::from_utf8(out.stdout).expect("kubectl prints UTF-8");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| {
        panic!("kubectl kustomize {rel} printed YAML that does not parse: {e}")
    });
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    assert!(!docs.is_empty(), "kubectl kustomize {rel} rendered nothing");
    docs
}

/// Deserializes `doc` into `T`, failing on any field `T` does not know: serde skips unknown
/// fields silently, so a misspelled `readOnly` would otherwise vanish without a word.
fn strict<T: DeserializeOwned>(doc: &Value) -> Result<T, String> {
    let mut ignored = Vec::new();
    // serde_ignored writes `?` for every Option on the way; the field path reads better without.
    let parsed: T = serde_ignored::deserialize(doc, |path| {
        let path = path.to_string();
        let parts: Vec<&str> = path.split('.').filter(|p| *p != "?").collect();
        ignored.push(parts.join("."))
    })
    .map_err(|e| e.to_string())?;
    if ignored.is_empty() {
        Ok(parsed)
    } else {
        Err(format!("unknown fields: {}", ignored.join(", ")))
    }
}

/// Every object of one rendering, typed.
#[derive(Default)]
struct Install {
    name: String,
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    quotas: Vec<ResourceQuota>,
    services: Vec<Service>,
    daemon_sets: Vec<DaemonSet>,
    pod_monitors: Vec<PodMonitor>,
    rules: Vec<PrometheusRule>,
}

impl Install {
    fn render(rel: &str) -> Install {
        let mut install = Install {
            name: rel.to_string(),
            ..Install::default()
        };
        for doc in render(rel) {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let what = format!("{rel}: {api_version} {kind} {}", doc["metadata"]["name"]);
            let parsed = match (api_version.as_str(), kind.as_str()) {
                ("v1", "Namespace") => strict(&doc).map(|o| install.namespaces.push(o)),
                ("v1", "ServiceAccount") => strict(&doc).map(|o| install.service_accounts.push(o)),
                ("v1", "ConfigMap") => strict(&doc).map(|o| install.config_maps.push(o)),
                ("v1", "ResourceQuota") => strict(&doc).map(|o| install.quotas.push(o)),
                ("v1", "Service") => strict(&doc).map(|o| install.services.push(o)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    strict(&doc).map(|o| install.cluster_roles.push(o))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    strict(&doc).map(|o| install.bindings.push(o))
                }
                ("apps/v1", "DaemonSet") => strict(&doc).map(|o| install.daemon_sets.push(o)),
                ("monitoring.coreos.com/v1", "PodMonitor") => {
                    strict(&doc).map(|o| install.pod_monitors.push(o))
                }
                ("monitoring.coreos.com/v1", "PrometheusRule") => {
                    strict(&doc).map(|o| install.rules.push(o))
                }
                _ => Err("an object this test does not know; add its type here".to_string()),
            };
            if let Err(e) = parsed {
                panic!("{what}: {e}");
            }
        }
        install
    }

    fn one<'a, T>(&self, what: &str, list: &'a [T]) -> &'a T {
        assert_eq!(list.len(), 1, "{}: expected exactly one {what}", self.name);
        &list[0]
    }

    fn daemon_set(&self) -> &DaemonSet {
        self.one("DaemonSet", &self.daemon_sets)
    }

    fn pod_spec(&self) -> &PodSpec {
        self.daemon_set()
            .spec
            .template
            .spec
            .as_ref()
            .expect("the DaemonSet has a Pod template with a spec")
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        self.daemon_set()
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }

    fn container(&self) -> &Container {
        let pod = self.pod_spec();
        let found: Vec<&Container> = pod
            .containers
            .iter()
            .filter(|c| c.name == "loglet")
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected one container named loglet",
            self.name
        );
        found[0]
    }

    fn namespace(&self) -> String {
        self.one("Namespace", &self.namespaces)
            .metadata
            .name
            .clone()
            .expect("the Namespace has a name")
    }

    /// The config file the container runs with, and its text from the ConfigMap.
    fn config(&self) -> (String, Config) {
        let args = self.container().args.clone().unwrap_or_default();
        assert!(
            self.container().command.is_none(),
            "{}: the container must run the image's entrypoint (/loglet)",
            self.name
        );
        let [run, flag, path] = args.as_slice() else {
            panic!(
                "{}: expected args [run, --config, <file>], found {args:?}",
                self.name
            )
        };
        assert_eq!(
            (run.as_str(), flag.as_str()),
            ("run", "--config"),
            "{}",
            self.name
        );
        let path = PathBuf::from(path);
        let (mount, rest) = self.mount_for(&path);
        let volume = self.volume(&mount.name);
        let source = volume.config_map.as_ref().unwrap_or_else(|| {
            panic!(
                "{}: {} is not on a ConfigMap volume",
                self.name,
                path.display()
            )
        });
        let map = self
            .config_maps
            .iter()
            .find(|m| m.metadata.name.as_deref() == Some(source.name.as_str()))
            .unwrap_or_else(|| panic!("{}: no ConfigMap named {}", self.name, source.name));
        let key = match &source.items {
            Some(items) => items
                .iter()
                .find(|i| Path::new(&i.path) == rest)
                .map(|i| i.key.clone())
                .unwrap_or_else(|| panic!("{}: no item maps to {}", self.name, rest.display())),
            None => rest.to_string_lossy().into_owned(),
        };
        let text = map
            .data
            .as_ref()
            .and_then(|d| d.get(&key))
            .unwrap_or_else(|| panic!("{}: ConfigMap {} has no key {key}", self.name, source.name));
        let origin = format!("{} ConfigMap {}/{key}", self.name, source.name);
        let config = Config::parse_str(text, Path::new(&origin))
            .unwrap_or_else(|e| panic!("the config does not pass check-config: {e}"));
        check_config_binary(&origin, text);
        (path.to_string_lossy().into_owned(), config)
    }

    /// The mount holding `path` (the deepest one), and the rest of the path below it.
    fn mount_for(&self, path: &Path) -> (&VolumeMount, PathBuf) {
        let mounts = self
            .container()
            .volume_mounts
            .as_deref()
            .unwrap_or_default();
        mounts
            .iter()
            .filter_map(|m| {
                path.strip_prefix(&m.mount_path)
                    .ok()
                    .map(|rest| (m, rest.to_path_buf()))
            })
            .min_by_key(|(_, rest)| rest.components().count())
            .unwrap_or_else(|| panic!("{}: nothing is mounted at {}", self.name, path.display()))
    }

    fn volume(&self, name: &str) -> &Volume {
        let volumes = self.pod_spec().volumes.as_deref().unwrap_or_default();
        volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{}: volume {name} is mounted but not declared", self.name))
    }

    /// The port number a probe or a Service's targetPort names.
    fn port(&self, port: &IntOrString) -> i32 {
        match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => self
                .container()
                .ports
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .unwrap_or_else(|| panic!("{}: no container port named {name}", self.name)),
        }
    }
}

// ---- the checks every rendering passes ----

fn check_install(install: &Install) {
    let (config_path, config) = install.config();
    check_namespaces(install);
    check_rbac(install);
    check_paths_are_mounted(install, &config);
    check_ports(install, &config);
    check_security(install);
    check_downward_api(install);
    check_scheduling_and_lifecycle(install, &config);
    check_image(install, &config_path);
}

fn check_namespaces(install: &Install) {
    let ns = install.one("Namespace", &install.namespaces);
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged"),
        "{}: hostPath volumes need the privileged Pod Security level",
        install.name
    );
    let want = install.namespace();
    let metas: Vec<&ObjectMeta> = [
        install
            .service_accounts
            .iter()
            .map(|o| &o.metadata)
            .collect::<Vec<_>>(),
        install.config_maps.iter().map(|o| &o.metadata).collect(),
        install.quotas.iter().map(|o| &o.metadata).collect(),
        install.services.iter().map(|o| &o.metadata).collect(),
        install.daemon_sets.iter().map(|o| &o.metadata).collect(),
        install.pod_monitors.iter().map(|o| &o.metadata).collect(),
        install.rules.iter().map(|o| &o.metadata).collect(),
    ]
    .concat();
    for meta in metas {
        assert_eq!(
            meta.namespace.as_deref(),
            Some(want.as_str()),
            "{}: {:?} is not in namespace {want}",
            install.name,
            meta.name
        );
    }
}

fn check_rbac(install: &Install) {
    let role = install.one("ClusterRole", &install.cluster_roles);
    let mut grants = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{}: unexpected resourceNames or nonResourceURLs",
            install.name
        );
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    grants.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let mut want = BTreeSet::new();
    for resource in ["pods", "namespaces"] {
        for verb in ["get", "list", "watch"] {
            want.insert((String::new(), resource.to_string(), verb.to_string()));
        }
    }
    assert_eq!(
        grants, want,
        "{}: the ClusterRole must grant exactly read access to Pods and Namespaces",
        install.name
    );

    let binding = install.one("ClusterRoleBinding", &install.bindings);
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&binding.role_ref.name),
        role.metadata.name.as_ref(),
        "{}",
        install.name
    );
    let account = install.one("ServiceAccount", &install.service_accounts);
    assert_ne!(
        account.automount_service_account_token,
        Some(false),
        "{}",
        install.name
    );
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(
        subjects.len(),
        1,
        "{}: the binding has one subject",
        install.name
    );
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, account.metadata.namespace);

    let pod = install.pod_spec();
    assert_eq!(
        pod.service_account_name.as_ref(),
        account.metadata.name.as_ref(),
        "{}",
        install.name
    );
    assert_eq!(
        pod.automount_service_account_token,
        Some(true),
        "{}: the kube watcher needs the token",
        install.name
    );
}

/// The keys of the config that name a path, wherever they are: `root`, `*_dir`, `*_file` and
/// `kubeconfig`. Sections added later are covered without a change here.
fn config_paths(config: &Config) -> Vec<(String, PathBuf)> {
    fn walk(key: &str, v: &Value, out: &mut Vec<(String, PathBuf)>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if key.is_empty() {
                        k.clone()
                    } else {
                        format!("{key}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{key}[{i}]"), v, out);
                }
            }
            Value::String(s) => {
                let leaf = key.rsplit('.').next().unwrap_or(key);
                let leaf = leaf.split('[').next().unwrap_or(leaf);
                if leaf == "root"
                    || leaf.ends_with("_dir")
                    || leaf.ends_with("_file")
                    || leaf == "kubeconfig"
                {
                    out.push((key.to_string(), PathBuf::from(s)));
                }
            }
            _ => {}
        }
    }
    let value = serde_json::to_value(config).expect("the config serializes");
    let mut out = Vec::new();
    walk("", &value, &mut out);
    out
}

fn check_paths_are_mounted(install: &Install, config: &Config) {
    let paths = config_paths(config);
    let keys: BTreeSet<&str> = paths.iter().map(|(k, _)| k.as_str()).collect();
    for want in ["root", "state_dir", "logs.pods_dir", "logs.containers_dir"] {
        assert!(
            keys.contains(want),
            "the walk over the config missed {want}: {keys:?}"
        );
    }
    assert_eq!(
        config.root,
        Path::new("/"),
        "{}: in a Pod the host paths are mounted at their own paths, so root is /",
        install.name
    );

    let mut host_dirs: Vec<(String, PathBuf)> = paths
        .iter()
        .filter(|(k, _)| k.ends_with("_dir"))
        .map(|(k, p)| (k.clone(), config.host_path(p)))
        .collect();
    host_dirs.push((
        "kubelet pods directory".to_string(),
        PathBuf::from(KUBELET_PODS_DIR),
    ));
    let state_dir = config.host_path(&config.state_dir);
    for (key, path) in &host_dirs {
        assert!(
            path.is_absolute() && path.components().all(|c| c != Component::ParentDir),
            "{key}: {} must be absolute",
            path.display()
        );
        let (mount, rest) = install.mount_for(path);
        let volume = install.volume(&mount.name);
        let host = volume.host_path.as_ref().unwrap_or_else(|| {
            panic!(
                "{}: {key} ({}) is not on a hostPath volume",
                install.name,
                path.display()
            )
        });
        assert_eq!(
            Path::new(&host.path).join(&rest),
            *path,
            "{}: {key} is mounted from another host path than it names",
            install.name
        );
        let read_only = mount.read_only == Some(true);
        if *path == state_dir {
            assert!(
                !read_only,
                "{}: the state directory must be writable",
                install.name
            );
            assert_eq!(
                host.type_.as_deref(),
                Some("DirectoryOrCreate"),
                "{}: state_dir",
                install.name
            );
        } else {
            assert!(
                read_only,
                "{}: {key} ({}) must be mounted read-only",
                install.name,
                path.display()
            );
        }
    }
    let (kubelet, _) = install.mount_for(Path::new(KUBELET_PODS_DIR));
    assert_eq!(
        kubelet.mount_propagation.as_deref(),
        Some("HostToContainer"),
        "{}: tmpfs emptyDirs mounted after loglet started must show up",
        install.name
    );

    // Files (credentials, CAs, a kubeconfig) come from read-only volumes of any kind.
    for (key, path) in paths
        .iter()
        .filter(|(k, _)| !k.ends_with("_dir") && k != "root")
    {
        let (mount, _) = install.mount_for(path);
        assert_eq!(
            mount.read_only,
            Some(true),
            "{}: {key} must be on a read-only mount",
            install.name
        );
    }

    // Nothing of the host is writable but the state directory.
    for mount in install
        .container()
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
    {
        let volume = install.volume(&mount.name);
        if let Some(host) = &volume.host_path {
            if Path::new(&host.path) != state_dir {
                assert_eq!(
                    mount.read_only,
                    Some(true),
                    "{}: hostPath {} must be read-only",
                    install.name,
                    host.path
                );
            }
            assert!(
                mount.sub_path.is_none() && mount.sub_path_expr.is_none(),
                "{}",
                install.name
            );
        }
    }
}

fn check_ports(install: &Install, config: &Config) {
    let port = i32::from(METRICS_PORT);
    let listen: SocketAddr = config
        .metrics
        .listen
        .parse()
        .expect("metrics.listen is an address");
    assert!(
        config.metrics.enabled,
        "{}: probes need the metrics server",
        install.name
    );
    assert!(
        listen.ip().is_unspecified(),
        "{}: metrics.listen must be reachable from outside the Pod",
        install.name
    );
    assert_eq!(
        listen.port(),
        METRICS_PORT,
        "{}: metrics.listen",
        install.name
    );

    let c = install.container();
    let ports = c.ports.as_deref().unwrap_or_default();
    assert_eq!(ports.len(), 1, "{}: one container port", install.name);
    assert_eq!(
        ports[0].container_port, port,
        "{}: containerPort",
        install.name
    );
    assert_eq!(
        ports[0].name.as_deref(),
        Some("metrics"),
        "{}",
        install.name
    );

    let probe = |p: &Option<Probe>, what: &str| {
        let get = p
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{}: the {what} probe is an HTTP GET", install.name));
        (
            get.path.clone().unwrap_or_default(),
            install.port(&get.port),
        )
    };
    assert_eq!(
        probe(&c.liveness_probe, "liveness"),
        ("/healthz".to_string(), port),
        "{}",
        install.name
    );
    assert_eq!(
        probe(&c.readiness_probe, "readiness"),
        ("/readyz".to_string(), port),
        "{}",
        install.name
    );
    let server = read("src/metrics.rs");
    for path in ["\"/metrics\"", "\"/healthz\"", "\"/readyz\""] {
        assert!(
            server.contains(path),
            "src/metrics.rs does not serve {path}"
        );
    }

    let service = install.one("Service", &install.services);
    let spec = service.spec.as_ref().expect("Service spec");
    assert_eq!(
        spec.cluster_ip.as_deref(),
        Some("None"),
        "{}: a headless Service",
        install.name
    );
    assert_eq!(
        spec.publish_not_ready_addresses,
        Some(true),
        "{}",
        install.name
    );
    let labels = install.pod_labels();
    for (k, v) in spec.selector.clone().unwrap_or_default() {
        assert_eq!(
            labels.get(&k),
            Some(&v),
            "{}: the Service selects the Pods",
            install.name
        );
    }
    let service_ports = spec.ports.as_deref().unwrap_or_default();
    assert_eq!(service_ports.len(), 1, "{}", install.name);
    assert_eq!(
        service_ports[0].port, port,
        "{}: Service port",
        install.name
    );
    let target = service_ports[0]
        .target_port
        .clone()
        .unwrap_or(IntOrString::Int(service_ports[0].port));
    assert_eq!(
        install.port(&target),
        port,
        "{}: Service targetPort",
        install.name
    );

    // Annotation-based discovery: the Pod template for the `kubernetes-pods` scrape job, the
    // Service for `kubernetes-service-endpoints`. Both must name the port and path loglet serves.
    let template = install.daemon_set().spec.template.metadata.clone();
    for (what, meta) in [
        ("the Pod template", template),
        ("the Service", Some(service.metadata.clone())),
    ] {
        let annotations = meta.and_then(|m| m.annotations).unwrap_or_default();
        let annotation = |k: &str| annotations.get(k).map(String::as_str);
        assert_eq!(
            annotation("prometheus.io/scrape"),
            Some("true"),
            "{}: {what}: prometheus.io/scrape",
            install.name
        );
        assert_eq!(
            annotation("prometheus.io/port"),
            Some(METRICS_PORT.to_string().as_str()),
            "{}: {what}: prometheus.io/port",
            install.name
        );
        assert_eq!(
            annotation("prometheus.io/path"),
            Some("/metrics"),
            "{}: {what}: prometheus.io/path",
            install.name
        );
    }

    let docker = Dockerfile::read();
    assert_eq!(
        docker.one("EXPOSE").split_whitespace().collect::<Vec<_>>(),
        [METRICS_PORT.to_string()],
        "Dockerfile EXPOSE"
    );
}

fn check_security(install: &Install) {
    let pod = install.pod_spec();
    for (what, on) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
    ] {
        assert_ne!(on, Some(true), "{}: {what}", install.name);
    }
    let sc = install
        .container()
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{}: the container needs a securityContext", install.name));
    assert_eq!(
        sc.run_as_user,
        Some(0),
        "{}: runAsUser 0 (docs/security.md)",
        install.name
    );
    assert_ne!(sc.run_as_non_root, Some(true), "{}", install.name);
    assert_ne!(sc.privileged, Some(true), "{}: privileged", install.name);
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{}: allowPrivilegeEscalation",
        install.name
    );
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{}: readOnlyRootFilesystem",
        install.name
    );
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "{}: drop ALL",
        install.name
    );
    assert_eq!(
        caps.add.as_deref(),
        Some(&["DAC_READ_SEARCH".to_string()][..]),
        "{}: add only DAC_READ_SEARCH",
        install.name
    );
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or_else(|| {
            pod.security_context
                .as_ref()
                .and_then(|p| p.seccomp_profile.as_ref())
        })
        .map(|p| p.type_.as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"), "{}: seccomp", install.name);
}

fn check_downward_api(install: &Install) {
    let env = install.container().env.as_deref().unwrap_or_default();
    let from: BTreeMap<&str, &str> = env
        .iter()
        .filter_map(|e| {
            let field = e.value_from.as_ref()?.field_ref.as_ref()?;
            Some((e.name.as_str(), field.field_path.as_str()))
        })
        .collect();
    for (name, path) in [
        ("NODE_NAME", "spec.nodeName"),
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_UID", "metadata.uid"),
    ] {
        assert_eq!(
            from.get(name).copied(),
            Some(path),
            "{}: {name} from the downward API",
            install.name
        );
    }
}

fn check_scheduling_and_lifecycle(install: &Install, config: &Config) {
    let pod = install.pod_spec();
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical"),
        "{}",
        install.name
    );
    let tolerates_all = pod
        .tolerations
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none());
    assert!(
        tolerates_all,
        "{}: a toleration `operator: Exists` runs loglet on every node",
        install.name
    );
    let quota = install.one("ResourceQuota", &install.quotas);
    let scoped: Vec<String> = quota
        .spec
        .as_ref()
        .and_then(|s| s.scope_selector.as_ref())
        .and_then(|s| s.match_expressions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.scope_name == "PriorityClass" && e.operator == "In")
        .flat_map(|e| e.values.unwrap_or_default())
        .collect();
    assert!(
        scoped
            .iter()
            .any(|c| Some(c) == pod.priority_class_name.as_ref()),
        "{}: the quota names the priority class",
        install.name
    );

    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    let flush = config.pipeline.shutdown_grace.0.as_secs_f64();
    assert!(
        grace as f64 >= flush + 2.0,
        "{}: terminationGracePeriodSeconds {grace} leaves no room after shutdown_grace {flush}s",
        install.name
    );

    let spec = &install.daemon_set().spec;
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(
        strategy.type_.as_deref(),
        Some("RollingUpdate"),
        "{}",
        install.name
    );
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert!(
        rolling.max_unavailable.is_some(),
        "{}: maxUnavailable",
        install.name
    );
    assert!(
        matches!(rolling.max_surge, None | Some(IntOrString::Int(0))),
        "{}: maxSurge must stay 0 (two loglets would share a state directory)",
        install.name
    );
    if let Some(selector) = &spec.selector.match_labels {
        let labels = install.pod_labels();
        for (k, v) in selector {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{}: the selector selects the template",
                install.name
            );
        }
    }

    let resources = install.container().resources.as_ref().expect("resources");
    let requests = resources.requests.clone().unwrap_or_default();
    let limits = resources.limits.clone().unwrap_or_default();
    assert!(
        requests.contains_key("cpu"),
        "{}: a CPU request",
        install.name
    );
    let request = bytes(&requests.get("memory").expect("a memory request").0);
    let limit = bytes(&limits.get("memory").expect("a memory limit").0);
    assert!(
        request >= 32 << 20,
        "{}: the memory request covers the 32 MiB target",
        install.name
    );
    assert!(
        limit >= 2 * request,
        "{}: the memory limit leaves headroom above the request",
        install.name
    );
}

/// A memory quantity in bytes (`64Mi`, `1Gi`, `500M`, `1048576`).
fn bytes(q: &str) -> u64 {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("quantity {q}"));
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => panic!("quantity {q}: unit {unit} not understood by this test"),
    };
    n * mult
}

fn check_image(install: &Install, config_path: &str) {
    let c = install.container();
    let image = c.image.as_deref().unwrap_or_default();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        image.ends_with(&format!(":{version}")),
        "{}: image {image} is not tagged {version}",
        install.name
    );

    let docker = Dockerfile::read();
    let run: Vec<String> = c.args.clone().unwrap_or_default();
    assert_eq!(
        docker.array("ENTRYPOINT"),
        ["/loglet"],
        "Dockerfile ENTRYPOINT"
    );
    assert_eq!(
        docker.array("CMD"),
        run,
        "the Dockerfile's CMD and the DaemonSet's args differ"
    );
    assert_eq!(run.last().map(String::as_str), Some(config_path));
    assert_eq!(
        docker.arg("VERSION").as_deref(),
        Some(version),
        "Dockerfile ARG VERSION"
    );
    // The full set of OCI annotations; those only the build knows come from its build args,
    // which docs/getting-started.md's build command passes.
    let labels = docker.labels();
    let build = read("docs/getting-started.md");
    for (key, arg) in [
        ("title", None),
        ("description", None),
        ("licenses", None),
        ("version", Some("VERSION")),
        ("revision", Some("REVISION")),
        ("created", Some("CREATED")),
        ("source", Some("SOURCE")),
        ("url", Some("URL")),
        ("documentation", Some("DOCUMENTATION")),
        ("vendor", Some("VENDOR")),
    ] {
        let name = format!("org.opencontainers.image.{key}");
        let value = labels
            .get(&name)
            .unwrap_or_else(|| panic!("the Dockerfile's LABEL lacks {name}"));
        match arg {
            None => assert!(!value.is_empty(), "Dockerfile LABEL {name} is empty"),
            Some(arg) => {
                assert_eq!(
                    value,
                    &format!("${{{arg}}}"),
                    "Dockerfile LABEL {name} comes from ARG {arg}"
                );
                assert!(
                    docker.arg(arg).is_some(),
                    "the Dockerfile's runtime stage declares no ARG {arg}"
                );
            }
        }
    }
    assert_eq!(
        labels
            .get("org.opencontainers.image.licenses")
            .map(String::as_str),
        Some(env!("CARGO_PKG_LICENSE")),
        "Dockerfile LABEL licenses and Cargo.toml's license"
    );
    for arg in ["VERSION", "REVISION", "CREATED", "SOURCE"] {
        assert!(
            build.contains(&format!("--build-arg {arg}=")),
            "docs/getting-started.md's build command does not pass {arg}"
        );
    }
    // The image's user is the one the securityContext names (docs/security.md says why root).
    assert!(
        matches!(docker.one("USER"), "0" | "0:0" | "root"),
        "the Dockerfile's USER must be root, as the DaemonSet's runAsUser"
    );
}

// ---- the Dockerfile ----

/// The instructions of the Dockerfile's last stage (the runtime image).
struct Dockerfile(Vec<(String, String)>);

impl Dockerfile {
    fn read() -> Dockerfile {
        let text = read("Dockerfile").replace("\\\n", " ");
        let mut stage = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let word = word.to_ascii_uppercase();
            if word == "FROM" {
                stage.clear();
            }
            stage.push((word, rest.trim().to_string()));
        }
        Dockerfile(stage)
    }

    fn one(&self, word: &str) -> &str {
        let found: Vec<&str> = self
            .0
            .iter()
            .filter(|(w, _)| w == word)
            .map(|(_, r)| r.as_str())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "the Dockerfile's runtime stage has one {word}"
        );
        found[0]
    }

    /// An instruction in exec form (a JSON array).
    fn array(&self, word: &str) -> Vec<String> {
        serde_json::from_str(self.one(word))
            .unwrap_or_else(|e| panic!("Dockerfile {word} is not a JSON array: {e}"))
    }

    /// The `key="value"` pairs of the stage's LABEL instructions (values double-quoted, without
    /// escapes, as this Dockerfile writes them).
    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        for (_, rest) in self.0.iter().filter(|(w, _)| w == "LABEL") {
            let mut rest = rest.trim();
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"").unwrap_or_else(|| {
                    panic!("Dockerfile LABEL: expected key=\"value\" at {rest}")
                });
                let (value, after) = after
                    .split_once('"')
                    .unwrap_or_else(|| panic!("Dockerfile LABEL: unterminated value of {key}"));
                labels.insert(key.trim().to_string(), value.to_string());
                rest = after.trim_start();
            }
        }
        labels
    }

    fn arg(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .filter(|(w, _)| w == "ARG")
            .find_map(|(_, r)| {
                let (k, v) = r.split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_string())
            })
    }
}

// ---- the Prometheus Operator's objects, typed for the fields we use ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PodMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: PodMonitorSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMonitorSpec {
    selector: LabelSelector,
    pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PodMetricsEndpoint {
    port: String,
    path: String,
    interval: Option<String>,
    #[serde(default)]
    relabelings: Vec<Relabeling>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Relabeling {
    #[serde(default)]
    source_labels: Vec<String>,
    target_label: Option<String>,
    replacement: Option<String>,
    action: Option<String>,
    regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PrometheusRule {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: RuleSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RuleGroup {
    name: String,
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    #[allow(dead_code)]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Every metric name src/metrics.rs registers (histograms with their series suffixes).
fn metric_names() -> BTreeSet<String> {
    let source = read("src/metrics.rs");
    let mut names = BTreeSet::new();
    for (i, _) in source.match_indices("\"loglet_") {
        let rest = &source[i + 1..];
        let end = rest.find('"').unwrap_or(rest.len());
        let name = &rest[..end];
        if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(name.to_string());
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    assert!(
        names.len() > 20,
        "found too few metric names in src/metrics.rs: {names:?}"
    );
    names
}

/// The `loglet_*` metric names a PromQL expression uses.
fn used_metrics(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in expr.match_indices("loglet_") {
        let before = expr[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"' || c == '=') {
            continue;
        }
        let rest = &expr[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.push(rest[..end].to_string());
    }
    out
}

fn check_expr(where_: &str, expr: &str, known: &BTreeSet<String>) {
    let mut depth = 0i32;
    for c in expr.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
        assert!(depth >= 0, "{where_}: unbalanced brackets in {expr}");
    }
    assert_eq!(depth, 0, "{where_}: unbalanced brackets in {expr}");
    for name in used_metrics(expr) {
        assert!(
            known.contains(&name),
            "{where_}: {name} is not a metric of src/metrics.rs"
        );
    }
}

fn check_monitoring(install: &Install) {
    let monitor = install.one("PodMonitor", &install.pod_monitors);
    let labels = install.pod_labels();
    for (k, v) in monitor
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default()
    {
        assert_eq!(
            labels.get(&k),
            Some(&v),
            "the PodMonitor selects the loglet Pods"
        );
    }
    let ports: Vec<&str> = install
        .container()
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.name.as_deref())
        .collect();
    let mut jobs = BTreeSet::new();
    let mut target_labels = BTreeSet::new();
    for endpoint in &monitor.spec.pod_metrics_endpoints {
        assert!(
            ports.contains(&endpoint.port.as_str()),
            "PodMonitor port {}",
            endpoint.port
        );
        assert_eq!(endpoint.path, "/metrics");
        for r in &endpoint.relabelings {
            if let Some(t) = &r.target_label {
                target_labels.insert(t.clone());
                if t == "job" {
                    jobs.insert(r.replacement.clone().unwrap_or_default());
                }
            }
        }
    }
    assert_eq!(jobs.len(), 1, "the PodMonitor sets one job name");
    let job = jobs.into_iter().next().unwrap_or_default();
    assert!(
        target_labels.contains("node"),
        "the alerts group by the node label the PodMonitor adds"
    );

    let known = metric_names();
    let operations = read("docs/operations.md");
    let headings: BTreeSet<&str> = operations
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let rules = install.one("PrometheusRule", &install.rules);
    let mut alerts = BTreeSet::new();
    let mut exprs = String::new();
    for group in &rules.spec.groups {
        for rule in &group.rules {
            let name = &rule.alert;
            assert!(alerts.insert(name.clone()), "alert {name} appears twice");
            check_expr(name, &rule.expr, &known);
            for (i, _) in rule.expr.match_indices("job=\"") {
                let value = rule.expr[i + 5..].split('"').next().unwrap_or_default();
                assert_eq!(
                    value, job,
                    "{name}: job label differs from the PodMonitor's"
                );
            }
            let severity = rule.labels.get("severity").map(String::as_str);
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{name}: severity"
            );
            for key in ["summary", "description"] {
                assert!(
                    rule.annotations.contains_key(key),
                    "{name}: annotation {key}"
                );
            }
            assert!(
                headings.contains(name.as_str()),
                "docs/operations.md has no section {name}"
            );
            exprs.push_str(&rule.expr);
            exprs.push('\n');
        }
    }
    for needed in [
        "up{",
        "loglet_unread_bytes",
        "loglet_lost_bytes_total",
        "loglet_sink_errors_total",
        "loglet_sink_dropped_records_total",
        "loglet_checkpoint_errors_total",
        "loglet_oldest_unacknowledged_seconds",
    ] {
        assert!(exprs.contains(needed), "no alert watches {needed}");
    }
}

// ---- the tests ----

#[test]
fn the_base_renders_and_agrees_with_the_code() {
    let root = render("manifests");
    let base = render("manifests/base");
    let key = |d: &Value| {
        format!(
            "{} {} {}",
            d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]
        )
    };
    let mut root_sorted = root.clone();
    let mut base_sorted = base.clone();
    root_sorted.sort_by_key(key);
    base_sorted.sort_by_key(key);
    assert!(
        root_sorted == base_sorted,
        "manifests/ and manifests/base/ render different objects"
    );
    let install = Install::render("manifests");
    check_install(&install);
    let (_, config) = install.config();
    assert_eq!(
        config
            .sinks
            .values()
            .map(|s| s.kind.as_str())
            .collect::<Vec<_>>(),
        ["stdout"],
        "the default install needs no backend"
    );
}

#[test]
fn the_prometheus_operator_overlay_scrapes_and_alerts_on_what_exists() {
    let install = Install::render("manifests/overlays/prometheus-operator");
    check_install(&install);
    check_monitoring(&install);
}

#[test]
fn the_loki_overlay_ships_to_loki() {
    let install = Install::render("manifests/overlays/loki");
    check_install(&install);
    let (_, config) = install.config();
    let kinds: Vec<&str> = config.sinks.values().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["loki"]);
}

#[test]
fn the_elasticsearch_overlay_ships_to_elasticsearch() {
    let install = Install::render("manifests/overlays/elasticsearch");
    check_install(&install);
    let (_, config) = install.config();
    let kinds: Vec<&str> = config.sinks.values().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["elasticsearch"]);
}

#[test]
fn the_cri_dockerd_overlay_mounts_dockers_directory_read_only() {
    let install = Install::render("manifests/overlays/cri-dockerd");
    check_install(&install);
    let (mount, rest) = install.mount_for(Path::new("/var/lib/docker/containers/abc/abc-json.log"));
    assert_eq!(rest, Path::new("abc/abc-json.log"));
    assert_eq!(mount.read_only, Some(true));
    let volume = install.volume(&mount.name);
    assert_eq!(
        volume.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/var/lib/docker/containers")
    );
}

#[test]
fn every_overlay_has_its_test() {
    let dir = repo().join("manifests/overlays");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("failed to list {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("kustomization.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(
        found, OVERLAYS,
        "an overlay was added or removed: give it a test here"
    );
}

#[test]
fn dashboards_query_only_metrics_that_exist() {
    fn exprs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                        _ => exprs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let known = metric_names();
    let dir = repo().join("docs/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("failed to list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboard in docs/dashboards");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("dashboard readable");
        let dashboard: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            dashboard["title"].is_string() && dashboard["uid"].is_string(),
            "{}: title and uid",
            file.display()
        );
        let mut found = Vec::new();
        exprs(&dashboard, &mut found);
        let queries: Vec<&String> = found.iter().filter(|e| e.contains("loglet_")).collect();
        assert!(
            queries.len() >= 10,
            "{}: too few loglet queries",
            file.display()
        );
        for expr in &found {
            if !expr.starts_with("label_values") {
                check_expr(&file.display().to_string(), expr, &known);
            }
        }
        let all = found.join("\n");
        for needed in [
            "loglet_unread_bytes",
            "loglet_lost_bytes_total",
            "loglet_sink_errors_total",
            "loglet_oldest_unacknowledged_seconds",
        ] {
            assert!(
                all.contains(needed),
                "{}: no panel shows {needed}",
                file.display()
            );
        }
    }
}

#[test]
fn strict_parsing_rejects_a_misspelled_field() {
    let doc = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"containers": [{"name": "c", "volumeMounts": [
                {"name": "v", "mountPath": "/v", "readonly": true}
            ]}]}}
        }
    });
    let e = strict::<DaemonSet>(&doc).expect_err("a misspelled field is an error");
    assert!(e.contains("readonly"), "{e}");
    let mut fixed = doc.clone();
    fixed["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0] =
        serde_json::json!({"name": "v", "mountPath": "/v", "readOnly": true});
    strict::<DaemonSet>(&fixed).expect("the spelled-right object parses");
}

#[test]
fn the_metric_name_scan_sees_only_whole_names() {
    assert_eq!(
        used_metrics("sum(rate(loglet_sink_errors_total{sink=\"loglet_x\"}[5m])) / my_loglet_y"),
        ["loglet_sink_errors_total"]
    );
}

/// The image is built with the build settings of `.cargo/config.toml` (jemalloc's defaults,
/// src/main.rs): the build stage copies it before its first `cargo build`, and `.dockerignore`
/// lets it into the context.
#[test]
fn the_image_is_built_with_the_repositorys_cargo_settings() {
    let docker = read("Dockerfile");
    let copy = docker
        .find("COPY .cargo .cargo")
        .expect("the Dockerfile copies .cargo");
    let build = docker.find("cargo build").expect("the Dockerfile builds");
    assert!(
        copy < build,
        ".cargo is copied before the first cargo build"
    );
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "!.cargo/"),
        ".dockerignore lets .cargo/ into the context"
    );
    assert!(read(".cargo/config.toml").contains("JEMALLOC_SYS_WITH_MALLOC_CONF"));
}
