//! `pod-route-missing`: an ordinary or standard-mode pod without its main-table route or
//! its `512: from all to <ip> lookup main` rule.

use super::{Finding, FindingId, Severity};
use crate::model::{EnforcingMode, Node, PathKind, TABLE_MAIN, Topology, priority};

pub fn missing(node: &Node, topo: &Topology) -> Vec<Finding> {
    let mut out = Vec::new();
    let routed_by_main = |p: &crate::model::Path| {
        p.kind == PathKind::NodeEni || p.mode == Some(EnforcingMode::Standard)
    };
    for p in topo.paths.iter().filter(|p| routed_by_main(p)) {
        let Some(ip) = p.pod_ip else { continue };
        let route = node
            .routes_via(&p.host_veth)
            .any(|r| r.table == TABLE_MAIN && r.is_host() && r.dst.addr() == ip);
        let rule = node.rules.iter().any(|r| {
            r.priority == priority::TO_POD
                && r.is_to_host(ip)
                && r.lookup_table() == Some(TABLE_MAIN)
        });
        let mut f = Finding::new(FindingId::PodRouteMissing, Severity::Error, ip.to_string());
        let mut fix = Vec::new();
        if !route {
            f = f.evidence(format!(
                "main table has no \"{ip} dev {} scope link\"",
                p.host_veth
            ));
            fix.push(format!("ip route add {ip} dev {} scope link", p.host_veth));
        }
        if !rule {
            f = f.evidence(format!("no rule \"512: from all to {ip} lookup main\""));
            fix.push(format!("ip rule add pref 512 to {ip} table main"));
        }
        if fix.is_empty() {
            continue;
        }
        f = f.evidence(format!("pod {ip} sits behind {}", p.host_veth));
        out.push(f.fix(format!(
            "{}  # or delete the pod so the CNI rebuilds it",
            fix.join(" && ")
        )));
    }
    out
}
