//! Sysctl checks: `tcp-early-demux-enabled`, `ip-forward-disabled`, `rp-filter-strict-primary`.

use super::{Finding, FindingId, Severity};
use crate::model::{Node, Sysctls, Topology};

/// Strict branch pods with `tcp_early_demux` = 1 break kubelet's TCP and HTTP liveness
/// and readiness probes to them: the probe leaves eth0 and returns through the trunk, and
/// early demux hands the pod's connection the wrong cached route (VPC CNI PR #1212). The
/// CNI's init container sets 0 only with DISABLE_TCP_EARLY_DEMUX=true.
pub fn tcp_early_demux(node: &Node, topo: &Topology) -> Vec<Finding> {
    let strict: Vec<_> = topo.strict_paths().collect();
    if strict.is_empty() || node.sysctls.get(Sysctls::TCP_EARLY_DEMUX) != Some(1) {
        return Vec::new();
    }
    let pods = strict
        .iter()
        .map(|p| {
            format!(
                "{} ({})",
                p.host_veth,
                p.pod_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "?".into())
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    vec![Finding::new(FindingId::TcpEarlyDemuxEnabled, Severity::Warning, Sysctls::TCP_EARLY_DEMUX)
        .evidence(format!("{} = 1", Sysctls::TCP_EARLY_DEMUX))
        .evidence("it breaks TCP and HTTP liveness and readiness probes to strict branch pods: the probe leaves eth0 and returns through the trunk")
        .evidence(format!("strict-mode branch pods ({}): {pods}", strict.len()))
        .fix("kubectl set env daemonset aws-node -n kube-system -c aws-vpc-cni-init DISABLE_TCP_EARLY_DEMUX=true")]
}

/// Without forwarding no pod traffic leaves the node.
pub fn ip_forward(node: &Node, _: &Topology) -> Vec<Finding> {
    if node.sysctls.get(Sysctls::IP_FORWARD) != Some(0) {
        return Vec::new();
    }
    vec![
        Finding::new(
            FindingId::IpForwardDisabled,
            Severity::Error,
            Sysctls::IP_FORWARD,
        )
        .evidence(format!("{} = 0", Sysctls::IP_FORWARD))
        .fix(format!(
            "sysctl -w {}=1 (and persist it in /etc/sysctl.d; the EKS AMI sets 1)",
            Sysctls::IP_FORWARD
        )),
    ]
}

/// The CNI sets rp_filter=2 (loose) on the primary ENI: with 1, replies that return on an
/// interface other than the one the route points at are dropped (IP_RPFILTER).
pub fn rp_filter_primary(node: &Node, topo: &Topology) -> Vec<Finding> {
    let Some(eni) = &topo.primary_eni else {
        return Vec::new();
    };
    if node.sysctls.effective_rp_filter(eni) != Some(1) {
        return Vec::new();
    }
    let name = Sysctls::rp_filter_name(eni);
    let all = node.sysctls.rp_filter("all");
    vec![Finding::new(FindingId::RpFilterStrictPrimary, Severity::Warning, name.clone())
        .evidence(format!("{name} = {}", node.sysctls.rp_filter(eni).map_or("?".into(), |v| v.to_string())))
        .evidence(format!("net.ipv4.conf.all.rp_filter = {}", all.map_or("?".into(), |v| v.to_string())))
        .evidence(format!("{eni} carries the main table's default route (primary ENI)"))
        .fix(format!("sysctl -w {name}=2  # aws-node's init container sets 2 (loose) on the primary ENI; the kernel uses max(all, {eni})"))]
}
