//! Report sinks: the document every sink renders ([`Report`]), JSON and text.
//! A printer never looks anything up: everything it prints is a field of [`Report`].

pub mod prometheus;
pub mod text;
pub mod trace;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    checks::{Finding, Severity},
    model::{EnforcingMode, Node, Path, Target, Topology, Trunk, trace::Leg},
};

/// Schema id of the JSON report.
pub const SCHEMA: &str = "sgpath.report/v1";

/// The report of one node, as `sgpath inspect --output json` prints it:
///
/// ```text
/// { "schema": "sgpath.report/v1", "kernel": "<uname -r>", "mode": "strict" | "standard" | "none",
///   "trunks": [ { "name", "ifindex", "mtu", "up", "vlans": [<vlan id>...] } ],
///   "paths": [ { "kind": "branch-eni" | "node-eni", "mode": "strict" | "standard" | null,
///                "pod_ip", "host_veth", "vlan_id", "vlan_link", "trunk", "route_table",
///                "rules": [ { "priority", "selector", "table" } ] } ],
///   "sysctls": { "net.ipv4.tcp_early_demux": 1, ... },
///   "cni_config": { "path", "enforcing_mode", "veth_prefix", "mtu", "plugins" } | null,
///   "lookups": [ { "host_veth", "pod_ip",
///                  "kind": "gateway" | "node-ip" | "service" | "instance-metadata",
///                  "link": <interface owning a service address>, "address",
///                  "forward": <leg>, "reply": <leg> | null } ],
///   "findings": [ { "id", "severity", "subject", "evidence": [..], "remediation" } ] }
/// ```
/// `sgpath observe` adds `"counters": { "to_pod": <dir>, "from_pod": <dir> }` to each path,
/// where `<dir> = { "forwarded_packets", "forwarded_bytes", "dropped_packets",
/// "drops_by_reason": { "NETFILTER_DROP": n, ... }, "drops_by_location": { "nf_hook_slow": n } }`
/// (bytes are IP bytes), and at the top `"drop_source": "reason" | "location"`,
/// `"header_read": "typed" | "probe"` and
/// `"probes": { "programs": { "<program>": "tp_btf/<hook>" }, "pod_namespaces": n,
/// "errors": { "<ProgError>": n } }`.
/// `paths` lists branch-ENI paths first, each group ordered by pod IP; `findings` worst first.
/// `lookups` are the kernel's answers for each pod (`ip route get <address> from <pod ip>
/// iif <host veth>`; `reply`: `ip route get <pod ip> from <address>` for service
/// addresses), each `<leg>` as in the trace report (`agent/src/model/trace.rs::Trace`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub kernel: String,
    pub mode: ModeName,
    pub trunks: Vec<Trunk>,
    pub paths: Vec<Path>,
    pub sysctls: BTreeMap<String, i64>,
    pub cni_config: Option<crate::model::CniConfig>,
    pub lookups: Vec<LookupReport>,
    pub findings: Vec<Finding>,
    /// How drops are named (`observe` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_source: Option<crate::ebpf::paths::DropSource>,
    /// How the programs read packet headers: `typed` (BTF-typed loads, 6.2+) or `probe` (a
    /// helper read) (`observe` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_read: Option<crate::ebpf::typed::HeaderRead>,
    /// What was attached (`observe` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<ProbeStatus>,
}

/// The probes `observe` attached.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProbeStatus {
    /// Program name -> hook.
    pub programs: BTreeMap<String, String>,
    /// Interface -> what the programs do on it (`host-veth`: the path's counters and
    /// connections; `uplink`: `left_via` and the node's connections to pods). Tracepoints
    /// see every interface: nothing is attached per interface, so an interface counts from
    /// the moment its ifindex is in the map (one netlink event plus one map update).
    pub interfaces: BTreeMap<String, String>,
    /// Connections waiting for an answer, or lingering, at the end.
    pub connections_tracked: usize,
    /// Pod namespaces whose drops count.
    pub pod_namespaces: usize,
    /// Paths with no slot in the path maps (`--max-paths` reached): not counted.
    pub paths_uncounted: usize,
    /// Errors the programs counted instead of failing (a full map), by kind.
    pub errors: BTreeMap<String, u64>,
}

/// One of the kernel's route lookups for a pod, explained.
#[derive(Clone, Debug, Serialize)]
pub struct LookupReport {
    pub host_veth: String,
    pub pod_ip: std::net::IpAddr,
    /// `"kind"` and, for a service address, `"link"`.
    #[serde(flatten)]
    pub target: Target,
    pub address: std::net::IpAddr,
    pub forward: Leg,
    pub reply: Option<Leg>,
}

/// The node-wide enforcing mode; `none` when no branch ENI exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    Strict,
    Standard,
    None,
}

impl ModeName {
    pub fn as_str(self) -> &'static str {
        match self {
            ModeName::Strict => "strict",
            ModeName::Standard => "standard",
            ModeName::None => "none",
        }
    }
}

impl From<Option<EnforcingMode>> for ModeName {
    fn from(m: Option<EnforcingMode>) -> Self {
        match m {
            Some(EnforcingMode::Strict) => ModeName::Strict,
            Some(EnforcingMode::Standard) => ModeName::Standard,
            None => ModeName::None,
        }
    }
}

impl Report {
    pub fn new(node: &Node, topo: &Topology, findings: Vec<Finding>) -> Report {
        Report::with_lookups(node, topo, findings, lookup_reports(node, topo))
    }

    /// As [`Report::new`], with the lookups explained before: they change only with the
    /// snapshot, and explaining a thousand of them was most of a scrape's time.
    pub fn with_lookups(
        node: &Node,
        topo: &Topology,
        findings: Vec<Finding>,
        lookups: Vec<LookupReport>,
    ) -> Report {
        Report {
            schema: SCHEMA,
            kernel: node.kernel.clone(),
            mode: topo.mode.into(),
            trunks: topo.trunks.clone(),
            paths: topo.paths.clone(),
            sysctls: node.sysctls.0.clone(),
            cni_config: node.cni.clone(),
            lookups,
            findings,
            drop_source: None,
            header_read: None,
            probes: None,
        }
    }

    /// The worst severity among the findings.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }
}

/// Each of the kernel's route lookups in `node`, explained leg by leg.
pub fn lookup_reports(node: &Node, topo: &Topology) -> Vec<LookupReport> {
    node.lookups
        .iter()
        .map(|l| LookupReport {
            host_veth: l.host_veth.clone(),
            pod_ip: l.pod_ip,
            target: l.target.clone(),
            address: l.addr,
            forward: l.forward_leg(node, topo),
            reply: l.reply_leg(node, topo),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Node, Topology};

    fn report() -> Report {
        let mut node = Node {
            kernel: "6.12.117+deb12-amd64".into(),
            ..Default::default()
        };
        node.sysctls.0.insert("net.ipv4.tcp_early_demux".into(), 0);
        let topo = Topology::from_node(&node);
        Report::new(&node, &topo, Vec::new())
    }

    #[test]
    fn json_has_the_documented_keys() {
        let v: serde_json::Value = serde_json::from_str(&report().to_json()).unwrap();
        assert_eq!(v["schema"], "sgpath.report/v1");
        assert_eq!(v["kernel"], "6.12.117+deb12-amd64");
        assert_eq!(v["mode"], "none");
        assert_eq!(v["sysctls"]["net.ipv4.tcp_early_demux"], 0);
        for key in ["trunks", "paths", "lookups", "findings"] {
            assert!(v[key].as_array().is_some_and(|a| a.is_empty()), "{key}");
        }
    }

    #[test]
    fn lookups_carry_the_target_and_the_explained_answer() {
        use crate::model::{Lookup, Refusal};
        let mut node = Node::default();
        node.lookups.push(Lookup {
            host_veth: "vlanaaaaaaaaaaa".into(),
            pod_ip: "192.168.3.219".parse().unwrap(),
            target: Target::Service {
                link: "pod-id-link0".into(),
            },
            addr: "169.254.170.23".parse().unwrap(),
            forward: Err(Refusal::ReversePath),
            reply: None,
        });
        let topo = Topology::from_node(&node);
        let r = Report::new(&node, &topo, Vec::new());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let l = &v["lookups"][0];
        assert_eq!(l["kind"], "service");
        assert_eq!(l["link"], "pod-id-link0");
        assert_eq!(l["address"], "169.254.170.23");
        assert_eq!(l["forward"]["error"], "EXDEV (reverse path filter)");
        assert_eq!(l["forward"]["ingress"], "vlanaaaaaaaaaaa");
        assert!(l["reply"].is_null());
        let t = text::render(&r);
        assert!(
            t.contains("ROUTE LOOKUPS (1 for 0 pods, 1 refused)\n  192.168.3.219 (vlanaaaaaaaaaaa) -> 169.254.170.23: the kernel refuses it with EXDEV (reverse path filter)\n"),
            "{t}"
        );
    }

    #[test]
    fn text_says_the_mode_and_that_there_is_no_trunk() {
        let t = text::render(&report());
        assert!(
            t.starts_with("kernel 6.12.117+deb12-amd64   enforcing mode: none\n"),
            "{t}"
        );
        assert!(t.contains("(none: no vlan.eth.* link on this node)"));
        assert!(t.contains("BRANCH-ENI PATHS (0)") && t.contains("FINDINGS (0)"));
    }
}
