//! `mtu-mismatch`: a VLAN link or branch pod veth with an MTU above its trunk's; frames
//! larger than the trunk's MTU are dropped on the way out.

use super::{Finding, FindingId, Severity};
use crate::model::{Node, Topology};

pub fn mismatch(node: &Node, topo: &Topology) -> Vec<Finding> {
    let mut out = Vec::new();
    for t in &topo.trunks {
        let Some(trunk_mtu) = t.mtu else { continue };
        let vlans = topo
            .vlan_links
            .iter()
            .filter(|v| v.trunk.as_deref() == Some(t.name.as_str()));
        let mut over: Vec<(String, u32)> = vlans
            .filter_map(|v| {
                v.mtu
                    .filter(|m| *m > trunk_mtu)
                    .map(|m| (v.name.clone(), m))
            })
            .collect();
        for p in topo
            .paths
            .iter()
            .filter(|p| p.trunk.as_deref() == Some(t.name.as_str()))
        {
            if let Some(m) = node
                .link_by_name(&p.host_veth)
                .and_then(|l| l.mtu)
                .filter(|m| *m > trunk_mtu)
            {
                over.push((p.host_veth.clone(), m));
            }
        }
        for (name, mtu) in over {
            out.push(
                Finding::new(FindingId::MtuMismatch, Severity::Warning, name.clone())
                    .evidence(format!("{name} mtu {mtu}"))
                    .evidence(format!("trunk {} mtu {trunk_mtu}", t.name))
                    .fix(format!("ip link set {name} mtu {trunk_mtu}  # and check the CNI config's mtu / AWS_VPC_ENI_MTU")),
            );
        }
    }
    out
}
