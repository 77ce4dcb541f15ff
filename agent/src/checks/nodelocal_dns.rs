//! `nodelocal-dns-strict`: NodeLocal DNSCache listens on a link-local address of the node,
//! but a strict branch pod's table N+100 sends everything, 169.254.20.10 included, out of
//! its VLAN, where nothing answers (VPC CNI #1384, #1662). Judged from the kernel's own
//! answers for each pod ([`Lookup`]): no finding when the kernel delivers 169.254.20.10 on
//! the node for the pod and routes the answer back into the pod's veth (the #1662
//! workaround: a `local 169.254.20.10` route in table N+100 and a rule before priority 10).

use std::net::{IpAddr, Ipv4Addr};

use super::{Finding, FindingId, Severity, services};
use crate::model::{Lookup, Node, Topology};

/// NodeLocal DNSCache's default listen address.
pub const NODELOCAL_DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 20, 10));

/// Pods named in the evidence; the rest are counted.
const SHOWN: usize = 3;

/// One finding for the node when 169.254.20.10 is on it and some pod does not reach it.
pub fn strict(node: &Node, topo: &Topology) -> Vec<Finding> {
    let Some(link) = node
        .links
        .iter()
        .find(|l| l.addresses.iter().any(|a| a.addr() == NODELOCAL_DNS))
    else {
        return Vec::new();
    };
    let failing: Vec<&Lookup> = node
        .lookups
        .iter()
        .filter(|l| l.addr == NODELOCAL_DNS && !services::reached(l))
        .collect();
    if failing.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        FindingId::NodelocalDnsStrict,
        Severity::Warning,
        NODELOCAL_DNS.to_string(),
    )
    .evidence(format!("{NODELOCAL_DNS} is on {}", link.name));
    for l in failing.iter().take(SHOWN) {
        f = f.evidence(format!(
            "pod {} ({}): {}",
            l.pod_ip,
            l.host_veth,
            services::what_happens(node, topo, l, "its DNS")
        ));
    }
    if failing.len() > SHOWN {
        f = f.evidence(format!(
            "and {} more pods the same way",
            failing.len() - SHOWN
        ));
    }
    vec![f.fix("kubectl set env daemonset aws-node -n kube-system POD_SECURITY_GROUP_ENFORCING_MODE=standard  # or give branch pods the kube-dns Service IP as nameserver")]
}
