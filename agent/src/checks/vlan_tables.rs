//! Branch ENI table and VLAN link checks: `vlan-table-incomplete`, `vlan-parent-missing`.

use super::{Finding, FindingId, Severity};
use crate::model::{
    EnforcingMode, Node, PathKind, RouteScope, Topology, VLAN_LINK_PREFIX, vlan_table,
};

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

/// A branch ENI's VLAN link cannot carry traffic: its parent (the trunk ENI) is gone,
/// in another namespace or down (VPC CNI #3018), the VLAN link itself is down, or a branch
/// pod's table names a VLAN whose `vlan.eth.N` does not exist at all.
pub fn parent_missing(node: &Node, topo: &Topology) -> Vec<Finding> {
    let fix = "check the trunk ENI in the EC2 console (InterfaceType trunk); `kubectl delete pod` its pods so the resource controller attaches new branch ENIs";
    let mut out = Vec::new();
    for v in &topo.vlan_links {
        let oper = |l: &crate::model::Link| format!("{:?}", l.oper_state).to_lowercase();
        let why = match &v.trunk {
            None if v.parent_elsewhere => format!(
                "the parent of {} (IFLA_LINK {}) is in another network namespace",
                v.name,
                v.parent_ifindex.map_or("?".into(), |i| i.to_string())
            ),
            None => format!(
                "IFLA_LINK of {} is ifindex {}, which does not exist",
                v.name,
                v.parent_ifindex.map_or("?".into(), |i| i.to_string())
            ),
            Some(t) => match node.link_by_name(t) {
                Some(l) if !l.is_up() => format!("trunk {t} is {}", oper(l)),
                _ => match node.link_by_name(&v.name) {
                    Some(l) if !l.is_up() => {
                        format!("{} is {} while trunk {t} is up", v.name, oper(l))
                    }
                    _ => continue,
                },
            },
        };
        out.push(
            Finding::new(
                FindingId::VlanParentMissing,
                Severity::Error,
                v.name.clone(),
            )
            .evidence(why)
            .evidence(format!(
                "VLAN {} carries the branch ENI of table {}",
                v.vlan_id,
                vlan_table(v.vlan_id)
            ))
            .fix(fix),
        );
    }
    // Branch pods whose VLAN link is missing altogether.
    let mut seen = std::collections::BTreeSet::new();
    for p in topo
        .paths
        .iter()
        .filter(|p| p.kind == PathKind::BranchEni && p.vlan_link.is_none())
    {
        let Some(vlan) = p.vlan_id else { continue };
        if !seen.insert(vlan) {
            continue;
        }
        let name = format!("{VLAN_LINK_PREFIX}{vlan}");
        out.push(
            Finding::new(FindingId::VlanParentMissing, Severity::Error, name.clone())
                .evidence(format!("{name} does not exist"))
                .evidence(format!(
                    "pod {} on {} is routed by table {} (VLAN {vlan})",
                    p.pod_ip.map_or("?".into(), |i| i.to_string()),
                    p.host_veth,
                    vlan_table(vlan)
                ))
                .fix(fix),
        );
    }
    out
}
