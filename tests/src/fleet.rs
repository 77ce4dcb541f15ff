//! `sgpath agent --auth kubernetes` and `kubectl sgpath`. Against a real kube-apiserver
//! ([`crate::apiserver::RealApi`], deploy/base applied): the agent asks its TokenReview and
//! SubjectAccessReview who may read it, judged by deploy/'s RBAC, and the plugin reaches the
//! agent through its pods proxy with a real TokenRequest token, as a bastion with only a
//! kubeconfig would. Against the fake ([`crate::kube::FakeApi`]) only what the real one is
//! not yet set up to show: agents in a second node namespace, and agent pods that accept
//! and never answer or answer HTML (each a row of `kubectl sgpath nodes`).
//!
//! Side effects: runs agents in the lab's node namespace and in a second node namespace
//! (`sgt-flb`), a never-answering and a garbage-answering HTTP server in the lab's node
//! namespace, and `kubectl-sgpath` (and `kubectl`) there; all stopped when the test ends.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use xtask::lab::Lab;

use xtask::control_plane::StaticUser;

use crate::{
    agent::{Agent, sample},
    apiserver::RealApi,
    kube::{FakeApi, Kind, NODE},
    observe::in_netns,
};

/// The agents' own kubeconfig token ([`FakeApi::kubeconfig`]), and who it is.
const AGENT_TOKEN: &str = "not-a-real-token";
const AGENT_USER: &str = "system:serviceaccount:sgpath:sgpath";
/// A user with the ClusterRole `sgpath-user` (deploy/agent/user-rbac.yaml).
const ALICE: &str = "alice-token";
/// A user the cluster knows, with no grant at all.
const MALLORY: &str = "mallory-token";
/// Allowed `get /metrics` and `get /v1/report` (as Prometheus is by deploy/monitoring).
const READER: &str = "reader-token";
/// The agents' port in the agent pods' URLs (the DaemonSet's).
const PORT: u16 = 9464;

/// `kubectl-sgpath`, next to `sgpath`.
pub fn kubectl_sgpath_bin() -> PathBuf {
    crate::sgpath_bin().with_file_name("kubectl-sgpath")
}

/// The users and grants of the deploy/ RBAC, in the fake.
fn rbac(api: &FakeApi) {
    api.add_user(AGENT_TOKEN, AGENT_USER, &["system:serviceaccounts"]);
    api.grant(AGENT_USER, "create tokenreviews");
    api.grant(AGENT_USER, "create subjectaccessreviews");
    api.add_user(ALICE, "alice", &["sre"]);
    api.grant("sre", "get pods/proxy");
    api.grant("sre", "create serviceaccounts/token");
    api.grant(
        "system:serviceaccount:kube-system:sgpath-client",
        "get /v1/*",
    );
    api.add_user(MALLORY, "mallory", &[]);
    api.add_user(READER, "reader", &[]);
    api.grant("reader", "get /metrics");
    api.grant("reader", "get /v1/report");
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sgpath-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A token of ServiceAccount `ns/name` for the audience `sgpath`, living `duration`
/// (`kubectl create token --audience sgpath`, as a projected token of the DaemonSet).
pub fn sgpath_token(api: &RealApi, ns: &str, name: &str, duration: &str) -> String {
    api.kubectl(&[
        "create",
        "token",
        name,
        "-n",
        ns,
        "--audience",
        "sgpath",
        &format!("--duration={duration}"),
    ])
    .trim()
    .to_owned()
}

/// `--auth kubernetes` against a real kube-apiserver with deploy/base applied, the agent
/// serving HTTPS (its self-signed certificate): the agent asks TokenReview (for the audience
/// `sgpath`) and SubjectAccessReview with its own ServiceAccount token, and RBAC as deploy/
/// grants it answers. On every data endpoint (`/metrics`, `/v1/report`, `/v1/trace`), 401
/// without a token, with a made-up one, another scheme, a static token (not a JWT), a
/// ServiceAccount token for the API server's audience (wrong audience) or for `sgpath` but
/// living an hour — all without a TokenReview (counted by the API server's own
/// `apiserver_request_total`); 403 for a known ServiceAccount without `get` on the path (and
/// the scraper on `/v1/report`, `sgpath-client` on `/metrics`); 200 for the scraper on
/// `/metrics` and the hub (`sgpath-hub`, which asks the agents for people) on `/v1/report`
/// and `/v1/trace` (also through `X-Sgpath-Authorization`); `sgpath-client`, people's token
/// for the hub, reads no agent; refused requests build no report
/// and the reviews are cached; a flood of allowed ones builds at most one report per
/// `--report-max-age`; health checks stay open; no token is ever logged.
pub fn agent_kubernetes_auth_refuses_without_building_a_report(lab: &Lab) {
    let node = lab.layout.node();
    let api = RealApi::start(
        Some(&node),
        &[
            StaticUser::new(MALLORY, "mallory", &[]),
            StaticUser::new(ALICE, "alice", &["sgpath-users"]),
        ],
    );
    let base = xtask::workspace_root().join("deploy/base");
    api.kubectl(&["apply", "--server-side", "-k", base.to_str().unwrap()]);
    api.kubectl(&["create", "serviceaccount", "nobody", "-n", "kube-system"]);
    api.namespace(SCRAPER.0);
    api.kubectl(&["create", "serviceaccount", SCRAPER.1, "-n", SCRAPER.0]);
    let kubeconfig = crate::kube::agent_kubeconfig(&api);
    // Prometheus's projected token (deploy/monitoring/prometheus-patch.yaml): 10 minutes.
    let scraper = sgpath_token(&api, SCRAPER.0, SCRAPER.1, "10m");
    let client = sgpath_token(&api, "sgpath", "sgpath-client", "10m");
    let hub = sgpath_token(&api, "sgpath", "sgpath-hub", "10m");
    let nobody = sgpath_token(&api, "kube-system", "nobody", "15m");
    let wrong_audience = api.token("sgpath", "sgpath-client");
    let too_long = sgpath_token(&api, "sgpath", "sgpath-client", "1h");
    let agent_token = std::fs::read_to_string(&kubeconfig).unwrap();
    let agent = Agent::in_lab_tls(
        lab,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            NODE,
            "--auth",
            "kubernetes",
            "--report-max-age",
            "5s",
        ],
    );
    let bearer = |t: &str| format!("Bearer {t}");
    let builds = |agent: &Agent| -> u64 {
        let (status, metrics) =
            agent.request("GET", "/metrics", &[("Authorization", &bearer(&scraper))]);
        assert_eq!(status, 200, "the scraper on /metrics: {metrics}");
        sample(&metrics, "sgpath_http_report_builds_total", &[]).expect("builds counted")
    };
    let reviews = |kind: &str| {
        api.metric(
            "apiserver_request_total",
            &[("resource", kind), ("verb", "POST")],
        )
    };
    for path in ["/healthz", "/readyz"] {
        assert_eq!(agent.request("GET", path, &[]).0, 200, "{path} stays open");
    }
    let start = Instant::now();
    let before = builds(&agent);
    let token_reviews_before = reviews("tokenreviews");
    let paths = [
        "/metrics",
        "/v1/report",
        "/v1/trace?from=10.0.0.1&to=10.0.0.2",
    ];
    let unauthenticated: [(&str, String, &str); 6] = [
        ("no token", String::new(), "bearer token is required"),
        ("a made-up token", bearer("made-up-token"), "not a JWT"),
        (
            "another scheme",
            "Basic YWxpY2U6eA==".into(),
            "bearer token is required",
        ),
        ("a static token", bearer(MALLORY), "not a JWT"),
        (
            "the API server's audience",
            bearer(&wrong_audience),
            "audience",
        ),
        ("an hour-long token", bearer(&too_long), "lives 3600 s"),
    ];
    const ROUNDS: u64 = 20;
    for _ in 0..ROUNDS {
        for path in paths {
            for (what, header, why) in &unauthenticated {
                let headers: &[(&str, &str)] = if header.is_empty() {
                    &[]
                } else {
                    &[("Authorization", header.as_str())]
                };
                let (status, body) = agent.request("GET", path, headers);
                assert_eq!(status, 401, "{path} with {what}: {body}");
                assert!(body.contains(why), "{path} with {what}: {body}");
            }
            let (status, body) = agent.request("GET", path, &[("Authorization", &bearer(&nobody))]);
            assert_eq!(
                status, 403,
                "{path} for a ServiceAccount without a grant: {body}"
            );
            assert!(
                body.contains("system:serviceaccount:kube-system:nobody")
                    && body.contains(path.split('?').next().unwrap()),
                "{body}"
            );
        }
    }
    let after = builds(&agent);
    let elapsed = start.elapsed();
    assert!(
        after - before <= 1 + elapsed.as_secs() / 5,
        "{} reports built for {} refused requests in {elapsed:?}",
        after - before,
        ROUNDS * 21
    );
    let (_, metrics) = agent.request("GET", "/metrics", &[("Authorization", &bearer(&scraper))]);
    assert_eq!(
        sample(
            &metrics,
            "sgpath_http_requests_refused_total",
            &[("reason", "unauthenticated")]
        ),
        Some(ROUNDS * 18)
    );
    assert_eq!(
        sample(
            &metrics,
            "sgpath_http_requests_refused_total",
            &[("reason", "forbidden")]
        ),
        Some(ROUNDS * 3)
    );
    // Only `nobody` was reviewed, once per path and refusal TTL (the scraper's was asked
    // before counting): the 401s cost the API server nothing.
    let token_reviews = reviews("tokenreviews") - token_reviews_before;
    let most = 3 * (1 + elapsed.as_secs() / 10 + 1);
    assert!(
        (3.0..=most as f64).contains(&token_reviews),
        "{token_reviews} TokenReviews for {} requests",
        ROUNDS * 21 + 1
    );
    assert!(
        reviews("subjectaccessreviews") >= 4.0,
        "nobody x 3 paths + the scraper"
    );

    // The hub: 200 on reports, also through the proxy's header; a flood costs at most a
    // build.
    let b0 = builds(&agent);
    let flood = Instant::now();
    for _ in 0..50 {
        let doc = agent.report(&[("Authorization", &bearer(&hub))]);
        assert_eq!(doc["schema"], "sgpath.report/v1");
    }
    let doc = agent.report(&[("X-Sgpath-Authorization", &bearer(&hub))]);
    assert_eq!(doc["schema"], "sgpath.report/v1");
    let built = builds(&agent) - b0;
    assert!(
        built <= 1 + flood.elapsed().as_secs() / 5,
        "{built} reports built for 51 requests in {:?}",
        flood.elapsed()
    );
    let (status, body) = agent.request(
        "GET",
        "/v1/trace?from=10.0.0.1&to=10.0.0.2",
        &[("Authorization", &bearer(&hub))],
    );
    assert_ne!(status, 401, "{body}");
    assert_ne!(status, 403, "the hub may trace: {body}");
    // What deploy/ does not grant: the scraper reads no report, the client neither metrics
    // nor reports (people ask the hub).
    for (who, token, path) in [
        ("the scraper", scraper.as_str(), "/v1/report"),
        ("sgpath-client", client.as_str(), "/metrics"),
        ("sgpath-client", client.as_str(), "/v1/report"),
        ("sgpath-client", client.as_str(), "/v1/trace"),
        ("the hub", hub.as_str(), "/metrics"),
    ] {
        let (status, body) = agent.request("GET", path, &[("Authorization", &bearer(token))]);
        assert_eq!(status, 403, "{who} on {path}: {body}");
    }
    let log = agent.log_text();
    let agent_secret = agent_token
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token in the agent's kubeconfig");
    for secret in [
        scraper.as_str(),
        client.as_str(),
        nobody.as_str(),
        wrong_audience.as_str(),
        hub.as_str(),
        MALLORY,
        ALICE,
        "made-up-token",
        agent_secret,
    ] {
        assert!(!log.contains(secret), "a token in the log:\n{log}");
    }
    assert!(agent.terminate().success());
}

/// An agent pod of the DaemonSet on `node` (in kube-system for the fake's pods proxy).
fn agent_pod(name: &str, node: &str) -> Value {
    agent_pod_in("kube-system", name, node)
}

/// An agent pod of the DaemonSet on `node` in namespace `ns`.
fn agent_pod_in(ns: &str, name: &str, node: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": ns,
                        "labels": {"app.kubernetes.io/name": "sgpath",
                                   "app.kubernetes.io/component": "agent"}},
           "spec": {"nodeName": node, "hostNetwork": true, "serviceAccountName": "sgpath",
                    "containers": [{"name": "sgpath", "image": "sgpath:0.1.0"}]},
           "status": {"phase": "Running"}})
}

/// A port in `ns` that accepts and never answers (a hung agent), and one that answers
/// HTML (something else on the port). The threads run until the process ends.
fn bad_servers(ns: &str) -> (u16, u16) {
    let slow = in_netns(ns, || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
    let junk = in_netns(ns, || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
    let ports = (
        slow.local_addr().unwrap().port(),
        junk.local_addr().unwrap().port(),
    );
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in slow.incoming().map_while(Result::ok) {
            held.push(s);
        }
    });
    std::thread::spawn(move || {
        for mut s in junk.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = "<html><body>502 Bad Gateway</body></html>\n";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    ports
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// `kubectl-sgpath --kubeconfig <kubeconfig> --port 9464 --timeout 2s <args>` in `ns` (the
/// bastion: it reaches the API server, nothing else).
fn plugin(ns: &str, kubeconfig: &Path, args: &[&str]) -> Run {
    plugin_with(ns, kubeconfig, &[], args)
}

/// The plugin asking each agent itself through the pods proxy (`--via pods-proxy`, the
/// debugging path deploy/ grants nobody), as the fake API server's RBAC allows here.
const DIRECT: [&str; 4] = ["--via", "pods-proxy", "--agent-namespace", "kube-system"];

fn direct(ns: &str, kubeconfig: &Path, args: &[&str]) -> Run {
    plugin_with(ns, kubeconfig, &DIRECT, args)
}

fn plugin_with(ns: &str, kubeconfig: &Path, pre: &[&str], args: &[&str]) -> Run {
    let start = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(kubectl_sgpath_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--port", &PORT.to_string(), "--timeout", "2s"])
        .args(pre)
        .args(args)
        .output()
        .expect("run kubectl-sgpath");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

fn states(doc: &Value) -> Vec<(String, String)> {
    doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_owned(),
                n["status"]["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The fleet from a bastion, on the fake API server, each agent asked through the pods
/// proxy (`--via pods-proxy`: the real server's test goes through the hub): two agents (the lab's node with its
/// broken branch pod, and a second node namespace the real API server's proxy would need a
/// route to), one agent pod whose port refuses, one that never answers, one that answers
/// HTML (the fake proxies by pod name to any loopback port, so these need no addresses of
/// their own), and a node without an agent. `kubectl sgpath nodes` shows each as
/// such within its timeout; `findings -A` names the broken pod with its node, path and
/// fix; `pod` follows it to its node; `trace` runs there; a user without RBAC is refused;
/// and real `kubectl` finds the plugin on PATH.
pub fn kubectl_sgpath_asks_the_fleet(lab: &Lab) {
    let node = lab.layout.node();
    let api = FakeApi::start(&node);
    crate::kube::populate(&api, lab);
    rbac(&api);
    let dir = tempdir("fleet");
    let agent_kc = dir.join("agent-kubeconfig");
    api.kubeconfig(&agent_kc);
    let auth = ["--auth", "kubernetes"];
    let a = Agent::in_lab(
        lab,
        &[
            &[
                "--kubeconfig",
                agent_kc.to_str().unwrap(),
                "--node-name",
                NODE,
            ][..],
            &auth,
        ]
        .concat(),
    );
    let nsb = crate::NetNs::new("sgt-flb");
    crate::run(&["ip", "-n", &nsb.0, "link", "set", "lo", "up"]);
    let api_b = api.also_in(&nsb.0);
    let kc_b = dir.join("kubeconfig-b");
    api_b.kubeconfig(&kc_b);
    let b = Agent::start(
        &nsb.0,
        &[
            &[
                "--kubeconfig",
                kc_b.to_str().unwrap(),
                "--node-name",
                "node-b",
            ][..],
            &auth,
        ]
        .concat(),
    );
    let (slow, junk) = bad_servers(&node);
    // A closed port where nothing filters (the lab's node namespace has the security
    // groups' rules): the connection is refused at once, as on a node whose agent is down.
    let closed = in_netns(&nsb.0, || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    for (pod, on, ns, port) in [
        ("sgpath-a", NODE, node.as_str(), a.port),
        ("sgpath-b", "node-b", nsb.0.as_str(), b.port),
        ("sgpath-c", "node-c", nsb.0.as_str(), closed),
        ("sgpath-d", "node-d", node.as_str(), slow),
        ("sgpath-e", "node-e", node.as_str(), junk),
    ] {
        api.put(Kind::Pod, agent_pod(pod, on));
        api.proxy_to("kube-system", pod, PORT, ns, port);
    }
    for n in ["node-b", "node-c", "node-d", "node-e", "node-f"] {
        api.put(Kind::Node, json!({"metadata": {"name": n}}));
    }
    let user_kc = dir.join("alice");
    api.kubeconfig_as(&user_kc, ALICE);

    // The agent on the lab's node has named the pods (its watch of the fake) once the
    // broken branch pod's path carries its name.
    let start = Instant::now();
    let findings = loop {
        let run = direct(&node, &user_kc, &["findings", "-A", "-o", "json"]);
        assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
        let doc = run.json();
        let named = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "vlan-parent-missing" && f["pod"] == "sg-test/standard-c");
        if named {
            break doc;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never named: {doc:#}\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let f = findings["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "vlan-parent-missing")
        .unwrap();
    assert_eq!(f["node"], NODE);
    assert_eq!(f["severity"], "error");
    assert_eq!(f["path"]["kind"], "branch-eni");
    assert_eq!(f["path"]["vlan_id"], 5);
    assert!(!f["remediation"].as_str().unwrap().is_empty(), "{f}");
    let unanswered: Vec<(&str, &str)> = findings["unanswered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["node"].as_str().unwrap(),
                u["status"]["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        unanswered,
        [
            ("node-c", "unreachable"),
            ("node-d", "timeout"),
            ("node-e", "garbage")
        ]
    );

    let run = direct(&node, &user_kc, &["nodes", "-o", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.took < Duration::from_secs(10),
        "nodes took {:?}",
        run.took
    );
    let got = states(&run.json());
    assert_eq!(got[0], (NODE.to_owned(), "ready".to_owned()), "{got:?}");
    assert!(matches!(got[1].1.as_str(), "ready" | "degraded"), "{got:?}");
    assert_eq!(
        got[2..],
        [
            ("node-c".to_owned(), "unreachable".to_owned()),
            ("node-d".to_owned(), "timeout".to_owned()),
            ("node-e".to_owned(), "garbage".to_owned()),
            ("node-f".to_owned(), "absent".to_owned()),
        ]
    );
    let table = direct(&node, &user_kc, &["nodes"]);
    assert!(
        table.stdout.starts_with("NODE ")
            && table.stdout.contains("timeout")
            && table.stdout.contains("no answer within 2s"),
        "{}",
        table.stdout
    );

    let run = direct(&node, &user_kc, &["findings", "-A"]);
    assert!(
        run.stdout.contains("vlan-parent-missing")
            && run.stdout.contains("sg-test/standard-c")
            && run.stdout.contains("agent-timeout"),
        "{}",
        run.stdout
    );
    let run = direct(
        &node,
        &user_kc,
        &["findings", "-n", "default", "-o", "json"],
    );
    let doc = run.json();
    assert!(
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["pod"].as_str().unwrap().starts_with("default/")),
        "{doc:#}"
    );

    // The broken pod, followed to its node.
    let run = direct(&node, &user_kc, &["pod", "-n", "sg-test", "standard-c"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    for want in [
        NODE,
        "branch-eni vlan 5 eni-0c5 sg-0c5",
        "error vlan-parent-missing (vlan.eth.5)",
    ] {
        assert!(run.stdout.contains(want), "no {want:?} in\n{}", run.stdout);
    }
    let run = direct(&node, &user_kc, &["pod", "-n", "sg-test", "no-such-pod"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("pod sg-test/no-such-pod"),
        "{}",
        run.stderr
    );

    // A trace on the pod's node.
    let run = direct(
        &node,
        &user_kc,
        &[
            "trace",
            "-n",
            "default",
            "ordinary-a",
            "--to",
            "10.100.0.1:443",
            "-o",
            "json",
        ],
    );
    assert!(matches!(run.code, 0 | 1), "{}\n{}", run.stdout, run.stderr);
    let doc = run.json();
    assert_eq!(doc["node"], NODE);
    assert!(doc["trace"]["works"].is_boolean(), "{doc:#}");
    let run = direct(
        &node,
        &user_kc,
        &["trace", "-n", "default", "ordinary-a", "--to", "not-an-ip"],
    );
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stderr.contains("not-an-ip"), "{}", run.stderr);

    // Without RBAC: no token for the agents, the API server refuses the proxy.
    let mallory_kc = dir.join("mallory");
    api.kubeconfig_as(&mallory_kc, MALLORY);
    let run = direct(&node, &mallory_kc, &["nodes", "-o", "json"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("serviceaccounts/token"),
        "{}",
        run.stderr
    );
    assert_eq!(states(&run.json())[0].1, "refused", "{}", run.stdout);

    // Real kubectl, which finds `kubectl-sgpath` on PATH.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let _ = std::fs::remove_file(bin.join("kubectl-sgpath"));
    std::os::unix::fs::symlink(kubectl_sgpath_bin(), bin.join("kubectl-sgpath")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &node, "env"])
        .arg(format!("PATH={path}"))
        .arg(format!("KUBECONFIG={}", user_kc.display()))
        .args([
            "kubectl",
            "sgpath",
            "nodes",
            "--via",
            "pods-proxy",
            "--agent-namespace",
            "kube-system",
            "--port",
            &PORT.to_string(),
            "--timeout",
            "2s",
            "-o",
            "json",
        ])
        .output()
        .expect("run kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(states(&doc), got, "kubectl sgpath and kubectl-sgpath agree");

    assert!(a.terminate().success());
    assert!(b.terminate().success());
    api.stop();
    api_b.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each rule of `role` as `(apiGroups, resources, resourceNames, nonResourceURLs, verbs)`,
/// comma-joined.
fn rules(role: &Value) -> Vec<[String; 5]> {
    let join = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            [
                "apiGroups",
                "resources",
                "resourceNames",
                "nonResourceURLs",
                "verbs",
            ]
            .map(|k| join(&r[k]))
        })
        .collect()
}

fn rule(parts: [&str; 5]) -> [String; 5] {
    parts.map(str::to_owned)
}

/// The DaemonSet runs `--auth kubernetes` and may create reviews (nothing else new); the
/// plugin's roles grant exactly what `kubectl sgpath` uses (no pods/proxy anywhere: the
/// hub's Service proxy only, through a RoleBinding in sgpath, and a token of
/// `sgpath-client` only); `sgpath-client` asks the hub's /v1/fleet/report and
/// /v1/agents/*, the hub (sgpath-hub) the agents' /v1/report and /v1/trace, Prometheus's
/// ServiceAccount /metrics; no token is stored (no Secret, no PodMonitor): the scrape job
/// reads Prometheus's projected token (audience `sgpath`, 10 min) from the file
/// prometheus-patch.yaml mounts, over HTTPS, and passes `promtool check config`.
pub fn deploy_rbac_lets_only_the_named_subjects_ask() {
    use crate::deploy::{find, render};
    let docs = render("base");
    let ds = find(&docs, "DaemonSet", "sgpath");
    let args: Vec<&str> = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--auth", "kubernetes"]),
        "{args:?}"
    );
    assert_eq!(
        rules(find(&docs, "ClusterRole", "sgpath-auth")),
        [
            rule(["authentication.k8s.io", "tokenreviews", "", "", "create"]),
            rule([
                "authorization.k8s.io",
                "subjectaccessreviews",
                "",
                "",
                "create"
            ]),
        ]
    );
    assert_eq!(
        rules(find(&docs, "ClusterRole", "sgpath-user")),
        [
            rule(["", "pods", "", "", "get"]),
            rule(["", "nodes", "", "", "list"])
        ]
    );
    assert_eq!(
        rules(find(&docs, "Role", "sgpath-user-hub")),
        [
            rule(["", "services/proxy", "https:sgpath-hub:9465", "", "get"]),
            rule(["", "serviceaccounts/token", "sgpath-client", "", "create"]),
        ]
    );
    let rb = find(&docs, "RoleBinding", "sgpath-user-hub");
    assert_eq!(rb["metadata"]["namespace"], "sgpath");
    assert_eq!(rb["roleRef"]["name"], "sgpath-user-hub");
    // No pods/proxy, nor any proxy but the hub's, for anyone.
    for d in &docs {
        if d["kind"] == "ClusterRole" || d["kind"] == "Role" {
            for r in rules(d) {
                assert!(
                    !r[1].contains("pods/proxy") && !r[1].contains("nodes/proxy"),
                    "{r:?}"
                );
                assert!(
                    !r[1].contains('*') && !r[0].contains('*'),
                    "a wildcard: {r:?}"
                );
            }
        }
    }
    assert_eq!(
        rules(find(&docs, "ClusterRole", "sgpath-client")),
        [rule(["", "", "", "/v1/fleet/report,/v1/agents/*", "get"])]
    );
    assert_eq!(
        rules(find(&docs, "ClusterRole", "sgpath-agent-reader")),
        [rule(["", "", "", "/v1/report,/v1/trace", "get"])]
    );
    assert_eq!(
        rules(find(&docs, "ClusterRole", "sgpath-metrics-reader")),
        [rule(["", "", "", "/metrics", "get"])]
    );
    for (binding, sa, ns) in [
        ("sgpath-auth", "sgpath", "sgpath"),
        ("sgpath-client", "sgpath-client", "sgpath"),
        ("sgpath-metrics-reader", SCRAPER.1, SCRAPER.0),
        ("sgpath-hub-agents", "sgpath-hub", "sgpath"),
        ("sgpath-hub-auth", "sgpath-hub", "sgpath"),
    ] {
        let b = find(&docs, "ClusterRoleBinding", binding);
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": sa, "namespace": ns}]),
            "{binding}"
        );
        if ns == "sgpath" {
            find(&docs, "ServiceAccount", sa);
        }
    }
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "Secret" || d["kind"] == "PodMonitor"),
        "a stored token (a PodMonitor can only send one from a Secret)"
    );
    // The scrape job: HTTPS, Prometheus's projected token (audience sgpath, 10 min) from
    // the file the patch mounts, and a config promtool accepts.
    let dir = crate::deploy::deploy_dir().join("monitoring");
    let job_text = std::fs::read_to_string(dir.join("scrape-config.yaml")).unwrap();
    let jobs = crate::deploy::yaml_docs(&job_text, "scrape-config.yaml");
    let job = &jobs[0][0];
    assert_eq!(job["job_name"], "sgpath");
    assert_eq!(job["scheme"], "https");
    assert_eq!(job["tls_config"]["insecure_skip_verify"], true);
    let token_file = job["authorization"]["credentials_file"].as_str().unwrap();
    assert!(
        job["authorization"]["credentials"].is_null(),
        "an inline token"
    );
    let patch = &crate::deploy::yaml_docs(
        &std::fs::read_to_string(dir.join("prometheus-patch.yaml")).unwrap(),
        "prometheus-patch.yaml",
    )[0];
    let mount = &patch["spec"]["volumeMounts"][0];
    let volume = &patch["spec"]["volumes"][0];
    assert_eq!(mount["name"], volume["name"]);
    let projected = &volume["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(
        format!(
            "{}/{}",
            mount["mountPath"].as_str().unwrap(),
            projected["path"].as_str().unwrap()
        ),
        token_file
    );
    assert_eq!(projected["audience"], sgpath::auth::AUDIENCE);
    let life = projected["expirationSeconds"].as_u64().unwrap();
    assert!(
        (600..=sgpath::auth::MAX_LIFETIME.as_secs()).contains(&life),
        "{life} s"
    );
    assert_eq!(
        patch["spec"]["additionalScrapeConfigs"]["key"],
        "sgpath.yaml"
    );
    let tmp = tempdir("scrapeconfig");
    let config = tmp.join("prometheus.yml");
    // Debian's Prometheus is built without Kubernetes discovery: promtool checks the rest of
    // the job (scheme, TLS, authorization, relabelings) with a static target in its place.
    // JSON is YAML. The token file need not exist for the check.
    let mut checked = job.clone();
    assert!(checked["kubernetes_sd_configs"][0]["role"] == "pod");
    checked
        .as_object_mut()
        .unwrap()
        .remove("kubernetes_sd_configs");
    checked["static_configs"] = json!([{"targets": ["127.0.0.1:9464"]}]);
    std::fs::write(&config, json!({"scrape_configs": [checked]}).to_string()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "config", "--syntax-only"])
        .arg(&config)
        .output()
        .expect("promtool (cargo xtask setup)");
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prometheus's ServiceAccount, which scraper-rbac.yaml lets `get /metrics` (namespace, name).
const SCRAPER: (&str, &str) = ("monitoring", "prometheus-k8s");

/// `--auth` that cannot work is refused by name, exit 2, before anything is bound.
pub fn agent_auth_mode_errors_are_named() {
    let dir = tempdir("authflags");
    let token = dir.join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let token = token.to_str().unwrap();
    for (args, want) in [
        (
            &["--auth", "kubernetes"][..],
            "--auth kubernetes needs a cluster to ask",
        ),
        (&["--auth", "token"][..], "--auth token needs --token-file"),
        (
            &["--auth", "none", "--token-file", token][..],
            "--token-file is for --auth token",
        ),
        (&["--auth", "ldap"][..], "'ldap'"),
        (&["--report-max-age", "61s"][..], "out of range"),
        // Data endpoints open to the network, plain HTTP on the network: refused by name.
        (
            &["--listen", "0.0.0.0:1", "--auth", "none"][..],
            "--auth none would serve /metrics, /v1/report and /v1/trace to anyone who reaches --listen 0.0.0.0:1",
        ),
        (&["--listen", "0.0.0.0:1"][..], "--auth none would serve"),
        (
            &["--listen", "0.0.0.0:1", "--token-file", token, "--no-tls"][..],
            "--no-tls serves plain HTTP, which only a loopback --listen may do (--listen 0.0.0.0:1)",
        ),
        (
            &[
                "--tls-cert",
                "/nonexistent/tls.crt",
                "--tls-key",
                "/nonexistent/tls.key",
            ][..],
            "--tls-cert /nonexistent/tls.crt",
        ),
        (&["--tls-cert", "/nonexistent/tls.crt"][..], "--tls-key"),
    ] {
        let mut cmd = Command::new(crate::sgpath_bin());
        cmd.arg("agent");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:1"]);
        }
        let out = cmd
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Forwards TCP connections to `listen` (an address of namespace `ns`) to 127.0.0.1:`to` in
/// the same namespace, as the agent's `--listen $(POD_IP):9464` would take them itself (the
/// test's [`Agent`] listens on loopback, which the API server's proxy refuses to dial). The
/// thread runs until the process ends.
fn forward(ns: &str, listen: std::net::SocketAddr, to: u16) {
    let path = format!("/run/netns/{ns}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        tx.send(()).unwrap();
        for conn in listener.incoming() {
            let Ok(mut down) = conn else { continue };
            let Ok(mut up) = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, to)) else {
                continue;
            };
            let (mut down2, mut up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut down2, &mut up2);
                let _ = up2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up, &mut down);
                let _ = down.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    rx.recv().expect("the forwarder's listener");
}

/// `sgpath hub` in the lab's node namespace, listening on the node's address (the API
/// server's services proxy refuses loopback endpoints), with a kubeconfig and an agent
/// token of ServiceAccount `sgpath/sgpath-hub` as deploy/base grants it. Killed on drop.
struct HubProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl HubProcess {
    fn start(
        ns: &str,
        listen: std::net::SocketAddr,
        kubeconfig: &Path,
        token: &Path,
    ) -> HubProcess {
        let log = kubeconfig.with_file_name("hub.log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(crate::sgpath_bin())
            .args([
                "hub",
                "--log-format",
                "text",
                "--listen",
                &listen.to_string(),
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--agent-token-file")
            .arg(token)
            .args(["--agent-port", &PORT.to_string(), "--fleet-timeout", "2s"])
            // EC2 is not asked in this test: nothing listens there.
            .args([
                "--ec2-endpoint",
                "http://127.0.0.1:9",
                "--imds-endpoint",
                "http://127.0.0.1:9",
            ])
            .env("AWS_REGION", "us-east-1")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start sgpath hub");
        let hub = HubProcess { child, log };
        let start = Instant::now();
        while !in_netns(ns, || std::net::TcpStream::connect(listen).is_ok()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the hub never listened:\n{}",
                hub.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        hub
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTPS GET to `addr` from namespace `ns` (curl; the hub's certificate is
/// self-signed): (status, body).
fn get_in(ns: &str, addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    https_in(ns, addr, path, None, None)
}

/// One HTTPS request to `addr` from namespace `ns`, with a bearer and a JSON body (a POST)
/// when given: (status, body).
fn https_in(
    ns: &str,
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
    json: Option<&str>,
) -> (u16, String) {
    let mut curl = Command::new("ip");
    curl.args(["netns", "exec", ns, "curl", "-sk", "--max-time", "10"]);
    if let Some(t) = bearer {
        curl.args(["-H", &format!("Authorization: Bearer {}", t.trim())]);
    }
    if let Some(body) = json {
        curl.args(["-H", "Content-Type: application/json", "--data", body]);
    }
    let out = curl
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{addr}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// `kubectl sgpath` through a real kube-apiserver's services proxy to `sgpath hub`, with
/// deploy/base applied (namespace sgpath, the hub's and the users' RBAC as shipped): alice
/// (group `sgpath-users`, as an EKS access entry would map her) gets a TokenRequest token of
/// `sgpath-client` and sends ONE request per fleet query,
/// `/api/v1/namespaces/sgpath/services/https:sgpath-hub:9465/proxy/v1/fleet/report` (the
/// API server's own `apiserver_request_total` counts it); the hub reviews her token
/// (TokenReview + SubjectAccessReview), lists the agent pods with its own ServiceAccount
/// and asks each agent at its pod IP with its own token, which the agent reviews. The
/// broken branch pod is named with its node, path and fix; an agent pod whose address
/// refuses the port is a row saying so, a node without an agent too; `pod` follows a pod
/// to its node's agent through the hub. Alice may not use the pods proxy (deploy/ grants
/// it nobody), nor reach the hub without a token; mallory is refused by RBAC; real
/// `kubectl` finds the plugin on PATH and says the same. Rows the real server cannot be
/// made to produce on demand (an agent that accepts and never answers, one that answers
/// HTML) stay in [`kubectl_sgpath_asks_the_fleet`] on the fake.
pub fn kubectl_sgpath_through_a_real_api_server(lab: &Lab) {
    let node = lab.layout.node();
    let api = RealApi::start(
        Some(&node),
        &[
            StaticUser::new(ALICE, "alice", &["sgpath-users"]),
            StaticUser::new(MALLORY, "mallory", &[]),
        ],
    );
    crate::kube::populate_real(&api, lab);
    let base = xtask::workspace_root().join("deploy/base");
    api.kubectl(&["apply", "--server-side", "-k", base.to_str().unwrap()]);
    let agent_kc = crate::kube::agent_kubeconfig(&api);
    let a = Agent::in_lab_tls(
        lab,
        &[
            "--kubeconfig",
            agent_kc.to_str().unwrap(),
            "--node-name",
            NODE,
            "--auth",
            "kubernetes",
        ],
    );
    let node_ip = lab.spec.node.primary_ip;
    forward(&node, (node_ip, PORT).into(), a.port);
    // An agent pod on node-c whose address (a pod of the lab) has nothing on the port.
    let closed_ip = lab.spec.pods[0].ip;
    for (pod, on, ip) in [
        ("sgpath-a", NODE, node_ip.to_string()),
        ("sgpath-c", "node-c", closed_ip.to_string()),
    ] {
        api.create_pod(&agent_pod_in("sgpath", pod, on));
        api.patch_pod_status(
            "sgpath",
            pod,
            json!({"podIP": ip, "podIPs": [{"ip": ip}], "hostIP": ip, "hostIPs": [{"ip": ip}]}),
        );
    }
    for n in ["node-c", "node-f"] {
        api.create(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}));
    }

    // The hub, as the Deployment runs it: its ServiceAccount's token for the API server and
    // the agents, listening on the node's address; the Service's endpoints point there (no
    // controller manager runs to fill them in).
    const HUB_PORT: u16 = 9465;
    let hub_kc = api.kubeconfig_for("hub", &api.token("sgpath", "sgpath-hub"));
    let token_file = hub_kc.with_file_name("hub-token");
    std::fs::write(
        &token_file,
        sgpath_token(&api, "sgpath", "sgpath-hub", "10m"),
    )
    .unwrap();
    let hub_addr: std::net::SocketAddr = (node_ip, HUB_PORT).into();
    let hub = HubProcess::start(&node, hub_addr, &hub_kc, &token_file);
    // The services proxy dials only an endpoint whose targetRef is a pod holding its
    // address (the API server's isValidAddress): the hub's pod, at the node's address.
    api.create_pod(
        &json!({"metadata": {"name": "sgpath-hub-0", "namespace": "sgpath",
                        "labels": {"app.kubernetes.io/name": "sgpath-hub",
                                   "app.kubernetes.io/part-of": "sgpath"}},
           "spec": {"nodeName": NODE, "serviceAccountName": "sgpath-hub",
                    "containers": [{"name": "hub", "image": "sgpath:0.1.0"}]}}),
    );
    let ip = node_ip.to_string();
    api.patch_pod_status(
        "sgpath",
        "sgpath-hub-0",
        json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}),
    );
    api.create(&json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "sgpath-hub", "namespace": "sgpath"},
        "subsets": [{"addresses": [{"ip": node_ip.to_string(), "nodeName": NODE,
                                    "targetRef": {"kind": "Pod", "namespace": "sgpath",
                                                  "name": "sgpath-hub-0"}}],
                     "ports": [{"name": "https", "port": HUB_PORT, "protocol": "TCP"}]}]}));
    api.create(
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "sgpath-hub-1", "namespace": "sgpath",
                     "labels": {"kubernetes.io/service-name": "sgpath-hub"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [node_ip.to_string()], "conditions": {"ready": true},
                       "nodeName": NODE,
                       "targetRef": {"kind": "Pod", "namespace": "sgpath", "name": "sgpath-hub-0"}}],
        "ports": [{"name": "https", "port": HUB_PORT, "protocol": "TCP"}]}),
    );
    // The API server's proxy reads the endpoints from its cache: wait until it sees them.
    let admin = api.admin_kubeconfig().to_owned();
    let healthz = "/api/v1/namespaces/sgpath/services/https:sgpath-hub:9465/proxy/healthz";
    let start = Instant::now();
    loop {
        let out = api.kubectl_as(&admin, &["get", "--raw", healthz], None);
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the services proxy never reached the hub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let user_kc = api.kubeconfig_for("alice", ALICE);
    let proxied = || {
        api.metric(
            "apiserver_request_total",
            &[("resource", "services"), ("subresource", "proxy")],
        )
    };
    let pods_proxied = || {
        api.metric(
            "apiserver_request_total",
            &[("resource", "pods"), ("subresource", "proxy")],
        )
    };

    let start = Instant::now();
    let findings = loop {
        let run = plugin(&node, &user_kc, &["findings", "-A", "-o", "json"]);
        assert_eq!(
            run.code,
            1,
            "{}\n{}\nhub:\n{}\nendpoints: {}",
            run.stdout,
            run.stderr,
            hub.log_text(),
            api.kubectl(&[
                "get",
                "endpoints,endpointslices,services",
                "-n",
                "sgpath",
                "-o",
                "yaml"
            ])
        );
        let doc = run.json();
        let named = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "vlan-parent-missing" && f["pod"] == "sg-test/standard-c");
        if named {
            break doc;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never named: {doc:#}\n{}",
            a.log_text()
        );
        // The hub keeps the fleet's answer 10 s.
        std::thread::sleep(Duration::from_secs(2));
    };
    let f = findings["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "vlan-parent-missing")
        .unwrap();
    assert_eq!(f["node"], NODE);
    assert_eq!(f["path"]["kind"], "branch-eni");
    assert_eq!(f["path"]["vlan_id"], 5);
    let unanswered: Vec<&str> = findings["unanswered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["node"].as_str().unwrap())
        .collect();
    assert_eq!(unanswered, ["node-c"], "{findings:#}");

    // One fleet query, one proxied request, whatever the number of agents; no pods proxy.
    let (before, pods_before) = (proxied(), pods_proxied());
    let run = plugin(&node, &user_kc, &["nodes", "-o", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        proxied() - before,
        1.0,
        "services proxy requests for one query"
    );
    assert_eq!(pods_proxied(), pods_before, "no pods proxy");
    let got = states(&run.json());
    assert_eq!(
        got,
        [
            (NODE.to_owned(), "ready".to_owned()),
            ("node-c".to_owned(), "unreachable".to_owned()),
            ("node-f".to_owned(), "absent".to_owned()),
        ],
        "{}",
        run.stdout
    );

    // One pod's story, from its node's agent through the hub.
    let run = plugin(
        &node,
        &user_kc,
        &["pod", "-n", "sg-test", "standard-c", "-o", "json"],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let doc = run.json();
    assert_eq!(doc["node"], NODE);
    assert_eq!(doc["path"]["kind"], "branch-eni");

    // What alice may not: the pods proxy (deploy/ grants it nobody), so not `--via
    // pods-proxy` either; the hub without a token (its port is reachable in the cluster).
    let can = api.kubectl_as(
        &user_kc,
        &[
            "auth",
            "can-i",
            "get",
            "pods",
            "--subresource=proxy",
            "-n",
            "sgpath",
        ],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no");
    // (She may not even list the agent pods: `get pods` only, for `pod` and `trace`.)
    let run = plugin(
        &node,
        &user_kc,
        &["--via", "pods-proxy", "nodes", "-o", "json"],
    );
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("forbidden"), "{}", run.stderr);
    let (status, body) = get_in(&node, hub_addr, "/v1/fleet/report");
    assert_eq!(status, 401, "the hub without a token: {body}");

    // Catalogs only for the agents' ServiceAccount: its projected token (audience sgpath)
    // verified by the real API server's published issuer keys (RS256), no review per token.
    let agent_sa = sgpath_token(&api, "sgpath", "sgpath", "10m");
    let ask = Some(r#"{"addresses": ["10.9.9.9"]}"#);
    let catalog = |bearer: Option<&str>| https_in(&node, hub_addr, "/v1/catalog", bearer, ask);
    let (status, body) = catalog(None);
    assert_eq!(status, 401, "a catalog without a token: {body}");
    let (status, body) = catalog(Some(&agent_sa));
    assert_eq!(status, 200, "the agents' token: {body}");
    assert!(body.contains("\"state\""), "{body}");
    let (status, body) = catalog(Some(&sgpath_token(&api, "sgpath", "sgpath-client", "10m")));
    assert_eq!(status, 403, "a person's token: {body}");
    assert!(
        body.contains("system:serviceaccount:sgpath:sgpath-client"),
        "{body}"
    );
    let (status, body) = catalog(Some(&api.token("sgpath", "sgpath")));
    assert_eq!(status, 401, "the agents' token for the API server: {body}");
    assert!(body.contains("audience"), "{body}");
    let mut forged = agent_sa.trim().to_owned();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let (status, body) = catalog(Some(&forged));
    assert_eq!(status, 401, "a forged signature: {body}");
    assert!(body.contains("signature"), "{body}");

    // Without RBAC: no token, no services proxy.
    let mallory_kc = api.kubeconfig_for("mallory", MALLORY);
    let run = plugin(&node, &mallory_kc, &["nodes", "-o", "json"]);
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("forbidden") || run.stderr.contains("Forbidden"),
        "{}",
        run.stderr
    );

    // Real kubectl finds `kubectl-sgpath` on PATH and says the same.
    let bin = api.cp.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(kubectl_sgpath_bin(), bin.join("kubectl-sgpath")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &node, "env"])
        .arg(format!("PATH={path}"))
        .arg(format!("KUBECONFIG={}", user_kc.display()))
        .args(["kubectl", "sgpath", "nodes", "-o", "json"])
        .output()
        .expect("run kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(states(&doc), got, "kubectl sgpath and kubectl-sgpath agree");
    drop(hub);
    assert!(a.terminate().success());
}
