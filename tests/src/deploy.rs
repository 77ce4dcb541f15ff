//! `deploy/` checked as a cluster and a Prometheus would read it: every manifest parses and
//! `kubectl kustomize` renders; the DaemonSet asks for the named capabilities and nothing
//! else, mounts the host read-only, and the agent really runs with just those (here, as
//! root under `setpriv`, as runc would start it); the RBAC is read-only and exactly what
//! the agent watches; the alert rules pass `promtool check rules` and their unit tests;
//! the dashboard's and the rules' PromQL (parsed by `promql-parser`) names only metric
//! families a running agent exports; the image's config matches the DaemonSet and it holds
//! both binaries, and its own `sgpath` reads EC2 over HTTPS through a private CA; the krew
//! manifest installs the plugin binary the agent crate builds.
//!
//! Side effects: runs `kubectl kustomize` and `promtool` (temporary files under the
//! system temp dir), `sgpath agent` in a throwaway namespace or a lab's node; the image
//! test builds `cargo xtask image`'s output under target/image/ and target/release-artifacts/,
//! and runs the image's binary as `sgpath hub` against moto behind an HTTPS front on
//! 127.0.0.1 (moto, the front and the hub stopped at its end).

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use promql_parser::{
    label::MatchOp,
    parser::{Expr, VectorSelector},
    util::{ExprVisitor, walk_expr},
};
use serde::Deserialize;
use serde_json::Value;
use xtask::{arch::Arch, lab::Lab};

use crate::{
    agent::Agent,
    observe::{counters, receive, send, udp_in},
};

/// The capabilities the DaemonSet adds, each justified in deploy/agent/daemonset.yaml.
pub const CAPABILITIES: [&str; 5] = ["BPF", "PERFMON", "NET_ADMIN", "SYSLOG", "SYS_RESOURCE"];

/// Host paths the DaemonSet mounts, all read-only. Not /sys/kernel/btf: the container's
/// own sysfs (the runtime mounts one at /sys) shows /sys/kernel/btf/vmlinux, sysfs's
/// /sys/kernel not being namespaced, and a hostPath of it would keep the pod from starting
/// on a node without BTF, where the agent is meant to run degraded.
pub const HOST_PATHS: [&str; 2] = ["/etc/cni/net.d", "/run/netns"];

/// Host paths that may be mounted with a hostPath type other than `DirectoryOrCreate`
/// (`Directory`, `File`, `Socket`, ... or none), because every Linux node has them, with
/// the reason: none. Any other path may be absent on some node, and a type that requires
/// it keeps the pod from ever starting there.
pub const HOST_PATHS_ON_EVERY_NODE: [(&str, &str); 0] = [];

/// Host paths mounted writable, with the reason: none.
pub const WRITABLE_HOST_PATHS: [&str; 0] = [];

/// `<workspace>/deploy`.
pub fn deploy_dir() -> PathBuf {
    xtask::workspace_root().join("deploy")
}

/// The documents of a YAML stream (`---`-separated), as JSON values; empty documents
/// are left out.
pub fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubectl kustomize <deploy/dir>`, parsed.
pub fn render(dir: &str) -> Vec<Value> {
    let path = deploy_dir().join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("kubectl (cargo xtask setup installs it): {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(
        &String::from_utf8_lossy(&out.stdout),
        &path.display().to_string(),
    )
}

/// The one document of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{kind} {name}: {} documents", found.len());
    found[0]
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every YAML and JSON file under deploy/ parses; each kustomization renders, and the
/// base renders exactly the agent and its monitoring.
pub fn deploy_manifests_parse_and_render() {
    let mut files = Vec::new();
    files_under(&deploy_dir(), &mut files);
    let (mut yaml, mut json) = (0, 0);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        match f.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                assert!(
                    !yaml_docs(&text, &f.display().to_string()).is_empty(),
                    "{}",
                    f.display()
                );
                yaml += 1;
            }
            Some("json") => {
                serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                json += 1;
            }
            _ => {}
        }
    }
    assert!(
        yaml >= 8 && json >= 1,
        "{yaml} YAML, {json} JSON files under deploy/"
    );
    // No long-lived token anywhere: no Secret of a ServiceAccount's token, in any file.
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            !text.contains("kubernetes.io/service-account-token"),
            "{}: a Secret token never expires",
            f.display()
        );
    }
    let kinds = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap(),
                    d["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let agent = kinds(&render("agent"));
    let monitoring = kinds(&render("monitoring"));
    let base = kinds(&render("base"));
    let want_agent: BTreeSet<String> = [
        "Namespace/sgpath",
        "ClusterRole/sgpath",
        "ClusterRoleBinding/sgpath",
        "DaemonSet/sgpath",
        "Role/sgpath",
        "RoleBinding/sgpath",
        "ServiceAccount/sgpath",
        // --auth kubernetes, and kubectl sgpath (user-rbac.yaml).
        "ClusterRole/sgpath-auth",
        "ClusterRoleBinding/sgpath-auth",
        "ClusterRole/sgpath-client",
        "ClusterRoleBinding/sgpath-client",
        "ServiceAccount/sgpath-client",
        "ClusterRole/sgpath-user",
        "ClusterRoleBinding/sgpath-user",
        "Role/sgpath-user-hub",
        "RoleBinding/sgpath-user-hub",
    ]
    .map(String::from)
    .into();
    let want_monitoring: BTreeSet<String> = [
        "ConfigMap/sgpath-dashboard",
        "PrometheusRule/sgpath",
        // Prometheus's own ServiceAccount may get /metrics (scraper-rbac.yaml); its token is
        // projected, never stored.
        "ClusterRole/sgpath-metrics-reader",
        "ClusterRoleBinding/sgpath-metrics-reader",
    ]
    .map(String::from)
    .into();
    assert_eq!(agent, want_agent);
    assert_eq!(monitoring, want_monitoring);
    // The cluster's one reader of EC2 (hub.yaml), in base only.
    let want_hub: BTreeSet<String> = [
        "Deployment/sgpath-hub",
        "Service/sgpath-hub",
        "ServiceAccount/sgpath-hub",
        // Finding the agents, asking them, reviewing people's tokens.
        "Role/sgpath-hub",
        "RoleBinding/sgpath-hub",
        "ClusterRole/sgpath-agent-reader",
        "ClusterRoleBinding/sgpath-hub-agents",
        "ClusterRoleBinding/sgpath-hub-auth",
    ]
    .map(String::from)
    .into();
    assert_eq!(base, &(&want_agent | &want_monitoring) | &want_hub);
    // Everything in sgpath's own namespace but the read of aws-node, in kube-system.
    for d in render("base") {
        let kind = d["kind"].as_str().unwrap();
        let name = d["metadata"]["name"].as_str().unwrap();
        match (kind, name) {
            ("ClusterRole" | "ClusterRoleBinding" | "Namespace", _) => {}
            ("Role" | "RoleBinding", "sgpath") => {
                assert_eq!(d["metadata"]["namespace"], "kube-system", "{kind}/{name}")
            }
            _ => assert_eq!(d["metadata"]["namespace"], "sgpath", "{kind}/{name}"),
        }
    }
}

/// The rendered DaemonSet: host network, no privileged anywhere, exactly the named
/// capabilities over drop ALL, no privilege escalation, read-only root and host mounts,
/// every hostPath DirectoryOrCreate (a node lacking one still starts the pod), nothing
/// mounted over /sys (BTF comes from the container's own sysfs), NODE_NAME and the listen
/// address from the downward API, probes on /healthz and /readyz, every node,
/// system-node-critical, a rolling update, requests and limits, and the image
/// `cargo xtask image` tags.
pub fn deploy_daemonset_holds_only_the_named_capabilities() {
    let docs = render("base");
    let text = serde_json::to_string(&docs).unwrap();
    assert!(
        !text.contains("\"privileged\":true"),
        "privileged: true somewhere"
    );
    let ds = find(&docs, "DaemonSet", "sgpath");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    for shared in ["hostPID", "hostIPC"] {
        assert!(
            pod[shared].is_null() || pod[shared] == false,
            "{shared}: {}",
            pod[shared]
        );
    }
    assert_eq!(pod["serviceAccountName"], "sgpath");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null()),
        "a toleration of every taint: {}",
        pod["tolerations"]
    );
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert!(!ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].is_null());
    assert!(pod["initContainers"].is_null(), "no init containers");
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["image"], xtask::image::reference());
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let added: BTreeSet<&str> = strings(&sc["capabilities"]["add"]).into_iter().collect();
    assert_eq!(
        added,
        CAPABILITIES.into_iter().collect(),
        "capabilities added"
    );
    assert!(pod["securityContext"]["sysctls"].is_null());

    let volumes = pod["volumes"].as_array().unwrap();
    // Nothing over the container's /sys: the agent reads BTF from the sysfs the runtime
    // mounts there.
    for m in c["volumeMounts"].as_array().unwrap() {
        let at = m["mountPath"].as_str().unwrap_or("");
        assert!(
            at != "/sys" && !at.starts_with("/sys/"),
            "volume {} mounted at {at}: the container's own /sys shows /sys/kernel/btf",
            m["name"]
        );
    }
    // A hostPath that may be absent on a node must not keep the pod from starting there
    // (on a node without BTF the agent runs degraded, it must not stay ContainerCreating):
    // every hostPath volume is DirectoryOrCreate unless its path is on every Linux node.
    for v in volumes {
        let Some(host) = v["hostPath"].as_object() else {
            continue;
        };
        let name = v["name"].as_str().unwrap_or("?");
        let path = host.get("path").and_then(Value::as_str).unwrap_or("");
        let kind = host.get("type").and_then(Value::as_str).unwrap_or("");
        if kind == "DirectoryOrCreate" || HOST_PATHS_ON_EVERY_NODE.iter().any(|(p, _)| *p == path) {
            continue;
        }
        panic!(
            "hostPath volume {name} ({path}) has type {}: a node without {path} would never \
             start the pod; use DirectoryOrCreate, or list {path} in HOST_PATHS_ON_EVERY_NODE \
             with the reason every Linux node has it",
            if kind.is_empty() {
                "\"\" (unset)"
            } else {
                kind
            }
        );
    }
    // Host mounts: only the listed paths, read-only (none is on the writable list).
    let mut host_paths = BTreeSet::new();
    let mut projected = 0;
    for m in c["volumeMounts"].as_array().unwrap() {
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {}", m["name"]));
        // The one volume that is not the host's: the token the agent shows the hub.
        if v["projected"].is_object() {
            let sources = v["projected"]["sources"].as_array().unwrap();
            assert_eq!(sources.len(), 1, "{v}");
            let t = &sources[0]["serviceAccountToken"];
            assert_eq!(t["audience"], "sgpath", "{v}");
            assert!(t["expirationSeconds"].as_u64().unwrap() <= 900, "{v}");
            assert_eq!(m["readOnly"], true, "{m}");
            projected += 1;
            continue;
        }
        let path = v["hostPath"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}: not a hostPath"));
        host_paths.insert(path);
        let writable = WRITABLE_HOST_PATHS.contains(&path);
        assert_eq!(m["readOnly"] == true, !writable, "{path} mounted {m}");
        assert!(
            m["mountPropagation"].is_null() || m["mountPropagation"] == "HostToContainer",
            "{path}: {}",
            m["mountPropagation"]
        );
    }
    assert_eq!(host_paths, HOST_PATHS.into_iter().collect::<BTreeSet<_>>());
    assert_eq!(projected, 1, "the hub token");
    assert_eq!(
        volumes.len(),
        HOST_PATHS.len() + 1,
        "every volume is mounted"
    );

    // Downward API.
    let env = |name: &str| -> &Value {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(
        env("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env("POD_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    let args = strings(&c["args"]);
    assert_eq!(args[0], "agent");
    let listen = args
        .iter()
        .position(|a| *a == "--listen")
        .expect("--listen");
    assert_eq!(args[listen + 1], "$(POD_IP):9464");
    // No agent calls AWS: the rules come from the hub (an `ec2-unavailable` naming it
    // without one).
    assert!(
        !args.contains(&"--ec2"),
        "the DaemonSet reads EC2: {args:?}"
    );
    let hub = args.iter().position(|a| *a == "--hub").expect("--hub");
    assert_eq!(args[hub + 1], "https://sgpath-hub.sgpath.svc:9465");
    let token = args
        .iter()
        .position(|a| *a == "--hub-token-file")
        .expect("--hub-token-file: the hub gives catalogs only to the agents' tokens");
    assert_eq!(args[token + 1], "/var/run/secrets/sgpath/token");
    let port = &c["ports"][0];
    assert_eq!(
        (port["name"].as_str(), port["containerPort"].as_u64()),
        (Some("metrics"), Some(9464))
    );
    // The probes go to --probe-listen on the node's loopback (hostNetwork: the kubelet's
    // too), plain HTTP, never through the HTTPS port a token flood may fill.
    let probe_listen = args
        .iter()
        .position(|a| *a == "--probe-listen")
        .expect("--probe-listen");
    assert_eq!(args[probe_listen + 1], "127.0.0.1:9463");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            (
                get["host"].as_str(),
                get["port"].as_u64(),
                get["scheme"].as_str()
            ),
            (Some("127.0.0.1"), Some(9463), Some("HTTP")),
            "{probe}"
        );
    }
    for (kind, what) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            c["resources"][kind][what].is_string(),
            "resources.{kind}.{what}"
        );
    }
}

/// The ClusterRole reads exactly what the agent watches, with get/list/watch only; the
/// Role reads the DaemonSets of kube-system; both are bound to the agent's account.
pub fn deploy_rbac_reads_exactly_what_the_agent_watches() {
    let docs = render("base");
    type Grant = (String, String, BTreeSet<String>);
    let grants = |role: &Value| -> BTreeSet<Grant> {
        let mut out = BTreeSet::new();
        for r in role["rules"].as_array().unwrap() {
            for key in ["resourceNames", "nonResourceURLs"] {
                assert!(r[key].is_null(), "{key} in {r}");
            }
            let verbs: BTreeSet<String> =
                strings(&r["verbs"]).into_iter().map(String::from).collect();
            for v in &verbs {
                assert!(
                    ["get", "list", "watch"].contains(&v.as_str()),
                    "verb {v} in {r}"
                );
            }
            for g in strings(&r["apiGroups"]) {
                for res in strings(&r["resources"]) {
                    assert!(!res.contains('*') && !g.contains('*'), "wildcard in {r}");
                    out.insert((g.to_owned(), res.to_owned(), verbs.clone()));
                }
            }
        }
        out
    };
    let g = |group: &str, res: &str, verbs: &[&str]| -> Grant {
        (
            group.into(),
            res.into(),
            verbs.iter().map(|v| v.to_string()).collect(),
        )
    };
    let all = ["get", "list", "watch"];
    assert_eq!(
        grants(find(&docs, "ClusterRole", "sgpath")),
        BTreeSet::from([
            g("", "pods", &all),
            g("", "services", &["list", "watch"]),
            g("", "serviceaccounts", &["list", "watch"]),
            g("", "nodes", &all),
            g(
                "vpcresources.k8s.aws",
                "securitygrouppolicies",
                &["list", "watch"]
            ),
        ])
    );
    let role = find(&docs, "Role", "sgpath");
    assert_eq!(role["metadata"]["namespace"], "kube-system");
    assert_eq!(
        grants(role),
        BTreeSet::from([g("apps", "daemonsets", &all)])
    );
    // The hub lists the agent pods, in sgpath's namespace only.
    let hub = find(&docs, "Role", "sgpath-hub");
    assert_eq!(hub["metadata"]["namespace"], "sgpath");
    assert_eq!(grants(hub), BTreeSet::from([g("", "pods", &["list"])]));
    for (kind, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let b = find(&docs, kind, "sgpath");
        assert_eq!(b["roleRef"]["kind"], role_kind);
        assert_eq!(b["roleRef"]["name"], "sgpath");
        assert_eq!(
            b["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "sgpath", "namespace": "sgpath"}])
        );
    }
    // The others: reviews (sgpath-auth) and the plugin's and the scraper's roles, each
    // asserted in fleet.rs.
    assert_eq!(
        docs.iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "sgpath",
            "sgpath-auth",
            "sgpath-client",
            "sgpath-metrics-reader",
            "sgpath-user",
            "sgpath-agent-reader",
        ])
    );
    assert_eq!(
        docs.iter()
            .filter(|d| d["kind"] == "Role")
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["sgpath", "sgpath-hub", "sgpath-user-hub"])
    );
}

/// The PrometheusRule's groups, as a plain rules file, pass `promtool check rules` and
/// the unit tests of deploy/tests/alerts.test.yaml; every alert has a severity, a summary
/// and a description naming the `kubectl logs` (or `kubectl get`) command, and a unit test
/// where it fires and one where it must not; no alert reads refused SYNs or drops other
/// than class="path", and each is asserted silent on a healthy node under load.
pub fn deploy_alert_rules_pass_promtool() {
    let docs = render("monitoring");
    let rule = find(&docs, "PrometheusRule", "sgpath");
    let groups = serde_json::json!({"groups": rule["spec"]["groups"]});
    let dir = std::env::temp_dir().join(format!("sgpath-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("sgpath-rules.yaml"),
        serde_norway::to_string(&groups).unwrap(),
    )
    .unwrap();
    let tests = deploy_dir().join("tests/alerts.test.yaml");
    std::fs::copy(&tests, dir.join("alerts.test.yaml")).unwrap();
    for args in [
        ["check", "rules", "sgpath-rules.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("promtool (Debian's prometheus, cargo xtask setup): {e}"));
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).ok();

    let unit = yaml_docs(
        &std::fs::read_to_string(&tests).unwrap(),
        "alerts.test.yaml",
    );
    let cases: Vec<&Value> = unit[0]["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .collect();
    let alerts: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r["alert"].is_string())
        .collect();
    assert!(alerts.len() >= 4, "{} alerts", alerts.len());

    // What no alert may be built on: a refused SYN (RST or ICMP port unreachable: the port
    // is closed, the security groups admitted it) and endpoint-class drops (QUEUE_PURGE,
    // NO_SOCKET, the TCP state machine: a healthy node under load counts thousands).
    for a in &alerts {
        let name = a["alert"].as_str().unwrap();
        let expr = a["expr"].as_str().unwrap();
        for vs in selectors(expr) {
            let family = vs.name.as_deref().unwrap_or("");
            assert_ne!(
                family, "sgpath_path_syn_refused_total",
                "{name}: a refused SYN is an answer, never an alert: {expr}"
            );
            if family == "sgpath_path_drops_total" {
                assert!(
                    vs.matchers.matchers.iter().any(|m| {
                        m.name == "class" && matches!(m.op, MatchOp::Equal) && m.value == "path"
                    }),
                    "{name}: drops not restricted to class=\"path\": {expr}"
                );
            }
        }
    }
    // A healthy node under HTTP load (endpoint-class drops and refused SYNs rising) is a
    // unit test where every alert is asserted silent.
    let healthy: Vec<&Value> = unit[0]["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            let series: Vec<&str> = t["input_series"]
                .as_array()
                .map(|s| s.iter().filter_map(|s| s["series"].as_str()).collect())
                .unwrap_or_default();
            series.iter().any(|s| {
                s.starts_with("sgpath_path_drops_total{") && s.contains("class=\"endpoint\"")
            }) && series
                .iter()
                .any(|s| s.starts_with("sgpath_path_syn_refused_total{"))
        })
        .collect();
    for a in &alerts {
        let name = a["alert"].as_str().unwrap();
        assert!(
            healthy.iter().any(|t| {
                t["alert_rule_test"].as_array().unwrap().iter().any(|c| {
                    c["alertname"] == name && c["exp_alerts"].as_array().is_some_and(Vec::is_empty)
                })
            }),
            "{name}: no unit test asserts it silent on a healthy node (endpoint-class drops \
             and refused SYNs rising)"
        );
    }

    for a in alerts {
        let name = a["alert"].as_str().unwrap();
        assert!(
            ["warning", "critical"].contains(&a["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity {}",
            a["labels"]["severity"]
        );
        let ann = &a["annotations"];
        assert!(ann["summary"].is_string(), "{name}: no summary");
        let description = ann["description"].as_str().unwrap_or("");
        assert!(
            description.contains("kubectl "),
            "{name}: the description names no kubectl command"
        );
        let fires = cases.iter().any(|c| {
            c["alertname"] == name && c["exp_alerts"].as_array().is_some_and(|e| !e.is_empty())
        });
        let silent = cases.iter().any(|c| {
            c["alertname"] == name && c["exp_alerts"].as_array().is_some_and(Vec::is_empty)
        });
        assert!(
            fires && silent,
            "{name}: a unit test where it fires ({fires}) and one where it must not ({silent})"
        );
    }
}

/// Metric names and the matchers on them in a PromQL expression.
#[derive(Default)]
struct Selectors(Vec<VectorSelector>);

impl ExprVisitor for Selectors {
    type Error = String;
    fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
        match e {
            Expr::VectorSelector(vs) => self.0.push(vs.clone()),
            Expr::MatrixSelector(ms) => self.0.push(ms.vs.clone()),
            _ => {}
        }
        Ok(true)
    }
}

/// Grafana's variables replaced by what PromQL accepts; `$node` by a marker the checks
/// look for.
const NODE_MARKER: &str = "__node_variable__";

fn selectors(expr: &str) -> Vec<VectorSelector> {
    let promql = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "6h")
        .replace("${node}", NODE_MARKER)
        .replace("$node", NODE_MARKER);
    let ast = promql_parser::parser::parse(&promql).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut s = Selectors::default();
    walk_expr(&mut s, &ast).unwrap();
    s.0
}

/// The metric families `sgpath agent` exports. First those a running agent in the lab's
/// node writes a `# TYPE` line for (prometheus-client writes none for a family without
/// series), after traffic that gives it forwarded packets, drops, an unanswered SYN and
/// packets leaving the node; then, for families that had no series in that run (probe
/// errors need a full map), the names registered in agent/src/report/prometheus.rs, as
/// counters (`_total`: the two gauges always have series).
pub fn exported_families(lab: &Lab) -> BTreeSet<String> {
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let (a_ns, a_ip) = crate::ordinary_pod(lab);
    let agent = Agent::in_lab(lab, &["--syn-timeout", "1s"]);
    let node_tx = udp_in(&node, (node_ip, 0).into());
    send(&node_tx, (a_ip, 7033).into(), 3, 10);
    crate::observe::in_netns(&a_ns, || {
        let _ = std::net::TcpStream::connect_timeout(
            &(Ipv4Addr::new(192, 168, 99, 99), 4444).into(),
            Duration::from_millis(300),
        );
    });
    let wanted = [
        "sgpath_path_packets_total",
        "sgpath_path_drops_total",
        "sgpath_path_syn_unanswered_total",
    ];
    let t = Instant::now();
    let live = loop {
        let (status, metrics) = agent.request("GET", "/metrics", &[]);
        assert_eq!(status, 200, "{metrics}");
        let live: BTreeSet<String> = metrics
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect();
        if wanted.iter().all(|w| live.contains(*w)) || t.elapsed() > Duration::from_secs(10) {
            break live;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(agent.terminate().success());
    let source =
        std::fs::read_to_string(xtask::workspace_root().join("agent/src/report/prometheus.rs"))
            .unwrap();
    // Families go in through `registry.register(` or, per path, `Samples::counter(`; the
    // HTTP server's own (`sgpath_http_*`) through `family(` in agent/src/agent/http.rs.
    let server =
        std::fs::read_to_string(xtask::workspace_root().join("agent/src/agent/http.rs")).unwrap();
    let mut registered: Vec<String> = ["registry.register(", "Samples::counter("]
        .iter()
        .flat_map(|call| source.split(call).skip(1))
        .filter_map(|call| call.split('"').nth(1).map(String::from))
        .collect();
    registered.extend(
        server
            .split("family(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next().map(String::from)),
    );
    assert!(
        registered.len() >= 9,
        "registrations in prometheus.rs: {registered:?}"
    );
    for family in &live {
        assert!(
            registered
                .iter()
                .any(|r| family == r || *family == format!("{r}_total")),
            "{family} is exported but not registered in prometheus.rs"
        );
    }
    let mut all = live.clone();
    for r in registered {
        if !live.contains(&r) && !live.contains(&format!("{r}_total")) {
            eprintln!("{r}: no series in this run; taken from prometheus.rs as {r}_total");
            all.insert(format!("{r}_total"));
        }
    }
    for family in [
        "sgpath_path_packets_total",
        "sgpath_path_drops_total",
        "sgpath_finding",
        "sgpath_build_info",
    ] {
        assert!(
            live.contains(family),
            "{family} not in the agent's /metrics: {live:?}"
        );
    }
    all
}

/// Every dashboard panel has a query; every query of the dashboard, its variables and the
/// alert rules parses as PromQL and names only metric families the agent exports (read
/// from a running agent's /metrics) and Prometheus's `up`; the dashboard's queries all
/// filter on the `node` variable.
pub fn deploy_queries_name_only_exported_metrics(lab: &Lab) {
    let exported = exported_families(lab);
    for family in [
        "sgpath_path_packets_total",
        "sgpath_path_drops_total",
        "sgpath_path_syn_unanswered_total",
        "sgpath_finding",
    ] {
        assert!(exported.contains(family), "{family} not in {exported:?}");
    }
    let known = |name: &str| name == "up" || exported.contains(name);
    let path = deploy_dir().join("monitoring/dashboards/sgpath.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 5);
    let mut used = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        let exprs: Vec<&str> = p["targets"]
            .as_array()
            .map(|t| t.iter().filter_map(|t| t["expr"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            !exprs.is_empty() && exprs.iter().all(|e| !e.trim().is_empty()),
            "panel {title:?} has no query"
        );
        for e in exprs {
            for vs in selectors(e) {
                let name = vs
                    .name
                    .clone()
                    .unwrap_or_else(|| panic!("{title}: a selector without a metric name in {e}"));
                assert!(
                    known(&name),
                    "panel {title:?} queries {name}, which the agent does not export: {e}"
                );
                let by_node = vs.matchers.matchers.iter().any(|m| {
                    m.name == "node" && matches!(m.op, MatchOp::Re(_)) && m.value == NODE_MARKER
                });
                assert!(
                    by_node,
                    "panel {title:?}: {name} not filtered by node=~\"$node\": {e}"
                );
                used.insert(name);
            }
        }
    }
    for family in [
        "sgpath_path_packets_total",
        "sgpath_path_drops_total",
        "sgpath_path_syn_unanswered_total",
        "sgpath_finding",
    ] {
        assert!(used.contains(family), "no panel shows {family}");
    }
    let vars = dash["templating"]["list"].as_array().unwrap();
    let node = vars
        .iter()
        .find(|v| v["name"] == "node")
        .expect("a node variable");
    let q = node["query"]["query"]
        .as_str()
        .or(node["query"].as_str())
        .unwrap();
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(", node)"))
        .unwrap_or_else(|| panic!("node variable: {q}"));
    for vs in selectors(inner) {
        assert!(
            known(vs.name.as_deref().unwrap_or("")),
            "node variable: {q}"
        );
    }

    let rule = find(&render("monitoring"), "PrometheusRule", "sgpath").clone();
    for r in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let e = r["expr"].as_str().unwrap();
        for vs in selectors(e) {
            let name = vs.name.unwrap_or_default();
            assert!(known(&name), "alert {} queries {name:?}: {e}", r["alert"]);
        }
    }
}

/// Capability bits of the CapEff line of /proc/<pid>/status.
fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

fn cap_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_RESOURCE" => 24,
        "SYSLOG" => 34,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("no bit for {other}"),
    }
}

/// `setpriv` arguments that leave a root process exactly `caps` (as runc starts a
/// container with `capabilities.add`, `drop: [ALL]` and `allowPrivilegeEscalation: false`).
fn with_caps(caps: &[&str]) -> Vec<String> {
    let set: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", set.join(",")),
        "--inh-caps=-all".into(),
        "--no-new-privs".into(),
    ]
}

/// How long the resource measurement runs (`SGPATH_MEASURE_SECS`, default 5 s).
fn measure_secs() -> u64 {
    std::env::var("SGPATH_MEASURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// The value in kB of a `/proc/<pid>/status` line such as `VmHWM:`.
fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} for {pid}"))
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Bytes the kernel charges for the BPF maps `pid` holds (`memlock:` of each map fd).
fn maps_memlock(pid: u32) -> (usize, u64) {
    let mut maps = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if !info.contains("map_type:") {
            continue;
        }
        maps += 1;
        bytes += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (maps, bytes)
}

/// The agent as the DaemonSet starts it: UID 0 with exactly the DaemonSet's capabilities
/// (less any this test process lacks itself: CAP_SYS_RESOURCE only matters before 5.11),
/// no_new_privs. It becomes ready (CAP_BPF, CAP_PERFMON: tp_btf programs load and attach),
/// reads the pods' addresses from their namespaces (CAP_NET_ADMIN: no `node-read-incomplete`
/// for `pod namespaces`), counts packets to a pod and names the drops of a closed port by
/// the freeing function (CAP_SYSLOG: /proc/kallsyms addresses). Then it runs for
/// `SGPATH_MEASURE_SECS` (default 5) under a steady UDP load and prints its peak RSS,
/// CPU time and the memory its BPF maps hold: the DaemonSet's resources come from here.
pub fn deploy_agent_runs_with_the_daemonset_capabilities(lab: &Lab) {
    let own = effective_caps(std::process::id());
    let caps: Vec<&str> = CAPABILITIES
        .into_iter()
        .filter(|c| own & (1 << cap_bit(c)) != 0)
        .collect();
    if caps.len() < CAPABILITIES.len() {
        eprintln!(
            "this test process lacks {:?}: the agent runs without them",
            CAPABILITIES
                .iter()
                .filter(|c| !caps.contains(c))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        ["BPF", "PERFMON", "NET_ADMIN", "SYSLOG"]
            .iter()
            .all(|c| caps.contains(c)),
        "the test needs CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYSLOG itself"
    );
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let (a_ns, a_ip) = crate::ordinary_pod(lab);
    let cni = lab.cni_config();
    let wrapper = with_caps(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let args = [
        "--cni-config",
        cni.to_str().unwrap(),
        "--drop-source",
        "location",
        "--summary-interval",
        "10s",
    ];
    let start = Instant::now();
    let mut agent = Agent::spawn(&node, &wrapper, &args);
    agent.wait_for("/readyz", 200);
    let ready = start.elapsed();
    let pid = agent.pid();
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    assert_eq!(effective_caps(pid), want, "the agent's CapEff");
    let clk_tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    let ticks_ready = cpu_ticks(pid);

    let node_tx = udp_in(&node, (node_ip, 0).into());
    let a_rx = udp_in(&a_ns, (Ipv4Addr::UNSPECIFIED, 7012).into());
    send(&node_tx, (a_ip, 7012).into(), 20, 100);
    receive(&a_rx, 20);
    send(&node_tx, (a_ip, 7013).into(), 7, 100);
    let doc = agent.report_until(Duration::from_secs(10), |d| {
        counters(d, a_ip)["to_pod"]["forwarded_packets"].as_u64() >= Some(27)
    });
    let c = counters(&doc, a_ip);
    assert_eq!(c["to_pod"]["forwarded_packets"], 27, "{c}");
    assert_eq!(doc["drop_source"], "location");
    assert_eq!(
        c["to_pod"]["drops_by_location"]["__udp4_lib_rcv"], 7,
        "drops named by function (CAP_SYSLOG): {c}"
    );
    let incomplete: Vec<&Value> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "node-read-incomplete")
        .collect();
    assert!(
        incomplete.is_empty(),
        "pod namespaces read (CAP_NET_ADMIN): {incomplete:?}"
    );

    // Steady load: 1000 datagrams a second to the pod, 100 to a closed port, for the
    // measured time; the sweeps and the summary run meanwhile.
    let secs = measure_secs();
    let t0 = Instant::now();
    let ticks0 = cpu_ticks(pid);
    let mut sent = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        let second = Instant::now();
        // In tens, so the pod's receive buffer never overflows (that would be a drop).
        for _ in 0..100 {
            send(&node_tx, (a_ip, 7012).into(), 10, 100);
            receive(&a_rx, 10);
        }
        send(&node_tx, (a_ip, 7013).into(), 100, 100);
        sent += 1100;
        if let Some(rest) = Duration::from_secs(1).checked_sub(second.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let (status, _) = agent.request("GET", "/metrics", &[]);
    assert_eq!(status, 200);
    let _ = agent.report(&[]);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - ticks0) as f64 / clk_tck as f64;
    let (maps, memlock) = maps_memlock(pid);
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    eprintln!(
        "sgpath agent with {caps:?}: ready in {:.2} s ({:.2} s CPU); over {elapsed:.0} s \
         ({sent} datagrams): CPU {cpu:.2} s = {:.1} mCPU; VmHWM {} KiB, VmRSS {} KiB; \
         {maps} BPF maps hold {} KiB (possible CPUs {})",
        ready.as_secs_f64(),
        ticks_ready as f64 / clk_tck as f64,
        cpu / elapsed * 1000.0,
        status_kb(pid, "VmHWM:"),
        status_kb(pid, "VmRSS:"),
        memlock / 1024,
        possible.trim()
    );
    assert!(agent.terminate().success());
}

/// Without any one of CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN or CAP_SYSLOG the agent loses
/// what the DaemonSet's comment says that capability is for: not ready (BPF, PERFMON),
/// pod namespaces unread (NET_ADMIN), drops unnamed (SYSLOG). So none of them is spare.
pub fn deploy_agent_needs_each_capability(lab: &Lab) {
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let a = (0..lab.spec.pods.len())
        .find(|&i| lab.spec.pods[i].vlan.is_none() && lab.spec.pods[i].eni.is_none())
        .expect("an ordinary pod");
    let a_ip = lab.spec.pods[a].ip;
    let cni = lab.cni_config();
    let args = [
        "--cni-config",
        cni.to_str().unwrap(),
        "--drop-source",
        "location",
    ];
    for missing in ["BPF", "PERFMON", "NET_ADMIN", "SYSLOG"] {
        let caps: Vec<&str> = ["BPF", "PERFMON", "NET_ADMIN", "SYSLOG"]
            .into_iter()
            .filter(|c| *c != missing)
            .collect();
        let wrapper = with_caps(&caps);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let mut agent = Agent::spawn(&node, &wrapper, &args);
        match missing {
            "BPF" | "PERFMON" => {
                agent.wait_for("/healthz", 200);
                let t = Instant::now();
                while !agent
                    .log_events()
                    .iter()
                    .any(|e| e["event"] == "probes-failed")
                {
                    assert!(
                        t.elapsed() < Duration::from_secs(60),
                        "without {missing}: {}",
                        agent.log_text()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                assert_eq!(
                    agent.request("GET", "/readyz", &[]).0,
                    503,
                    "without {missing}"
                );
            }
            "NET_ADMIN" => {
                agent.wait_for("/readyz", 200);
                let doc = agent.report(&[]);
                assert!(
                    doc["findings"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|f| f["id"] == "node-read-incomplete"
                            && f["subject"] == "pod namespaces"),
                    "without NET_ADMIN the pod namespaces are unread: {}",
                    doc["findings"]
                );
            }
            "SYSLOG" => {
                agent.wait_for("/readyz", 200);
                let node_tx = udp_in(&node, (node_ip, 0).into());
                send(&node_tx, (a_ip, 7023).into(), 5, 10);
                let doc = agent.report_until(Duration::from_secs(10), |d| {
                    counters(d, a_ip)["to_pod"]["dropped_packets"].as_u64() >= Some(5)
                });
                let c = counters(&doc, a_ip);
                assert!(c["to_pod"]["dropped_packets"].as_u64() >= Some(5), "{c}");
                assert!(
                    c["to_pod"]["drops_by_location"]["__udp4_lib_rcv"].is_null(),
                    "without SYSLOG no function names: {c}"
                );
            }
            _ => unreachable!(),
        }
        assert!(agent.terminate().success(), "without {missing}");
    }
}

/// deploy/krew/sgpath.yaml: a krew `Plugin` named `sgpath` at the workspace version, one
/// platform per architecture (linux/amd64, linux/arm64) whose `bin` and only file are the
/// plugin binary agent/Cargo.toml builds, whose `uri` names that platform's tarball `cargo
/// xtask image` writes, and whose sha256 is that platform's placeholder `cargo xtask image`
/// fills in (and only those change when it does).
pub fn deploy_krew_manifest_installs_the_plugin() {
    let path = deploy_dir().join("krew/sgpath.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs = yaml_docs(&text, &path.display().to_string());
    assert_eq!(docs.len(), 1, "one document");
    let m = &docs[0];
    assert_eq!(
        m["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(m["kind"], "Plugin");
    // krew: the plugin `sgpath` is `kubectl sgpath`, its binary `kubectl-sgpath`.
    assert_eq!(m["metadata"]["name"], "sgpath");
    let spec = &m["spec"];
    assert_eq!(spec["version"], format!("v{}", xtask::image::tag()));
    for key in ["homepage", "shortDescription", "description"] {
        assert!(
            spec[key].as_str().is_some_and(|s| !s.trim().is_empty()),
            "spec.{key}"
        );
    }
    assert!(spec["shortDescription"].as_str().unwrap().len() <= 80);

    let cargo: toml::Table =
        std::fs::read_to_string(xtask::workspace_root().join("agent/Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let bins: Vec<&str> = cargo["bin"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert!(
        bins.contains(&xtask::image::PLUGIN),
        "agent/Cargo.toml builds {bins:?}, not {}",
        xtask::image::PLUGIN
    );
    assert_eq!(
        xtask::image::PLUGIN,
        format!("kubectl-{}", m["metadata"]["name"].as_str().unwrap())
    );

    let platforms = spec["platforms"].as_array().unwrap();
    assert_eq!(
        platforms.len(),
        Arch::ALL.len(),
        "one platform per musl build: linux/amd64 and linux/arm64"
    );
    for (p, arch) in platforms.iter().zip(Arch::ALL) {
        assert_eq!(
            p["selector"],
            serde_json::json!({"matchLabels": {"os": "linux", "arch": arch.name()}})
        );
        assert_eq!(p["bin"], xtask::image::PLUGIN);
        assert_eq!(
            p["files"],
            serde_json::json!([{"from": xtask::image::PLUGIN, "to": "."}])
        );
        let uri = p["uri"].as_str().unwrap();
        assert!(uri.starts_with("https://"), "{uri}");
        assert!(
            uri.ends_with(&format!(
                "/v{}/{}",
                xtask::image::tag(),
                xtask::image::plugin_archive_name(arch)
            )),
            "{uri} does not name the linux/{arch} release tarball"
        );
        assert_eq!(p["sha256"], xtask::image::krew_sha256_placeholder(arch));
    }

    let sums = ["0123456789abcdef".repeat(4), "fedcba9876543210".repeat(4)];
    let filled =
        xtask::image::krew_manifest(&text, &[(Arch::Amd64, &sums[0]), (Arch::Arm64, &sums[1])])
            .unwrap();
    let mut filled = yaml_docs(&filled, "the filled krew manifest").remove(0);
    for (i, arch) in Arch::ALL.into_iter().enumerate() {
        let p = &mut filled["spec"]["platforms"][i];
        assert_eq!(p["sha256"], sums[i].as_str());
        p["sha256"] = xtask::image::krew_sha256_placeholder(arch).into();
    }
    assert_eq!(&filled, m);
}

/// `cargo xtask image`'s output: an OCI layout whose one ref is an image index of linux/amd64
/// and linux/arm64, each image running /usr/bin/sgpath as 0:0, tagged with the version the
/// DaemonSet names, one layer holding only the static binary and the static plugin
/// (/usr/local/bin/kubectl-sgpath), both of the platform's ELF machine and the very files
/// built; the plugin's release files per platform (the binary, the krew tarball, their
/// sha256) and the krew manifest with both sha256.
pub fn deploy_image_matches_the_daemonset() {
    let t = Instant::now();
    let built = xtask::image::build().unwrap_or_else(|e| panic!("cargo xtask image: {e:#}"));
    eprintln!(
        "image built in {:.0} s: index {} ({} bytes)",
        t.elapsed().as_secs_f64(),
        built.index_digest,
        built.size
    );
    let layout = &built.layout;
    let tag = xtask::image::tag();
    let platforms = xtask::image::platforms(layout, tag).unwrap();
    assert_eq!(
        platforms.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        Arch::ALL,
        "one index, linux/amd64 and linux/arm64"
    );
    assert_eq!(platforms, built.manifests);
    let ds = find(&render("agent"), "DaemonSet", "sgpath").clone();
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        xtask::image::reference()
    );
    let dir = std::env::temp_dir().join(format!("sgpath-image-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for arch in Arch::ALL {
        let config = xtask::image::config(layout, tag, arch).unwrap();
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([xtask::image::ENTRYPOINT])
        );
        assert_eq!(config["config"]["User"], "0:0");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], arch.name());
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            tag
        );
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
        let files: BTreeSet<String> = xtask::image::layer_files(layout, tag, arch)
            .unwrap()
            .into_iter()
            .filter(|f| !f.ends_with('/'))
            .collect();
        let want: BTreeSet<String> = [xtask::image::ENTRYPOINT, xtask::image::PLUGIN_IN_IMAGE]
            .map(|f| f.trim_start_matches('/').to_owned())
            .into();
        assert_eq!(files, want, "the linux/{arch} layer's files");
        // Each binary as the image holds it: static, of its platform's machine, the build's.
        for (path, built_file) in [
            (xtask::image::ENTRYPOINT, xtask::image::binary_path(arch)),
            (
                xtask::image::PLUGIN_IN_IMAGE,
                xtask::image::plugin_binary_path(arch),
            ),
        ] {
            let out = dir.join(format!("{arch}-{}", path.rsplit('/').next().unwrap()));
            xtask::image::extract(layout, tag, arch, path, &out).unwrap();
            xtask::image::check_binary(&out, arch)
                .unwrap_or_else(|e| panic!("linux/{arch} {path}: {e:#}"));
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(&built_file).unwrap(),
                "linux/{arch} {path} is not {}",
                built_file.display()
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();

    let r = &built.release;
    assert_eq!(
        r.platforms.iter().map(|p| p.arch).collect::<Vec<_>>(),
        Arch::ALL
    );
    let krew = yaml_docs(
        &std::fs::read_to_string(&r.krew_manifest).unwrap(),
        "the release's krew manifest",
    );
    for (i, p) in r.platforms.iter().enumerate() {
        assert!(
            std::fs::read(&p.binary).unwrap()
                == std::fs::read(xtask::image::plugin_binary_path(p.arch)).unwrap(),
            "the linux/{} release binary",
            p.arch
        );
        assert_eq!(
            p.archive.file_name().unwrap().to_string_lossy(),
            xtask::image::plugin_archive_name(p.arch)
        );
        let listed = Command::new("tar")
            .arg("-tzf")
            .arg(&p.archive)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&listed.stdout).trim(),
            xtask::image::PLUGIN,
            "the linux/{} tarball holds only the plugin, at its root",
            p.arch
        );
        for f in [&p.binary, &p.archive] {
            let sums = f.with_file_name(format!(
                "{}.sha256",
                f.file_name().unwrap().to_string_lossy()
            ));
            let check = Command::new("sha256sum")
                .arg("--check")
                .arg(sums.file_name().unwrap())
                .current_dir(sums.parent().unwrap())
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "sha256sum --check {}",
                sums.display()
            );
        }
        let entry = &krew[0]["spec"]["platforms"][i];
        assert_eq!(entry["selector"]["matchLabels"]["arch"], p.arch.name());
        assert_eq!(entry["sha256"], p.archive_sha256.as_str());
    }
    // The x86_64 binary runs here: the rest is the amd64 image's own sgpath at work.
    image_binary_reads_ec2_over_https(layout);
}

/// A child process killed and reaped on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The image's own `sgpath` (copied out of its layer, as a runtime unpacks it) run as
/// `sgpath hub` with only what a hub pod gets: `AWS_REGION`, IRSA's token file and role,
/// `AWS_ENDPOINT_URL` at the lab's moto behind an HTTPS front whose throwaway CA it is
/// given by `SSL_CERT_FILE`. It takes credentials from STS (`AssumeRoleWithWebIdentity`)
/// and reads the branch pod's ENI and its group from EC2, both over HTTPS, and never asks
/// instance metadata. The same binary without `SSL_CERT_FILE` refuses the front's
/// certificate (Mozilla's roots do not hold the throwaway CA) and names why.
fn image_binary_reads_ec2_over_https(layout: &Path) {
    use sgpath::model::sg::{Locus, Rules};
    use std::{
        net::{IpAddr, SocketAddr},
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };
    let dir = std::env::temp_dir().join(format!("sgpath-image-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("sgpath");
    xtask::image::extract(
        layout,
        xtask::image::tag(),
        Arch::Amd64,
        xtask::image::ENTRYPOINT,
        &binary,
    )
    .unwrap_or_else(|e| panic!("the image's {}: {e:#}", xtask::image::ENTRYPOINT));
    let aws = xtask::lab::aws::FakeAws::start(&xtask::lab::Spec::default_lab(), None)
        .unwrap_or_else(|e| panic!("the lab's EC2 (cargo xtask setup installs moto): {e:#}"));
    let pod_group = aws.group_ids["sg-pod"].clone();
    // The default lab's branch pod, whose branch ENI carries sg-pod.
    let pod: IpAddr = Ipv4Addr::new(192, 168, 3, 219).into();
    let moto: SocketAddr = aws.ec2.trim_start_matches("http://").parse().unwrap();
    // One thread: the front and the metadata listener run while the test waits on the hub.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let front = rt.block_on(crate::https_front::start(moto, &dir.join("tls")));
    // Instance metadata: a listener that only counts who connects.
    let imds_hits = Arc::new(AtomicUsize::new(0));
    let imds = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let imds_url = format!("http://{}", imds.local_addr().unwrap());
    let hits = imds_hits.clone();
    rt.spawn(async move {
        while imds.accept().await.is_ok() {
            hits.fetch_add(1, Ordering::SeqCst);
        }
    });
    let token = dir.join("web-identity-token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a3ViZS1zeXN0ZW06c2dwYXRoLWh1YiJ9.c2ln\n").unwrap();
    let hub = |ca: bool, log: &str| -> (Killed, String, PathBuf) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(log);
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(&binary);
        cmd.env_clear()
            .args(["hub", "--log-format", "text", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--imds-endpoint")
            .arg(&imds_url)
            .env("AWS_REGION", aws.region)
            .env("AWS_ENDPOINT_URL", front.url())
            .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token)
            .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/sgpath-hub")
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if ca {
            cmd.env("SSL_CERT_FILE", &front.ca);
        }
        let child = cmd.spawn().expect("the image's sgpath runs here (static)");
        (Killed(child), format!("https://127.0.0.1:{port}"), log)
    };
    // The hub's answer for the pod once it is read, or why it cannot read EC2.
    let ask = |url: &str, log: &Path| -> Result<sgpath::model::sg::Catalog, String> {
        let client = sgpath::hub::Client::new(url);
        let asked = [pod].into();
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                match client.catalog(&asked).await {
                    Ok(Rules::Fresh { catalog })
                        if !matches!(catalog.locate(pod), Locus::Unknown) =>
                    {
                        return Ok(catalog);
                    }
                    Ok(Rules::Unavailable { reason }) => return Err(reason),
                    // Not listening yet, or the pod not read yet.
                    Ok(Rules::Fresh { .. }) | Err(_) => {}
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the image's hub gave no answer within 120 s: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let t = Instant::now();
    let (trusted, url, log) = hub(true, "hub-with-ca.log");
    let catalog = ask(&url, &log).unwrap_or_else(|reason| {
        panic!(
            "the image's hub could not read EC2 over HTTPS: {reason}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    eprintln!(
        "the image's hub read the pod's ENI over HTTPS in {:.1} s ({} TLS connections)",
        t.elapsed().as_secs_f64(),
        front.handshakes()
    );
    assert!(
        matches!(catalog.locate(pod), Locus::Eni(_)),
        "{:?}",
        catalog.locate(pod)
    );
    assert_eq!(catalog.groups_of(pod), Some(&[pod_group.clone()][..]));
    assert!(
        catalog.groups.contains_key(&pod_group),
        "sg-pod's rules were read: {:?}",
        catalog.groups.keys()
    );
    assert!(
        front.handshakes() >= 1,
        "nothing came through the HTTPS front"
    );
    drop(trusted);

    let before = front.handshakes();
    let (_untrusted, url, log) = hub(false, "hub-without-ca.log");
    let reason = ask(&url, &log).expect_err("a hub without the CA read EC2");
    assert!(
        reason.contains("UnknownIssuer"),
        "the refusal names the certificate: {reason}"
    );
    assert_eq!(
        front.handshakes(),
        before,
        "a handshake completed without the CA"
    );
    assert_eq!(
        imds_hits.load(Ordering::SeqCst),
        0,
        "the hub asked instance metadata although the environment gave region and IRSA"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Every Kustomize directory the README and deploy/README.md tell a user to apply.
pub const APPLIED_DIRS: [&str; 2] = ["base", "agent"];

/// `kubectl apply --server-side --validate=strict -k deploy/<dir>` against a real
/// kube-apiserver with the real CRDs (SecurityGroupPolicy, PodMonitor, PrometheusRule),
/// for every directory a user is told to apply, each on an empty cluster; every rendered
/// object is then there as rendered. The same apply of an object with a field its schema
/// does not know fails, so the validation is really strict.
pub fn deploy_applies_to_a_real_api_server() {
    for dir in APPLIED_DIRS {
        let api = crate::apiserver::RealApi::start(None, &[]);
        let path = deploy_dir().join(dir);
        let out = api.kubectl(&[
            "apply",
            "--server-side",
            "--validate=strict",
            "--field-manager=sgpath-test",
            "-k",
            path.to_str().unwrap(),
        ]);
        let rendered = render(dir);
        assert!(!rendered.is_empty());
        for doc in &rendered {
            let kind = doc["kind"].as_str().unwrap();
            let name = doc["metadata"]["name"].as_str().unwrap();
            assert!(
                out.contains(&format!("/{name} serverside-applied")),
                "{dir}: {kind} {name} not applied:\n{out}"
            );
            let mut args = vec![kind, name];
            let ns = doc["metadata"]["namespace"].as_str();
            if let Some(ns) = ns {
                args.extend(["-n", ns]);
            }
            let got = api.get(&args);
            assert_eq!(got["kind"], doc["kind"], "{dir}: {kind} {name}");
            for (k, v) in doc["metadata"]["labels"].as_object().into_iter().flatten() {
                assert_eq!(
                    &got["metadata"]["labels"][k], v,
                    "{dir}: {kind} {name} label {k}"
                );
            }
        }
        if dir == "base" {
            // A field the PrometheusRule's schema does not have, and one the DaemonSet's does not.
            for (kind, name, bad) in [
                ("PrometheusRule", "sgpath", "{\"spec\": {\"groupz\": []}}"),
                (
                    "DaemonSet",
                    "sgpath",
                    "{\"spec\": {\"template\": {\"spec\": {\"hostPIDz\": true}}}}",
                ),
            ] {
                let mut obj = find(&rendered, kind, name).clone();
                merge(&mut obj, &serde_json::from_str(bad).unwrap());
                let out = api.kubectl_as(
                    api.admin_kubeconfig(),
                    &[
                        "apply",
                        "--server-side",
                        "--validate=strict",
                        "--field-manager=sgpath-test",
                        "-f",
                        "-",
                    ],
                    Some(&obj.to_string()),
                );
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    !out.status.success()
                        && (err.contains("unknown field")
                            || err.contains("not declared in schema")),
                    "{kind} with an unknown field was accepted: {err}"
                );
            }
        }
    }
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}
