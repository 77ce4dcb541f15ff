//! `kubectl sgpath`: the fleet's answer from a bastion. Asks every node's agent (through
//! the API server's pods proxy, [`proxy`]) and prints one answer: which nodes answer and how
//! ([`nodes`]), every finding with its node, pod and fix ([`findings`]), one pod's whole
//! story ([`pod`]), a trace run on a pod's node ([`trace`]).
//!
//! Exit status, as `sgpath inspect`: 0 nothing of severity warning or error (and every
//! agent asked answered), 1 findings of severity warning or error, an agent that did not
//! answer, or a trace that does not work; 2 the plugin could not do its job.
//!
//! Side effects: see [`proxy`]; a progress line on stderr when it is a terminal.

pub mod doc;
pub mod fleet;
pub mod proxy;
pub mod table;

use std::{collections::BTreeMap, io::IsTerminal, sync::Arc, time::Duration};

use serde::Serialize;
use serde_json::json;

use doc::{AgentReport, PathDoc, Severity};
use fleet::{AgentPod, Answer, FetchError, Limits, Transport};

/// How to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Json,
}

/// Which pods' findings to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `-A`: every namespace, and the node-wide findings.
    All,
    Namespace(String),
}

/// What every command needs.
pub struct Fleet {
    pub transport: Arc<dyn Transport>,
    /// The agents, when the plugin asks each itself (`--via pods-proxy`); empty through
    /// the hub, which knows them.
    pub agents: Vec<AgentPod>,
    pub limits: Limits,
    /// Through the hub: one request for the whole fleet.
    pub hub: Option<Arc<proxy::HubProxy>>,
}

/// An outcome: what to print on stdout, and the exit status.
pub struct Outcome {
    pub stdout: String,
    pub code: u8,
}

/// An agent's state, as `nodes` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum AgentState {
    /// Answered, probes attached.
    Ready,
    /// Answered without probes: topology and checks only.
    Degraded(String),
    /// The API server or the agent refused (401, 403).
    Refused(String),
    /// No answer within the per-node timeout.
    Timeout(String),
    /// The agent (or the proxy to it) could not be reached.
    Unreachable(String),
    /// It answered something that is not a report.
    Garbage(String),
    /// The node has no agent pod.
    Absent,
}

impl AgentState {
    fn of(report: &Result<AgentReport, FetchError>) -> AgentState {
        match report {
            Ok(r) if r.probes.is_some() => AgentState::Ready,
            Ok(_) => AgentState::Degraded("probes not attached: topology and checks only".into()),
            Err(
                e @ FetchError::Status {
                    code: 401 | 403, ..
                },
            ) => AgentState::Refused(e.to_string()),
            Err(e @ FetchError::Timeout(_)) => AgentState::Timeout(e.to_string()),
            Err(e @ FetchError::Garbage(_)) => AgentState::Garbage(e.to_string()),
            Err(e) => AgentState::Unreachable(e.to_string()),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            AgentState::Ready => "ready",
            AgentState::Degraded(_) => "degraded",
            AgentState::Refused(_) => "refused",
            AgentState::Timeout(_) => "timeout",
            AgentState::Unreachable(_) => "unreachable",
            AgentState::Garbage(_) => "garbage",
            AgentState::Absent => "absent",
        }
    }

    fn detail(&self) -> &str {
        match self {
            AgentState::Ready | AgentState::Absent => "",
            AgentState::Degraded(d)
            | AgentState::Refused(d)
            | AgentState::Timeout(d)
            | AgentState::Unreachable(d)
            | AgentState::Garbage(d) => d,
        }
    }

    /// Whether the node's answer is known.
    fn answered(&self) -> bool {
        matches!(self, AgentState::Ready | AgentState::Degraded(_))
    }
}

/// Progress on stderr, when it is a terminal: `[#####.....] 120/500 nodes`.
pub fn progress() -> impl FnMut(usize, usize) {
    let tty = std::io::stderr().is_terminal();
    move |done, total| {
        if !tty || total == 0 {
            return;
        }
        let filled = done * 30 / total;
        eprint!(
            "\r[{}{}] {done}/{total} nodes",
            "#".repeat(filled),
            ".".repeat(30 - filled)
        );
        if done == total {
            eprint!("\r{}\r", " ".repeat(50));
        }
    }
}

impl Fleet {
    /// Every agent's answer.
    ///
    /// # Errors
    /// Through the hub: the hub's (or the API server's) refusal; the agents' own failures
    /// are rows.
    async fn ask_all(&self, path: &str) -> Result<Vec<Answer>, PluginError> {
        if let Some(hub) = &self.hub {
            return hub.fleet(path).await.map_err(PluginError::Hub);
        }
        Ok(fleet::ask_all(
            self.transport.clone(),
            self.agents.clone(),
            path,
            self.limits,
            progress(),
        )
        .await)
    }

    /// The agent on `node`: through the hub, the hub finds it (and says when there is none).
    fn agent_on(&self, node: &str) -> Option<AgentPod> {
        if self.hub.is_some() {
            return Some(AgentPod {
                namespace: String::new(),
                name: String::new(),
                node: node.to_owned(),
                address: None,
            });
        }
        self.agents.iter().find(|a| a.node == node).cloned()
    }

    /// The agent on pod `name`'s node (`node`, as the pod lists it) and the pod's IP.
    fn agent_of(
        &self,
        name: &str,
        node: Option<String>,
        ip: Option<String>,
    ) -> Result<(AgentPod, String), PluginError> {
        let node = node.ok_or_else(|| PluginError::Unscheduled(name.to_owned()))?;
        let ip = ip.ok_or_else(|| PluginError::NoIp(name.to_owned()))?;
        let agent = self.agent_on(&node).ok_or(PluginError::NoAgent(node))?;
        Ok((agent, ip))
    }
}

fn count_kind(r: &AgentReport, kind: &str) -> usize {
    r.paths.iter().filter(|p| p.kind == kind).count()
}

fn count_severity(r: &AgentReport, s: Severity) -> usize {
    r.findings.iter().filter(|f| f.severity == s).count()
}

/// `kubectl sgpath nodes`: every node (from `all_nodes` when the user may list them, else
/// the agents' nodes) with its agent's state, mode, paths by kind and findings by severity.
///
/// # Errors
/// [`PluginError::Hub`]: the hub did not answer.
pub async fn nodes(
    fleet: &Fleet,
    all_nodes: Option<Vec<String>>,
    output: Output,
) -> Result<Outcome, PluginError> {
    let answers = fleet.ask_all("/v1/report").await?;
    let mut rows: BTreeMap<String, (Option<&AgentPod>, AgentState, Option<&AgentReport>)> =
        BTreeMap::new();
    for a in &answers {
        rows.insert(
            a.agent.node.clone(),
            (
                Some(&a.agent),
                AgentState::of(&a.report),
                a.report.as_ref().ok(),
            ),
        );
    }
    for n in all_nodes.unwrap_or_default() {
        rows.entry(n).or_insert((None, AgentState::Absent, None));
    }
    let mut code = 0;
    let mut out = Vec::new();
    let mut json_rows = Vec::new();
    for (node, (agent, state, report)) in &rows {
        if !state.answered() || report.is_some_and(|r| r.worst() >= Some(Severity::Warning)) {
            code = 1;
        }
        let get = |f: &dyn Fn(&AgentReport) -> String| report.map_or("-".to_owned(), f);
        let mut row = vec![
            node.clone(),
            state.name().to_owned(),
            get(&|r| r.mode.clone()),
            get(&|r| count_kind(r, "branch-eni").to_string()),
            get(&|r| count_kind(r, "node-eni").to_string()),
            get(&|r| count_severity(r, Severity::Error).to_string()),
            get(&|r| count_severity(r, Severity::Warning).to_string()),
        ];
        if output == Output::Wide {
            row.push(agent.map_or("-".into(), |a| format!("{}/{}", a.namespace, a.name)));
            row.push(get(&|r| r.kernel.clone()));
        }
        row.push(state.detail().to_owned());
        out.push(row);
        json_rows.push(json!({
            "node": node,
            "agent": agent.map(|a| format!("{}/{}", a.namespace, a.name)),
            "status": state,
            "mode": report.map(|r| &r.mode),
            "paths": report.map(|r| json!({"branch-eni": count_kind(r, "branch-eni"),
                                           "node-eni": count_kind(r, "node-eni")})),
            "findings": report.map(|r| json!({"error": count_severity(r, Severity::Error),
                                              "warning": count_severity(r, Severity::Warning),
                                              "info": count_severity(r, Severity::Info)})),
        }));
    }
    let stdout = match output {
        Output::Json => pretty(&json!({"nodes": json_rows})),
        _ => {
            let mut head = vec![
                "NODE", "AGENT", "MODE", "BRANCH", "NODE-ENI", "ERRORS", "WARNINGS",
            ];
            if output == Output::Wide {
                head.extend(["AGENT-POD", "KERNEL"]);
            }
            head.push("DETAIL");
            table::render(&head, &out)
        }
    };
    Ok(Outcome { stdout, code })
}

/// One finding with where it was raised.
#[derive(Serialize)]
struct Located<'a> {
    node: &'a str,
    #[serde(flatten)]
    finding: &'a doc::FindingDoc,
    /// `namespace/name` of the pod whose path the subject names.
    pod: Option<String>,
    path: Option<&'a PathDoc>,
}

/// `kubectl sgpath findings`: every finding of at least `min` in `scope`, worst first, with
/// node, pod and remediation; then a row for each node that did not answer.
///
/// # Errors
/// [`PluginError::Hub`]: the hub did not answer.
pub async fn findings(
    fleet: &Fleet,
    min: Severity,
    scope: &Scope,
    output: Output,
) -> Result<Outcome, PluginError> {
    let answers = fleet.ask_all("/v1/report").await?;
    let mut found: Vec<Located> = Vec::new();
    let mut silent = Vec::new();
    for a in &answers {
        let r = match &a.report {
            Ok(r) => r,
            Err(_) => {
                silent.push((a.agent.node.as_str(), AgentState::of(&a.report)));
                continue;
            }
        };
        for f in r.findings.iter().filter(|f| f.severity >= min) {
            let path = r.path_of(&f.subject);
            let pod = path.and_then(|p| p.pod.as_ref());
            let keep = match scope {
                Scope::All => true,
                Scope::Namespace(ns) => pod.is_some_and(|p| &p.namespace == ns),
            };
            if keep {
                found.push(Located {
                    node: &a.agent.node,
                    finding: f,
                    pod: pod.map(|p| format!("{}/{}", p.namespace, p.name)),
                    path,
                });
            }
        }
    }
    found.sort_by(|a, b| {
        (
            b.finding.severity,
            &a.finding.id,
            a.node,
            &a.finding.subject,
        )
            .cmp(&(
                a.finding.severity,
                &b.finding.id,
                b.node,
                &b.finding.subject,
            ))
    });
    let code = u8::from(
        found
            .iter()
            .any(|f| f.finding.severity >= Severity::Warning)
            || !silent.is_empty(),
    );
    let stdout = match output {
        Output::Json => pretty(&json!({
            "findings": found,
            "unanswered": silent.iter().map(|(n, s)| json!({"node": n, "status": s})).collect::<Vec<_>>(),
        })),
        _ => {
            let wide = output == Output::Wide;
            let mut rows: Vec<Vec<String>> = found
                .iter()
                .map(|f| {
                    let mut row = vec![
                        f.finding.severity.as_str().to_owned(),
                        f.finding.id.clone(),
                        f.node.to_owned(),
                        f.pod.clone().unwrap_or_else(|| "-".into()),
                        f.finding.subject.clone(),
                    ];
                    if wide {
                        row.push(f.path.map_or("-".into(), path_summary));
                        row.push(f.finding.evidence.join("; "));
                    }
                    row.push(f.finding.remediation.clone());
                    row
                })
                .collect();
            for (node, state) in &silent {
                let mut row = vec![
                    "?".into(),
                    format!("agent-{}", state.name()),
                    (*node).to_owned(),
                    "-".into(),
                    "-".into(),
                ];
                if wide {
                    row.extend(["-".into(), String::new()]);
                }
                row.push(state.detail().to_owned());
                rows.push(row);
            }
            let mut head = vec!["SEVERITY", "FINDING", "NODE", "POD", "SUBJECT"];
            if wide {
                head.extend(["PATH", "EVIDENCE"]);
            }
            head.push("REMEDIATION");
            if rows.is_empty() {
                "No findings.\n".to_owned()
            } else {
                table::render(&head, &rows)
            }
        }
    };
    Ok(Outcome { stdout, code })
}

/// `branch-eni vlan 5 eni-0c5 sg-0c5`.
fn path_summary(p: &PathDoc) -> String {
    let mut s = p.kind.clone();
    if let Some(v) = p.vlan_id {
        s += &format!(" vlan {v}");
    }
    if let Some(e) = &p.eni_id {
        s += &format!(" {e}");
    }
    if let Some(pod) = &p.pod
        && !pod.security_groups.is_empty()
    {
        s += &format!(" {}", pod.security_groups.join(","));
    }
    s
}

/// The plugin's own failures (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("pod {0} is not scheduled on a node yet")]
    Unscheduled(String),
    #[error("pod {0} has no IP yet")]
    NoIp(String),
    #[error("no sgpath agent runs on node {0} (is the DaemonSet there? `kubectl sgpath nodes`)")]
    NoAgent(String),
    #[error("the agent on node {node}")]
    Agent {
        node: String,
        #[source]
        source: FetchError,
    },
    #[error(
        "the agent on node {node} has no path for pod {pod} ({ip}): not on this node's pod network?"
    )]
    NoPath {
        node: String,
        pod: String,
        ip: String,
    },
    #[error(transparent)]
    Kube(#[from] proxy::KubeError),
    #[error("the fleet's answer")]
    Hub(#[source] FetchError),
}

/// `kubectl sgpath pod`: the pod's node and path, its counters over the window, its
/// findings, and the kernel's lookups for it.
///
/// # Errors
/// [`PluginError`] when the pod, its node's agent or its path cannot be found.
pub async fn pod(
    fleet: &Fleet,
    name: &str,
    node: Option<String>,
    ip: Option<String>,
    output: Output,
) -> Result<Outcome, PluginError> {
    let (agent, ip) = fleet.agent_of(name, node, ip)?;
    let node = &agent.node;
    let body = fleet::ask_one(
        &*fleet.transport,
        &agent,
        "/v1/report",
        fleet.limits.per_node,
    )
    .await
    .map_err(|source| PluginError::Agent {
        node: node.clone(),
        source,
    })?;
    let path = body
        .paths
        .iter()
        .find(|p| p.pod_ip.as_deref() == Some(ip.as_str()))
        .ok_or_else(|| PluginError::NoPath {
            node: node.clone(),
            pod: name.to_owned(),
            ip: ip.clone(),
        })?;
    let findings: Vec<_> = body
        .findings
        .iter()
        .filter(|f| path.names(&f.subject))
        .collect();
    let code = u8::from(findings.iter().any(|f| f.severity >= Severity::Warning));
    let stdout = match output {
        Output::Json => pretty(&json!({"pod": name, "node": node, "pod_ip": ip,
                                       "path": path, "findings": findings})),
        _ => {
            let mut s = format!("Pod:       {name}\nNode:      {node}\nIP:        {ip}\n");
            s += &format!("Path:      {}\n", path_summary(path));
            s += &format!("Host veth: {}\n", path.host_veth);
            if let Some(w) = &path.window {
                let syn = |d: &doc::DirectionDoc| d.syn_unanswered.values().sum::<u64>();
                s += &format!(
                    "Window:    to pod {} forwarded, {} dropped, {} SYNs unanswered; from pod {} forwarded, {} dropped, {} SYNs and {} DNS queries unanswered\n",
                    w.to_pod.forwarded_packets,
                    w.to_pod.dropped_packets,
                    syn(&w.to_pod),
                    w.from_pod.forwarded_packets,
                    w.from_pod.dropped_packets,
                    syn(&w.from_pod),
                    w.from_pod.dns_unanswered
                );
            } else {
                s += "Window:    no counters (the agent runs without probes)\n";
            }
            if findings.is_empty() {
                s += "Findings:  none\n";
            } else {
                s += "Findings:\n";
                for f in &findings {
                    s += &format!("  {} {} ({})\n", f.severity.as_str(), f.id, f.subject);
                    for e in &f.evidence {
                        s += &format!("      {e}\n");
                    }
                    if !f.remediation.is_empty() {
                        s += &format!("    fix: {}\n", f.remediation);
                    }
                }
            }
            s += &format!(
                "Trace:     kubectl sgpath trace {name} --to <ip>[:port] (e.g. the cluster DNS)\n"
            );
            s
        }
    };
    Ok(Outcome { stdout, code })
}

/// The agent's `/v1/trace` answer.
#[derive(Debug, serde::Deserialize)]
pub struct TraceAnswer {
    /// `sgpath trace`'s exit status: 0 works, 1 does not.
    pub exit: u8,
    pub text: String,
    pub trace: serde_json::Value,
}

/// `kubectl sgpath trace`: the pod's node runs `sgpath trace --from <pod IP> --to <to>`.
///
/// # Errors
/// [`PluginError`]: no agent on the pod's node, or the agent's refusal (an unknown
/// destination: HTTP 422 with `sgpath trace`'s message).
pub async fn trace(
    fleet: &Fleet,
    name: &str,
    node: Option<String>,
    ip: Option<String>,
    to: &str,
    proto: &str,
    output: Output,
) -> Result<Outcome, PluginError> {
    let (agent, ip) = fleet.agent_of(name, node, ip)?;
    let node = &agent.node;
    let path = format!(
        "/v1/trace?from={}&to={}&proto={proto}",
        query_escape(&ip),
        query_escape(to)
    );
    let err = |source| PluginError::Agent {
        node: node.clone(),
        source,
    };
    // A trace reads the node's routes: give it twice a report's time.
    let body = tokio::time::timeout(
        fleet.limits.per_node * 2,
        fleet.transport.get(&agent, &path),
    )
    .await
    .map_err(|_| err(FetchError::Timeout(fleet.limits.per_node * 2)))?
    .map_err(err)?;
    let answer: TraceAnswer = serde_json::from_str(&body)
        .map_err(|e| err(FetchError::Garbage(format!("trace answer: {e}"))))?;
    let stdout = match output {
        Output::Json => pretty(&json!({"pod": name, "node": node, "trace": answer.trace})),
        _ => format!("Pod {name} on node {node}:\n{}", answer.text),
    };
    Ok(Outcome {
        stdout,
        code: answer.exit.min(1),
    })
}

/// `[` `]` `:` stay (an address), the rest of the reserved set is escaped.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b':' | b'[' | b']' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON serializes") + "\n"
}

/// The default per-node timeout.
pub const PER_NODE: Duration = Duration::from_secs(5);
