//! `sgpath agent` from the outside: its HTTP contract (`/readyz`, `/v1/report`, `/metrics`,
//! 404, 405, the bearer token), its JSON log lines, and SIGTERM. The HTTP client is a plain
//! `TcpStream` opened in the agent's namespace, wrapped in TLS (rustls, any certificate) for
//! an agent started with [`Agent::spawn_tls`]; the others run `--no-tls` on 127.0.0.1.
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

/// `stream` wrapped in TLS as sgpath's own clients do without a CA (any certificate).
pub fn tls_client(stream: TcpStream) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = sgpath::tls::client_config(None).expect("a client config");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("a TLS client");
    rustls::StreamOwned::new(conn, stream)
}

/// Reads to the end of a TLS stream: a server that closes without close_notify (hyper
/// after `Connection: close`) ends it as well as one that sends it.
pub fn read_until_close(stream: &mut impl Read, raw: &mut String) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !bytes.is_empty() => {}
        Err(e) => return Err(e),
    }
    raw.push_str(&String::from_utf8_lossy(&bytes));
    Ok(())
}

/// How long the agent has to become ready (BTF parses and program loads; slower under TCG).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `sgpath agent`, killed on drop if the test did not stop it.
pub struct Agent {
    child: Option<Child>,
    /// The namespace it runs in.
    pub ns: String,
    pub port: u16,
    /// Serves HTTPS (its self-signed certificate).
    pub tls: bool,
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

    /// Starts `sgpath agent --cni-config <the lab's> <extra>` in `lab`'s node namespace and
    /// waits for `/readyz` to answer 200.
    pub fn in_lab(lab: &Lab, extra: &[&str]) -> Agent {
        let cni = lab.cni_config();
        let mut args = vec!["--cni-config", cni.to_str().unwrap()];
        args.extend(extra);
        Agent::start(&lab.layout.node(), &args)
    }

    /// [`Agent::in_lab`] serving HTTPS with its self-signed certificate.
    pub fn in_lab_tls(lab: &Lab, extra: &[&str]) -> Agent {
        let cni = lab.cni_config();
        let mut args = vec!["--cni-config", cni.to_str().unwrap()];
        args.extend(extra);
        let mut agent = Agent::spawn_tls(&lab.layout.node(), &[], &args);
        agent.wait_for("/readyz", 200);
        agent
    }

    /// Starts `<wrapper> sgpath agent --listen 127.0.0.1:<free port> --no-tls <extra>` in
    /// namespace `ns`, without waiting for anything.
    pub fn spawn(ns: &str, wrapper: &[&str], extra: &[&str]) -> Agent {
        Agent::spawn_with(ns, wrapper, extra, false)
    }

    /// [`Agent::spawn`] serving HTTPS with a self-signed certificate (no `--no-tls`).
    pub fn spawn_tls(ns: &str, wrapper: &[&str], extra: &[&str]) -> Agent {
        Agent::spawn_with(ns, wrapper, extra, true)
    }

    fn spawn_with(ns: &str, wrapper: &[&str], extra: &[&str], tls: bool) -> Agent {
        let port = free_port(ns);
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(wrapper)
            .arg(sgpath_bin())
            .args(["agent", "--listen", &listen])
            .args(if tls { &[][..] } else { &["--no-tls"][..] })
            .args(extra)
            // Every request gets a report built after it came (the tests count packets
            // sent just before), unless the test asks for the cache.
            .args(if extra.contains(&"--report-max-age") {
                &[][..]
            } else {
                &["--report-max-age", "0"][..]
            })
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
            tls,
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
        let stream = in_netns(&self.ns, || TcpStream::connect(to))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut raw = String::new();
        if self.tls {
            let mut stream = tls_client(stream);
            stream.write_all(req.as_bytes())?;
            read_until_close(&mut stream, &mut raw)?;
        } else {
            let mut stream = stream;
            stream.write_all(req.as_bytes())?;
            stream.read_to_string(&mut raw)?;
        }
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

    /// Polls `/v1/report` every 100 ms until `done` holds for it, at most `limit`; returns the
    /// last report either way (the caller's assertions then say what is wrong). Packets sent
    /// just before still cross softirqs and the agent's next read of its maps.
    pub fn report_until(&self, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let doc = self.report(&[]);
            if done(&doc) || start.elapsed() > limit {
                return doc;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls the log every 50 ms until an event named `event` is in it, at most `limit`.
    pub fn wait_event(&self, event: &str, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log_events().iter().any(|e| e["event"] == event) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
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
    let (a_ns, a_ip) = crate::ordinary_pod(lab);
    let agent = Agent::in_lab(lab, &["--summary-interval", "1s"]);

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

/// Without the capabilities to load programs the agent runs degraded: `/healthz` 200,
/// `/readyz` 503 naming the degraded mode and what failed, `/v1/report` 200 (topology and
/// checks, no counters), `sgpath_probes_attached 0`, a `probes-failed` log line; and
/// SIGTERM still ends it with 0.
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
        reason_after.starts_with("degraded: topology and checks only")
            && reason_after.contains("attaching probes")
            && reason_after.contains("CAP_BPF"),
        "{reason} / {reason_after}"
    );
    let doc = agent.report(&[]);
    assert!(doc["probes"].is_null(), "{}", doc["probes"]);
    let (status, metrics) = agent.request("GET", "/metrics", &[]);
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("\nsgpath_probes_attached 0\n"),
        "{metrics}"
    );
    t = Instant::now();
    let status = agent.terminate();
    assert!(status.success(), "exit {status} after {:?}", t.elapsed());
}

/// Datagrams the node sends to each lab pod in [`agent_scraped_by_prometheus`].
const SCRAPED: u64 = 23;

/// BPF object ids (programs and links) that process `pid` holds open, from its fdinfo.
fn bpf_ids(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let (mut progs, mut links) = (Vec::new(), Vec::new());
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let Ok(text) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        for line in text.lines() {
            let id = |key: &str| {
                line.strip_prefix(key)
                    .and_then(|v| v.trim().parse::<u32>().ok())
            };
            // A link's fdinfo names its program too: count the program once, as a program.
            if let Some(id) = id("link_id:") {
                links.push(id);
            } else if let Some(id) = id("prog_id:")
                && !text.contains("link_id:")
            {
                progs.push(id);
            }
        }
    }
    progs.sort_unstable();
    progs.dedup();
    (progs, links)
}

/// Whether the kernel still has the BPF object `id` (`BPF_PROG_GET_FD_BY_ID` = 13,
/// `BPF_LINK_GET_FD_BY_ID` = 30): ENOENT once its last reference is gone.
fn bpf_object_exists(cmd: libc::c_long, id: u32) -> bool {
    // union bpf_attr for *_GET_FD_BY_ID: { u32 id; u32 next_id; u32 open_flags; }
    let attr: [u32; 3] = [id, 0, 0];
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), 12usize) };
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
        return true;
    }
    let err = std::io::Error::last_os_error();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOENT),
        "bpf({cmd}, id {id}): {err}"
    );
    false
}

/// Waits until none of the BPF `progs` and `links` exists (the kernel frees them after
/// their last file descriptor closes, through deferred work); panics after 5 s naming them.
fn wait_bpf_gone(progs: &[u32], links: &[u32], whose: &str) {
    let t = Instant::now();
    loop {
        let left: Vec<String> = progs
            .iter()
            .filter(|&&id| bpf_object_exists(13, id))
            .map(|id| format!("program {id}"))
            .chain(
                links
                    .iter()
                    .filter(|&&id| bpf_object_exists(30, id))
                    .map(|id| format!("link {id}")),
            )
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{} outlived {whose} by 5 s",
            left.join(", ")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a process could leave behind in namespace `ns`: every qdisc and tc filter (ingress
/// and egress) on every link, and the pinned objects under /sys/fs/bpf.
fn kernel_leftovers(ns: &str) -> String {
    let out = |argv: &[&str]| {
        let o = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut s = out(&["ip", "-n", ns, "-o", "link", "show"]);
    s += &out(&["tc", "-n", ns, "qdisc", "show"]);
    for line in out(&["ip", "-n", ns, "-o", "link", "show"]).lines() {
        let Some(dev) = line
            .split(": ")
            .nth(1)
            .map(|d| d.split('@').next().unwrap())
        else {
            continue;
        };
        for hook in ["ingress", "egress"] {
            s += &out(&["tc", "-n", ns, "filter", "show", "dev", dev, hook]);
        }
    }
    pinned(std::path::Path::new("/sys/fs/bpf"), &mut s);
    s
}

/// Appends every path under `dir` (bpffs: pinned programs, maps and links), recursively.
fn pinned(dir: &std::path::Path, out: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        out.push_str(&format!("{}\n", p.display()));
        if p.is_dir() {
            pinned(&p, out);
        }
    }
}

/// A real Prometheus (Debian's `prometheus`) in namespace `ns`, scraping `target` every
/// second into a throwaway TSDB; killed and its data removed on drop.
struct Prometheus {
    child: Child,
    ns: String,
    port: u16,
    dir: std::path::PathBuf,
}

impl Prometheus {
    /// Prometheus scraping the agent on `target` with the bearer token in `token_file`.
    fn start(ns: &str, target: u16, token_file: &std::path::Path) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("sgt-prom-{ns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n  - job_name: sgpath\n    scheme: https\n    \
                 tls_config:\n      insecure_skip_verify: true\n    authorization:\n      \
                 credentials_file: {token}\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target}']\n",
                token = token_file.display()
            ),
        )
        .unwrap();
        let port = free_port(ns);
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("prometheus (Debian package `prometheus`, see `cargo xtask setup`)");
        let p = Prometheus {
            child,
            ns: ns.to_owned(),
            port,
            dir,
        };
        let t = Instant::now();
        while !matches!(http_get(&p.ns, p.port, "/-/ready"), Ok((200, _))) {
            assert!(
                t.elapsed() < READY_TIMEOUT,
                "prometheus not ready: {}",
                std::fs::read_to_string(p.dir.join("stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// An instant query through the HTTP API: each result's labels and value.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let (status, body) = http_get(
            &self.ns,
            self.port,
            &format!(
                "/api/v1/query?query={}",
                xtask::lab::aws::form_encode(promql)
            ),
        )
        .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        assert_eq!(status, 200, "{promql}: {body}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["status"], "success", "{body}");
        doc["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let v = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), v)
            })
            .collect()
    }

    /// Polls `promql` until `want(results)` holds, for up to 40 s (a few scrapes under TCG,
    /// with another test sharing the VM's two CPUs).
    fn wait(&self, promql: &str, what: &str, want: impl Fn(&[(Value, f64)]) -> bool) {
        let t = Instant::now();
        loop {
            let got = self.query(promql);
            if want(&got) {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(40),
                "Prometheus: {what}: `{promql}` gave {got:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET `path` from 127.0.0.1:`port` in namespace `ns` (HTTP/1.1, `Connection: close`).
fn http_get(ns: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let to: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let mut stream = in_netns(ns, || TcpStream::connect(to))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    Ok((status.unwrap_or(0), body.to_owned()))
}

/// The agent on a lab node with a branch pod (VM: 802.1Q), scraped by a real Prometheus:
/// exact per-path counts in `/v1/report`, `/metrics` and Prometheus's stored series (with
/// the branch path's VLAN); `promtool check metrics`; a pod created and deleted while it
/// runs (report, metrics, log lines, and its series gone stale in Prometheus); a fault
/// raised and cleared (log events and the `sgpath_finding` series); 404/405; and SIGTERM:
/// exit 0 within 5 s, every BPF program and link it held gone, and no link, qdisc, tc
/// filter or pinned object different from before it started.
pub fn agent_scraped_by_prometheus(lab: &Lab) {
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let strict = lab
        .spec
        .pods
        .iter()
        .position(|p| p.vlan.is_some())
        .expect("a branch pod");
    let ordinary = lab
        .spec
        .pods
        .iter()
        .position(|p| p.vlan.is_none() && p.eni.is_none())
        .expect("an ordinary pod");
    let before = kernel_leftovers(&node);
    // Prometheus scrapes over HTTPS (the agent's self-signed certificate, as the shipped job
    // does) with a bearer token from a file, as its projected token in a cluster
    // (`--auth kubernetes`); here the static `--token-file` of a node outside one.
    let token_dir = std::env::temp_dir().join(format!("sgt-prom-token-{}", std::process::id()));
    std::fs::create_dir_all(&token_dir).unwrap();
    let token_file = token_dir.join("token");
    std::fs::write(&token_file, "prometheus-scrape-token\n").unwrap();
    let auth = [("Authorization", "Bearer prometheus-scrape-token")];
    let agent = Agent::in_lab_tls(
        lab,
        &[
            "--summary-interval",
            "1s",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let pid = agent.child.as_ref().unwrap().id();
    assert_eq!(
        agent.request("GET", "/metrics", &[]).0,
        401,
        "a scrape without the token"
    );
    let prometheus = Prometheus::start(&node, agent.port, &token_file);
    prometheus.wait("up{job=\"sgpath\"}", "the agent scraped", |r| {
        r.len() == 1 && r[0].1 == 1.0
    });

    // Exact counts on both kinds of path: the bastion to the strict pod (the node's own
    // group lets out only TCP 80 and UDP 53), the node to the ordinary pod.
    let bastion_tx = udp_in(
        &lab.layout.bastion(),
        (lab.spec.vpc.bastion.addr(), 0).into(),
    );
    let node_tx = udp_in(&node, (node_ip, 0).into());
    let mut expected = Vec::new();
    for (i, port, tx) in [(strict, 7011, &bastion_tx), (ordinary, 7012, &node_tx)] {
        let (ns, ip) = (lab.layout.pod(i), lab.spec.pods[i].ip);
        let rx = udp_in(&ns, (Ipv4Addr::UNSPECIFIED, port).into());
        send(tx, (ip, port).into(), SCRAPED, PAYLOAD);
        receive(&rx, SCRAPED);
        expected.push((ip.to_string(), lab.spec.pods[i].vlan));
    }
    let doc = agent.report(&auth);
    let (_, metrics) = agent.request("GET", "/metrics", &auth);
    promtool_check(&metrics);
    for (ip, vlan) in &expected {
        let c = counters(&doc, ip.parse().unwrap());
        assert_eq!(c["to_pod"]["forwarded_packets"], SCRAPED, "{ip}: {c}");
        let kind = if vlan.is_some() {
            "branch-eni"
        } else {
            "node-eni"
        };
        let vlan = vlan.map(|v| v.to_string()).unwrap_or_default();
        let labels = [
            ("pod_ip", ip.as_str()),
            ("path_kind", kind),
            ("vlan", vlan.as_str()),
            ("direction", "to_pod"),
            ("verdict", "forwarded"),
        ];
        assert_eq!(
            sample(&metrics, "sgpath_path_packets_total", &labels),
            Some(SCRAPED),
            "{metrics}"
        );
        let promql = format!(
            "sgpath_path_packets_total{{job=\"sgpath\",pod_ip=\"{ip}\",path_kind=\"{kind}\",\
             vlan=\"{vlan}\",direction=\"to_pod\",verdict=\"forwarded\"}}"
        );
        prometheus.wait(&promql, "the exact count stored", |r| {
            r.len() == 1 && r[0].1 == SCRAPED as f64
        });
    }

    // The contract, briefly (the host test has all of it).
    assert_eq!(agent.request("GET", "/nope", &auth).0, 404);
    assert_eq!(agent.request("POST", "/metrics", &auth).0, 405);

    // A pod created and deleted while it runs.
    let ns = crate::NetNs::new(&format!("{}-late", lab.layout.prefix));
    let ip = crate::observe::create_pod(lab, &ns);
    let ip_s = ip.to_string();
    let created = Instant::now();
    let has_path = |doc: &Value| {
        doc["paths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pod_ip"] == ip_s)
    };
    while !has_path(&agent.report(&auth)) {
        assert!(
            created.elapsed() < Duration::from_secs(5),
            "no path for {ip}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let appeared = created.elapsed();
    let late_series = format!("sgpath_path_packets_total{{pod_ip=\"{ip_s}\"}}");
    prometheus.wait(&late_series, "the new pod's series", |r| !r.is_empty());
    drop(ns);
    crate::run(&[
        "ip", "-n", &node, "rule", "del", "to", &ip_s, "lookup", "main", "prio", "512",
    ]);
    let deleted = Instant::now();
    while has_path(&agent.report(&auth)) {
        assert!(
            deleted.elapsed() < Duration::from_secs(5),
            "{ip} still there"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone = deleted.elapsed();
    let (_, metrics) = agent.request("GET", "/metrics", &auth);
    assert!(
        !metrics.contains(&format!("pod_ip=\"{ip_s}\"")),
        "{metrics}"
    );
    // The next scrape lacks the series: Prometheus marks it stale, so no instant result.
    prometheus.wait(&late_series, "the deleted pod's series stale", |r| {
        r.is_empty()
    });
    let events = agent.log_events();
    for event in ["path-appeared", "path-gone"] {
        assert!(
            events
                .iter()
                .any(|e| e["event"] == event && e["pod_ip"] == ip_s),
            "no {event} for {ip}:\n{}",
            agent.log_text()
        );
    }
    assert!(
        appeared < Duration::from_secs(1) && gone < Duration::from_secs(1),
        "path of {ip} appeared after {appeared:?}, went after {gone:?}"
    );

    // A fault raised and cleared: the strict pod's `iif vlan<hash>` rule.
    let veth = format!(
        "vlan{}",
        xtask::lab::names::veth_suffix(
            &lab.spec.pods[strict].namespace,
            &lab.spec.pods[strict].name
        )
    );
    let table = (100 + lab.spec.pods[strict].vlan.unwrap() as u32).to_string();
    let rule = ["prio", "10", "iif", veth.as_str(), "lookup", table.as_str()];
    let ip_rule = |verb: &str| {
        let mut argv = vec!["ip", "-n", node.as_str(), "rule", verb];
        argv.extend(rule);
        crate::run(&argv);
    };
    let finding = format!("sgpath_finding{{id=\"vlan-rule-missing\",subject=\"{veth}\"}}");
    let count = |event: &str| {
        agent
            .log_events()
            .iter()
            .filter(|e| {
                e["event"] == event && e["finding"] == "vlan-rule-missing" && e["subject"] == veth
            })
            .count()
    };
    // On a timeout, the agent's log says why (a failed resync, a late one).
    let with_log = |f: &dyn Fn()| {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            eprintln!("agent log:\n{}", agent.log_text());
            std::panic::resume_unwind(e);
        }
    };
    ip_rule("del");
    with_log(&|| {
        prometheus.wait(&finding, "vlan-rule-missing raised", |r| {
            r.len() == 1 && r[0].1 == 1.0 && r[0].0["severity"] == "error"
        })
    });
    ip_rule("add");
    with_log(&|| prometheus.wait(&finding, "vlan-rule-missing cleared", |r| r.is_empty()));
    assert_eq!(
        (count("finding-raised"), count("finding-cleared")),
        (1, 1),
        "{}",
        agent.log_text()
    );

    // Teardown drops: connections to an ordinary pod's listener that never accepts, data
    // queued, then the listener closes (QUEUE_PURGE / sk_stream_kill_queues). Counted as the
    // endpoint's, never `path-drops`; and through all of the above (churn, a pod gone,
    // teardown) no counter of any family was ever reset in Prometheus's eyes.
    {
        let (ns, ip) = (lab.layout.pod(ordinary), lab.spec.pods[ordinary].ip);
        let listener = crate::observe::in_netns(&ns, || {
            std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7500)).expect("listen")
        });
        let clients: Vec<TcpStream> = (0..20)
            .map(|_| {
                crate::observe::in_netns(&node, || {
                    let mut c = TcpStream::connect((ip, 7500)).expect("connect");
                    c.write_all(&[7u8; 1000]).expect("write");
                    c
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        drop(listener);
        drop(clients);
    }
    std::thread::sleep(Duration::from_secs(3));
    let families: Vec<String> = prometheus
        .query("count by (__name__) ({job=\"sgpath\",__name__=~\"sgpath_.+_total\"})")
        .into_iter()
        .filter_map(|(m, _)| Some(m["__name__"].as_str()?.to_owned()))
        .collect();
    assert!(
        families.len() >= 5,
        "counter families scraped: {families:?}"
    );
    for family in &families {
        // One family at a time: resets() drops the name, so families would collide.
        let resets = prometheus.query(&format!("resets({family}{{job=\"sgpath\"}}[10m]) > 0"));
        assert!(resets.is_empty(), "{family} went down: {resets:?}");
    }
    let drops = prometheus.query("sgpath_finding{id=\"path-drops\"}");
    assert!(drops.is_empty(), "teardown raised path-drops: {drops:?}");

    // SIGTERM: everything it held is gone, nothing else changed.
    let (progs, links) = bpf_ids(pid);
    assert!(
        progs.len() + links.len() >= 2,
        "the agent holds no BPF programs or links: {progs:?} {links:?}"
    );
    drop(prometheus);
    let log = agent.log.clone();
    let status = agent.terminate();
    assert!(
        status.success(),
        "exit {status}:\n{}",
        log.lock().unwrap().join("\n")
    );
    wait_bpf_gone(&progs, &links, "the agent's SIGTERM");
    assert_eq!(kernel_leftovers(&node), before, "kernel state changed");
    let _ = std::fs::remove_dir_all(&token_dir);
}

/// Resident and peak memory of process `pid`, KiB (`VmRSS`, `VmHWM`).
pub(crate) fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Slow-loris connections opened in [`agent_survives_hostile_clients`].
const LORIS: usize = 300;
/// Concurrent scrapes in [`agent_survives_hostile_clients`].
const SCRAPES: usize = 1000;
/// Worst `/healthz` answer allowed while under attack (issue 12).
const HEALTHZ_WITHIN: Duration = Duration::from_millis(100);

/// Whether the server has closed `stream` (EOF or reset), waiting up to `within`.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Hostile clients on the agent's port: hundreds of slow-loris connections sending a byte a
/// second, non-HTTP bytes, an oversized body, and a thousand scrapes at once. `/healthz`
/// answers within 100 ms throughout, every hostile connection is closed by the server
/// within its limits, and the agent's peak memory grows by less than 32 MiB.
pub fn agent_survives_hostile_clients() {
    let ns = crate::NetNs::new("sgt-aghostile");
    crate::run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
    let agent = Agent::start(&ns.0, &[]);
    let pid = agent.child.as_ref().unwrap().id();
    let to: SocketAddr = (Ipv4Addr::LOCALHOST, agent.port).into();
    let connect = || in_netns(&ns.0, || TcpStream::connect(to)).expect("connect");
    let (_, hwm_before) = memory_kib(pid);
    let healthz = |what: &str| {
        for _ in 0..10 {
            let t = Instant::now();
            let (status, _) = agent.request("GET", "/healthz", &[]);
            let took = t.elapsed();
            assert_eq!(status, 200, "{what}");
            assert!(took < HEALTHZ_WITHIN, "/healthz took {took:?} {what}");
        }
    };

    // Slow loris: each connection sends a byte of its request head a second.
    let started = Instant::now();
    let mut loris: Vec<TcpStream> = (0..LORIS).map(|_| connect()).collect();
    for second in 0..3 {
        for s in &mut loris {
            let _ = s.write_all(&[b"GET /metrics HTTP/1.1\r\n"[second]]);
        }
        healthz("under slow loris");
        std::thread::sleep(Duration::from_secs(1));
    }
    // The server's head timeout (10 s) ends the last of them.
    let deadline = started + Duration::from_secs(13);
    let open = loris
        .iter_mut()
        .map(|s| {
            let left = deadline.saturating_duration_since(Instant::now());
            closed_by_server(s, left.max(Duration::from_millis(1)))
        })
        .filter(|closed| !closed)
        .count();
    assert_eq!(open, 0, "slow-loris connections the server never closed");

    // Non-HTTP bytes: 400, then closed.
    let mut garbage = connect();
    garbage
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = garbage.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // A body: 413.
    let (status, _) = agent.request("GET", "/metrics", &[("Content-Length", "1000000")]);
    assert_eq!(status, 413);

    // A thousand scrapes at once: each answered 200 or closed, none left hanging.
    let outcomes: Vec<Option<u16>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..SCRAPES)
            .map(|_| {
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn_scoped(s, || {
                        let mut c = connect();
                        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        let _ = c.write_all(
                            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        );
                        let mut raw = Vec::new();
                        match c.read_to_end(&mut raw) {
                            Ok(_) | Err(_) if raw.is_empty() => None,
                            _ => String::from_utf8_lossy(&raw)
                                .split_whitespace()
                                .nth(1)
                                .and_then(|s| s.parse().ok()),
                        }
                    })
                    .expect("spawn")
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let answered = outcomes.iter().filter(|o| **o == Some(200)).count();
    let refused = outcomes.iter().filter(|o| o.is_none()).count();
    assert_eq!(
        answered + refused,
        SCRAPES,
        "scrapes neither answered 200 nor closed: {:?}",
        outcomes
            .iter()
            .filter(|o| !matches!(o, None | Some(200)))
            .collect::<Vec<_>>()
    );
    assert!(
        answered >= MAX_CONNECTIONS_AT_LEAST,
        "only {answered} scrapes answered"
    );
    healthz("after a thousand scrapes");
    let (_, hwm_after) = memory_kib(pid);
    eprintln!(
        "hostile clients: {answered} of {SCRAPES} scrapes answered, {refused} closed; \
         peak RSS {hwm_before} -> {hwm_after} KiB"
    );
    assert!(
        hwm_after < hwm_before + 32 * 1024,
        "peak memory grew from {hwm_before} to {hwm_after} KiB"
    );
    assert!(agent.terminate().success());
}

/// The longest a probe may take under [`agent_probes_get_through_a_token_flood`]: half the
/// DaemonSet's `timeoutSeconds: 2`, so a probe never fails for the flood even on a node
/// twice as loaded as this test's.
const PROBE_WITHIN: Duration = Duration::from_secs(1);
/// How long the token flood lasts.
const TOKEN_FLOOD: Duration = Duration::from_secs(10);
/// Threads flooding at once.
const FLOODERS: usize = 8;

/// One plain HTTP/1.1 GET of `path` on 127.0.0.1:`port` in `ns`: (status, time taken).
fn probe(ns: &str, port: u16, path: &str) -> (u16, Duration) {
    let t = Instant::now();
    let mut c = in_netns(ns, || TcpStream::connect((Ipv4Addr::LOCALHOST, port))).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut raw = String::new();
    let _ = c.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, t.elapsed())
}

/// A flood of made-up bearer tokens on the agent's HTTPS port, against a real
/// kube-apiserver's TokenReview: [`FLOODERS`] threads for [`TOKEN_FLOOD`], each request a new TLS
/// connection with a new token, half of them not JWTs (random bytes, a static token) and
/// half JWT-shaped for the audience `sgpath` with a plausible lifetime (so each misses the
/// cache and is worth a review), while the kubelet's `/healthz` and `/readyz` are polled on
/// `--probe-listen` every 50 ms. No probe fails or takes [`PROBE_WITHIN`] or longer; every
/// non-JWT is 401 without a review; the JWT-shaped ones are 401 (the API server does not
/// know them) or 503 with `Retry-After: 1`, and the API server sees at most the review
/// budget's burst plus its rate times the flood's length in TokenReviews.
pub fn agent_probes_get_through_a_token_flood() {
    let ns = crate::NetNs::new("sgt-agflood");
    crate::run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
    let api = crate::apiserver::RealApi::start(Some(&ns.0), &[]);
    let base = xtask::workspace_root().join("deploy/base");
    api.kubectl(&["apply", "--server-side", "-k", base.to_str().unwrap()]);
    let kubeconfig = crate::kube::agent_kubeconfig(&api);
    let probe_port = free_port(&ns.0);
    let probe_listen = format!("127.0.0.1:{probe_port}");
    let mut agent = Agent::spawn_tls(
        &ns.0,
        &[],
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            "node-flood",
            "--auth",
            "kubernetes",
            "--probe-listen",
            &probe_listen,
        ],
    );
    agent.wait_for("/readyz", 200);
    assert_eq!(probe(&ns.0, probe_port, "/readyz").0, 200);
    assert_eq!(
        probe(&ns.0, probe_port, "/metrics").0,
        404,
        "the probe port serves no data"
    );
    let reviews = || {
        api.metric(
            "apiserver_request_total",
            &[("resource", "tokenreviews"), ("verb", "POST")],
        )
    };
    let reviews_before = reviews();
    let to: SocketAddr = (Ipv4Addr::LOCALHOST, agent.port).into();
    let start = Instant::now();
    let (flood, probes) = std::thread::scope(|s| {
        let flooders: Vec<_> = (0..FLOODERS)
            .map(|i| {
                let ns = ns.0.clone();
                s.spawn(move || {
                    // (JWT-shaped?, status, Retry-After present)
                    let mut seen: Vec<(bool, u16, bool)> = Vec::new();
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
                    let mut n = 0u64;
                    while start.elapsed() < TOKEN_FLOOD {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        n += 1;
                        let jwt = n.is_multiple_of(2);
                        let token = if jwt {
                            crate::kube::fake_jwt(
                                &format!("system:serviceaccount:flood:t{x:x}"),
                                &[serde_json::json!("sgpath")],
                                600,
                                x,
                            )
                        } else if n % 4 == 1 {
                            format!("{x:x}{}", "z".repeat((x % 64) as usize))
                        } else {
                            "s3cret-token".to_owned()
                        };
                        let Ok(tcp) = in_netns(&ns, || TcpStream::connect(to)) else {
                            continue;
                        };
                        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        let mut c = tls_client(tcp);
                        let req = format!(
                            "GET /v1/report HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                             Authorization: Bearer {token}\r\n\r\n"
                        );
                        let mut raw = String::new();
                        if c.write_all(req.as_bytes()).is_err()
                            || read_until_close(&mut c, &mut raw).is_err()
                        {
                            seen.push((jwt, 0, false));
                            continue;
                        }
                        let status = raw
                            .split_whitespace()
                            .nth(1)
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        let retry = raw.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n");
                        seen.push((jwt, status, retry));
                    }
                    seen
                })
            })
            .collect();
        let mut probes: Vec<(&str, u16, Duration)> = Vec::new();
        while start.elapsed() < TOKEN_FLOOD {
            for path in ["/healthz", "/readyz"] {
                let (status, took) = probe(&ns.0, probe_port, path);
                probes.push((path, status, took));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let flood: Vec<(bool, u16, bool)> = flooders
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        (flood, probes)
    });
    let elapsed = start.elapsed();
    let token_reviews = reviews() - reviews_before;
    let slowest = probes.iter().map(|p| p.2).max().unwrap();
    let count = |f: &dyn Fn(&(bool, u16, bool)) -> bool| flood.iter().filter(|r| f(r)).count();
    eprintln!(
        "token flood: {} requests in {elapsed:?} ({} JWT-shaped: {} x 401, {} x 503; {} not: \
         {} x 401; {} failed), {token_reviews} TokenReviews; {} probes, slowest {slowest:?}",
        flood.len(),
        count(&|r| r.0),
        count(&|r| r.0 && r.1 == 401),
        count(&|r| r.0 && r.1 == 503),
        count(&|r| !r.0),
        count(&|r| !r.0 && r.1 == 401),
        count(&|r| r.1 == 0),
        probes.len()
    );
    for (path, status, took) in &probes {
        assert_eq!(*status, 200, "{path} during the flood");
        assert!(
            *took < PROBE_WITHIN,
            "{path} took {took:?} during the flood"
        );
    }
    assert!(probes.len() >= 50, "only {} probes", probes.len());
    assert!(
        flood.len() >= 200,
        "only {} flood requests: not a flood",
        flood.len()
    );
    assert_eq!(
        count(&|r| !r.0 && r.1 != 401),
        0,
        "a non-JWT bearer not refused with 401"
    );
    assert_eq!(
        count(&|r| r.0 && !(r.1 == 401 || (r.1 == 503 && r.2))),
        0,
        "a JWT-shaped bearer neither 401 nor 503 with Retry-After: {:?}",
        flood
            .iter()
            .filter(|r| r.0 && r.1 != 401 && r.1 != 503)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        count(&|r| r.0 && r.1 == 503) > 0,
        "the review budget was never spent"
    );
    let budget = sgpath::auth::REVIEW_BURST
        + sgpath::auth::REVIEWS_PER_SECOND * elapsed.as_secs_f64()
        // The agent's own review of nothing else, and the metric's rounding.
        + 2.0;
    assert!(
        token_reviews <= budget,
        "{token_reviews} TokenReviews in {elapsed:?}: more than the budget's {budget}"
    );
    assert!(agent.terminate().success());
}

/// Scrapes at least this many of [`SCRAPES`] get answered: the server serves 32 at once and
/// closes a newcomer only when all 32 are busy.
const MAX_CONNECTIONS_AT_LEAST: usize = 32;

impl Agent {
    /// SIGKILL, as a crash or an OOM kill: no handler runs. Waits for the process to be
    /// gone.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The agent's pid (`ip netns exec` and `setpriv` exec it in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `to_pod.forwarded_packets` of `ip`'s path in its report.
    fn to_pod(&self, ip: Ipv4Addr) -> u64 {
        counters(&self.report(&[]), ip)["to_pod"]["forwarded_packets"]
            .as_u64()
            .unwrap()
    }
}

/// Datagrams of [`agent_crash_restart_and_overlap`], one batch per phase.
const BEFORE_OVERLAP: u64 = 17;
const DURING_OVERLAP: u64 = 11;
const AFTER_OLD_KILLED: u64 = 5;
const AFTER_RESTART: u64 = 7;

/// What a DaemonSet does to the agent: a rolling update with overlap (two agents at once,
/// both exact), the old one SIGKILLed (the new one loses nothing; every BPF program and
/// link of the dead one gone), and a restart after a crash (counts from zero, nothing
/// counted twice). Nothing is left in the node's namespace at the end.
pub fn agent_crash_restart_and_overlap(lab: &Lab) {
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let (a_ns, a_ip) = crate::ordinary_pod(lab);
    let cni = lab.cni_config();
    let args = ["--cni-config", cni.to_str().unwrap()];
    // Another program's filters at priority 1 on the pod's veth, as the AWS network policy
    // agent installs them (legacy tc on 5.10 and 6.1): they must come out of every crash
    // and restart untouched (`kernel_leftovers` compares them).
    let pod = lab.spec.pods.iter().find(|p| p.ip == a_ip).unwrap();
    let veth = xtask::lab::names::host_veth(&lab.spec, pod);
    crate::run(&["tc", "-n", &node, "qdisc", "add", "dev", &veth, "clsact"]);
    for dir in ["ingress", "egress"] {
        // u32 with a class id: a pass-through filter this sandbox's kernel has (it lacks
        // cls_matchall and act_gact).
        crate::run(&[
            "tc", "-n", &node, "filter", "add", "dev", &veth, dir, "prio", "1", "protocol", "all",
            "u32", "match", "u32", "0", "0", "classid", "1:1",
        ]);
    }
    let before = kernel_leftovers(&node);
    assert!(before.matches("flowid 1:1").count() >= 2, "{before}");
    let tx = udp_in(&node, (node_ip, 0).into());
    let rx = udp_in(&a_ns, (Ipv4Addr::UNSPECIFIED, 7021).into());
    let batch = |n| {
        send(&tx, (a_ip, 7021).into(), n, 16);
        receive(&rx, n);
    };

    let old = Agent::start(&node, &args);
    batch(BEFORE_OVERLAP);
    assert_eq!(old.to_pod(a_ip), BEFORE_OVERLAP);
    let new = Agent::start(&node, &args);
    batch(DURING_OVERLAP);
    assert_eq!(
        old.to_pod(a_ip),
        BEFORE_OVERLAP + DURING_OVERLAP,
        "old agent"
    );
    assert_eq!(new.to_pod(a_ip), DURING_OVERLAP, "new agent");

    let (progs, links) = bpf_ids(old.pid());
    assert!(
        !progs.is_empty() || !links.is_empty(),
        "old agent holds no BPF objects"
    );
    old.kill();
    wait_bpf_gone(&progs, &links, "its SIGKILLed agent");
    batch(AFTER_OLD_KILLED);
    assert_eq!(
        new.to_pod(a_ip),
        DURING_OVERLAP + AFTER_OLD_KILLED,
        "the new agent after the old one died"
    );

    // A crash, then the DaemonSet's restart.
    new.kill();
    let restarted = Agent::start(&node, &args);
    batch(AFTER_RESTART);
    assert_eq!(restarted.to_pod(a_ip), AFTER_RESTART, "restarted agent");
    assert!(restarted.terminate().success());
    assert_eq!(kernel_leftovers(&node), before, "kernel state changed");
}

/// Route and rule changes in each burst of [`agent_resyncs_after_netlink_overflow`].
const BURST: u32 = 5000;

/// The parts of a report a re-read determines (no counters, no probes): what the agent's
/// `/v1/report` must share with a fresh `sgpath inspect`.
fn topology_of(doc: &Value) -> Value {
    let mut paths = doc["paths"].clone();
    for p in paths.as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("counters");
        p.as_object_mut().unwrap().remove("window");
    }
    let findings: std::collections::BTreeSet<String> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{} {}", f["id"], f["subject"]))
        .collect();
    serde_json::json!({
        "mode": doc["mode"], "trunks": doc["trunks"], "paths": paths,
        "sysctls": doc["sysctls"], "lookups": doc["lookups"], "findings": findings,
    })
}

/// A burst of [`BURST`] route and rule changes at once (`ip -batch`) while the agent is
/// stopped (SIGSTOP, as CPU throttling does) with, in the middle,
/// the deletion of a pod's `to <pod> lookup main` rule: the agent's notification socket
/// overflows (`netlink-overrun` logged), it re-reads the node, and its report equals a
/// fresh `sgpath inspect` (the pod's `pod-route-missing` finding included); the same after a
/// second burst that undoes it all.
pub fn agent_resyncs_after_netlink_overflow(lab: &Lab) {
    let node = lab.layout.node();
    let pod = lab
        .spec
        .pods
        .iter()
        .find(|p| p.vlan.is_none() && p.eni.is_none())
        .expect("an ordinary pod");
    let pod_rule = format!("rule del to {} lookup main prio 512\n", pod.ip);
    let agent = Agent::in_lab(lab, &[]);
    let pid = agent.pid();
    let burst = |verb: &str, middle: &str| {
        let mut script = String::new();
        for i in 0..BURST / 2 {
            let (hi, lo) = (i / 250, i % 250 + 1);
            script += &format!("route {verb} 10.123.{hi}.{lo}/32 dev lo table 4000\n");
            script += &format!("rule {verb} to 10.124.{hi}.{lo}/32 lookup 4000 prio 40000\n");
            if i == BURST / 4 {
                script += middle;
            }
        }
        // The agent stopped meanwhile, as a CPU-throttled container is: the kernel queues
        // notifications on its socket until the receive buffer is full, then drops them.
        let signal = |s| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), s);
        signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
        crate::feed(&["ip", "-n", &node, "-batch", "-"], &script);
        signal(nix::sys::signal::Signal::SIGCONT).unwrap();
    };
    let converged = |what: &str| {
        let t = Instant::now();
        loop {
            let (fresh, _) = crate::inspect(lab);
            let got = topology_of(&agent.report(&[]));
            if got == topology_of(&fresh) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{what}: the agent's report differs from a fresh inspect 20 s on:\n\
                 agent: {got}\ninspect: {}",
                topology_of(&fresh)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let overruns = || {
        agent
            .log_events()
            .iter()
            .filter(|e| e["event"] == "netlink-overrun")
            .count()
    };

    burst("add", &pod_rule);
    let took = converged("after the burst");
    let has_finding = |doc: &Value| {
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "pod-route-missing")
    };
    assert!(has_finding(&agent.report(&[])), "no pod-route-missing");
    // A re-read on an earlier notification can converge before the overrun's own tick is
    // logged: give that tick a few seconds.
    let t = Instant::now();
    while overruns() == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = overruns();
    assert!(
        first >= 1,
        "no netlink-overrun logged:\n{}",
        agent.log_text()
    );

    burst(
        "del",
        &format!("rule add to {} lookup main prio 512\n", pod.ip),
    );
    let took_back = converged("after the burst that undid it");
    assert!(!has_finding(&agent.report(&[])), "pod-route-missing stayed");
    eprintln!(
        "netlink overflow: {first} overrun(s) in the first burst, {} in all; converged in \
         {took:?} and {took_back:?}",
        overruns()
    );
    assert!(agent.terminate().success());
}

/// How long [`agent_under_pod_churn`] churns, and how many pods it creates a second.
const CHURN: Duration = Duration::from_secs(60);
const PODS_PER_SECOND: u32 = 20;
/// Churned pods alive at once; the oldest goes when a new one comes.
const CHURN_ALIVE: usize = 10;

/// A churned pod: its namespace (deleted on drop), veth and address.
struct ChurnPod {
    ns: crate::NetNs,
    veth: String,
    ip: Ipv4Addr,
}

/// Lays out pod `i` as the CNI's ADD does, in two `ip -batch` runs (node side, pod side).
fn churn_pod(node: &str, i: u32) -> ChurnPod {
    let ns = crate::NetNs::new(&format!("sgt-churn-{i}"));
    let ip = Ipv4Addr::new(192, 168, 100 + (i / 250) as u8, (i % 250 + 1) as u8);
    let veth = format!(
        "eni{}",
        xtask::lab::names::veth_suffix("churn", &format!("pod-{i}"))
    );
    let mac = format!("02:00:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff);
    crate::feed(
        &["ip", "-n", node, "-batch", "-"],
        &format!(
            "link add {veth} address {mac} type veth peer name eth0 netns {ns}\n\
             link set {veth} up\n\
             route add {ip} dev {veth} scope link\n\
             rule add to {ip} lookup main prio 512\n",
            ns = ns.0
        ),
    );
    crate::feed(
        &["ip", "-n", &ns.0, "-batch", "-"],
        &format!(
            "addr add {ip}/32 dev eth0\nlink set eth0 up\n\
             route add 169.254.1.1 dev eth0 scope link\n\
             route add default via 169.254.1.1 dev eth0\n\
             neigh add 169.254.1.1 lladdr {mac} dev eth0 nud permanent\n"
        ),
    );
    ChurnPod { ns, veth, ip }
}

/// The CNI's DEL: the pod's namespace (and so its veth) and its rule.
fn delete_churn_pod(node: &str, pod: ChurnPod) {
    drop(pod.ns);
    crate::run(&[
        "ip",
        "-n",
        node,
        "rule",
        "del",
        "to",
        &pod.ip.to_string(),
        "lookup",
        "main",
        "prio",
        "512",
    ]);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Descriptors an agent may hold beyond its count before the churn: a scrape's or a
/// netlink request's socket still open at the moment of counting. A leak of one per pod
/// would show as hundreds (1,200 pods are created and deleted).
const FD_MARGIN: usize = 2;

/// 20 pods a second created and deleted for 60 s, as the CNI does: the agent never dies;
/// its file descriptors are at most [`FD_MARGIN`] more, and its resident memory within 8 MiB
/// of what they were before (fewer is fine: the runtime may close one it held); at the end its paths and probed interfaces are exactly the live pods', no
/// series names a deleted pod, and the report is right within a second.
pub fn agent_under_pod_churn(lab: &Lab) {
    let node = lab.layout.node();
    let mut agent = Agent::in_lab(lab, &[]);
    let pid = agent.pid();
    let _ = agent.request("GET", "/metrics", &[]);
    let (fds_before, (rss_before, _)) = (open_fds(pid), memory_kib(pid));

    let started = Instant::now();
    let mut alive: std::collections::VecDeque<ChurnPod> = Default::default();
    let mut created = 0u32;
    while started.elapsed() < CHURN {
        let due = started + Duration::from_millis(1000 / PODS_PER_SECOND as u64) * created;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        alive.push_back(churn_pod(&node, created));
        created += 1;
        if alive.len() > CHURN_ALIVE {
            delete_churn_pod(&node, alive.pop_front().unwrap());
        }
        if created.is_multiple_of(100) {
            // Reports and scrapes during the churn, as a Prometheus would.
            let _ = agent.request("GET", "/metrics", &[]);
            assert!(
                agent.child.as_mut().unwrap().try_wait().unwrap().is_none(),
                "agent died"
            );
        }
    }
    let rate = f64::from(created) / started.elapsed().as_secs_f64();
    // Three stay; the report must be right within a second of the churn's end.
    while alive.len() > 3 {
        delete_churn_pod(&node, alive.pop_front().unwrap());
    }
    let stopped = Instant::now();
    let live: std::collections::BTreeSet<String> = alive.iter().map(|p| p.ip.to_string()).collect();
    let churned = |doc: &Value| -> std::collections::BTreeSet<String> {
        doc["paths"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["pod_ip"].as_str())
            .filter(|ip| ip.starts_with("192.168.10"))
            .map(str::to_owned)
            .collect()
    };
    let doc = loop {
        let doc = agent.report(&[]);
        if churned(&doc) == live {
            break doc;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(1),
            "report not right 1 s after the churn: {:?} vs live {live:?}",
            churned(&doc)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let settled = stopped.elapsed();
    let probed: Vec<&String> = doc["probes"]["interfaces"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("eni"))
        .collect();
    let mut want: Vec<String> = doc["paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["host_veth"]
                .as_str()
                .is_some_and(|v| v.starts_with("eni"))
        })
        .map(|p| p["host_veth"].as_str().unwrap().to_owned())
        .collect();
    want.sort();
    assert_eq!(probed, want.iter().collect::<Vec<_>>(), "probed interfaces");
    for p in &alive {
        assert!(want.contains(&p.veth), "{} not probed", p.veth);
    }
    let (_, metrics) = agent.request("GET", "/metrics", &[]);
    let stale: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains("pod_ip=\"192.168.10"))
        .filter(|l| {
            !live
                .iter()
                .any(|ip| l.contains(&format!("pod_ip=\"{ip}\"")))
        })
        .collect();
    assert!(stale.is_empty(), "series of deleted pods: {stale:?}");
    // The last deletions' work may still hold a socket: poll, up to 5 s, for the bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds(pid) > fds_before + FD_MARGIN && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (fds_after, (rss_after, hwm)) = (open_fds(pid), memory_kib(pid));
    eprintln!(
        "pod churn: {created} pods in {:?} ({rate:.1}/s); report right {settled:?} after; \
         fds {fds_before} -> {fds_after}; RSS {rss_before} -> {rss_after} KiB (peak {hwm})",
        CHURN
    );
    assert!(
        rate >= f64::from(PODS_PER_SECOND) * 0.9,
        "only {rate:.1} pods/s"
    );
    assert!(
        fds_after <= fds_before + FD_MARGIN,
        "file descriptors grew from {fds_before} to {fds_after} over the churn (margin {FD_MARGIN})"
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "resident memory grew from {rss_before} to {rss_after} KiB"
    );
    for p in alive {
        delete_churn_pod(&node, p);
    }
    assert!(agent.terminate().success());
}

/// DNS queries of [`agent_under_map_pressure`]: more than the connection map holds.
const FLOOD: u32 = sgpath_ebpf::MAX_CONNS + 616;
/// Queries after the map has emptied again.
const AFTER_FLOOD: u32 = 10;

/// More DNS queries waiting for an answer than the connection map holds (a pod querying
/// 17,000 addresses the node blackholes): every query is either counted unanswered or
/// counted as a `ConnMapFull` error (together exactly what was sent), `probe-map-full`
/// names the map, the metric says the same, and once the entries have lingered out,
/// queries are tracked again with no new error.
pub fn agent_under_map_pressure(lab: &Lab) {
    let node = lab.layout.node();
    let (a_ns, a_ip) = crate::ordinary_pod(lab);
    crate::run(&[
        "ip",
        "-n",
        &node,
        "route",
        "add",
        "blackhole",
        "10.99.0.0/16",
    ]);
    let agent = Agent::in_lab(lab, &["--syn-timeout", "1s"]);
    let sock = udp_in(&a_ns, (a_ip, 0).into());
    let query = |i: u32| {
        let to = Ipv4Addr::new(10, 99, (i / 250) as u8, (i % 250 + 1) as u8);
        sock.send_to(
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",
            (to, 53),
        )
        .unwrap();
    };
    (0..FLOOD).for_each(query);
    let errors = |doc: &Value| doc["probes"]["errors"]["ConnMapFull"].as_u64().unwrap();
    let unanswered = |doc: &Value| counters(doc, a_ip)["from_pod"]["dns_unanswered"].as_u64();
    // After the timeout and a sweep, every query is accounted for, one way or the other.
    let t = Instant::now();
    let doc = loop {
        let doc = agent.report(&[]);
        if unanswered(&doc).unwrap_or(0) + errors(&doc) == u64::from(FLOOD) {
            break doc;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{FLOOD} queries: {:?} unanswered + {} ConnMapFull",
            unanswered(&doc),
            errors(&doc)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let lost = errors(&doc);
    assert!(
        lost >= u64::from(FLOOD - sgpath_ebpf::MAX_CONNS),
        "only {lost} ConnMapFull"
    );
    let f = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "probe-map-full")
        .unwrap_or_else(|| panic!("no probe-map-full: {}", doc["findings"]));
    assert_eq!(
        (&f["subject"], &f["severity"]),
        (&"CONNS".into(), &"warning".into())
    );
    let (_, metrics) = agent.request("GET", "/metrics", &[]);
    assert_eq!(
        sample(
            &metrics,
            "sgpath_probe_errors_total",
            &[("kind", "ConnMapFull")]
        ),
        Some(lost),
        "{metrics}"
    );
    // The entries linger 35 s after their last packet, then free their slots.
    let before = unanswered(&doc).unwrap();
    let t = Instant::now();
    while agent.report(&[])["probes"]["connections_tracked"].as_u64() != Some(0) {
        assert!(
            t.elapsed() < Duration::from_secs(45),
            "the map never emptied"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    (FLOOD..FLOOD + AFTER_FLOOD).for_each(query);
    let t = Instant::now();
    loop {
        let doc = agent.report(&[]);
        if unanswered(&doc) == Some(before + u64::from(AFTER_FLOOD)) {
            assert_eq!(errors(&doc), lost, "new ConnMapFull after the map emptied");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            unanswered(&doc)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("map pressure: {FLOOD} queries, {before} tracked, {lost} ConnMapFull");
    assert!(agent.terminate().success());
}

/// The DaemonSet's capabilities (deploy/), as `setpriv` names them, and their bits.
const DAEMONSET_CAPS: [&str; 5] = ["bpf", "perfmon", "net_admin", "sys_resource", "syslog"];
const DAEMONSET_CAP_BITS: [u32; 5] = [39, 38, 12, 24, 34];

/// This process's capability bounding set (CapBnd).
fn own_bounding_set() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd");
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// The agent in the host lab with exactly the DaemonSet's capabilities, then without each of
/// CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN in turn (root's other capabilities dropped too:
/// CAP_SYS_ADMIN would stand in for the first two). It names the missing one once
/// (`capability-missing`), keeps the topology, the checks and the metrics of what works, and
/// `/readyz` says what it is: ready with all five; degraded (503) without CAP_BPF or
/// CAP_PERFMON, with no counters; ready without CAP_NET_ADMIN, counting, with the pod
/// namespaces unread (`node-read-incomplete`).
pub fn agent_names_each_missing_capability(lab: &Lab) {
    let node = lab.layout.node();
    let cni = lab.cni_config();
    let ordinary = lab
        .spec
        .pods
        .iter()
        .find(|p| p.vlan.is_none() && p.eni.is_none())
        .expect("an ordinary pod")
        .ip
        .to_string();
    for dropped in [None, Some("bpf"), Some("perfmon"), Some("net_admin")] {
        let keep: Vec<String> = DAEMONSET_CAPS
            .iter()
            .filter(|c| Some(**c) != dropped)
            .map(|c| format!("+{c}"))
            .collect();
        let bounding = format!("--bounding-set=-all,{}", keep.join(","));
        let mut agent = Agent::spawn(
            &node,
            &["setpriv", "--inh-caps=-all", &bounding],
            &["--cni-config", cni.to_str().unwrap()],
        );
        agent.wait_for("/healthz", 200);
        let t = Instant::now();
        // Ready, or degraded once the attach has failed.
        let (status, why) = loop {
            let (status, why) = agent.request("GET", "/readyz", &[]);
            if status == 200 || why.starts_with("degraded") {
                break (status, why);
            }
            assert!(
                t.elapsed() < READY_TIMEOUT,
                "{dropped:?}: /readyz {status} {why}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let missing: Vec<String> = agent
            .log_events()
            .iter()
            .filter(|e| e["event"] == "capability-missing")
            .map(|e| e["capability"].as_str().unwrap().to_owned())
            .collect();
        // What this machine withholds from the test itself (this sandbox's bounding set has
        // no CAP_SYS_RESOURCE) is missing for the agent too.
        let own = own_bounding_set();
        let mut want: Vec<String> = DAEMONSET_CAPS
            .iter()
            .zip(DAEMONSET_CAP_BITS)
            .filter(|(c, bit)| Some(**c) == dropped || own & (1 << bit) == 0)
            .map(|(c, _)| format!("CAP_{}", c.to_uppercase()))
            .collect();
        // The agent's order: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_RESOURCE, CAP_SYSLOG.
        want.sort_by_key(|c| {
            DAEMONSET_CAPS
                .iter()
                .position(|d| c[4..].eq_ignore_ascii_case(d))
        });
        if dropped.is_none() && !want.is_empty() {
            eprintln!(
                "\n*** this machine withholds {want:?} from the tests: the agent runs without them ***\n"
            );
        }
        assert_eq!(missing, want, "{dropped:?}: {}", agent.log_text());
        let doc = agent.report(&[]);
        let (_, metrics) = agent.request("GET", "/metrics", &[]);
        // The topology is there in every case.
        assert!(
            doc["paths"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["pod_ip"] == ordinary),
            "{dropped:?}: {}",
            doc["paths"]
        );
        let read_incomplete = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "node-read-incomplete" && f["subject"] == "pod namespaces");
        match dropped {
            None => {
                assert_eq!(status, 200, "{why}");
                assert!(metrics.contains("\nsgpath_probes_attached 1\n"));
                assert!(!read_incomplete, "{}", doc["findings"]);
            }
            Some("net_admin") => {
                assert_eq!(status, 200, "{why}");
                assert!(metrics.contains("\nsgpath_probes_attached 1\n"));
                assert!(read_incomplete, "{}", doc["findings"]);
            }
            Some(cap) => {
                assert_eq!(status, 503, "{why}");
                assert!(
                    why.starts_with("degraded: topology and checks only"),
                    "{cap}: {why}"
                );
                assert!(doc["probes"].is_null() && doc["paths"][0]["counters"].is_null());
                assert!(
                    metrics.contains("\nsgpath_probes_attached 0\n"),
                    "{metrics}"
                );
                assert!(metrics.contains("sgpath_finding{"), "{metrics}");
            }
        }
        assert!(agent.terminate().success(), "{dropped:?}");
    }
}

/// A kernel without BTF (an empty tmpfs over /sys/kernel/btf in the agent's own mount
/// namespace): the agent says so once, exactly, and runs degraded with the topology, the
/// checks and their metrics.
pub fn agent_without_btf_runs_degraded(lab: &Lab) {
    let node = lab.layout.node();
    let cni = lab.cni_config();
    let mut agent = Agent::spawn(
        &node,
        &[
            "unshare",
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs none /sys/kernel/btf && exec \"$0\" \"$@\"",
        ],
        &["--cni-config", cni.to_str().unwrap()],
    );
    agent.wait_for("/healthz", 200);
    let t = Instant::now();
    let why = loop {
        let (_, why) = agent.request("GET", "/readyz", &[]);
        if why.starts_with("degraded") {
            break why;
        }
        assert!(t.elapsed() < READY_TIMEOUT, "{why}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        why.contains("counting needs the kernel's BTF") && why.contains("/sys/kernel/btf/vmlinux"),
        "{why}"
    );
    let failed: Vec<Value> = agent
        .log_events()
        .into_iter()
        .filter(|e| e["event"] == "probes-failed")
        .collect();
    assert_eq!(failed.len(), 1, "{}", agent.log_text());
    let doc = agent.report(&[]);
    assert!(!doc["paths"].as_array().unwrap().is_empty(), "{doc}");
    let (_, metrics) = agent.request("GET", "/metrics", &[]);
    assert!(
        metrics.contains("\nsgpath_probes_attached 0\n"),
        "{metrics}"
    );
    assert!(agent.terminate().success());
}

/// Datagrams of [`agent_with_small_maps_counts_what_fits`].
const TO_COUNTED: u64 = 5;
const TO_UNCOUNTED: u64 = 6;
const DROPPED_FIRST: u64 = 3;
const DROPPED_OVERFLOW: u64 = 4;

/// `--max-paths 2 --max-drop-keys 1` on a lab of four pods: two paths are counted exactly,
/// two are named uncounted (finding, metric, no counters); each counted path's first kind of
/// drop counts in its own per-CPU drop slot, so a one-key `DROPS` hash loses none of them;
/// when a counted pod goes, an uncounted path takes its slot, and every path counts on.
pub fn agent_with_small_maps_counts_what_fits(lab: &Lab) {
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let agent = Agent::in_lab(lab, &["--max-paths", "2", "--max-drop-keys", "1"]);
    let doc = agent.report(&[]);
    let paths = doc["paths"].as_array().unwrap();
    let ip_of = |p: &Value| p["pod_ip"].as_str().unwrap().parse::<Ipv4Addr>().unwrap();
    let counted: Vec<Ipv4Addr> = paths
        .iter()
        .filter(|p| !p["counters"].is_null())
        .map(ip_of)
        .collect();
    let uncounted: Vec<&Value> = paths.iter().filter(|p| p["counters"].is_null()).collect();
    assert_eq!(
        (counted.len(), uncounted.len()),
        (2, lab.spec.pods.len() - 2),
        "{doc:#}"
    );
    let f = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "probe-map-full" && f["subject"] == "POD_PATHS")
        .unwrap_or_else(|| panic!("no probe-map-full for POD_PATHS: {}", doc["findings"]));
    for p in &uncounted {
        let veth = p["host_veth"].as_str().unwrap();
        assert!(f["evidence"][0].as_str().unwrap().contains(veth), "{f}");
    }
    let (_, metrics) = agent.request("GET", "/metrics", &[]);
    let gauge = sample(&metrics, "sgpath_paths_uncounted", &[]);
    assert_eq!(gauge, Some(uncounted.len() as u64), "{metrics}");

    // Only ordinary pods are reachable from the node in this lab: pick one counted and one
    // uncounted among them.
    let pod_ns = |ip: Ipv4Addr| {
        let i = lab.spec.pods.iter().position(|p| p.ip == ip).unwrap();
        let p = &lab.spec.pods[i];
        (p.vlan.is_none() && p.eni.is_none()).then(|| lab.layout.pod(i))
    };
    let (a_ip, a_ns) = counted
        .iter()
        .find_map(|&ip| Some((ip, pod_ns(ip)?)))
        .expect("a counted ordinary pod");
    let (u_ip, u_ns) = uncounted
        .iter()
        .find_map(|p| Some((ip_of(p), pod_ns(ip_of(p))?)))
        .expect("an uncounted ordinary pod");
    let tx = udp_in(&node, (node_ip, 0).into());
    let rx_a = udp_in(&a_ns, (Ipv4Addr::UNSPECIFIED, 7031).into());
    let rx_u = udp_in(&u_ns, (Ipv4Addr::UNSPECIFIED, 7031).into());
    send(&tx, (a_ip, 7031).into(), TO_COUNTED, 16);
    receive(&rx_a, TO_COUNTED);
    send(&tx, (u_ip, 7031).into(), TO_UNCOUNTED, 16);
    receive(&rx_u, TO_UNCOUNTED);
    assert_eq!(agent.to_pod(a_ip), TO_COUNTED);
    assert!(counters(&agent.report(&[]), u_ip).is_null());

    // Drops: the first (path, reason) pair takes the one slot; the other path's overflow.
    let b_ip = *counted.iter().find(|&&ip| ip != a_ip).unwrap();
    send(&tx, (a_ip, 7032).into(), DROPPED_FIRST, 16);
    let dropped = |doc: &Value, ip| counters(doc, ip)["to_pod"]["dropped_packets"].as_u64();
    let map_full = |doc: &Value| doc["probes"]["errors"]["DropMapFull"].as_u64().unwrap();
    let doc = wait_doc(&agent, "the first drops", |d| {
        dropped(d, a_ip) == Some(DROPPED_FIRST)
    });
    assert_eq!(map_full(&doc), 0);
    // The other counted pod may not be reachable from the node (a branch pod): its drops
    // come from its own namespace then, towards the node.
    let b_ns = lab
        .layout
        .pod(lab.spec.pods.iter().position(|p| p.ip == b_ip).unwrap());
    let tx_b = udp_in(&b_ns, (b_ip, 0).into());
    let rx_node_closed = (node_ip, 7033).into();
    // B's first kind of drop counts in B's own per-CPU drop slot (`DROP_SLOTS`), not in the
    // full `DROPS` hash: nothing is lost and nothing overflows.
    send(&tx_b, rx_node_closed, DROPPED_OVERFLOW, 16);
    let doc = wait_doc(&agent, "B's drops in its drop slot", |d| {
        counters(d, b_ip)["from_pod"]["dropped_packets"].as_u64() == Some(DROPPED_OVERFLOW)
    });
    assert_eq!(dropped(&doc, a_ip), Some(DROPPED_FIRST));
    assert_eq!(
        map_full(&doc),
        0,
        "a path's first kind of drop never overflows"
    );

    // Pod A goes: its slot goes to an uncounted path, its drop entry frees.
    let a_veth = counters_path(&doc, a_ip)["host_veth"]
        .as_str()
        .unwrap()
        .to_owned();
    crate::run(&["ip", "-n", &node, "link", "del", &a_veth]);
    let doc = wait_doc(&agent, "an uncounted path takes the freed slot", |d| {
        d["paths"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["counters"].is_null())
            .count()
            == uncounted.len() - 1
    });
    let newly: Vec<Ipv4Addr> = uncounted
        .iter()
        .map(|p| ip_of(p))
        .filter(|&ip| !counters(&doc, ip).is_null())
        .collect();
    assert_eq!(newly.len(), 1, "{doc:#}");
    eprintln!("small maps: counted {counted:?}, then {newly:?} took {a_ip}'s slot");
    send(&tx_b, rx_node_closed, DROPPED_OVERFLOW, 16);
    let doc = wait_doc(&agent, "B's drops still counted", |d| {
        counters(d, b_ip)["from_pod"]["dropped_packets"].as_u64() == Some(2 * DROPPED_OVERFLOW)
    });
    assert_eq!(map_full(&doc), 0, "no DropMapFull");
    // The newly counted path counts from its first packet (an ordinary pod here).
    if newly[0] == u_ip {
        send(&tx, (u_ip, 7031).into(), TO_UNCOUNTED, 16);
        receive(&rx_u, TO_UNCOUNTED);
        assert_eq!(agent.to_pod(u_ip), TO_UNCOUNTED, "the newly counted path");
    }
    let (_, metrics) = agent.request("GET", "/metrics", &[]);
    assert_eq!(
        sample(&metrics, "sgpath_paths_uncounted", &[]),
        Some(uncounted.len() as u64 - 1),
        "{metrics}"
    );
    let warned = agent
        .log_events()
        .iter()
        .filter(|e| e["event"] == "paths-full")
        .count();
    assert_eq!(warned, uncounted.len(), "paths-full once per path");
    assert!(agent.terminate().success());
}

/// The report's path of `pod_ip`.
fn counters_path(doc: &Value, pod_ip: Ipv4Addr) -> &Value {
    doc["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod_ip"] == pod_ip.to_string())
        .unwrap()
}

/// Polls the agent's report until `ok`, for up to 10 s.
fn wait_doc(agent: &Agent, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let doc = agent.report(&[]);
        if ok(&doc) {
            return doc;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: {doc:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Datagrams of [`agent_serves_metrics_and_readyz`] to the ordinary pod.
const METRICS_TO_POD: u64 = 23;

/// `sgpath agent` in a lab's node on a VLAN-capable kernel: `/readyz` answers 200 once it is
/// ready (its probes loaded), and an ordinary pod's datagrams are counted exactly in
/// `/v1/report` and in `/metrics` (`sgpath_path_packets_total` and `_bytes_total` of its
/// node-ENI path), which passes `promtool check metrics` where promtool is installed. The
/// arm64 VM stage's agent test (where no Prometheus runs); SIGTERM: exit 0.
pub fn agent_serves_metrics_and_readyz(lab: &Lab) {
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let (a_ns, a_ip) = crate::ordinary_pod(lab);
    let agent = Agent::in_lab(lab, &[]);
    let tx = udp_in(&node, (node_ip, 0).into());
    let rx = udp_in(&a_ns, (Ipv4Addr::UNSPECIFIED, 7031).into());
    send(&tx, (a_ip, 7031).into(), METRICS_TO_POD, PAYLOAD);
    receive(&rx, METRICS_TO_POD);

    let doc = agent.report_until(Duration::from_secs(10), |d| {
        counters(d, a_ip)["to_pod"]["forwarded_packets"] == METRICS_TO_POD
    });
    assert_eq!(
        counters(&doc, a_ip)["to_pod"]["forwarded_packets"],
        METRICS_TO_POD,
        "{}",
        counters(&doc, a_ip)
    );
    let a_ip_s = a_ip.to_string();
    let fwd = [
        ("pod_ip", a_ip_s.as_str()),
        ("path_kind", "node-eni"),
        ("direction", "to_pod"),
        ("verdict", "forwarded"),
    ];
    let (status, metrics) = agent.request("GET", "/metrics", &[]);
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(
        sample(&metrics, "sgpath_path_packets_total", &fwd),
        Some(METRICS_TO_POD),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "sgpath_path_bytes_total", &fwd),
        Some(METRICS_TO_POD * (20 + 8 + PAYLOAD as u64)),
        "{metrics}"
    );
    promtool_check(&metrics);
    assert_eq!(agent.request("GET", "/readyz", &[]).0, 200);
    assert!(agent.terminate().success());
}
