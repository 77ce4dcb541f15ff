//! `path-drops`: the kernel dropped a pod's packets for the network's or a policy's reasons
//! (`model::drops`, class `path`) at least [`PATH_DROPS_MIN`] times within the window (the
//! agent's `--window`, or `observe`'s whole run), in the node's namespace or the pod's.
//! Endpoint drops (teardown, no socket, TCP state) stay counted and never raise it.
//! Evidence: per direction, the count, the top reasons and the top locations.

use super::{Finding, FindingId, Severity};
use crate::model::{DirectionCounters, Node, Topology};

/// How many reasons and locations the evidence names per direction.
const TOP: usize = 3;

/// Path-class drops a path needs within the window to raise `path-drops`: one lost
/// retransmit is not a page, a policy dropping a flow is (TCP retries a blocked SYN 6 times
/// in 2 min; a UDP client more).
pub const PATH_DROPS_MIN: u64 = 10;

pub fn path_drops(_: &Node, topo: &Topology) -> Vec<Finding> {
    topo.paths
        .iter()
        .filter_map(|p| {
            let c = p.judged().filter(|c| {
                c.to_pod.path_dropped_packets + c.from_pod.path_dropped_packets >= PATH_DROPS_MIN
            })?;
            let subject = p
                .pod_ip
                .map_or_else(|| p.host_veth.clone(), |ip| ip.to_string());
            let mut f = Finding::new(FindingId::PathDrops, Severity::Warning, subject);
            for (dir, d) in [("to the pod", &c.to_pod), ("from the pod", &c.from_pod)] {
                if d.path_dropped_packets > 0 {
                    f = f.evidence(describe(dir, &p.host_veth, d));
                }
            }
            Some(f.fix(
                "look up the reasons in the kernel's include/net/dropreason-core.h; \
                 NETFILTER_DROP: `nft list ruleset` / `iptables-save` on the node and in the pod; \
                 TC_INGRESS/TC_EGRESS: the network policy agent's policies (`kubectl get networkpolicy -A`)",
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
        "{} packets {dir} (host veth {veth}, {} crossed it) were dropped by the network or a \
         policy ({} drops in all)",
        d.path_dropped_packets, d.forwarded_packets, d.dropped_packets
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

    fn topo(drops: &[(bool, Option<&str>, &str, u64)]) -> Topology {
        let drops: Vec<Drop> = drops
            .iter()
            .map(|&(to_pod, reason, location, count)| Drop {
                to_pod,
                in_node: true,
                reason: reason.map(String::from),
                location: Some(location.into()),
                count,
            })
            .collect();
        Topology {
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
                counters: Some(PathCounters::build((5, 500), (0, 0), 0, &drops)),
                window: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn path_drops_above_the_threshold_only() {
        let f = path_drops(
            &Node::default(),
            &topo(&[
                (true, Some("NETFILTER_DROP"), "nf_hook_slow", PATH_DROPS_MIN),
                (true, Some("QUEUE_PURGE"), "skb_queue_purge_reason", 7),
            ]),
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].subject, "192.168.1.10");
        assert_eq!(
            f[0].evidence,
            [format!(
                "{PATH_DROPS_MIN} packets to the pod (host veth eni0123456789a, 5 crossed it) were \
                 dropped by the network or a policy ({} drops in all); reasons: NETFILTER_DROP \
                 {PATH_DROPS_MIN}, QUEUE_PURGE 7; freed in: nf_hook_slow {PATH_DROPS_MIN}, \
                 skb_queue_purge_reason 7",
                PATH_DROPS_MIN + 7
            )]
        );
        let few = topo(&[(
            true,
            Some("NETFILTER_DROP"),
            "nf_hook_slow",
            PATH_DROPS_MIN - 1,
        )]);
        assert!(path_drops(&Node::default(), &few).is_empty());
        // Teardown and closed ports never raise it, however many; on 5.10 by location; a
        // reasonless free in TCP's state machine is the endpoint's.
        for (reason, location) in [
            (Some("QUEUE_PURGE"), "skb_queue_purge_reason"),
            (Some("NO_SOCKET"), "tcp_v4_rcv"),
            (Some("NOT_SPECIFIED"), "tcp_rcv_state_process"),
            (None, "sk_stream_kill_queues"),
            (None, "tcp_v4_rcv"),
        ] {
            let t = topo(&[(false, reason, location, 10_000)]);
            assert!(
                path_drops(&Node::default(), &t).is_empty(),
                "{reason:?} {location}"
            );
        }
        // The window decides when the agent has one: old drops alone raise nothing.
        let mut t = topo(&[(true, Some("NETFILTER_DROP"), "nf_hook_slow", 50)]);
        t.paths[0].window = Some(PathCounters::default());
        assert!(path_drops(&Node::default(), &t).is_empty());
    }

    /// 6.1 (and 6.12) free a pod's packet whose input route failed (a martian source behind
    /// a stale rule) with `NOT_SPECIFIED` in `ip_rcv_finish`, and a route to nowhere in
    /// `ip_error`: path drops, by where they happened, that raise the finding with the
    /// reason and the location as evidence.
    #[test]
    fn a_martian_drop_without_a_reason_raises_it() {
        let t = topo(&[(
            false,
            Some("NOT_SPECIFIED"),
            "ip_rcv_finish",
            PATH_DROPS_MIN,
        )]);
        let f = path_drops(&Node::default(), &t);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            f[0].evidence,
            [format!(
                "{PATH_DROPS_MIN} packets from the pod (host veth eni0123456789a, 0 crossed it) \
                 were dropped by the network or a policy ({PATH_DROPS_MIN} drops in all); \
                 reasons: NOT_SPECIFIED {PATH_DROPS_MIN}; freed in: ip_rcv_finish \
                 {PATH_DROPS_MIN}"
            )]
        );
        let t = topo(&[
            (false, Some("NOT_SPECIFIED"), "ip_error", 6),
            (false, Some("NOT_SPECIFIED"), "tcp_v4_rcv", 100),
            (false, Some("NOT_SPECIFIED"), "ip_route_input_slow", 4),
        ]);
        let f = path_drops(&Node::default(), &t);
        assert_eq!(
            f.len(),
            1,
            "the route's 10 count, the socket's 100 do not: {f:?}"
        );
        assert!(
            f[0].evidence[0].starts_with("10 packets from the pod"),
            "{f:?}"
        );
        // One fewer than the threshold at the route: silent.
        let t = topo(&[(
            false,
            Some("NOT_SPECIFIED"),
            "ip_rcv_finish",
            PATH_DROPS_MIN - 1,
        )]);
        assert!(path_drops(&Node::default(), &t).is_empty());
    }
}
