//! What the datapath probes counted on one path, plain data: forwarded packets and bytes and
//! the kernel's drops, per direction. Built by `observe` from the raw maps; checks and reports
//! read it.

use std::collections::BTreeMap;

use serde::Serialize;

/// How many drop locations a direction lists (the most frequent first).
pub const TOP_LOCATIONS: usize = 10;

/// One direction of a path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirectionCounters {
    /// To the pod: what its host veth handed to it. From the pod: what its host veth received
    /// and the node did not drop.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// Kernel drops in the node's namespace or the pod's.
    pub dropped_packets: u64,
    /// `enum skb_drop_reason` name without `SKB_DROP_REASON_` -> drops (drop source `reason`).
    pub drops_by_reason: BTreeMap<String, u64>,
    /// Kernel function that freed the packet -> drops, the [`TOP_LOCATIONS`] most frequent.
    pub drops_by_location: BTreeMap<String, u64>,
    /// Connections (TCP SYNs) that left the node on this path and were answered (SYN-ACK)
    /// within `--syn-timeout`, by destination port. From the pod: its own; to the pod: the
    /// node's (kubelet probes).
    pub syn_answered: BTreeMap<u16, u64>,
    /// Those that were not, by destination port; retransmits are one connection.
    pub syn_unanswered: BTreeMap<u16, u64>,
    /// To the pod: SYNs its host veth handed to it, by port (a retransmit is not a new one).
    pub syn_in: BTreeMap<u16, u64>,
    /// DNS queries (UDP or TCP 53) answered within the timeout.
    pub dns_answered: u64,
    /// DNS queries not answered within it.
    pub dns_unanswered: u64,
    /// From the pod: its packets that left the node, by egress interface.
    pub left_via: BTreeMap<String, u64>,
    /// The most frequent unanswered (source, destination, port), at most
    /// [`super::conns::TOP_UNANSWERED`].
    pub unanswered: Vec<super::conns::Unanswered>,
}

/// Both directions of a path, as the report's `counters` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PathCounters {
    pub to_pod: DirectionCounters,
    pub from_pod: DirectionCounters,
}

/// One drop as the probe recorded it, with its names resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drop {
    pub to_pod: bool,
    /// True when it happened in the node's namespace (false: the pod's).
    pub in_node: bool,
    /// Reason name without prefix, `None` without reasons.
    pub reason: Option<String>,
    /// Function that freed it, `None` when kallsyms is unreadable.
    pub location: Option<String>,
    pub count: u64,
}

impl PathCounters {
    /// Builds a path's counters from what the host veth saw (`received_from_pod` and
    /// `handed_to_pod`, packets and IP bytes) and its drops.
    ///
    /// `from_pod.forwarded` is what the veth received minus what the node's namespace then
    /// dropped; a drop inside the pod's namespace never reached the veth.
    pub fn build(
        handed_to_pod: (u64, u64),
        received_from_pod: (u64, u64),
        drops: &[Drop],
    ) -> PathCounters {
        let mut c = PathCounters {
            to_pod: DirectionCounters {
                forwarded_packets: handed_to_pod.0,
                forwarded_bytes: handed_to_pod.1,
                ..Default::default()
            },
            from_pod: DirectionCounters {
                forwarded_packets: received_from_pod.0,
                forwarded_bytes: received_from_pod.1,
                ..Default::default()
            },
        };
        let mut locations: [BTreeMap<String, u64>; 2] = Default::default();
        for d in drops {
            let (dir, loc) = if d.to_pod {
                (&mut c.to_pod, &mut locations[0])
            } else {
                (&mut c.from_pod, &mut locations[1])
            };
            dir.dropped_packets += d.count;
            if let Some(r) = &d.reason {
                *dir.drops_by_reason.entry(r.clone()).or_default() += d.count;
            }
            if let Some(l) = &d.location {
                *loc.entry(l.clone()).or_default() += d.count;
            }
            if !d.to_pod && d.in_node {
                dir.forwarded_packets = dir.forwarded_packets.saturating_sub(d.count);
            }
        }
        for (dir, loc) in [
            (&mut c.to_pod, &locations[0]),
            (&mut c.from_pod, &locations[1]),
        ] {
            let mut top: Vec<(&String, &u64)> = loc.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            dir.drops_by_location = top
                .into_iter()
                .take(TOP_LOCATIONS)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
        }
        c
    }

    pub fn dropped(&self) -> u64 {
        self.to_pod.dropped_packets + self.from_pod.dropped_packets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop(to_pod: bool, in_node: bool, reason: &str, location: &str, count: u64) -> Drop {
        Drop {
            to_pod,
            in_node,
            reason: Some(reason.into()),
            location: Some(location.into()),
            count,
        }
    }

    #[test]
    fn from_pod_forwarded_excludes_what_the_node_dropped() {
        let c = PathCounters::build(
            (10, 1000),
            (20, 2000),
            &[
                drop(false, true, "NETFILTER_DROP", "nf_hook_slow", 3),
                drop(true, false, "NO_SOCKET", "__udp4_lib_rcv", 2),
                drop(true, true, "NETFILTER_DROP", "nf_hook_slow", 1),
            ],
        );
        assert_eq!(c.from_pod.forwarded_packets, 17);
        assert_eq!(c.from_pod.dropped_packets, 3);
        assert_eq!(c.to_pod.forwarded_packets, 10);
        assert_eq!(c.to_pod.dropped_packets, 3);
        assert_eq!(c.to_pod.drops_by_reason["NO_SOCKET"], 2);
        assert_eq!(c.to_pod.drops_by_reason["NETFILTER_DROP"], 1);
        assert_eq!(c.to_pod.drops_by_location["__udp4_lib_rcv"], 2);
        assert_eq!(c.dropped(), 6);
    }

    #[test]
    fn keeps_the_ten_most_frequent_locations() {
        let drops: Vec<Drop> = (0..12)
            .map(|i| drop(true, true, "X", &format!("f{i:02}"), i + 1))
            .collect();
        let c = PathCounters::build((0, 0), (0, 0), &drops);
        assert_eq!(c.to_pod.drops_by_location.len(), 10);
        assert!(!c.to_pod.drops_by_location.contains_key("f00"));
        assert!(!c.to_pod.drops_by_location.contains_key("f01"));
        assert_eq!(c.to_pod.dropped_packets, (1..=12).sum::<u64>());
    }
}
