//! Policy-rule checks of strict mode: `vlan-rule-missing`, `vlan-rule-stale`,
//! `local-rule-misplaced`.

use super::{Finding, FindingId, Severity};
use crate::model::{
    Family, Node, PathKind, RuleAction, TABLE_LOCAL, Topology, VLAN_LINK_PREFIX, priority,
    vlan_table,
};

fn has_iif_rule(node: &Node, iif: &str, table: u32) -> bool {
    node.rules.iter().any(|r| {
        r.priority == priority::VLAN_IIF
            && r.iif.as_deref() == Some(iif)
            && r.lookup_table() == Some(table)
    })
}

/// Each strict pod needs `10: iif vlan.eth.N lookup N+100` (traffic from the VPC to the
/// pod) and `10: iif vlan<hash> lookup N+100` (traffic from the pod to the VPC).
pub fn missing(node: &Node, topo: &Topology) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in topo.strict_paths() {
        let Some(vlan) = p.vlan_id else { continue };
        let table = vlan_table(vlan);
        let pod = p
            .pod_ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "?".into());
        let mut ifaces = vec![p.host_veth.clone()];
        if let Some(link) = &p.vlan_link {
            ifaces.push(link.clone());
        }
        for iif in ifaces {
            if has_iif_rule(node, &iif, table) {
                continue;
            }
            let direction = if iif == p.host_veth {
                "from the pod to the VPC"
            } else {
                "from the VPC to the pod"
            };
            out.push(
                Finding::new(FindingId::VlanRuleMissing, Severity::Error, iif.clone())
                    .evidence(format!("no rule \"10: from all iif {iif} lookup {table}\""))
                    .evidence(format!("pod {pod} on {} is routed by table {table}", p.host_veth))
                    .evidence(format!("traffic {direction} falls through to the main table"))
                    .fix(format!("ip rule add pref 10 iif {iif} table {table}  # or delete the pod so the CNI rebuilds it")),
            );
        }
    }
    out
}

/// Whether `iif` is the missing `vlan.eth.N` of a live branch pod routed by `table` (N+100):
/// then the pod lost its VLAN link and `vlan-parent-missing` says so; deleting the rule
/// would be the wrong fix.
fn is_live_pods_missing_vlan(topo: &Topology, iif: &str, table: u32) -> bool {
    topo.paths.iter().any(|p| {
        p.kind == PathKind::BranchEni
            && p.vlan_link.is_none()
            && p.vlan_id
                .is_some_and(|v| vlan_table(v) == table && iif == format!("{VLAN_LINK_PREFIX}{v}"))
    })
}

/// A priority-10 `iif` rule is stale when its interface does not exist (unless it is the
/// missing VLAN link of a live pod), when it sends a `vlan.eth.N` to another table than
/// N+100, or when its table does not route the pod behind that veth (a pod re-created
/// under the same name, VPC CNI #1375).
pub fn stale(node: &Node, topo: &Topology) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in node
        .rules
        .iter()
        .filter(|r| r.priority == priority::VLAN_IIF)
    {
        let (Some(iif), Some(table)) = (r.iif.as_deref(), r.lookup_table()) else {
            continue;
        };
        let why = if node.link_by_name(iif).is_none() {
            (!is_live_pods_missing_vlan(topo, iif, table))
                .then(|| format!("interface {iif} does not exist"))
        } else if let Some(vlan) = topo.vlan_links.iter().find(|v| v.name == iif) {
            (vlan_table(vlan.vlan_id) != table).then(|| {
                format!(
                    "{iif} is VLAN {} whose table is {}",
                    vlan.vlan_id,
                    vlan_table(vlan.vlan_id)
                )
            })
        } else if let Some(path) = topo.path_of_veth(iif) {
            match path.pod_ip {
                Some(ip)
                    if !node
                        .table(table)
                        .any(|rt| rt.is_host() && rt.dst.addr() == ip && rt.goes_via(iif)) =>
                {
                    Some(format!("table {table} has no route to pod {ip} via {iif}"))
                }
                _ => None,
            }
        } else {
            None
        };
        if let Some(why) = why {
            out.push(
                Finding::new(FindingId::VlanRuleStale, Severity::Error, iif)
                    .evidence(format!("rule \"{r}\""))
                    .evidence(why)
                    .fix(format!("ip rule del pref 10 iif {iif} table {table}")),
            );
        }
    }
    out
}

/// In strict mode the CNI moves the local rule from 0 to 20 so the VLAN `iif` rules at 10
/// come first; a local rule at 0 (again) or none at 20 breaks that order.
pub fn local_rule(node: &Node, topo: &Topology) -> Vec<Finding> {
    if topo.strict_paths().next().is_none() {
        return Vec::new();
    }
    let local: Vec<_> = node
        .rules
        .iter()
        .filter(|r| {
            r.family == Family::Ipv4
                && r.action == RuleAction::Lookup
                && r.table == TABLE_LOCAL
                && r.src.is_none()
                && r.dst.is_none()
                && r.iif.is_none()
        })
        .collect();
    let at_20 = local.iter().any(|r| r.priority == priority::LOCAL_STRICT);
    let at_0 = local.iter().any(|r| r.priority == priority::LOCAL_DEFAULT);
    if at_20 && !at_0 {
        return Vec::new();
    }
    let mut f = Finding::new(
        FindingId::LocalRuleMisplaced,
        Severity::Warning,
        "rule lookup local",
    );
    for r in &local {
        f = f.evidence(format!("rule \"{r}\""));
    }
    if local.is_empty() {
        f = f.evidence("no rule looks up table local");
    }
    f = f.evidence("strict mode expects \"20: from all lookup local\" and none at 0");
    let mut fix = Vec::new();
    if !at_20 {
        fix.push("ip rule add pref 20 lookup local".to_string());
    }
    if at_0 {
        fix.push("ip rule del pref 0 lookup local".to_string());
    }
    vec![f.fix(fix.join(" && "))]
}
