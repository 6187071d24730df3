//! Routing by annotations end to end through the real binary: Namespaces and Pods of the fake
//! Kubernetes API annotated as docs/annotations.md says, lines in a kubelet tree on disk, and
//! fake Loki and Elasticsearch backends that store what they receive with its tenant and index.

#[path = "common/backends.rs"]
mod backends;
#[path = "common/fake_api.rs"]
mod fake_api;
#[path = "common/loglet.rs"]
mod loglet;
#[path = "common/node.rs"]
mod node;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use backends::{Answer, Backend, Kind, Received};
use fake_api::{
    FakeApi, namespace, namespace_with_annotations, pod, with_annotations, with_containers,
};
use loglet::{Loglet, config, wait_until};
use node::Node;

const NODE: &str = "node-a";

fn start(node: &Node, work: &Path, api: &FakeApi, extra: &str, sinks: &str) -> Loglet {
    std::fs::create_dir_all(work).unwrap();
    let kubeconfig = api.write_kubeconfig(work);
    let extra = format!(
        "kubernetes:\n  kubeconfig: {}\n  metadata_wait: 2s\n{extra}",
        kubeconfig.display()
    );
    Loglet::start_with_env(
        node.root(),
        work,
        &config(&extra, sinks),
        &[("NODE_NAME", NODE)],
    )
}

/// Lines by tenant as Loki stored them.
fn loki_by_tenant(r: &Received) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in &r.loki {
        m.entry(e.tenant.clone().unwrap_or_default())
            .or_default()
            .insert(e.line.clone());
    }
    m
}

/// Messages by index as Elasticsearch stored them.
fn es_by_index(r: &Received) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in &r.es {
        m.entry(d.index.clone())
            .or_default()
            .insert(d.doc["message"].as_str().unwrap_or_default().to_string());
    }
    m
}

fn set(lines: &[&str]) -> BTreeSet<String> {
    lines.iter().map(|s| s.to_string()).collect()
}

#[test]
fn namespaces_and_pods_choose_routes_tenants_and_indices_and_changes_apply_at_run_time() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let loki = rt.block_on(Backend::start(Kind::Loki));
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    let api = FakeApi::start_background();
    api.apply_namespace(&namespace_with_annotations(
        namespace("shop", &[]),
        &[("loglet.io/route", "teams")],
    ));
    api.apply_namespace(&namespace("pay", &[]));
    api.apply_namespace(&namespace_with_annotations(
        namespace("ops", &[]),
        &[("loglet.io/exclude", "true")],
    ));
    // shop/web: the namespace's route, but not its sidecar proxy.
    api.apply_pod(&with_annotations(
        with_containers(
            pod("shop", "web-1", "uid-web", NODE),
            &[("app", "shop/web:1"), ("istio-proxy", "istio/proxyv2:1.24")],
        ),
        &[("loglet.io/exclude-containers", "istio-proxy")],
    ));
    // shop/audit: its own tenant and index, among those the route allows.
    api.apply_pod(&with_annotations(
        pod("shop", "audit-1", "uid-audit", NODE),
        &[
            ("loglet.io/tenant", "shop-audit"),
            ("loglet.io/index", "logs-shop-audit-%Y"),
        ],
    ));
    // pay/api: tries another team's tenant, which the default route does not allow.
    api.apply_pod(&with_annotations(
        pod("pay", "api-1", "uid-api", NODE),
        &[("loglet.io/tenant", "shop")],
    ));
    // pay/batch: names a route the config does not have.
    api.apply_pod(&with_annotations(
        pod("pay", "batch-1", "uid-batch", NODE),
        &[("loglet.io/route", "nope")],
    ));
    // ops/job: a Pod can opt back in where its Namespace is excluded.
    api.apply_pod(&pod("ops", "noisy-1", "uid-noisy", NODE));
    api.apply_pod(&with_annotations(
        pod("ops", "keep-1", "uid-keep", NODE),
        &[("loglet.io/exclude", "false")],
    ));

    let node = Node::new();
    let work = node.root().join("work");
    let mut web = node.container("shop", "web-1", "uid-web", "app");
    let mut proxy = node.container("shop", "web-1", "uid-web", "istio-proxy");
    let mut audit = node.container("shop", "audit-1", "uid-audit", "app");
    let mut pay = node.container("pay", "api-1", "uid-api", "app");
    let mut batch = node.container("pay", "batch-1", "uid-batch", "app");
    let mut noisy = node.container("ops", "noisy-1", "uid-noisy", "app");
    let mut keep = node.container("ops", "keep-1", "uid-keep", "app");
    let web_time = web.line("stdout", b"web 1");
    proxy.line("stdout", b"proxy 1");
    audit.line("stdout", b"audit 1");
    pay.line("stdout", b"pay 1");
    batch.line("stdout", b"batch 1");
    noisy.line("stdout", b"noisy 1");
    keep.line("stdout", b"keep 1");

    let sinks = format!(
        "  es:\n    type: elasticsearch\n    url: {}\n  loki:\n    type: loki\n    url: {}\n",
        es.url, loki.url
    );
    let routes = "routes:
  default: {sinks: [loki], tenant: shared}
  teams:
    sinks: [loki, es]
    labels: {route: teams}
    tenant: '{namespace}'
    allowed_tenants: ['{namespace}', '{namespace}-audit']
    index: 'logs-{namespace}-%Y.%m.%d'
    allowed_indices: ['logs-{namespace}-*']
";
    let l = start(&node, &work, &api, routes, &sinks);
    // The index's date is the line's, from the tree writer's clock.
    let date = node::rfc3339_nano(web_time);
    let year = &date[..4];
    let want_loki = BTreeMap::from([
        ("shared".to_string(), set(&["pay 1", "batch 1", "keep 1"])),
        ("shop".to_string(), set(&["web 1"])),
        ("shop-audit".to_string(), set(&["audit 1"])),
    ]);
    let got =
        rt.block_on(loki.wait_until(Duration::from_secs(30), |r| loki_by_tenant(r) == want_loki));
    assert!(got, "loki: {:?}", loki_by_tenant(&loki.received()));
    let web_index = format!("logs-shop-{}.{}.{}", &date[..4], &date[5..7], &date[8..10]);
    let want_es = BTreeMap::from([
        (web_index.clone(), set(&["web 1"])),
        (format!("logs-shop-audit-{year}"), set(&["audit 1"])),
    ]);
    let got = rt.block_on(es.wait_until(Duration::from_secs(10), |r| es_by_index(r) == want_es));
    assert!(got, "es: {:?}", es_by_index(&es.received()));
    // The route's extra labels: a Loki stream label, and `labels` in the JSON document.
    for e in loki.received().loki {
        let want = (e.line == "web 1" || e.line == "audit 1").then_some("teams");
        assert_eq!(e.labels.get("route").map(String::as_str), want, "{e:?}");
    }
    for d in es.received().es {
        assert_eq!(d.doc["labels"]["route"], "teams", "{:?}", d.doc);
    }
    assert_eq!(
        l.metric("loglet_annotation_errors_total{annotation=\"loglet.io/tenant\"}"),
        1.0
    );
    assert_eq!(
        l.metric("loglet_annotation_errors_total{annotation=\"loglet.io/route\"}"),
        1.0
    );
    assert_eq!(
        l.metric("loglet_records_discarded_total{reason=\"excluded\"}"),
        2.0,
        "proxy 1 and noisy 1"
    );
    let log = l.log();
    assert!(
        log.contains("Pod pay/api-1: annotation loglet.io/tenant=\\\"shop\\\" is not among the tenants the route default allows"),
        "{log}"
    );

    // At run time: pay moves to the teams route, and web's Pod stops excluding its proxy.
    api.apply_namespace(&namespace_with_annotations(
        namespace("pay", &[]),
        &[("loglet.io/route", "teams")],
    ));
    api.apply_pod(&with_containers(
        pod("shop", "web-1", "uid-web", NODE),
        &[("app", "shop/web:1"), ("istio-proxy", "istio/proxyv2:1.24")],
    ));
    // The watcher's events and the new lines race; lines written once the change is seen take
    // the new route, so write until one arrives there.
    let mut n = 2;
    wait_until(Duration::from_secs(30), "pay on the teams route", || {
        pay.line("stdout", format!("pay {n}").as_bytes());
        proxy.line("stdout", format!("proxy {n}").as_bytes());
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
        let r = loki.received();
        let t = loki_by_tenant(&r);
        (t.get("pay").is_some_and(|s| !s.is_empty())
            && t.get("shop")
                .is_some_and(|s| s.iter().any(|l| l.starts_with("proxy"))))
        .then_some(())
    });
    let r = rt.block_on(async {
        es.wait_until(Duration::from_secs(10), |r| {
            r.es.iter().any(|d| d.index.starts_with("logs-pay-"))
        })
        .await;
        es.received()
    });
    assert!(
        r.es.iter().any(|d| d.index.starts_with("logs-pay-")),
        "{:?}",
        es_by_index(&r)
    );
    // Every line arrived once, on one route or the other.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in &loki.received().loki {
        *seen.entry(e.line.clone()).or_default() += 1;
    }
    for i in 1..n {
        let line = format!("pay {i}");
        assert_eq!(seen.get(&line), Some(&1), "{line}");
    }
    assert_eq!(l.stop(), 0);
}

#[test]
fn splunk_hec_index_source_and_sourcetype_follow_the_route_and_what_it_allows() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let hec = rt.block_on(Backend::start(Kind::SplunkHec));
    let api = FakeApi::start_background();
    api.apply_namespace(&namespace_with_annotations(
        namespace("shop", &[]),
        &[("loglet.io/route", "splunk")],
    ));
    api.apply_namespace(&namespace("pay", &[]));
    api.apply_pod(&pod("shop", "web-1", "uid-web", NODE));
    // shop/audit: its own source and sourcetype, among those the route allows.
    api.apply_pod(&with_annotations(
        pod("shop", "audit-1", "uid-audit", NODE),
        &[
            ("loglet.io/source", "shop:audit-trail"),
            ("loglet.io/sourcetype", "shop:audit"),
        ],
    ));
    // pay/api: the default route allows no sourcetype of its choosing.
    api.apply_pod(&with_annotations(
        pod("pay", "api-1", "uid-api", NODE),
        &[("loglet.io/sourcetype", "pay:json")],
    ));
    let node = Node::new();
    let work = node.root().join("work");
    node.container("shop", "web-1", "uid-web", "app")
        .line("stdout", b"web 1");
    node.container("shop", "audit-1", "uid-audit", "app")
        .line("stdout", b"audit 1");
    node.container("pay", "api-1", "uid-api", "app")
        .line("stdout", b"pay 1");
    let sinks = format!(
        "  hec:\n    type: splunk_hec\n    url: {}\n    splunk_hec: {{token: test-token}}\n",
        hec.url
    );
    let routes = "routes:
  default: {sinks: [hec]}
  splunk:
    sinks: [hec]
    index: 'k8s-{namespace}'
    source: 'k8s:{namespace}/{pod}'
    sourcetype: 'kube:{namespace}'
    allowed_sources: ['{namespace}:*']
    allowed_sourcetypes: ['{namespace}:*']
";
    let l = start(&node, &work, &api, routes, &sinks);
    assert!(
        rt.block_on(hec.wait_until(Duration::from_secs(30), |r| r.hec.len() >= 3)),
        "{:?}",
        hec.received().hec
    );
    let events = hec.received().hec;
    assert_eq!(events.len(), 3, "{events:?}");
    let by = |line: &str| {
        events
            .iter()
            .find(|e| e["event"] == line)
            .unwrap_or_else(|| panic!("no event {line}: {events:?}"))
    };
    let (web, audit, pay) = (by("web 1"), by("audit 1"), by("pay 1"));
    assert_eq!(
        (&web["index"], &web["source"], &web["sourcetype"]),
        (
            &"k8s-shop".into(),
            &"k8s:shop/web-1".into(),
            &"kube:shop".into()
        )
    );
    assert_eq!(
        (&audit["index"], &audit["source"], &audit["sourcetype"]),
        (
            &"k8s-shop".into(),
            &"shop:audit-trail".into(),
            &"shop:audit".into()
        )
    );
    // The sink's own: no index (the token's default), the file, Splunk's usual sourcetype.
    assert!(pay.get("index").is_none(), "{pay}");
    assert!(
        pay["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("pay_api-1_uid-api/app/0.log")),
        "{pay}"
    );
    assert_eq!(pay["sourcetype"], "kube:container:app");
    assert_eq!(
        l.metric("loglet_annotation_errors_total{annotation=\"loglet.io/sourcetype\"}"),
        1.0
    );
    assert_eq!(l.stop(), 0);
}

#[test]
fn a_rate_limited_namespace_drops_and_counts_while_its_neighbour_is_untouched() {
    let api = FakeApi::start_background();
    api.apply_namespace(&namespace_with_annotations(
        namespace("noisy", &[]),
        &[("loglet.io/rate-limit-lines", "100")],
    ));
    api.apply_namespace(&namespace("quiet", &[]));
    api.apply_pod(&pod("noisy", "spam-1", "uid-spam", NODE));
    api.apply_pod(&pod("quiet", "calm-1", "uid-calm", NODE));
    let node = Node::new();
    let work = node.root().join("work");
    let mut spam = node.container("noisy", "spam-1", "uid-spam", "app");
    let mut calm = node.container("quiet", "calm-1", "uid-calm", "app");
    for i in 0..5000 {
        spam.line("stdout", format!("spam {i}").as_bytes());
        if i % 10 == 0 {
            calm.line("stdout", format!("calm {i}").as_bytes());
        }
    }
    let l = start(
        &node,
        &work,
        &api,
        "routing:\n  namespace_rate_limit: {burst: 1s}\n",
        "  out:\n    type: stdout\n",
    );
    let dropped = "loglet_rate_limited_records_total{namespace=\"noisy\"}";
    let records = wait_until(Duration::from_secs(30), "every line accounted for", || {
        let records = l.stdout_records();
        let spam = records
            .iter()
            .filter(|r| r["message"].as_str().unwrap_or("").starts_with("spam"))
            .count();
        let calm = records.len() - spam;
        (calm == 500 && spam as f64 + l.metric(dropped) == 5000.0).then_some(records)
    });
    let spam: Vec<&str> = records
        .iter()
        .filter_map(|r| r["message"].as_str())
        .filter(|m| m.starts_with("spam"))
        .collect();
    // A burst of one second's worth, then 100 a second: a few hundred at most in this test.
    assert!(
        (100..1000).contains(&spam.len()),
        "{} spam lines shipped",
        spam.len()
    );
    assert_eq!(
        spam[..100],
        (0..100).map(|i| format!("spam {i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        l.metric("loglet_records_discarded_total{reason=\"rate_limited\"}"),
        l.metric(dropped)
    );
    assert_eq!(
        l.metric("loglet_rate_limited_records_total{namespace=\"quiet\"}"),
        0.0
    );
    assert_eq!(l.stop(), 0);
}

/// Replaces the config as the kubelet updates a mounted ConfigMap: the new content in a new
/// directory, then an atomic rename of the `..data` symlink that `config.yaml` points through.
fn swap_config(dir: &Path, version: u32, text: &str) {
    let data = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("config.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..v{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[test]
fn a_config_reload_swaps_sinks_with_no_loss_and_an_invalid_one_is_refused() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let first = rt.block_on(Backend::start(Kind::Elasticsearch));
    let second = rt.block_on(Backend::start(Kind::Elasticsearch));
    let node = Node::new();
    let work = node.root().join("work");
    let sink = |url: &str| format!("  es:\n    type: elasticsearch\n    url: {url}\n");
    let first_config = config("kubernetes:\n  enabled: false\n", &sink(&first.url));
    let mut web = node.container("shop", "web-1", "uid-web", "app");
    let mut written = 0;
    let mut write = |n: usize, written: &mut usize| {
        for _ in 0..n {
            web.line(
                "stdout",
                format!("line {written} {}", "x".repeat(100)).as_bytes(),
            );
            *written += 1;
        }
    };
    write(1000, &mut written);
    let l = Loglet::start(node.root(), &work, &first_config);
    // From now on config.yaml is a ConfigMap mount: a path through the `..data` symlink.
    let mount = work.join("mount");
    std::fs::create_dir_all(&mount).unwrap();
    swap_config(&mount, 1, &first_config);
    std::os::unix::fs::symlink(mount.join("..data/config.yaml"), work.join("config.new")).unwrap();
    std::fs::rename(work.join("config.new"), work.join("config.yaml")).unwrap();
    assert!(rt.block_on(first.wait_until(Duration::from_secs(20), |r| r.es.len() == 1000)));

    // An invalid config is refused and the running one keeps shipping.
    swap_config(&mount, 2, "sinks: {es: {type: elasticsearch}}\n");
    wait_until(
        Duration::from_secs(20),
        "the invalid config refused",
        || (l.metric("loglet_config_reloads_total{result=\"invalid\"}") == 1.0).then_some(()),
    );
    write(1000, &mut written);
    assert!(rt.block_on(first.wait_until(Duration::from_secs(20), |r| r.es.len() == 2000)));
    assert!(
        l.log().contains("the changed config file is invalid"),
        "{}",
        l.log()
    );

    // A valid one moves the lines to the second backend while lines keep coming.
    swap_config(
        &mount,
        3,
        &config("kubernetes:\n  enabled: false\n", &sink(&second.url)),
    );
    for _ in 0..40 {
        write(250, &mut written);
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until(Duration::from_secs(20), "the new config applied", || {
        (l.metric("loglet_config_reloads_total{result=\"applied\"}") == 1.0).then_some(())
    });
    write(1000, &mut written);
    let total = |a: &Received, b: &Received| a.es.len() + b.es.len();
    wait_until(Duration::from_secs(30), "every line delivered", || {
        (total(&first.received(), &second.received()) >= written).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let (a, b) = (first.received(), second.received());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for d in a.es.iter().chain(&b.es) {
        *seen
            .entry(d.doc["message"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for i in 0..written {
        let line = format!("line {i} {}", "x".repeat(100));
        assert_eq!(seen.get(&line), Some(&1), "line {i}");
    }
    assert_eq!(seen.len(), written);
    assert!(!b.es.is_empty() && a.es.len() >= 2000);
    assert_eq!(l.stop(), 0);
}

#[test]
fn a_java_stack_trace_arrives_as_one_record_where_the_namespace_asks_for_it() {
    let api = FakeApi::start_background();
    api.apply_namespace(&namespace_with_annotations(
        namespace("shop", &[]),
        &[("loglet.io/multiline", "java")],
    ));
    // One container of the Pod opts out.
    api.apply_pod(&with_annotations(
        with_containers(
            pod("shop", "api-1", "uid-api", NODE),
            &[("app", "shop/api:1"), ("raw", "busybox")],
        ),
        &[("loglet.io/multiline.raw", "none")],
    ));
    let node = Node::new();
    let work = node.root().join("work");
    let mut app = node.container("shop", "api-1", "uid-api", "app");
    let mut raw = node.container("shop", "api-1", "uid-api", "raw");
    // A frame longer than containerd's 16 KiB split: the partial merge comes first.
    let long_frame = format!("\tat com.example.{}(Gen.java:1)", "x".repeat(20_000));
    let trace = [
        "2024-05-01 10:00:00 ERROR [main] c.e.Api - request failed",
        "java.lang.IllegalStateException: boom",
        "\tat com.example.Api.handle(Api.java:42)",
        &long_frame,
        "Caused by: java.io.IOException: disk full",
        "\tat com.example.Store.write(Store.java:7)",
        "\t... 2 more",
    ];
    for l in trace {
        app.line("stderr", l.as_bytes());
        raw.line("stderr", l.as_bytes());
    }
    app.line("stdout", b"served /health");
    app.line(
        "stderr",
        b"2024-05-01 10:00:01 INFO [main] c.e.Api - recovered",
    );
    let l = start(&node, &work, &api, "", "  out:\n    type: stdout\n");
    let records = wait_until(Duration::from_secs(30), "the trace and the rest", || {
        let r = l.stdout_records();
        (r.len() >= 3 + trace.len()).then_some(r)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let records = if l.stdout_records().len() > records.len() {
        l.stdout_records()
    } else {
        records
    };
    let of = |c: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["kubernetes"]["container"] == c)
            .map(|r| r["message"].as_str().unwrap().to_string())
            .collect()
    };
    let app_records = of("app");
    assert_eq!(app_records.len(), 3, "{app_records:#?}");
    assert!(
        app_records.contains(&trace.join("\n")),
        "the whole trace in one record"
    );
    assert!(app_records.contains(&"served /health".to_string()));
    assert_eq!(of("raw").len(), trace.len(), "the container that opted out");
    assert_eq!(l.stop(), 0);
}

#[test]
fn json_and_logfmt_lines_have_their_fields_lifted_and_other_lines_pass_unchanged() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    let api = FakeApi::start_background();
    api.apply_namespace(&namespace_with_annotations(
        namespace("shop", &[]),
        &[("loglet.io/parser", "json")],
    ));
    api.apply_pod(&with_annotations(
        with_containers(
            pod("shop", "api-1", "uid-api", NODE),
            &[("app", "shop/api:1"), ("proxy", "envoy")],
        ),
        &[("loglet.io/parser.proxy", "logfmt")],
    ));
    let node = Node::new();
    let work = node.root().join("work");
    let mut app = node.container("shop", "api-1", "uid-api", "app");
    let mut proxy = node.container("shop", "api-1", "uid-api", "proxy");
    let structured = r#"{"level":"error","message":"db down","attempt":3,"ctx":{"db":"orders"}}"#;
    app.line("stdout", structured.as_bytes());
    app.line("stdout", b"not json at all");
    proxy.line("stdout", br#"level=info path=/cart msg="took 3 ms""#);
    let sinks = format!(
        "  es:\n    type: elasticsearch\n    url: {}\n  out:\n    type: stdout\n",
        es.url
    );
    let l = start(&node, &work, &api, "", &sinks);
    let records = wait_until(Duration::from_secs(30), "three records", || {
        let r = l.stdout_records();
        (r.len() == 3).then_some(r)
    });
    let by = |m: &str| records.iter().find(|r| r["message"] == m).unwrap().clone();
    let r = by(structured);
    assert_eq!(r["level"], "error", "{r}");
    assert_eq!(r["_message"], "db down", "a clashing key is renamed");
    assert_eq!(r["attempt"], 3);
    assert_eq!(r["ctx"]["db"], "orders");
    let r = by("not json at all");
    assert!(r.get("level").is_none(), "{r}");
    let r = by(r#"level=info path=/cart msg="took 3 ms""#);
    assert_eq!(
        (r["level"].as_str(), r["msg"].as_str()),
        (Some("info"), Some("took 3 ms"))
    );
    assert!(rt.block_on(es.wait_until(Duration::from_secs(10), |r| r.es.len() == 3)));
    let doc = es
        .received()
        .es
        .into_iter()
        .find(|d| d.doc["message"] == structured)
        .unwrap();
    assert_eq!(doc.doc["ctx"]["db"], "orders", "{:?}", doc.doc);
    assert_eq!(
        l.metric("loglet_parsed_lines_total{parser=\"json\",result=\"unparsed\"}"),
        1.0
    );
    assert_eq!(l.stop(), 0);
}

/// How many times each message was stored by an Elasticsearch backend.
fn es_counts(es: &Backend) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for d in es.received().es {
        *n.entry(d.doc["message"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    n
}

#[test]
fn a_sink_that_is_down_holds_back_only_the_files_routed_to_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let slow = rt.block_on(Backend::start(Kind::Elasticsearch));
    let fast = rt.block_on(Backend::start(Kind::Elasticsearch));
    // Down until the test says otherwise.
    slow.script(std::iter::repeat_n(Answer::unavailable(), 1_000_000));
    let api = FakeApi::start_background();
    api.apply_namespace(&namespace("shop", &[]));
    api.apply_pod(&with_annotations(
        pod("shop", "archive-0", "uid-archive", NODE),
        &[("loglet.io/route", "archive")],
    ));
    api.apply_pod(&pod("shop", "web-0", "uid-web", NODE));
    let node = Node::new();
    let work = node.root().join("work");
    let mut archived = node.container("shop", "archive-0", "uid-archive", "app");
    let mut web = node.container("shop", "web-0", "uid-web", "app");
    // Enough for the slow sink's queue to fill many times over (4 MiB), and more than loglet
    // reads at once.
    let pad = "x".repeat(400);
    let held: Vec<String> = (0..10_000).map(|i| format!("archived {i} {pad}")).collect();
    for m in &held {
        archived.line("stdout", m.as_bytes());
    }
    let sinks = format!(
        "  slow:\n    type: elasticsearch\n    url: {}\n    batch: {{max_records: 10}}\n    request: {{concurrency: 1, retry_initial_backoff: 20ms, retry_max_backoff: 200ms}}\n  fast:\n    type: elasticsearch\n    url: {}\n",
        slow.url, fast.url
    );
    std::fs::create_dir_all(&work).unwrap();
    // Under `pipeline:` of the test config, then the rest.
    let extra = format!(
        "  batch_max_records: 10\n  queue_batches: 1\nkubernetes:\n  kubeconfig: {}\n  metadata_wait: 2s\nroutes:\n  default: {{sinks: [fast]}}\n  archive: {{sinks: [slow]}}\n",
        api.write_kubeconfig(&work).display()
    );
    let l = Loglet::start_with_env(
        node.root(),
        &work,
        &config(&extra, &sinks),
        &[("NODE_NAME", NODE)],
    );
    wait_until(Duration::from_secs(30), "the slow sink to retry", || {
        (l.metric("loglet_sink_retries_total{sink=\"slow\"}") >= 3.0).then_some(())
    });
    // The other route flows on, line after line, while the slow sink is still down.
    let mut flowed = Vec::new();
    for round in 0..5 {
        let batch: Vec<String> = (0..20).map(|i| format!("web {round} {i}")).collect();
        for m in &batch {
            web.line("stdout", m.as_bytes());
        }
        flowed.extend(batch);
        wait_until(Duration::from_secs(30), "the fast route's lines", || {
            let got = es_counts(&fast);
            flowed.iter().all(|m| got.contains_key(m)).then_some(())
        });
    }
    assert!(slow.received().es.is_empty());
    assert!(
        l.metric("loglet_unread_bytes") > 0.0,
        "the slow route's file waits unread"
    );
    // Back up: the held lines arrive, each once, and the fast ones were stored once.
    slow.clear_script();
    let got = wait_until(Duration::from_secs(60), "the held lines", || {
        let got = es_counts(&slow);
        held.iter().all(|m| got.contains_key(m)).then_some(got)
    });
    assert!(
        got.values().all(|n| *n == 1),
        "the slow sink got a line twice"
    );
    assert_eq!(got.len(), held.len());
    assert!(es_counts(&fast).values().all(|n| *n == 1));
    assert_eq!(l.stop(), 0);
}
