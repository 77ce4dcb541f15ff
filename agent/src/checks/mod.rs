//! Checks turn a [`Topology`] and its [`Node`] into [`Finding`]s an operator can act on.
//! Every check is a pure function listed in [`REGISTRY`]; one file per finding family.

mod attribution;
mod connections;
mod kube;
mod mode;
mod mtu;
mod nodelocal_dns;
mod path_drops;
mod pod_routes;
mod probe_maps;
mod security_groups;
mod services;
mod sysctls;
mod vlan_rules;
mod vlan_tables;

use serde::Serialize;

pub use probe_maps::{map_full, paths_uncounted};

use crate::model::{Node, Topology};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// Stable ids of findings (kebab-case on the wire and in metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingId {
    /// Strict-mode branch pods exist and `net.ipv4.tcp_early_demux` = 1.
    TcpEarlyDemuxEnabled,
    /// A `vlan.eth.N` or strict `vlan<hash>` veth without its priority-10 `iif` rule.
    VlanRuleMissing,
    /// A priority-10 `iif` rule naming a missing interface or the wrong table.
    VlanRuleStale,
    /// Table N+100 lacks the gateway route, the default route or the strict pod route.
    VlanTableIncomplete,
    /// A `vlan.eth.N` whose trunk is gone or down.
    VlanParentMissing,
    /// Strict mode without the local rule at 20, or with it still at 0.
    LocalRuleMisplaced,
    /// An ordinary or standard pod without its main route or its 512 rule.
    PodRouteMissing,
    /// `rp_filter` = 1 on the primary ENI.
    RpFilterStrictPrimary,
    /// `net.ipv4.ip_forward` = 0.
    IpForwardDisabled,
    /// A pod whose packets to NodeLocal DNSCache's 169.254.20.10 the kernel does not
    /// deliver on the node (in practice: strict branch pods).
    NodelocalDnsStrict,
    /// A pod whose packets to another address only this node has (Pod Identity agent,
    /// kube-ipvs0...) the kernel does not deliver on the node.
    NodeServiceUnreachable,
    /// A VLAN link or pod veth MTU above its trunk's.
    MtuMismatch,
    /// The CNI config's enforcing mode disagrees with what the node's rules show.
    EnforcingModeMismatch,
    /// A sysctl or the CNI config could not be read.
    NodeReadIncomplete,
    /// The kernel dropped packets on a pod's path while `observe` counted.
    PathDrops,
    /// A branch pod's connections out of its VLAN went unanswered: its branch ENI's
    /// outbound rules, or the peer's inbound rules, likely drop them.
    SgSuspectedBlock,
    /// The node's connections to a branch pod went unanswered (kubelet probes fail).
    ProbePathBroken,
    /// A branch pod's DNS queries went unanswered.
    DnsPathBroken,
    /// A branch pod's packets left the node by an interface other than its VLAN.
    BranchTrafficOffVlan,
    /// An eBPF map was full: some packets, drops or connections went uncounted.
    ProbeMapFull,
    /// A pod's `vpc.amazonaws.com/pod-eni` annotation is not the resource controller's JSON.
    MalformedPodEniAnnotation,
    /// A SecurityGroupPolicy whose selectors or group ids cannot be read.
    MalformedSecurityGroupPolicy,
    /// The annotation's VLAN or MAC is not the `vlan.eth.N` the pod's path uses.
    PodEniMismatch,
    /// The host veth carrying a pod's IP is not the CNI's name for the pod.
    VethNameMismatch,
    /// A SecurityGroupPolicy selects a pod that has no branch ENI.
    SgpPodWithoutBranchEni,
    /// Branch pods are wanted and the node has no trunk ENI.
    TrunkUnavailable,
    /// VPC CNI < 1.11 with pod ENIs and `tcp_early_demux` = 1.
    OldCniTcpEarlyDemux,
    /// `POD_SECURITY_GROUP_ENFORCING_MODE` on aws-node is not the mode the node shows.
    EnforcingModeEnvMismatch,
    /// Strict mode where standard is needed (Calico, externalTrafficPolicy Local).
    StrictModeUnsupported,
    /// A pod sent packets with a source address not its own (counted on its veth only).
    PodSourceSpoofed,
    /// Two live host veths route or hold one pod IP.
    PodIpConflict,
    /// The security groups' rules could not be read from EC2 (credentials, IAM, network).
    Ec2Unavailable,
    /// A strict branch pod's groups admit no TCP from the node on a port its probes use.
    SgBlocksKubeletProbe,
    /// A branch pod's groups, or CoreDNS's, do not let its DNS through (UDP and TCP 53).
    SgBlocksDns,
    /// A branch pod's groups admit neither the node nor the VPC on a Service's targetPort.
    SgBlocksService,
}

impl FindingId {
    /// Every id, for metrics that must export zeros.
    pub const ALL: [FindingId; 35] = [
        FindingId::TcpEarlyDemuxEnabled,
        FindingId::VlanRuleMissing,
        FindingId::VlanRuleStale,
        FindingId::VlanTableIncomplete,
        FindingId::VlanParentMissing,
        FindingId::LocalRuleMisplaced,
        FindingId::PodRouteMissing,
        FindingId::RpFilterStrictPrimary,
        FindingId::IpForwardDisabled,
        FindingId::NodelocalDnsStrict,
        FindingId::NodeServiceUnreachable,
        FindingId::MtuMismatch,
        FindingId::EnforcingModeMismatch,
        FindingId::NodeReadIncomplete,
        FindingId::PathDrops,
        FindingId::SgSuspectedBlock,
        FindingId::ProbePathBroken,
        FindingId::DnsPathBroken,
        FindingId::BranchTrafficOffVlan,
        FindingId::ProbeMapFull,
        FindingId::PodSourceSpoofed,
        FindingId::PodIpConflict,
        FindingId::MalformedPodEniAnnotation,
        FindingId::MalformedSecurityGroupPolicy,
        FindingId::PodEniMismatch,
        FindingId::VethNameMismatch,
        FindingId::SgpPodWithoutBranchEni,
        FindingId::TrunkUnavailable,
        FindingId::OldCniTcpEarlyDemux,
        FindingId::EnforcingModeEnvMismatch,
        FindingId::StrictModeUnsupported,
        FindingId::Ec2Unavailable,
        FindingId::SgBlocksKubeletProbe,
        FindingId::SgBlocksDns,
        FindingId::SgBlocksService,
    ];

    /// The id as it appears in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingId::TcpEarlyDemuxEnabled => "tcp-early-demux-enabled",
            FindingId::VlanRuleMissing => "vlan-rule-missing",
            FindingId::VlanRuleStale => "vlan-rule-stale",
            FindingId::VlanTableIncomplete => "vlan-table-incomplete",
            FindingId::VlanParentMissing => "vlan-parent-missing",
            FindingId::LocalRuleMisplaced => "local-rule-misplaced",
            FindingId::PodRouteMissing => "pod-route-missing",
            FindingId::RpFilterStrictPrimary => "rp-filter-strict-primary",
            FindingId::IpForwardDisabled => "ip-forward-disabled",
            FindingId::NodelocalDnsStrict => "nodelocal-dns-strict",
            FindingId::NodeServiceUnreachable => "node-service-unreachable",
            FindingId::MtuMismatch => "mtu-mismatch",
            FindingId::EnforcingModeMismatch => "enforcing-mode-mismatch",
            FindingId::NodeReadIncomplete => "node-read-incomplete",
            FindingId::PathDrops => "path-drops",
            FindingId::SgSuspectedBlock => "sg-suspected-block",
            FindingId::ProbePathBroken => "probe-path-broken",
            FindingId::DnsPathBroken => "dns-path-broken",
            FindingId::BranchTrafficOffVlan => "branch-traffic-off-vlan",
            FindingId::ProbeMapFull => "probe-map-full",
            FindingId::MalformedPodEniAnnotation => "malformed-pod-eni-annotation",
            FindingId::MalformedSecurityGroupPolicy => "malformed-security-group-policy",
            FindingId::PodEniMismatch => "pod-eni-mismatch",
            FindingId::VethNameMismatch => "veth-name-mismatch",
            FindingId::SgpPodWithoutBranchEni => "sgp-pod-without-branch-eni",
            FindingId::TrunkUnavailable => "trunk-unavailable",
            FindingId::OldCniTcpEarlyDemux => "old-cni-tcp-early-demux",
            FindingId::EnforcingModeEnvMismatch => "enforcing-mode-env-mismatch",
            FindingId::StrictModeUnsupported => "strict-mode-unsupported",
            FindingId::PodSourceSpoofed => "pod-source-spoofed",
            FindingId::PodIpConflict => "pod-ip-conflict",
            FindingId::Ec2Unavailable => "ec2-unavailable",
            FindingId::SgBlocksKubeletProbe => "sg-blocks-kubelet-probe",
            FindingId::SgBlocksDns => "sg-blocks-dns",
            FindingId::SgBlocksService => "sg-blocks-service",
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

impl Finding {
    pub fn new(id: FindingId, severity: Severity, subject: impl Into<String>) -> Finding {
        Finding {
            id,
            severity,
            subject: subject.into(),
            evidence: Vec::new(),
            remediation: String::new(),
        }
    }

    pub fn evidence(mut self, e: impl Into<String>) -> Finding {
        self.evidence.push(e.into());
        self
    }

    pub fn fix(mut self, remediation: impl Into<String>) -> Finding {
        self.remediation = remediation.into();
        self
    }
}

/// A check: a pure function from the snapshot and its topology to findings.
pub type Check = fn(&Node, &Topology) -> Vec<Finding>;

/// Every check sgpath runs, in report order.
pub const REGISTRY: &[Check] = &[
    sysctls::tcp_early_demux,
    sysctls::ip_forward,
    sysctls::rp_filter_primary,
    vlan_rules::missing,
    vlan_rules::stale,
    vlan_rules::local_rule,
    vlan_tables::incomplete,
    vlan_tables::parent_missing,
    pod_routes::missing,
    nodelocal_dns::strict,
    services::unreachable,
    mtu::mismatch,
    mode::mismatch,
    path_drops::path_drops,
    connections::sg_suspected_block,
    connections::probe_path_broken,
    connections::dns_path_broken,
    connections::off_vlan,
    attribution::pod_source_spoofed,
    attribution::pod_ip_conflict,
    kube::malformed_annotation,
    kube::malformed_policy,
    kube::pod_eni_mismatch,
    kube::veth_name_mismatch,
    kube::policy_without_branch,
    kube::trunk_unavailable,
    kube::old_cni_early_demux,
    kube::enforcing_mode_env,
    kube::strict_unsupported,
    security_groups::kubelet_probe,
    security_groups::dns,
    security_groups::service,
    security_groups::ec2_unavailable,
    read_warnings,
];

/// Run every check; findings sorted by severity (worst first), then id and subject.
pub fn run(node: &Node, topo: &Topology) -> Vec<Finding> {
    let mut out: Vec<Finding> = REGISTRY.iter().flat_map(|c| c(node, topo)).collect();
    out.sort_by(|a, b| (b.severity, a.id, &a.subject).cmp(&(a.severity, b.id, &b.subject)));
    out
}

fn read_warnings(node: &Node, _: &Topology) -> Vec<Finding> {
    node.read_warnings
        .iter()
        .map(|w| {
            Finding::new(FindingId::NodeReadIncomplete, Severity::Info, w.subject.clone())
                .evidence(w.message.clone())
                .fix("check the file, or run sgpath as root or with the capabilities in deploy/README.md")
        })
        .collect()
}

#[cfg(test)]
mod tests;
