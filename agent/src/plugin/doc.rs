//! The agent's `/v1/report` (schema `sgpath.report/v1`, documented on
//! [`crate::report::Report`]) as the plugin reads it: only the fields it prints, so an agent
//! one version ahead still parses. Unknown fields are ignored; a document of another schema
//! is an error naming it.
//!
//! Side effects: none.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::fleet::FetchError;

/// A finding's severity, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AgentReport {
    pub schema: String,
    #[serde(default)]
    pub kernel: String,
    /// `strict`, `standard` or `none`.
    pub mode: String,
    #[serde(default)]
    pub paths: Vec<PathDoc>,
    #[serde(default)]
    pub findings: Vec<FindingDoc>,
    /// Absent while the probes are not attached (degraded: topology and checks only).
    #[serde(default)]
    pub probes: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PathDoc {
    /// `branch-eni` or `node-eni`.
    pub kind: String,
    pub pod_ip: Option<String>,
    pub host_veth: String,
    pub vlan_id: Option<u16>,
    #[serde(default)]
    pub eni_id: Option<String>,
    #[serde(default)]
    pub pod: Option<PodDoc>,
    /// The last `--window`'s counters.
    #[serde(default)]
    pub window: Option<CountersDoc>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PodDoc {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub security_groups: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CountersDoc {
    #[serde(default)]
    pub to_pod: DirectionDoc,
    #[serde(default)]
    pub from_pod: DirectionDoc,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct DirectionDoc {
    #[serde(default)]
    pub forwarded_packets: u64,
    #[serde(default)]
    pub dropped_packets: u64,
    #[serde(default)]
    pub syn_unanswered: BTreeMap<String, u64>,
    #[serde(default)]
    pub dns_unanswered: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FindingDoc {
    pub id: String,
    pub severity: Severity,
    pub subject: String,
    #[serde(default)]
    pub evidence: Vec<String>,
    #[serde(default)]
    pub remediation: String,
}

impl AgentReport {
    /// # Errors
    /// [`FetchError::Garbage`] naming what is wrong: not JSON, or not this schema.
    pub fn parse(body: &str) -> Result<AgentReport, FetchError> {
        let short = |s: &str| s.chars().take(80).collect::<String>();
        let doc: AgentReport = serde_json::from_str(body)
            .map_err(|e| FetchError::Garbage(format!("{e} (body starts {:?})", short(body))))?;
        if doc.schema != crate::report::SCHEMA {
            return Err(FetchError::Garbage(format!(
                "schema {:?}, expected {:?}",
                short(&doc.schema),
                crate::report::SCHEMA
            )));
        }
        Ok(doc)
    }

    /// The worst severity among the findings.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// The path a finding's subject names (pod IP, host veth, `vlan.eth.<id>`,
    /// `<namespace>/<name>`), if any.
    pub fn path_of(&self, subject: &str) -> Option<&PathDoc> {
        self.paths.iter().find(|p| p.names(subject))
    }
}

impl PathDoc {
    /// Whether `subject` (a finding's) names this path.
    pub fn names(&self, subject: &str) -> bool {
        self.pod_ip.as_deref() == Some(subject)
            || self.host_veth == subject
            || self
                .vlan_id
                .is_some_and(|v| subject == format!("vlan.eth.{v}"))
            || self
                .pod
                .as_ref()
                .is_some_and(|p| subject == format!("{}/{}", p.namespace, p.name))
    }

    /// `namespace/name`, or `-` for a path no pod names.
    pub fn pod_name(&self) -> String {
        self.pod
            .as_ref()
            .map_or_else(|| "-".to_owned(), |p| format!("{}/{}", p.namespace, p.name))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const REPORT: &str = r#"{"schema": "sgpath.report/v1", "kernel": "6.1", "mode": "standard",
      "trunks": [], "sysctls": {}, "lookups": [], "probes": {"programs": {}},
      "paths": [{"kind": "branch-eni", "mode": "standard", "pod_ip": "192.168.41.23",
                 "host_veth": "vlan0c5", "vlan_id": 5, "vlan_link": null, "trunk": null,
                 "route_table": 105, "rules": [], "eni_id": "eni-0c5",
                 "pod": {"namespace": "sg-test", "name": "standard-c", "matched_by": "pod-ip",
                         "security_groups": ["sg-0c5"]},
                 "window": {"to_pod": {"forwarded_packets": 3, "syn_unanswered": {"80": 2}},
                            "from_pod": {}}}],
      "findings": [{"id": "vlan-parent-missing", "severity": "error", "subject": "vlan.eth.5",
                    "evidence": ["no link vlan.eth.5"], "remediation": "ip link add ..."},
                   {"id": "x", "severity": "info", "subject": "eth0", "evidence": [],
                    "remediation": ""}]}"#;

    #[test]
    fn a_report_parses_and_its_findings_name_their_pods() {
        let r = AgentReport::parse(REPORT).unwrap();
        assert_eq!(r.worst(), Some(Severity::Error));
        let p = r.path_of("vlan.eth.5").unwrap();
        assert_eq!(p.pod_name(), "sg-test/standard-c");
        assert_eq!(p.window.as_ref().unwrap().to_pod.syn_unanswered["80"], 2);
        assert!(r.path_of("sg-test/standard-c").is_some());
        assert!(r.path_of("eth0").is_none());
    }

    #[test]
    fn garbage_is_named() {
        for (body, want) in [
            ("<html>", "body starts"),
            (
                r#"{"schema": "other/v9", "mode": "none"}"#,
                "schema \"other/v9\"",
            ),
            (r#"{"schema": "sgpath.report/v1"}"#, "missing field `mode`"),
        ] {
            let e = AgentReport::parse(body).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
    }
}
