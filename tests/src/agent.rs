//! `sgpath agent` from the outside: its HTTP contract (`/readyz`, `/v1/report`, `/metrics`,
//! 404, 405, the bearer token), its JSON log lines, and SIGTERM. The HTTP client is a plain
//! `TcpStream` opened in the agent's namespace.
//!
//! Side effects: runs `sgpath agent` in a lab's node namespace (or a throwaway one) and
//! kills it on drop; a pod namespace (`<prefix>-late`) deleted with its guard.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use xtask::lab::Lab;

use crate::{
    observe::{counters, in_netns, receive, send, udp_in},
    sgpath_bin,
};

/// How long the agent has to become ready (BTF parses and program loads; slower under TCG).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `sgpath agent`, killed on drop if the test did not stop it.
pub struct Agent {
    child: Option<Child>,
    /// The namespace it runs in.
    pub ns: String,
    pub port: u16,
    /// Its stdout lines (the log), as they come.
    pub log: Arc<Mutex<Vec<String>>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// A free port on 127.0.0.1 in namespace `ns`.
fn free_port(ns: &str) -> u16 {
    in_netns(ns, || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    })
}

impl Agent {
    /// Starts `sgpath agent --listen 127.0.0.1:<free port> <extra>` in namespace `ns` and
    /// waits for `/readyz` to answer 200.
    pub fn start(ns: &str, extra: &[&str]) -> Agent {
        let mut agent = Agent::spawn(ns, &[], extra);
        agent.wait_for("/readyz", 200);
        agent
    }

    /// Starts `<wrapper> sgpath agent --listen 127.0.0.1:<free port> <extra>` in namespace
    /// `ns`, without waiting for anything.
    pub fn spawn(ns: &str, wrapper: &[&str], extra: &[&str]) -> Agent {
        let port = free_port(ns);
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(wrapper)
            .arg(sgpath_bin())
            .args(["agent", "--listen", &listen])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sgpath agent");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped");
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut stderr = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Agent {
            child: Some(child),
            ns: ns.to_owned(),
            port,
            log,
            stderr: Some(stderr),
        }
    }

    /// Waits until GET `path` answers `status` (panics if the agent exits or it takes
    /// longer than [`READY_TIMEOUT`]).
    pub fn wait_for(&mut self, path: &str, status: u16) {
        let start = Instant::now();
        loop {
            if let Some(exit) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sgpath agent exited {exit} before GET {path} answered {status}:\n{}\n{}",
                    self.log_text(),
                    self.stderr.take().unwrap().join().unwrap_or_default()
                );
            }
            if matches!(self.try_request("GET", path, &[]), Ok((s, _)) if s == status) {
                return;
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "GET {path} not {status} after {READY_TIMEOUT:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's pid (`ip netns exec` and `setpriv` exec it in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log lines parsed as JSON (each must be).
    pub fn log_events(&self) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
            .collect()
    }

    /// One HTTP/1.1 request (`Connection: close`); (status, body).
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, String)> {
        let to: SocketAddr = (Ipv4Addr::LOCALHOST, self.port).into();
        let mut stream = in_netns(&self.ns, || TcpStream::connect(to))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes())?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {raw:?}"));
        Ok((status, body.to_owned()))
    }

    /// [`Agent::try_request`], panicking on an I/O error.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        self.try_request(method, path, headers)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// GET `/v1/report`, which must answer 200 with JSON.
    pub fn report(&self, headers: &[(&str, &str)]) -> Value {
        let (status, body) = self.request("GET", "/v1/report", headers);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/v1/report: {e}: {body}"))
    }

    /// SIGTERM; the exit status, which must come within 5 s.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // Our own unreaped child (`ip netns exec` execs sgpath in place): the pid is ours.
        sigterm(child.id());
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sgpath agent still running 5 s after SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGTERM to `pid`.
fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of the one `/metrics` sample named `name` whose labels include all of `labels`.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    let mut found = metrics.lines().filter(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{'))
            && labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
    });
    let line = found.next()?;
    assert!(found.next().is_none(), "more than one {name} {labels:?}");
    line.rsplit(' ').next()?.parse().ok()
}

/// `promtool check metrics` on `metrics`; `false` (said loudly) when promtool is missing.
fn promtool_check(metrics: &str) -> bool {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!(
            "\n*** promtool is not installed (Debian package `prometheus`, see `cargo xtask \
             setup`): /metrics NOT checked with `promtool check metrics` ***\n"
        );
        return false;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Datagrams sent to the pod in [`agent_counts_serves_and_stops`].
const TO_POD: u64 = 42;
const PAYLOAD: usize = 100;
/// Datagrams the pod created while the agent runs sends.
const LATE_POD: u64 = 9;

/// The agent in a lab's node: exact counts in `/v1/report` and `/metrics`, the HTTP
/// contract, a pod created while it runs (its path in the report and a `path appeared`
/// log line), and SIGTERM: exit 0 within 5 s.
pub fn agent_counts_serves_and_stops(lab: &Lab) {
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let a = (0..lab.spec.pods.len())
        .find(|&i| lab.spec.pods[i].vlan.is_none() && lab.spec.pods[i].eni.is_none())
        .expect("an ordinary pod");
    let (a_ns, a_ip) = (lab.layout.pod(a), lab.spec.pods[a].ip);
    let cni = lab.cni_config();
    let agent = Agent::start(
        &node,
        &[
            "--cni-config",
            cni.to_str().unwrap(),
            "--summary-interval",
            "1s",
        ],
    );

    let node_tx = udp_in(&node, (node_ip, 0).into());
    let a_rx = udp_in(&a_ns, (Ipv4Addr::UNSPECIFIED, 7002).into());
    send(&node_tx, (a_ip, 7002).into(), TO_POD, PAYLOAD);
    receive(&a_rx, TO_POD);

    let doc = agent.report(&[]);
    assert_eq!(doc["schema"], "sgpath.report/v1");
    let c = counters(&doc, a_ip);
    assert_eq!(c["to_pod"]["forwarded_packets"], TO_POD, "{c}");
    assert_eq!(
        c["to_pod"]["forwarded_bytes"],
        TO_POD * (20 + 8 + PAYLOAD as u64),
        "{c}"
    );

    let (status, metrics) = agent.request("GET", "/metrics", &[]);
    assert_eq!(status, 200, "{metrics}");
    let a_ip_s = a_ip.to_string();
    let fwd = [
        ("pod_ip", a_ip_s.as_str()),
        ("path_kind", "node-eni"),
        ("direction", "to_pod"),
        ("verdict", "forwarded"),
    ];
    assert_eq!(
        sample(&metrics, "sgpath_path_packets_total", &fwd),
        Some(TO_POD),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "sgpath_path_bytes_total", &fwd),
        Some(TO_POD * (20 + 8 + PAYLOAD as u64)),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE sgpath_path_packets_total counter")
            && metrics.contains("sgpath_build_info{version=\""),
        "{metrics}"
    );
    // The lab's branch pod has no VLAN link (no 802.1Q here): its finding is a series.
    assert_eq!(
        sample(
            &metrics,
            "sgpath_finding",
            &[("id", "vlan-parent-missing"), ("subject", "vlan.eth.5")]
        ),
        Some(1),
        "{metrics}"
    );
    promtool_check(&metrics);

    // The contract.
    assert_eq!(agent.request("GET", "/nope", &[]).0, 404);
    assert_eq!(agent.request("GET", "/v1/reports", &[]).0, 404);
    for path in ["/metrics", "/v1/report", "/healthz"] {
        assert_eq!(agent.request("POST", path, &[]).0, 405, "POST {path}");
        assert_eq!(agent.request("DELETE", path, &[]).0, 405, "DELETE {path}");
    }
    assert_eq!(agent.request("GET", "/healthz", &[]).0, 200);
    assert_eq!(
        agent
            .request("GET", "/metrics", &[("Content-Length", "5")])
            .0,
        413
    );

    // A pod created while it runs: in the report and the log within a second or so.
    let ns = crate::NetNs::new(&format!("{}-late", lab.layout.prefix));
    let ip = crate::observe::create_pod(lab, &ns);
    // The CNI is done: the promise is a path in the report within a second.
    let created = Instant::now();
    let ip_s = ip.to_string();
    let doc = loop {
        let doc = agent.report(&[]);
        let has = doc["paths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pod_ip"] == ip_s);
        if has {
            break doc;
        }
        assert!(
            created.elapsed() < Duration::from_secs(5),
            "no path for {ip} 5 s after its pod was created: {}",
            doc["paths"]
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let appeared = created.elapsed();
    assert!(
        appeared < Duration::from_secs(1),
        "path of {ip} in the report only {appeared:?} after its pod was laid out"
    );
    assert_eq!(counters(&doc, ip)["from_pod"]["forwarded_packets"], 0);
    let node_rx = udp_in(&node, (node_ip, 7001).into());
    let tx = udp_in(&ns.0, (ip, 0).into());
    send(&tx, (node_ip, 7001).into(), LATE_POD, 32);
    receive(&node_rx, LATE_POD);
    let c = counters(&agent.report(&[]), ip).clone();
    assert_eq!(c["from_pod"]["forwarded_packets"], LATE_POD, "{c}");
    let events = agent.log_events();
    assert!(
        events.iter().any(|e| e["message"] == "path appeared"
            && e["event"] == "path-appeared"
            && e["pod_ip"] == ip_s
            && e["path_kind"] == "node-eni"),
        "no `path appeared` line for {ip} (in the report after {appeared:?}):\n{}",
        agent.log_text()
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "probes-attached" && e["level"] == "INFO"),
        "{}",
        agent.log_text()
    );
    assert!(
        events.iter().any(|e| e["event"] == "finding-raised"
            && e["finding"] == "vlan-parent-missing"
            && e["subject"] == "vlan.eth.5"),
        "{}",
        agent.log_text()
    );
    // The pod goes (its sockets first: they hold its namespace, and so its veth): its path
    // leaves the report and a `path gone` line names it.
    drop((tx, node_rx));
    drop(ns);
    // The CNI's DEL also removes the pod's rule.
    crate::run(&[
        "ip", "-n", &node, "rule", "del", "to", &ip_s, "lookup", "main", "prio", "512",
    ]);
    let gone = Instant::now();
    loop {
        let doc = agent.report(&[]);
        if !doc["paths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pod_ip"] == ip_s)
        {
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "path of {ip} still there 5 s after its pod went"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = agent.request("GET", "/metrics", &[]);
    assert!(!metrics.contains(&format!("pod_ip=\"{ip}\"")), "{metrics}");
    assert!(
        agent
            .log_events()
            .iter()
            .any(|e| e["event"] == "path-gone" && e["pod_ip"] == ip_s),
        "{}",
        agent.log_text()
    );

    // The same pod again (a StatefulSet's pod keeps its name, so its veth's): a new path,
    // counted from zero, not the old one's counters.
    let ns = crate::NetNs::new(&format!("{}-late", lab.layout.prefix));
    crate::observe::create_pod(lab, &ns);
    let again = Instant::now();
    let c = loop {
        let doc = agent.report(&[]);
        if doc["paths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pod_ip"] == ip_s)
        {
            break counters(&doc, ip).clone();
        }
        assert!(
            again.elapsed() < Duration::from_secs(5),
            "no path for {ip} 5 s after its pod came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(c["from_pod"]["forwarded_packets"], 0, "{c}");
    drop(ns);

    // A fault no netlink event announces (a sysctl): raised and cleared by the summaries'
    // re-checks, each logged once.
    let sysctl = |v: &str| {
        crate::run(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            &format!("net.ipv4.ip_forward={v}"),
        ])
    };
    let finding_event = |event: &str| {
        agent
            .log_events()
            .iter()
            .filter(|e| e["event"] == event && e["finding"] == "ip-forward-disabled")
            .count()
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !done() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no {what} within 5 s:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    sysctl("0");
    wait_for("finding-raised ip-forward-disabled", &|| {
        finding_event("finding-raised") == 1
    });
    sysctl("1");
    wait_for("finding-cleared ip-forward-disabled", &|| {
        finding_event("finding-cleared") == 1
    });
    assert_eq!(finding_event("finding-raised"), 1, "{}", agent.log_text());
    // Summaries every second, totals since start: one counts the datagrams sent above.
    wait_for("a node-eni summary counting the datagrams", &|| {
        agent.log_events().iter().any(|e| {
            e["event"] == "summary"
                && e["path_kind"] == "node-eni"
                && e["to_pod_forwarded"].as_u64() >= Some(TO_POD)
        })
    });

    let log = agent.log.clone();
    let status = agent.terminate();
    assert!(
        status.success(),
        "exit {status}:\n{}",
        log.lock().unwrap().join("\n")
    );
    let last = log.lock().unwrap().last().cloned().unwrap_or_default();
    assert!(last.contains("\"event\":\"stopped\""), "{last}");
}

/// With `--token-file`, `/metrics` and `/v1/report` need the bearer token; the health
/// checks never do. Runs in an empty namespace: no lab needed.
pub fn agent_token_guards_all_but_health_checks() {
    let ns = crate::NetNs::new("sgt-agtok");
    crate::run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
    let dir = std::env::temp_dir().join(format!("sgt-agtok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let agent = Agent::start(
        &ns.0,
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--log-format",
            "json",
        ],
    );
    let good = [("Authorization", "Bearer s3cret-token")];
    for path in ["/metrics", "/v1/report"] {
        assert_eq!(agent.request("GET", path, &[]).0, 401, "{path} without");
        assert_eq!(
            agent
                .request("GET", path, &[("Authorization", "Bearer s3cret-tokex")])
                .0,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            agent
                .request("GET", path, &[("Authorization", "s3cret-token")])
                .0,
            401,
            "{path} without the Bearer scheme"
        );
        assert_eq!(agent.request("GET", path, &good).0, 200, "{path} with");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(agent.request("GET", path, &[]).0, 200, "{path}");
    }
    // Bounded request heads: hyper answers 431 beyond 32 headers or 8 KiB.
    let many: Vec<(String, String)> = (0..40).map(|i| (format!("X-H{i}"), "1".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(agent.request("GET", "/healthz", &many).0, 431);
    let big = "x".repeat(10_000);
    assert_eq!(
        agent
            .request("GET", "/healthz", &[("X-Big", big.as_str())])
            .0,
        431
    );
    // Unknown paths are 404 with or without the token.
    assert_eq!(agent.request("GET", "/secret", &[]).0, 404);
    assert_eq!(agent.report(&good)["schema"], "sgpath.report/v1");
    assert!(agent.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without the capabilities to load programs the agent still serves its health checks:
/// `/healthz` 200, `/readyz` 503 naming what failed, `/v1/report` 503, a `probes-failed`
/// log line; and SIGTERM still ends it with 0.
pub fn agent_without_capabilities_is_alive_but_not_ready() {
    let ns = crate::NetNs::new("sgt-agcap");
    crate::run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
    let mut agent = Agent::spawn(
        &ns.0,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ],
        &[],
    );
    agent.wait_for("/healthz", 200);
    agent.wait_for("/readyz", 503);
    let (_, reason) = agent.request("GET", "/readyz", &[]);
    let mut t = Instant::now();
    while !agent
        .log_events()
        .iter()
        .any(|e| e["event"] == "probes-failed")
    {
        assert!(t.elapsed() < READY_TIMEOUT, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, reason_after) = agent.request("GET", "/readyz", &[]);
    assert!(
        reason_after.contains("attaching probes") && reason_after.contains("CAP_BPF"),
        "{reason} / {reason_after}"
    );
    let (status, body) = agent.request("GET", "/v1/report", &[]);
    assert_eq!(status, 503, "{body}");
    t = Instant::now();
    let status = agent.terminate();
    assert!(status.success(), "exit {status} after {:?}", t.elapsed());
}
