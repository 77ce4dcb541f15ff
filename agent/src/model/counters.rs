//! What the datapath probes counted on one path, plain data: forwarded packets and bytes and
//! the kernel's drops, per direction. Built by `observe` from the raw maps; checks and reports
//! read it.

use std::{collections::BTreeMap, fmt};

use serde::{Serialize, Serializer};

use super::drops::{self, DropClass};

/// How many ports a path's connection tallies name, per tally: the first ones seen keep
/// their own label for the agent's lifetime, later ones add to [`Port::Other`]. A port scan
/// leaves memory and series flat.
pub const MAX_PORTS: usize = 16;

/// A destination port of a connection tally, or all ports beyond the first [`MAX_PORTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    Number(u16),
    Other,
}

impl From<u16> for Port {
    fn from(p: u16) -> Port {
        Port::Number(p)
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Number(p) => write!(f, "{p}"),
            Port::Other => f.write_str("other"),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Adds `n` to `port`'s tally, or to [`Port::Other`] once [`MAX_PORTS`] ports have one.
pub fn add_port(tally: &mut BTreeMap<Port, u64>, port: u16, n: u64) {
    let named = tally.keys().filter(|p| **p != Port::Other).count();
    let key = if tally.contains_key(&Port::Number(port)) || named < MAX_PORTS {
        Port::Number(port)
    } else {
        Port::Other
    };
    *tally.entry(key).or_default() += n;
}

/// One direction of a path. Every number is a count since the path took its slot in the
/// probes' maps, and only grows while it holds it (but `unanswered`, the window's flows):
/// what the kernel counted, never a difference.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirectionCounters {
    /// What the host veth handed to the pod (to the pod) or received from it (from the pod).
    /// Drops after the veth are in `dropped_packets` too: forwarded on is the difference.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// Kernel drops in the node's namespace or the pod's.
    pub dropped_packets: u64,
    /// Of those, the drops of the network or a policy ([`DropClass::Path`]); the rest are
    /// the endpoint's (teardown, no socket, TCP state).
    pub path_dropped_packets: u64,
    /// `enum skb_drop_reason` name without `SKB_DROP_REASON_` -> drops (drop source `reason`).
    pub drops_by_reason: BTreeMap<String, u64>,
    /// Kernel function that freed the packet (`unknown` without kallsyms) -> drops. Bounded
    /// by the drop map (`--max-drop-keys`).
    pub drops_by_location: BTreeMap<String, u64>,
    /// Of `drops_by_reason["NOT_SPECIFIED"]`, those freed where the input route or the next
    /// hop frees (a martian behind a stale rule on 6.1): the path's, not the endpoint's
    /// (`drops::of_drop`). The metrics split that reason's `class` by it.
    #[serde(skip_serializing_if = "is_zero")]
    pub not_specified_path_drops: u64,
    /// From the pod: packets its host veth received with a source address not the pod's
    /// (spoofed, or a stale veth). Counted nowhere else.
    pub foreign_packets: u64,
    /// The latest source address of those.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign_source: Option<std::net::IpAddr>,
    /// Connections (TCP SYNs) that left the node on this path and were answered (SYN-ACK)
    /// within `--syn-timeout`, by destination port. From the pod: its own; to the pod: the
    /// node's (kubelet probes).
    pub syn_answered: BTreeMap<Port, u64>,
    /// Those refused (a RST or ICMP port unreachable from the server): the port is closed,
    /// the network let the SYN through and the answer back.
    pub syn_refused: BTreeMap<Port, u64>,
    /// Those that got no answer at all; retransmits are one connection.
    pub syn_unanswered: BTreeMap<Port, u64>,
    /// To the pod: SYNs its host veth handed to it, by port (a retransmit is not a new one).
    pub syn_in: BTreeMap<Port, u64>,
    /// DNS queries (UDP or TCP 53) answered within the timeout.
    pub dns_answered: u64,
    /// DNS queries refused (ICMP port unreachable, RST): nothing serves DNS there.
    pub dns_refused: u64,
    /// DNS queries not answered within it.
    pub dns_unanswered: u64,
    /// From the pod: its packets that left the node, by egress interface.
    pub left_via: BTreeMap<String, u64>,
    /// Unanswered (source, destination, port) of the window (all since the start without
    /// one), the most frequent first, at most [`super::conns::TOP_UNANSWERED`]. Unlike the
    /// other counters it can shrink: a flow not seen within the window drops out.
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

impl Drop {
    /// Its class: by reason where the kernel gives one (`NOT_SPECIFIED` by where it
    /// happened), else by the freeing function ([`drops::of_drop`]).
    pub fn class(&self) -> DropClass {
        drops::of_drop(self.reason.as_deref(), self.location.as_deref())
    }
}

/// Difference of two since-start tallies, key by key (`a` - `b`, without keys at zero).
fn minus<K: Ord + Clone>(a: &BTreeMap<K, u64>, b: &BTreeMap<K, u64>) -> BTreeMap<K, u64> {
    a.iter()
        .filter_map(|(k, &n)| {
            let d = n.saturating_sub(b.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Whether some key of `base` counts more than in `now` (a key gone counts zero).
fn decreased<K: Ord>(now: &BTreeMap<K, u64>, base: &BTreeMap<K, u64>) -> bool {
    base.iter()
        .any(|(k, &n)| now.get(k).copied().unwrap_or(0) < n)
}

impl DirectionCounters {
    /// Whether some counter is lower than in `base`: they restarted after it (a slot reset
    /// and given again, a new agent), since a counter of one generation only grows. Only
    /// what is keyed by stable names is compared: `left_via` is named from the node's links
    /// at each report (a gone link turns into `ifindex N`) and `unanswered` keeps only the
    /// flows of the window (see [`super::conns::TOP_UNANSWERED`]); both can shrink in one
    /// generation.
    pub fn restarted_since(&self, base: &DirectionCounters) -> bool {
        self.forwarded_packets < base.forwarded_packets
            || self.forwarded_bytes < base.forwarded_bytes
            || self.dropped_packets < base.dropped_packets
            || self.path_dropped_packets < base.path_dropped_packets
            || self.not_specified_path_drops < base.not_specified_path_drops
            || self.foreign_packets < base.foreign_packets
            || self.dns_answered < base.dns_answered
            || self.dns_refused < base.dns_refused
            || self.dns_unanswered < base.dns_unanswered
            || decreased(&self.drops_by_reason, &base.drops_by_reason)
            || decreased(&self.drops_by_location, &base.drops_by_location)
            || decreased(&self.syn_answered, &base.syn_answered)
            || decreased(&self.syn_refused, &base.syn_refused)
            || decreased(&self.syn_unanswered, &base.syn_unanswered)
            || decreased(&self.syn_in, &base.syn_in)
    }

    /// What was counted after `base` (the same direction earlier, same generation): the
    /// window's figures. `unanswered` is already the window's (the tracker drops the flows
    /// it has not seen within it), so it is taken as it is.
    pub fn since(&self, base: &DirectionCounters) -> DirectionCounters {
        DirectionCounters {
            forwarded_packets: self
                .forwarded_packets
                .saturating_sub(base.forwarded_packets),
            forwarded_bytes: self.forwarded_bytes.saturating_sub(base.forwarded_bytes),
            dropped_packets: self.dropped_packets.saturating_sub(base.dropped_packets),
            path_dropped_packets: self
                .path_dropped_packets
                .saturating_sub(base.path_dropped_packets),
            not_specified_path_drops: self
                .not_specified_path_drops
                .saturating_sub(base.not_specified_path_drops),
            drops_by_reason: minus(&self.drops_by_reason, &base.drops_by_reason),
            drops_by_location: minus(&self.drops_by_location, &base.drops_by_location),
            foreign_packets: self.foreign_packets.saturating_sub(base.foreign_packets),
            foreign_source: self.foreign_source,
            syn_answered: minus(&self.syn_answered, &base.syn_answered),
            syn_refused: minus(&self.syn_refused, &base.syn_refused),
            syn_unanswered: minus(&self.syn_unanswered, &base.syn_unanswered),
            syn_in: minus(&self.syn_in, &base.syn_in),
            dns_answered: self.dns_answered.saturating_sub(base.dns_answered),
            dns_refused: self.dns_refused.saturating_sub(base.dns_refused),
            dns_unanswered: self.dns_unanswered.saturating_sub(base.dns_unanswered),
            left_via: minus(&self.left_via, &base.left_via),
            unanswered: self.unanswered.clone(),
        }
    }
}

impl PathCounters {
    /// Builds a path's counters from what the host veth saw (`handed_to_pod` and
    /// `received_from_pod`, packets and IP bytes), the packets it received with a foreign
    /// source, and its drops.
    pub fn build(
        handed_to_pod: (u64, u64),
        received_from_pod: (u64, u64),
        foreign: u64,
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
                foreign_packets: foreign,
                ..Default::default()
            },
        };
        // A failed `RTM_GETROUTE` frees a dummy skb: no packet was dropped.
        for d in drops
            .iter()
            .filter(|d| !d.location.as_deref().is_some_and(drops::is_route_query))
        {
            let dir = if d.to_pod {
                &mut c.to_pod
            } else {
                &mut c.from_pod
            };
            dir.dropped_packets += d.count;
            if d.class() == DropClass::Path {
                dir.path_dropped_packets += d.count;
                if d.reason.as_deref() == Some("NOT_SPECIFIED") {
                    dir.not_specified_path_drops += d.count;
                }
            }
            if let Some(r) = &d.reason {
                *dir.drops_by_reason.entry(r.clone()).or_default() += d.count;
            }
            let location = d.location.as_deref().unwrap_or("unknown");
            *dir.drops_by_location
                .entry(location.to_owned())
                .or_default() += d.count;
        }
        c
    }

    pub fn dropped(&self) -> u64 {
        self.to_pod.dropped_packets + self.from_pod.dropped_packets
    }

    /// What was counted after `base`: the window's figures. When any counter of either
    /// direction is lower than in `base`, the counters restarted after it and all they hold
    /// came after it: the window is them as they are (never a saturated zero, which would
    /// hide a new pod's counts until they pass the old one's).
    pub fn since(&self, base: &PathCounters) -> PathCounters {
        if self.to_pod.restarted_since(&base.to_pod)
            || self.from_pod.restarted_since(&base.from_pod)
        {
            return self.clone();
        }
        PathCounters {
            to_pod: self.to_pod.since(&base.to_pod),
            from_pod: self.from_pod.since(&base.from_pod),
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    fn counts_what_the_kernel_counted_by_class() {
        let c = PathCounters::build(
            (10, 1000),
            (20, 2000),
            4,
            &[
                drop(false, true, "NETFILTER_DROP", "nf_hook_slow", 3),
                drop(true, false, "NO_SOCKET", "__udp4_lib_rcv", 2),
                drop(true, true, "NETFILTER_DROP", "nf_hook_slow", 1),
                drop(true, false, "QUEUE_PURGE", "skb_queue_purge_reason", 5),
            ],
        );
        // Received stays received: a later drop never lowers it.
        assert_eq!(c.from_pod.forwarded_packets, 20);
        assert_eq!(c.from_pod.foreign_packets, 4);
        assert_eq!(c.from_pod.dropped_packets, 3);
        assert_eq!(c.from_pod.path_dropped_packets, 3);
        assert_eq!(c.to_pod.forwarded_packets, 10);
        assert_eq!(c.to_pod.dropped_packets, 8);
        assert_eq!(c.to_pod.path_dropped_packets, 1);
        assert_eq!(c.to_pod.drops_by_reason["NO_SOCKET"], 2);
        assert_eq!(c.to_pod.drops_by_location["__udp4_lib_rcv"], 2);
        assert_eq!(c.dropped(), 11);
    }

    /// Seen on 6.1 in the martian VM test: sgpath's own route lookups for a pod behind a
    /// stale rule fail, and `inet_rtm_getroute` frees its dummy skb with `kfree_skb`. That
    /// skb carries the pod's address but was never a packet: not a drop of its path.
    #[test]
    fn a_failed_route_lookups_dummy_skb_is_no_drop() {
        let c = PathCounters::build(
            (0, 0),
            (12, 720),
            0,
            &[
                drop(
                    false,
                    true,
                    "NOT_SPECIFIED",
                    "ip_rcv_finish_core.constprop.0",
                    12,
                ),
                drop(false, true, "NOT_SPECIFIED", "inet_rtm_getroute", 6),
                drop(false, true, "NOT_SPECIFIED", "inet6_rtm_getroute", 1),
            ],
        );
        assert_eq!(c.from_pod.dropped_packets, 12);
        assert_eq!(c.from_pod.path_dropped_packets, 12);
        assert_eq!(c.from_pod.drops_by_reason["NOT_SPECIFIED"], 12);
        assert!(
            !c.from_pod
                .drops_by_location
                .contains_key("inet_rtm_getroute")
        );
        assert!(drops::is_route_query("inet_rtm_getroute"));
        assert!(drops::is_route_query("inet_rtm_getroute.cold"));
        assert!(!drops::is_route_query("inet_rtm_getroute_x"));
    }

    #[test]
    fn every_location_keeps_its_own_count() {
        let drops: Vec<Drop> = (0..12)
            .map(|i| drop(true, true, "X", &format!("f{i:02}"), i + 1))
            .collect();
        let c = PathCounters::build((0, 0), (0, 0), 0, &drops);
        assert_eq!(c.to_pod.drops_by_location.len(), 12);
        assert_eq!(c.to_pod.drops_by_location["f00"], 1);
        let unnamed = Drop {
            location: None,
            reason: None,
            ..drops[0].clone()
        };
        let c = PathCounters::build((0, 0), (0, 0), 0, &[unnamed]);
        assert_eq!(c.to_pod.drops_by_location["unknown"], 1);
    }

    #[test]
    fn ports_beyond_the_first_ones_go_to_other() {
        let mut t = BTreeMap::new();
        for port in 1..=1000u16 {
            add_port(&mut t, port, 1);
        }
        add_port(&mut t, 3, 5);
        assert_eq!(t.len(), MAX_PORTS + 1);
        assert_eq!(t[&Port::Number(3)], 6);
        assert_eq!(t[&Port::Other], 1000 - MAX_PORTS as u64);
        assert_eq!(
            serde_json::to_string(&t).unwrap().matches("other").count(),
            1
        );
    }

    #[test]
    fn the_window_is_what_came_after_its_base() {
        let base = PathCounters::build(
            (5, 50),
            (5, 50),
            0,
            &[drop(true, true, "NETFILTER_DROP", "nf_hook_slow", 2)],
        );
        let mut now = PathCounters::build(
            (9, 90),
            (5, 50),
            1,
            &[drop(true, true, "NETFILTER_DROP", "nf_hook_slow", 3)],
        );
        add_port(&mut now.from_pod.syn_unanswered, 443, 2);
        let w = now.since(&base);
        assert_eq!(w.to_pod.forwarded_packets, 4);
        assert_eq!(w.to_pod.path_dropped_packets, 1);
        assert_eq!(
            w.to_pod.drops_by_reason,
            BTreeMap::from([("NETFILTER_DROP".to_owned(), 1)])
        );
        assert_eq!(w.from_pod.forwarded_packets, 0);
        assert_eq!(w.from_pod.foreign_packets, 1);
        assert_eq!(
            w.from_pod.syn_unanswered,
            BTreeMap::from([(Port::Number(443), 2)])
        );
        // Nothing new: an empty window.
        let mut empty = now.since(&now);
        empty.from_pod.foreign_source = None;
        assert_eq!(empty, PathCounters::default());
    }

    #[test]
    fn a_counter_lower_than_its_base_restarts_the_window() {
        // The old pod: 5 connections to 443 unanswered, 900 packets out.
        let mut base = PathCounters::build((100, 10_000), (900, 90_000), 0, &[]);
        add_port(&mut base.from_pod.syn_unanswered, 443, 5);
        // Its slot's counters restarted: 2 unanswered, 40 packets out.
        let mut now = PathCounters::build((10, 1_000), (40, 4_000), 0, &[]);
        add_port(&mut now.from_pod.syn_unanswered, 443, 2);
        // Everything is the window, not a saturated zero.
        assert_eq!(now.since(&base), now);
        // One counter down is enough, here a port gone from a tally...
        let mut only_port = base.clone();
        only_port.from_pod.forwarded_packets += 1;
        only_port.from_pod.syn_unanswered.clear();
        add_port(&mut only_port.from_pod.syn_unanswered, 80, 1);
        assert_eq!(only_port.since(&base), only_port);
        // ... or the other direction's drops: 907 packets, all of them, not the 7 more.
        let mut dropped_before = base.clone();
        dropped_before.to_pod.dropped_packets = 1;
        let mut later = base.clone();
        later.from_pod.forwarded_packets += 7;
        assert_eq!(later.since(&base).from_pod.forwarded_packets, 7);
        assert_eq!(later.since(&dropped_before).from_pod.forwarded_packets, 907);
    }

    #[test]
    fn what_can_shrink_in_one_generation_is_no_restart() {
        let mut base = PathCounters::build((5, 50), (5, 50), 0, &[]);
        base.from_pod.left_via.insert("vlan.eth.1".into(), 5);
        base.from_pod.unanswered = vec![super::super::conns::Unanswered {
            source: "192.168.3.219".parse().unwrap(),
            destination: "10.0.1.10".parse().unwrap(),
            port: 443,
            kind: super::super::conns::Conn::Syn,
            count: 4,
        }];
        // The link went (its packets are now `ifindex 7`'s); the flow left the window.
        let mut now = PathCounters::build((5, 50), (8, 80), 0, &[]);
        now.from_pod.left_via.insert("ifindex 7".into(), 8);
        let w = now.since(&base);
        assert_eq!(w.from_pod.forwarded_packets, 3);
        assert_eq!(
            w.from_pod.left_via,
            BTreeMap::from([("ifindex 7".into(), 8)])
        );
        assert_eq!(w.from_pod.unanswered, []);
    }
}
