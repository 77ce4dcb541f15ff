//! Checks turn a [`Topology`] and its [`Node`] into [`Finding`]s an operator can act on.
//! Every check is a pure function listed in [`REGISTRY`]; one file per finding family.

use serde::Serialize;

use crate::model::{Node, Topology};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// Stable ids of findings (kebab-case on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingId {
    /// A sysctl or CNI config could not be read.
    NodeReadIncomplete,
}

impl FindingId {
    /// The id as it appears in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingId::NodeReadIncomplete => "node-read-incomplete",
        }
    }
}

/// One thing wrong (or worth knowing) about the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: FindingId,
    pub severity: Severity,
    /// The interface, pod IP or sysctl concerned.
    pub subject: String,
    /// The facts read, quoted as `ip rule` / `ip route` / `sysctl` print them.
    pub evidence: Vec<String>,
    /// The concrete command that fixes it.
    pub remediation: String,
}

/// A check: a pure function from the snapshot and its topology to findings.
pub type Check = fn(&Node, &Topology) -> Vec<Finding>;

/// Every check sgpath runs, in report order.
pub const REGISTRY: &[Check] = &[read_warnings];

/// Run every check; findings sorted by severity (worst first), then id and subject.
pub fn run(node: &Node, topo: &Topology) -> Vec<Finding> {
    let mut out: Vec<Finding> = REGISTRY.iter().flat_map(|c| c(node, topo)).collect();
    out.sort_by(|a, b| (b.severity, a.id, &a.subject).cmp(&(a.severity, b.id, &b.subject)));
    out
}

fn read_warnings(node: &Node, _: &Topology) -> Vec<Finding> {
    node.read_warnings
        .iter()
        .map(|w| Finding {
            id: FindingId::NodeReadIncomplete,
            severity: Severity::Info,
            subject: w.split(':').next().unwrap_or("node").to_string(),
            evidence: vec![w.clone()],
            remediation: "check the file or run sgpath with the capabilities in deploy/daemonset.yaml".into(),
        })
        .collect()
}
