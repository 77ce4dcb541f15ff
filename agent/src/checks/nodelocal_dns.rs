//! `nodelocal-dns-strict`: NodeLocal DNSCache listens on a link-local address of the node,
//! but a strict branch pod's table N+100 sends everything, 169.254.20.10 included, out of
//! its VLAN, where nothing answers (VPC CNI #1384, #1662).

use std::net::{IpAddr, Ipv4Addr};

use super::{Finding, FindingId, Severity};
use crate::model::{Node, Topology, vlan_table};

/// NodeLocal DNSCache's default listen address.
pub const NODELOCAL_DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 20, 10));

pub fn strict(node: &Node, topo: &Topology) -> Vec<Finding> {
    let strict: Vec<_> = topo.strict_paths().collect();
    let Some(link) = node
        .links
        .iter()
        .find(|l| l.addresses.iter().any(|a| a.addr() == NODELOCAL_DNS))
    else {
        return Vec::new();
    };
    if strict.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        FindingId::NodelocalDnsStrict,
        Severity::Warning,
        NODELOCAL_DNS.to_string(),
    )
    .evidence(format!("{NODELOCAL_DNS} is on {}", link.name));
    for p in strict.iter().take(3) {
        if let (Some(v), Some(l)) = (p.vlan_id, &p.vlan_link) {
            f = f.evidence(format!("pod {} uses table {}: default via {l}, so its DNS to {NODELOCAL_DNS} leaves the node", p.pod_ip.map_or("?".into(), |i| i.to_string()), vlan_table(v)));
        }
    }
    vec![f.fix("kubectl set env daemonset aws-node -n kube-system POD_SECURITY_GROUP_ENFORCING_MODE=standard  # or give branch pods the kube-dns Service IP as nameserver")]
}
