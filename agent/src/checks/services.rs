//! `node-service-unreachable`: a pod cannot reach an address that only this node can
//! deliver (the EKS Pod Identity agent's 169.254.170.23 / fd00:ec2::23, kube-ipvs0's
//! service IPs, any address of a node interface that is no ENI). In strict mode a branch
//! pod's table N+100 sends it out of the VLAN and the VPC never brings it back (VPC CNI
//! #2797). Judged from the kernel's answers for each pod ([`Lookup`]); NodeLocal
//! DNSCache's address has its own finding, `nodelocal-dns-strict`.

use super::{Finding, FindingId, Severity, nodelocal_dns::NODELOCAL_DNS};
use crate::model::{EnforcingMode, Lookup, Node, Target, Topology};

/// Whether the pod reaches the address: the kernel delivers its packet on the node and
/// sends the answer back into its veth.
pub fn reached(l: &Lookup) -> bool {
    l.delivered_locally() && (l.reply.is_none() || l.reply_reaches_pod())
}

/// What happens to the pod's packets to `l.addr`, in words: `"its DNS"` names them.
pub fn what_happens(node: &Node, topo: &Topology, l: &Lookup, what: &str) -> String {
    let forward = l.forward_leg(node, topo);
    if !l.delivered_locally() {
        let out = match (&forward.error, &forward.egress) {
            (Some(_), _) => "is dropped on the node".to_string(),
            (None, Some(dev)) => format!("leaves the node through {dev}"),
            (None, None) => "goes nowhere".to_string(),
        };
        return format!("{}, so {what} to {} {out}", forward.summary(), l.addr);
    }
    match l.reply_leg(node, topo) {
        Some(back) => format!(
            "the node delivers {what} to {} itself, but for the answer {}, so it does not go back to {}",
            l.addr,
            back.summary(),
            l.host_veth
        ),
        None => format!("the node delivers {what} to {}", l.addr),
    }
}

/// One finding per pod that cannot reach some node-only address, with one evidence line
/// per address naming the interface that owns it and what the kernel answered.
pub fn unreachable(node: &Node, topo: &Topology) -> Vec<Finding> {
    let failing: Vec<(&Lookup, &str)> = node
        .lookups
        .iter()
        .filter_map(|l| match &l.target {
            Target::Service { link } if l.addr != NODELOCAL_DNS && !reached(l) => {
                Some((l, link.as_str()))
            }
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for p in topo.paths.iter() {
        let failing: Vec<(&Lookup, &str)> = failing
            .iter()
            .filter(|(l, _)| l.host_veth == p.host_veth)
            .copied()
            .collect();
        let Some((first, _)) = failing.first() else {
            continue;
        };
        let mut f = Finding::new(
            FindingId::NodeServiceUnreachable,
            Severity::Warning,
            first.pod_ip.to_string(),
        );
        let kind = match (p.mode, p.vlan_link.as_deref()) {
            (Some(EnforcingMode::Strict), Some(vlan)) => {
                format!("a strict-mode branch pod on {vlan}")
            }
            (Some(EnforcingMode::Strict), None) => "a strict-mode branch pod".to_string(),
            (Some(EnforcingMode::Standard), _) => "a standard-mode branch pod".to_string(),
            (None, _) => "an ordinary pod".to_string(),
        };
        f = f.evidence(format!(
            "pod {} behind {} is {kind}",
            first.pod_ip, p.host_veth
        ));
        for (l, link) in &failing {
            f = f.evidence(format!(
                "{} is on {link}: {}",
                l.addr,
                what_happens(node, topo, l, "the pod's traffic")
            ));
        }
        let fix = if p.mode == Some(EnforcingMode::Strict) {
            "kubectl set env daemonset aws-node -n kube-system POD_SECURITY_GROUP_ENFORCING_MODE=standard  # strict mode sends everything a branch pod sends out of its VLAN, node-local addresses included (VPC CNI #2797)".to_string()
        } else {
            let (l, _) = failing[0];
            format!(
                "ip route get {} from {} iif {}  # the node must deliver it locally: check the rules and the local table",
                l.addr, l.pod_ip, l.host_veth
            )
        };
        out.push(f.fix(fix));
    }
    out
}
