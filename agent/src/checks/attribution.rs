//! Whose packets are whose: a pod sending with an address not its own
//! (`pod-source-spoofed`), and two host veths holding one pod IP (`pod-ip-conflict`, a stale
//! veth after IP reuse). The probes count a packet on the veth that carried it, so neither
//! can write on another pod's path; these say it happened.

use std::collections::BTreeMap;

use super::{Finding, FindingId, Severity};
use crate::model::{Node, Path, Topology};

fn pod_name(p: &Path) -> String {
    p.pod.as_ref().map_or_else(
        || "its pod".to_owned(),
        |r| format!("pod {}/{}", r.namespace, r.name),
    )
}

pub fn pod_source_spoofed(_: &Node, topo: &Topology) -> Vec<Finding> {
    topo.paths
        .iter()
        .filter_map(|p| {
            let c = p.judged().filter(|c| c.from_pod.foreign_packets > 0)?;
            let d = &c.from_pod;
            let own = p
                .pod_ip
                .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
            let used = d
                .foreign_source
                .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
            Some(
                Finding::new(FindingId::PodSourceSpoofed, Severity::Warning, &p.host_veth)
                    .evidence(format!(
                        "{} packet(s) from {} (address {own}) on host veth {} carried source \
                         address {used}, the latest of them",
                        d.foreign_packets,
                        pod_name(p),
                        p.host_veth
                    ))
                    .evidence(
                        "counted on this veth only: no other path's counters, findings or \
                         connections were touched",
                    )
                    .fix(format!(
                        "find the process: `kubectl exec` into {} and check for raw sockets \
                         (ss -w -p); drop CAP_NET_RAW from the pod's securityContext \
                         (capabilities: drop: [NET_RAW])",
                        pod_name(p)
                    )),
            )
        })
        .collect()
}

pub fn pod_ip_conflict(_: &Node, topo: &Topology) -> Vec<Finding> {
    let mut by_ip: BTreeMap<std::net::IpAddr, Vec<&Path>> = BTreeMap::new();
    for p in &topo.paths {
        if let Some(ip) = p.pod_ip {
            by_ip.entry(ip).or_default().push(p);
        }
    }
    by_ip
        .into_iter()
        .filter(|(_, paths)| paths.len() > 1)
        .map(|(ip, paths)| {
            let mut f = Finding::new(FindingId::PodIpConflict, Severity::Error, ip.to_string());
            for p in &paths {
                let counted = p.counters.as_ref().map_or_else(
                    || "not counted".to_owned(),
                    |c| {
                        format!(
                            "{} packets to the pod, {} from it",
                            c.to_pod.forwarded_packets, c.from_pod.forwarded_packets
                        )
                    },
                );
                f = f.evidence(format!(
                    "host veth {} ({}, route table {}) holds {ip}: {counted}",
                    p.host_veth,
                    pod_name(p),
                    p.route_table
                ));
            }
            let veths: Vec<&str> = paths.iter().map(|p| p.host_veth.as_str()).collect();
            f.fix(format!(
                "one of {} is stale (a pod gone, its veth left after the IP was reused): find \
                 the live pod with `kubectl get pods -A -o wide | grep -w {ip}`, then delete the \
                 other veth (`ip link del <veth>`) and its routes; restarting aws-node \
                 reconciles",
                veths.join(" and ")
            ))
        })
        .collect()
}
