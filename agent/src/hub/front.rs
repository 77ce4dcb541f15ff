//! The hub's front door for people: `kubectl sgpath` reaches the hub through the API
//! server's services proxy (one Service, one port), and the hub asks the agents with its own
//! identity, so a fleet query costs the API server one proxied request (plus one list of the
//! agent pods), not one per node, and users need no `pods/proxy` at all.
//!
//! - `GET /v1/fleet/report`: every agent's `/v1/report` as one [`FleetAnswer`], asked at
//!   most [`Limits::concurrency`] at once, each within [`Limits::per_node`], and kept for
//!   `max_age` (callers arriving during a fan-out wait for it instead of starting another).
//! - `GET /v1/agents/<node>/report` and `GET /v1/agents/<node>/trace?...`: one agent's
//!   answer as an [`AgentAnswer`] (a report from the last fan-out while it is fresh).
//!
//! The agents are found by listing the DaemonSet's pods ([`KubeDirectory`]) and asked
//! directly at their pod IP ([`DirectAgents`]) with the hub's ServiceAccount token, which
//! they authorise by SubjectAccessReview like any other caller.
//!
//! Side effects: lists pods on the API server; HTTP GETs to the agents; reads the token file.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt, future::BoxFuture};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client as HttpClient, connect::HttpConnector};
use tokio::time::Instant;

use crate::plugin::fleet::{AgentPod, FetchError, Limits, Transport};

/// How long a fleet answer is served before the agents are asked again.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(10);
/// Agents asked at once: 1,000 agents answering in 50 ms take 1,000 / 128 x 50 ms = 0.4 s.
pub const DEFAULT_CONCURRENCY: usize = 128;
/// Time each agent has to answer.
pub const DEFAULT_PER_NODE: Duration = Duration::from_secs(5);

/// Who may use the front door: given the request's bearer (`Authorization`, else
/// `X-Sgpath-Authorization`, which the API server's proxy passes on) and its path, `Ok` or
/// the status and reason to refuse with. The binary plugs in the agent's own
/// TokenReview + SubjectAccessReview check (`--auth kubernetes`).
pub trait Gate: Send + Sync {
    fn check<'a>(
        &'a self,
        authorization: Option<&'a [u8]>,
        path: &'a str,
    ) -> BoxFuture<'a, Result<(), (u16, String)>>;
}

/// Everyone may (`--auth none`, tests).
pub struct Open;

impl Gate for Open {
    fn check<'a>(
        &'a self,
        _authorization: Option<&'a [u8]>,
        _path: &'a str,
    ) -> BoxFuture<'a, Result<(), (u16, String)>> {
        Box::pin(async { Ok(()) })
    }
}

/// Where the agents are.
pub trait Directory: Send + Sync {
    /// The agent pods with their node and address.
    fn agents(&self) -> BoxFuture<'_, Result<Vec<AgentPod>, String>>;
}

/// The DaemonSet's pods, listed (one request per fleet query; a fan-out is rarer than a
/// watch's upkeep would be).
pub struct KubeDirectory {
    pub client: kube::Client,
    pub namespace: String,
    pub selector: String,
}

impl Directory for KubeDirectory {
    fn agents(&self) -> BoxFuture<'_, Result<Vec<AgentPod>, String>> {
        // The plugin's own listing (`--via pods-proxy`): the same pods, sorted by node.
        Box::pin(async move {
            crate::plugin::proxy::agents(&self.client, &self.namespace, &self.selector)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// A fixed list (tests, and a hub run by hand against known agents).
pub struct StaticDirectory(pub Vec<AgentPod>);

impl Directory for StaticDirectory {
    fn agents(&self) -> BoxFuture<'_, Result<Vec<AgentPod>, String>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// GETs an agent at its pod IP with the hub's own bearer token.
pub struct DirectAgents {
    http: HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// `https` (the agents' self-signed certificates accepted: [`crate::tls::client_config`])
    /// or `http` (agents with `--no-tls`).
    scheme: &'static str,
    /// The agents' port (the DaemonSet's `--listen`).
    pub port: u16,
    /// The hub's token (a projected ServiceAccount token, rotated by the kubelet: read at
    /// every request); `None` sends no token (agents with `--auth none`).
    pub token_file: Option<PathBuf>,
}

impl DirectAgents {
    pub fn new(port: u16, token_file: Option<PathBuf>, tls: bool) -> DirectAgents {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let mut config = crate::tls::client_config(None).expect("no CA file to read");
        // hyper-rustls sets ALPN itself (enable_http1) and refuses a config that has it.
        config.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        DirectAgents {
            http: HttpClient::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
            scheme: if tls { "https" } else { "http" },
            port,
            token_file,
        }
    }
}

impl Transport for DirectAgents {
    fn get<'a>(
        &'a self,
        agent: &'a AgentPod,
        path: &'a str,
    ) -> BoxFuture<'a, Result<String, FetchError>> {
        Box::pin(async move {
            let ip: IpAddr = agent
                .address
                .as_deref()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| {
                    FetchError::Transport(format!("pod {} has no IP yet", agent.name))
                })?;
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            let mut req =
                hyper::Request::get(format!("{}://{host}:{}{path}", self.scheme, self.port));
            if let Some(file) = &self.token_file {
                let token = std::fs::read_to_string(file).map_err(|e| {
                    FetchError::Transport(format!("the hub's token {}: {e}", file.display()))
                })?;
                req = req.header(
                    hyper::header::AUTHORIZATION,
                    format!("Bearer {}", token.trim()),
                );
            }
            let req = req
                .body(Empty::new())
                .map_err(|e| FetchError::Transport(e.to_string()))?;
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| FetchError::Transport(innermost(&e)))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| FetchError::Transport(e.to_string()))?
                .to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            if !(200..300).contains(&status) {
                return Err(FetchError::Status {
                    code: status,
                    message: body.trim().chars().take(300).collect(),
                });
            }
            Ok(body)
        })
    }
}

/// "Connection refused (os error 111)", not hyper's "client error (Connect)".
fn innermost(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// What one agent said: its JSON, or why there is none.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The agent's JSON answer (its report, or its trace).
    Body(serde_json::Value),
    Error(FetchError),
}

/// One agent's answer, with which pod on which node gave it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentAnswer {
    pub namespace: String,
    pub name: String,
    pub node: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// `GET /v1/fleet/report`: every agent's answer, in the order of their nodes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FleetAnswer {
    pub agents: Vec<AgentAnswer>,
    /// How long the fan-out took, milliseconds.
    pub took_ms: u64,
    /// How old this answer is, milliseconds (0 when just asked).
    #[serde(default)]
    pub age_ms: u64,
}

/// Why the front door could not answer.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("{0}")]
    Directory(String),
    #[error("no sgpath agent runs on node {0}")]
    NoAgent(String),
}

/// The front door's state: where the agents are, how to reach them, the last fleet answer.
pub struct Front {
    directory: Arc<dyn Directory>,
    transport: Arc<dyn Transport>,
    limits: Limits,
    max_age: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Arc<FleetAnswer>)>>,
    /// Fan-outs made (each asks every agent once).
    pub fanouts: AtomicU64,
}

impl Front {
    pub fn new(
        directory: Arc<dyn Directory>,
        transport: Arc<dyn Transport>,
        limits: Limits,
        max_age: Duration,
    ) -> Front {
        Front {
            directory,
            transport,
            limits,
            max_age,
            last: tokio::sync::Mutex::new(None),
            fanouts: AtomicU64::new(0),
        }
    }

    /// Every agent's report: the last fan-out's while younger than `max_age`, else a new
    /// one. Callers arriving during a fan-out wait for it rather than start their own.
    ///
    /// # Errors
    /// [`FrontError::Directory`]: the agents could not be listed.
    pub async fn fleet_report(&self) -> Result<Arc<FleetAnswer>, FrontError> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = &*last {
            let age = at.elapsed();
            if age < self.max_age {
                let mut a = (**answer).clone();
                a.age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                return Ok(Arc::new(a));
            }
        }
        let agents = self
            .directory
            .agents()
            .await
            .map_err(FrontError::Directory)?;
        let start = Instant::now();
        let answers = self.ask_all(agents, "/v1/report").await;
        self.fanouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answer = Arc::new(FleetAnswer {
            agents: answers,
            took_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            age_ms: 0,
        });
        *last = Some((Instant::now(), answer.clone()));
        Ok(answer)
    }

    async fn ask_all(&self, agents: Vec<AgentPod>, path: &str) -> Vec<AgentAnswer> {
        let per_node = self.limits.per_node;
        futures::stream::iter(agents)
            .map(|agent| {
                let transport = self.transport.clone();
                async move {
                    let outcome = ask(&*transport, &agent, path, per_node).await;
                    AgentAnswer {
                        namespace: agent.namespace,
                        name: agent.name,
                        node: agent.node,
                        outcome,
                    }
                }
            })
            // In order: the answer lists the nodes as the directory sorted them.
            .buffered(self.limits.concurrency.max(1))
            .collect()
            .await
    }

    /// The agent on `node` asked for `path` (`/v1/report`, `/v1/trace?...`); a report comes
    /// from the last fan-out while it is fresh.
    ///
    /// # Errors
    /// [`FrontError`]: the agents cannot be listed, or none runs on `node`.
    pub async fn agent(&self, node: &str, path: &str) -> Result<AgentAnswer, FrontError> {
        if path == "/v1/report"
            && let Some((at, answer)) = &*self.last.lock().await
            && at.elapsed() < self.max_age
            && let Some(a) = answer.agents.iter().find(|a| a.node == node)
        {
            return Ok(a.clone());
        }
        let agents = self
            .directory
            .agents()
            .await
            .map_err(FrontError::Directory)?;
        let agent = agents
            .into_iter()
            .find(|a| a.node == node)
            .ok_or_else(|| FrontError::NoAgent(node.to_owned()))?;
        // A trace reads the node's routes: twice a report's time.
        let limit = if path.starts_with("/v1/trace") {
            self.limits.per_node * 2
        } else {
            self.limits.per_node
        };
        let outcome = ask(&*self.transport, &agent, path, limit).await;
        Ok(AgentAnswer {
            namespace: agent.namespace,
            name: agent.name,
            node: agent.node,
            outcome,
        })
    }
}

async fn ask(transport: &dyn Transport, agent: &AgentPod, path: &str, limit: Duration) -> Outcome {
    match tokio::time::timeout(limit, transport.get(agent, path)).await {
        Err(_) => Outcome::Error(FetchError::Timeout(limit)),
        Ok(Err(e)) => Outcome::Error(e),
        Ok(Ok(body)) => match serde_json::from_str(&body) {
            Ok(v) => Outcome::Body(v),
            Err(e) => Outcome::Error(FetchError::Garbage(format!(
                "{e} (body starts {:?})",
                body.chars().take(80).collect::<String>()
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fake agents on loopback, each a real HTTP server answering after 50 ms; the
    /// directory names them by node. Returns the agents (their servers run until the test's
    /// runtime ends).
    async fn fake_agents(n: usize, delay: Duration) -> (Vec<AgentPod>, Vec<u16>) {
        use hyper::{Response, server::conn::http1, service::service_fn};
        let mut agents = Vec::new();
        let mut ports = Vec::new();
        for i in 0..n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            ports.push(port);
            tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = l.accept().await else { return };
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let auth = req
                                .headers()
                                .get(hyper::header::AUTHORIZATION)
                                .map(|v| v.to_str().unwrap().to_owned());
                            async move {
                                tokio::time::sleep(delay).await;
                                let body = if auth.as_deref() == Some("Bearer hub-token") {
                                    format!(r#"{{"schema":"x","node":{i}}}"#)
                                } else {
                                    r#"{"refused":true}"#.to_owned()
                                };
                                Ok::<_, std::convert::Infallible>(Response::new(
                                    http_body_util::Full::new(Bytes::from(body)),
                                ))
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
            agents.push(AgentPod {
                namespace: "sgpath".into(),
                name: format!("sgpath-{i:04}"),
                node: format!("node-{i:04}"),
                address: Some("127.0.0.1".into()),
            });
        }
        (agents, ports)
    }

    /// Each fake agent listens on its own port: the transport's port is per agent here, so
    /// wrap [`DirectAgents`] with a map from node to port.
    struct PortPerAgent {
        inner: DirectAgents,
        ports: std::collections::HashMap<String, u16>,
        in_flight: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
    }

    impl Transport for PortPerAgent {
        fn get<'a>(
            &'a self,
            agent: &'a AgentPod,
            path: &'a str,
        ) -> BoxFuture<'a, Result<String, FetchError>> {
            use std::sync::atomic::Ordering::SeqCst;
            Box::pin(async move {
                let now = self.in_flight.fetch_add(1, SeqCst) + 1;
                self.peak.fetch_max(now, SeqCst);
                let port = self.ports[&agent.node];
                let one = DirectAgents {
                    http: self.inner.http.clone(),
                    scheme: self.inner.scheme,
                    port,
                    token_file: self.inner.token_file.clone(),
                };
                let r = one.get(agent, path).await;
                self.in_flight.fetch_sub(1, SeqCst);
                r
            })
        }
    }

    /// 1,000 agents (real HTTP servers on loopback ports) answering in 50 ms each: the
    /// hub's fan-out answers within 10 s, with at most `concurrency` in flight, every agent
    /// asked with the hub's own token, in the nodes' order; a second query within the max
    /// age costs the agents nothing.
    #[tokio::test]
    async fn a_thousand_agents_at_50_ms_answer_the_hub_within_10_s() {
        let n = 1000;
        let (agents, ports) = fake_agents(n, Duration::from_millis(50)).await;
        let dir = tempdir();
        let token = dir.join("token");
        std::fs::write(&token, "hub-token\n").unwrap();
        let transport = Arc::new(PortPerAgent {
            inner: DirectAgents::new(0, Some(token), false),
            ports: agents
                .iter()
                .zip(&ports)
                .map(|(a, p)| (a.node.clone(), *p))
                .collect(),
            in_flight: Default::default(),
            peak: Default::default(),
        });
        let front = Front::new(
            Arc::new(StaticDirectory(agents)),
            transport.clone(),
            Limits {
                concurrency: DEFAULT_CONCURRENCY,
                per_node: DEFAULT_PER_NODE,
            },
            DEFAULT_MAX_AGE,
        );
        let start = std::time::Instant::now();
        let answer = front.fleet_report().await.unwrap();
        let took = start.elapsed();
        eprintln!(
            "{n} agents at 50 ms, {DEFAULT_CONCURRENCY} in flight: {took:?}, peak in flight {}",
            transport.peak.load(std::sync::atomic::Ordering::SeqCst)
        );
        assert!(took < Duration::from_secs(10), "took {took:?}");
        // Bounded: n / concurrency rounds of 50 ms at least.
        assert!(
            took >= Duration::from_millis(50 * (n / DEFAULT_CONCURRENCY) as u64),
            "took {took:?}: unbounded?"
        );
        assert!(transport.peak.load(std::sync::atomic::Ordering::SeqCst) <= DEFAULT_CONCURRENCY);
        assert_eq!(answer.agents.len(), n);
        for (i, a) in answer.agents.iter().enumerate() {
            assert_eq!(a.node, format!("node-{i:04}"));
            assert_eq!(
                a.outcome,
                Outcome::Body(serde_json::json!({"schema": "x", "node": i})),
                "agent {i} not asked with the hub's token"
            );
        }
        let again = std::time::Instant::now();
        let cached = front.fleet_report().await.unwrap();
        assert!(again.elapsed() < Duration::from_millis(50), "asked again");
        assert_eq!(cached.agents, answer.agents);
        assert_eq!(front.fanouts.load(std::sync::atomic::Ordering::Relaxed), 1);
        // One node's report comes from the fan-out; a node without agent is named.
        let one = front.agent("node-0007", "/v1/report").await.unwrap();
        assert_eq!(one.outcome, answer.agents[7].outcome);
        let e = front.agent("node-x", "/v1/report").await.unwrap_err();
        assert_eq!(e.to_string(), "no sgpath agent runs on node node-x");
    }

    /// A refused port, an agent without IP and one that never answers are each an answer.
    #[tokio::test]
    async fn refused_addressless_and_slow_agents_are_each_an_answer() {
        let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let slow_port = slow.local_addr().unwrap().port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pod = |node: &str, address: Option<&str>| AgentPod {
            namespace: "sgpath".into(),
            name: format!("sgpath-{node}"),
            node: node.into(),
            address: address.map(Into::into),
        };
        let agents = vec![
            pod("a-closed", Some("127.0.0.1")),
            pod("b-noip", None),
            pod("c-slow", Some("127.0.0.1")),
        ];
        struct Two(DirectAgents, DirectAgents);
        impl Transport for Two {
            fn get<'a>(
                &'a self,
                agent: &'a AgentPod,
                path: &'a str,
            ) -> BoxFuture<'a, Result<String, FetchError>> {
                if agent.node == "c-slow" {
                    self.1.get(agent, path)
                } else {
                    self.0.get(agent, path)
                }
            }
        }
        let front = Front::new(
            Arc::new(StaticDirectory(agents)),
            Arc::new(Two(
                DirectAgents::new(closed, None, false),
                DirectAgents::new(slow_port, None, false),
            )),
            Limits {
                concurrency: 8,
                per_node: Duration::from_millis(300),
            },
            DEFAULT_MAX_AGE,
        );
        let a = front.fleet_report().await.unwrap();
        let errs: Vec<String> = a
            .agents
            .iter()
            .map(|a| match &a.outcome {
                Outcome::Error(e) => e.to_string(),
                Outcome::Body(b) => panic!("{b}"),
            })
            .collect();
        assert!(errs[0].contains("refused"), "{errs:?}");
        assert_eq!(errs[1], "pod sgpath-b-noip has no IP yet");
        assert_eq!(errs[2], "no answer within 300ms");
        drop(slow);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sgpath-front-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
