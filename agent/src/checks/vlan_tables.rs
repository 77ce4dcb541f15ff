//! Branch ENI table and VLAN link checks: `vlan-table-incomplete`, `vlan-parent-missing`.

use super::{Finding, FindingId, Severity};
use crate::model::{EnforcingMode, Node, PathKind, RouteScope, Topology, vlan_table};

/// Table N+100 must hold `<gw> dev vlan.eth.N scope link`, `default via <gw> dev
/// vlan.eth.N`, and in strict mode `<pod ip> dev vlan<hash> scope link`. A VLAN link that
/// is down (the kernel then flushes its routes) is `vlan-parent-missing`'s to report.
pub fn incomplete(node: &Node, topo: &Topology) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in topo.paths.iter().filter(|p| p.kind == PathKind::BranchEni) {
        let (Some(vlan), Some(link)) = (p.vlan_id, p.vlan_link.as_deref()) else {
            continue;
        };
        if topo
            .vlan_link(vlan)
            .is_some_and(|v| !v.up || v.trunk.is_none())
        {
            continue;
        }
        let table = vlan_table(vlan);
        let routes: Vec<_> = node.table(table).collect();
        let default = routes.iter().find(|r| r.is_default() && r.goes_via(link));
        let gateway = default.and_then(|d| d.gateway);
        let gw_route = routes.iter().any(|r| {
            r.is_host()
                && r.goes_via(link)
                && r.scope == RouteScope::Link
                && gateway.is_none_or(|g| r.dst.addr() == g)
        });
        let mut missing = Vec::new();
        if !gw_route {
            missing.push(format!(
                "{} dev {link} scope link",
                gateway.map_or("<gateway>".into(), |g| g.to_string())
            ));
        }
        if default.is_none() {
            missing.push(format!("default via <gateway> dev {link}"));
        }
        let strict_ip = p.pod_ip.filter(|_| p.mode == Some(EnforcingMode::Strict));
        if let Some(ip) = strict_ip
            && !routes
                .iter()
                .any(|r| r.is_host() && r.dst.addr() == ip && r.goes_via(&p.host_veth))
        {
            missing.push(format!("{ip} dev {} scope link", p.host_veth));
        }
        if missing.is_empty() {
            continue;
        }
        let mut f = Finding::new(FindingId::VlanTableIncomplete, Severity::Error, link);
        for m in &missing {
            f = f.evidence(format!("table {table} lacks \"{m}\""));
        }
        for r in &routes {
            f = f.evidence(format!("table {table} has \"{r}\""));
        }
        let adds = missing
            .iter()
            .map(|m| format!("ip route add {m} table {table}"))
            .collect::<Vec<_>>()
            .join(" && ");
        out.push(f.fix(format!(
            "{adds}  # or delete the pod so the CNI rebuilds its branch ENI"
        )));
    }
    out
}

/// A `vlan.eth.N` whose parent (the trunk ENI) is gone or down carries nothing (VPC CNI #3018).
pub fn parent_missing(node: &Node, topo: &Topology) -> Vec<Finding> {
    let mut out = Vec::new();
    for v in &topo.vlan_links {
        let why = match &v.trunk {
            None => format!(
                "IFLA_LINK of {} is ifindex {}, which does not exist",
                v.name,
                v.parent_ifindex.map_or("?".into(), |i| i.to_string())
            ),
            Some(t) => match node.link_by_name(t) {
                Some(l) if !l.is_up() => format!("trunk {t} is {:?}", l.oper_state).to_lowercase(),
                _ => continue,
            },
        };
        out.push(
            Finding::new(FindingId::VlanParentMissing, Severity::Error, v.name.clone())
                .evidence(why)
                .evidence(format!("VLAN {} carries the branch ENI of table {}", v.vlan_id, vlan_table(v.vlan_id)))
                .fix("check the trunk ENI in the EC2 console (InterfaceType trunk); `kubectl delete pod` its pods so the resource controller attaches new branch ENIs"),
        );
    }
    out
}
