//! Asking every agent at once: bounded concurrency, a timeout per node, and an answer for
//! every node, whatever it did (answered, refused, timed out, sent garbage). The transport
//! is a trait, so the fan-out is tested without a cluster (500 nodes at 50 ms each).
//!
//! Side effects: none here; the [`Transport`] given does the I/O.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, future::BoxFuture};

use super::doc::AgentReport;

/// One agent pod, as the API server lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPod {
    pub namespace: String,
    pub name: String,
    /// `spec.nodeName`.
    pub node: String,
    /// `status.podIP` (the hub asks the agent there; hostNetwork: the node's address).
    pub address: Option<String>,
}

/// Why an agent's answer is not a report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "detail")]
pub enum FetchError {
    /// The API server or the agent answered this status (401, 403, 503...).
    #[error("HTTP {code}: {message}")]
    Status { code: u16, message: String },
    /// No answer within the per-node timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed (the API server, or its proxy to the agent).
    #[error("{0}")]
    Transport(String),
    /// An answer that is not the agent's JSON.
    #[error("not an sgpath report: {0}")]
    Garbage(String),
}

/// GET a path of an agent, through whatever reaches it.
pub trait Transport: Send + Sync {
    /// The body of a 2xx answer to GET `path` (with its query) on `agent`.
    fn get<'a>(
        &'a self,
        agent: &'a AgentPod,
        path: &'a str,
    ) -> BoxFuture<'a, Result<String, FetchError>>;
}

/// How hard to ask.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Time each node has to answer.
    pub per_node: Duration,
}

/// What one node said.
#[derive(Debug)]
pub struct Answer {
    pub agent: AgentPod,
    pub report: Result<AgentReport, FetchError>,
}

/// GET `path` of every agent, at most `limits.concurrency` at once, each within
/// `limits.per_node`; `progress(done, total)` after each answer. Answers come back in the
/// order of `agents`.
pub async fn ask_all(
    transport: Arc<dyn Transport>,
    agents: Vec<AgentPod>,
    path: &str,
    limits: Limits,
    mut progress: impl FnMut(usize, usize),
) -> Vec<Answer> {
    let total = agents.len();
    let mut answers: Vec<(usize, Answer)> = futures::stream::iter(agents.into_iter().enumerate())
        .map(|(i, agent)| {
            let transport = transport.clone();
            async move {
                let report = ask_one(&*transport, &agent, path, limits.per_node).await;
                (i, Answer { agent, report })
            }
        })
        .buffer_unordered(limits.concurrency.max(1))
        .inspect({
            let mut done = 0;
            move |_| {
                done += 1;
                progress(done, total);
            }
        })
        .collect()
        .await;
    answers.sort_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, a)| a).collect()
}

/// One agent's report, within `timeout`.
pub async fn ask_one(
    transport: &dyn Transport,
    agent: &AgentPod,
    path: &str,
    timeout: Duration,
) -> Result<AgentReport, FetchError> {
    let body = tokio::time::timeout(timeout, transport.get(agent, path))
        .await
        .map_err(|_| FetchError::Timeout(timeout))??;
    AgentReport::parse(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every agent answers after 50 ms, but `slow` never, `down` refuses, `junk` sends HTML.
    struct Fake;

    impl Transport for Fake {
        fn get<'a>(
            &'a self,
            agent: &'a AgentPod,
            _path: &'a str,
        ) -> BoxFuture<'a, Result<String, FetchError>> {
            Box::pin(async move {
                match agent.node.as_str() {
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        unreachable!()
                    }
                    "down" => Err(FetchError::Transport("connection refused".into())),
                    "junk" => Ok("<html>bad gateway</html>".into()),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(crate::plugin::doc::tests::REPORT.to_owned())
                    }
                }
            })
        }
    }

    fn agents(n: usize) -> Vec<AgentPod> {
        (0..n)
            .map(|i| AgentPod {
                namespace: "kube-system".into(),
                name: format!("sgpath-{i}"),
                node: format!("node-{i}"),
                address: None,
            })
            .collect()
    }

    #[tokio::test]
    async fn five_hundred_nodes_at_50_ms_answer_within_10_s() {
        let start = std::time::Instant::now();
        let mut calls = 0;
        let answers = ask_all(
            Arc::new(Fake),
            agents(500),
            "/v1/report",
            Limits {
                concurrency: 32,
                per_node: Duration::from_secs(5),
            },
            |done, total| {
                calls += 1;
                assert!(done <= total && total == 500);
            },
        )
        .await;
        let took = start.elapsed();
        assert!(took < Duration::from_secs(10), "took {took:?}");
        // Concurrency is bounded: 500 / 32 rounds of 50 ms is at least 0.8 s.
        assert!(
            took >= Duration::from_millis(16 * 50),
            "took {took:?}: unbounded?"
        );
        assert_eq!(calls, 500);
        assert_eq!(answers.len(), 500);
        assert!(answers.iter().all(|a| a.report.is_ok()));
        assert_eq!(answers[499].agent.node, "node-499", "in the agents' order");
    }

    #[tokio::test]
    async fn a_slow_a_down_and_a_garbage_node_are_each_an_answer() {
        let mut list = agents(3);
        for (a, node) in list.iter_mut().zip(["slow", "down", "junk"]) {
            a.node = node.into();
        }
        list.extend(agents(2));
        let start = std::time::Instant::now();
        let answers = ask_all(
            Arc::new(Fake),
            list,
            "/v1/report",
            Limits {
                concurrency: 4,
                per_node: Duration::from_millis(300),
            },
            |_, _| {},
        )
        .await;
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a slow node held the rest"
        );
        assert_eq!(
            answers[0].report.as_ref().unwrap_err(),
            &FetchError::Timeout(Duration::from_millis(300))
        );
        assert!(matches!(answers[1].report, Err(FetchError::Transport(_))));
        assert!(matches!(answers[2].report, Err(FetchError::Garbage(_))));
        assert!(answers[3].report.is_ok() && answers[4].report.is_ok());
    }
}
