//! `path-drops`: the kernel dropped packets on a pod's path while `sgpath observe` counted
//! (in the node's namespace or the pod's). Evidence: per direction, the count, the top
//! reasons and the top locations. Nothing fires from `inspect`, which counts nothing.

use super::{Finding, FindingId, Severity};
use crate::model::{DirectionCounters, Node, Topology};

/// How many reasons and locations the evidence names per direction.
const TOP: usize = 3;

/// Drops that are a socket's teardown, not the network: a socket closed with data still
/// queued (`QUEUE_PURGE`; freed in `sk_stream_kill_queues` on kernels without reasons). Still
/// counted; alone they raise nothing.
const TEARDOWN_REASONS: [&str; 1] = ["QUEUE_PURGE"];
const TEARDOWN_LOCATIONS: [&str; 2] = ["sk_stream_kill_queues", "skb_queue_purge_reason"];

/// A direction's drops other than socket teardown.
fn network_drops(d: &DirectionCounters) -> u64 {
    let teardown = if d.drops_by_reason.is_empty() {
        TEARDOWN_LOCATIONS
            .iter()
            .filter_map(|l| d.drops_by_location.get(*l))
            .sum::<u64>()
    } else {
        TEARDOWN_REASONS
            .iter()
            .filter_map(|r| d.drops_by_reason.get(*r))
            .sum::<u64>()
    };
    d.dropped_packets.saturating_sub(teardown)
}

pub fn path_drops(_: &Node, topo: &Topology) -> Vec<Finding> {
    topo.paths
        .iter()
        .filter_map(|p| {
            let c = p
                .counters
                .as_ref()
                .filter(|c| network_drops(&c.to_pod) + network_drops(&c.from_pod) > 0)?;
            let subject = p
                .pod_ip
                .map_or_else(|| p.host_veth.clone(), |ip| ip.to_string());
            let mut f = Finding::new(FindingId::PathDrops, Severity::Warning, subject);
            for (dir, d) in [("to the pod", &c.to_pod), ("from the pod", &c.from_pod)] {
                if d.dropped_packets > 0 {
                    f = f.evidence(describe(dir, &p.host_veth, d));
                }
            }
            Some(f.fix(
                "look up the reasons in the kernel's include/net/dropreason-core.h; \
                 NETFILTER_DROP: `nft list ruleset` / `iptables-save` on the node and in the pod; \
                 NO_SOCKET: nothing listens on that port in the pod",
            ))
        })
        .collect()
}

fn top(map: &std::collections::BTreeMap<String, u64>) -> String {
    let mut v: Vec<(&String, &u64)> = map.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .take(TOP)
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(dir: &str, veth: &str, d: &DirectionCounters) -> String {
    let mut s = format!(
        "{} of {} packets {dir} (host veth {veth}) were dropped by the kernel",
        d.dropped_packets,
        d.dropped_packets + d.forwarded_packets
    );
    if !d.drops_by_reason.is_empty() {
        s.push_str(&format!("; reasons: {}", top(&d.drops_by_reason)));
    }
    if !d.drops_by_location.is_empty() {
        s.push_str(&format!("; freed in: {}", top(&d.drops_by_location)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Drop, Path, PathCounters, PathKind};

    #[test]
    fn names_count_reason_and_location_per_direction() {
        let counters = PathCounters::build(
            (5, 500),
            (0, 0),
            &[Drop {
                to_pod: true,
                in_node: true,
                reason: Some("NETFILTER_DROP".into()),
                location: Some("nf_hook_slow".into()),
                count: 3,
            }],
        );
        let topo = Topology {
            paths: vec![Path {
                kind: PathKind::NodeEni,
                mode: None,
                pod_ip: Some("192.168.1.10".parse().unwrap()),
                host_veth: "eni0123456789a".into(),
                vlan_id: None,
                vlan_link: None,
                trunk: None,
                route_table: 254,
                rules: Vec::new(),
                eni_id: None,
                pod: None,
                counters: Some(counters),
            }],
            ..Default::default()
        };
        let f = path_drops(&Node::default(), &topo);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].subject, "192.168.1.10");
        assert_eq!(
            f[0].evidence,
            [
                "3 of 8 packets to the pod (host veth eni0123456789a) were dropped by the kernel; \
              reasons: NETFILTER_DROP 3; freed in: nf_hook_slow 3"
            ]
        );
        let mut quiet = topo.clone();
        quiet.paths[0].counters = Some(PathCounters::default());
        assert!(path_drops(&Node::default(), &quiet).is_empty());
        // A socket closed with data queued is not the network's doing.
        let teardown = |reason: Option<&str>, location: &str| {
            let mut t = topo.clone();
            t.paths[0].counters = Some(PathCounters::build(
                (5, 500),
                (0, 0),
                &[Drop {
                    to_pod: true,
                    in_node: false,
                    reason: reason.map(String::from),
                    location: Some(location.into()),
                    count: 1,
                }],
            ));
            path_drops(&Node::default(), &t)
        };
        assert!(teardown(Some("QUEUE_PURGE"), "skb_queue_purge_reason").is_empty());
        assert!(teardown(None, "sk_stream_kill_queues").is_empty());
        assert_eq!(teardown(Some("NO_SOCKET"), "__udp4_lib_rcv").len(), 1);
    }
}
