//! Which kernel drops mean the network, or a policy, dropped a pod's traffic (`path`), and
//! which are an endpoint's own business: a socket's teardown, a closed port, TCP's state
//! machine, a slow reader (`endpoint`). Both stay counted; only `path` drops raise
//! `path-drops`. Pure tables, unit-tested.
//!
//! Kernels with drop reasons (5.17+) name each drop (`enum skb_drop_reason`, names as BTF
//! gives them without `SKB_DROP_REASON_`); 5.10 (Amazon Linux 2) only has the function that
//! freed the packet.

use serde::Serialize;

/// What a drop says about a pod's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DropClass {
    /// The network or a policy dropped it: netfilter, tc, routing, neighbours, queues,
    /// malformed or corrupted packets, memory. Raises `path-drops` above its threshold.
    Path,
    /// The endpoint's own doing: no socket, a socket closing or full, TCP's state machine.
    /// Counted, never a finding: a healthy node under load has plenty.
    Endpoint,
}

impl DropClass {
    pub fn as_str(self) -> &'static str {
        match self {
            DropClass::Path => "path",
            DropClass::Endpoint => "endpoint",
        }
    }
}

/// Drop reasons that are an endpoint's, with the kernel's reasoning. Every other reason
/// the kernels of Amazon Linux 2023 (6.1, 6.12) and later define is a path drop; see
/// [`PATH_REASONS`].
pub const ENDPOINT_REASONS: &[(&str, &str)] = &[
    // Plain kfree_skb() without a reason: TCP's receive path frees what it is done with, and
    // the unconverted callers are mostly sockets. Not every path drop has a reason of its own
    // on 6.1 and 6.12: a failed input route (a martian source or destination, no route) is
    // freed without one, so `of_drop` judges this reason by where it happened
    // (`ROUTE_LOCATIONS`).
    (
        "NOT_SPECIFIED",
        "kfree_skb() without a reason: mostly a socket freeing what it is done with; \
         the path's where the input route failed (see ROUTE_LOCATIONS)",
    ),
    (
        "NO_SOCKET",
        "nothing listens on the port: the endpoint answers with a RST or ICMP",
    ),
    ("SOCKET_CLOSE", "the socket was closed"),
    (
        "SOCKET_FILTER",
        "the socket's own BPF filter (SO_ATTACH_FILTER)",
    ),
    ("SOCKET_RCVBUFF", "the receiver is slow: its buffer is full"),
    ("SOCKET_BACKLOG", "the socket's backlog is full"),
    (
        "PROTO_MEM",
        "the protocol's memory limit (tcp_mem/udp_mem): the node's sockets hold too much",
    ),
    (
        "QUEUE_PURGE",
        "a socket closed with data queued: connection teardown",
    ),
    ("UNIX_DISCONNECT", "a UNIX socket, never pod IP traffic"),
    ("UNIX_SKIP_OOB", "a UNIX socket, never pod IP traffic"),
    (
        "PACKET_SOCK_ERROR",
        "an AF_PACKET socket's copy (tcpdump), not the packet itself",
    ),
    (
        "IP_NOPROTO",
        "no handler for the IP protocol on the receiving host",
    ),
    (
        "UNHANDLED_PROTO",
        "no handler for the ethertype (LLDP, ...)",
    ),
    ("SKB_UCOPY_FAULT", "copying to the reader's memory failed"),
    ("DUP_FRAG", "a duplicate fragment: the original arrived"),
    ("MAC_IEEE_MAC_CONTROL", "an Ethernet pause frame"),
    ("CAN_RX_INVALID_FRAME", "a CAN frame, never pod IP traffic"),
    (
        "CANFD_RX_INVALID_FRAME",
        "a CAN frame, never pod IP traffic",
    ),
    (
        "CANXL_RX_INVALID_FRAME",
        "a CAN frame, never pod IP traffic",
    ),
    (
        "IPV6_NDISC_FRAG",
        "an invalid neighbour discovery message, ignored by its receiver",
    ),
    (
        "IPV6_NDISC_HOP_LIMIT",
        "an invalid neighbour discovery message, ignored by its receiver",
    ),
    (
        "IPV6_NDISC_BAD_CODE",
        "an invalid neighbour discovery message, ignored by its receiver",
    ),
    (
        "IPV6_NDISC_BAD_OPTIONS",
        "an invalid neighbour discovery message, ignored by its receiver",
    ),
    (
        "IPV6_NDISC_NS_OTHERHOST",
        "a neighbour solicitation for another host",
    ),
    // TCP's state machine: the endpoint decides (old or out-of-window data, a RST, a listen
    // queue overflow, a closed or authenticating socket); never the path.
    ("TCP_FLAGS", "TCP state machine"),
    (
        "TCP_ZEROWINDOW",
        "TCP state machine: the receiver's window is closed",
    ),
    (
        "TCP_OLD_DATA",
        "TCP state machine: a retransmit of data already received",
    ),
    ("TCP_OVERWINDOW", "TCP state machine"),
    (
        "TCP_OFOMERGE",
        "TCP state machine: merged into out-of-order data",
    ),
    ("TCP_RFC7323_PAWS", "TCP state machine (PAWS)"),
    ("TCP_RFC7323_PAWS_ACK", "TCP state machine (PAWS)"),
    ("TCP_RFC7323_TW_PAWS", "TCP state machine (PAWS)"),
    ("TCP_RFC7323_TSECR", "TCP state machine"),
    (
        "TCP_LISTEN_OVERFLOW",
        "the server's accept queue is full: the application is slow",
    ),
    ("TCP_OLD_SEQUENCE", "TCP state machine"),
    ("TCP_INVALID_SEQUENCE", "TCP state machine"),
    ("TCP_INVALID_END_SEQUENCE", "TCP state machine"),
    ("TCP_INVALID_ACK_SEQUENCE", "TCP state machine"),
    ("TCP_RESET", "a RST closed the connection"),
    ("TCP_INVALID_SYN", "TCP state machine"),
    ("TCP_CLOSE", "the connection is closed"),
    ("TCP_FASTOPEN", "TCP Fast Open data not accepted"),
    ("TCP_OLD_ACK", "TCP state machine"),
    ("TCP_TOO_OLD_ACK", "TCP state machine"),
    ("TCP_ACK_UNSENT_DATA", "TCP state machine"),
    (
        "TCP_OFO_QUEUE_PRUNE",
        "the receiver pruned its out-of-order queue (memory)",
    ),
    (
        "TCP_OFO_DROP",
        "out-of-order data beyond the receiver's window",
    ),
    (
        "TCP_ABORT_ON_DATA",
        "data after the application closed: the socket resets",
    ),
    ("TCP_MINTTL", "the socket's own minimum TTL"),
    ("TCP_AUTH_HDR", "TCP-MD5/AO: the endpoints' keys"),
    ("TCP_MD5NOTFOUND", "TCP-MD5: the endpoints' keys"),
    ("TCP_MD5UNEXPECTED", "TCP-MD5: the endpoints' keys"),
    ("TCP_MD5FAILURE", "TCP-MD5: the endpoints' keys"),
    ("TCP_AONOTFOUND", "TCP-AO: the endpoints' keys"),
    ("TCP_AOUNEXPECTED", "TCP-AO: the endpoints' keys"),
    ("TCP_AOKEYNOTFOUND", "TCP-AO: the endpoints' keys"),
    ("TCP_AOFAILURE", "TCP-AO: the endpoints' keys"),
    // Not drops: the enum's start and kfree_skb's "consumed" (6.x names them without the
    // SKB_DROP_REASON_ prefix), and its sentinels.
    ("SKB_NOT_DROPPED_YET", "not a drop: the enum's zero"),
    ("SKB_CONSUMED", "not a drop: consumed, freed after use"),
    ("MAX", "not a reason: the enum's end"),
    ("SUBSYS_MASK", "not a reason: a mask"),
];

/// Drop reasons that are the path's, grouped by why. Listed so that a test can tell a
/// reason nobody classified (a new kernel) from a deliberate path drop.
pub const PATH_REASONS: &[&str] = &[
    // Policy: netfilter (iptables, the VPC CNI's SNAT chains, kube-proxy), tc/tcx (the
    // network policy agent), cgroup BPF, LSMs, IPsec, PSP.
    "NETFILTER_DROP",
    "TC_INGRESS",
    "TC_EGRESS",
    "TC_COOKIE_ERROR",
    "TC_CHAIN_NOTFOUND",
    "TC_RECLASSIFY_LOOP",
    "BPF_CGROUP_EGRESS",
    "SECURITY_HOOK",
    "XFRM_POLICY",
    "XDP",
    "PSP_INPUT",
    "PSP_OUTPUT",
    // Routing and addressing: a stale rule or route, rp_filter, martians.
    "IP_RPFILTER",
    "IP_OUTNOROUTES",
    "IP_INNOROUTES",
    "IP_INADDRERRORS",
    "IP_LOCAL_SOURCE",
    "IP_INVALID_SOURCE",
    "IP_LOCALNET",
    "IP_INVALID_DEST",
    "IPV6DISABLED",
    "OTHERHOST",
    "UNICAST_IN_L2_MULTICAST",
    "MAC_INVALID_SOURCE",
    "LOCAL_MAC",
    "ARP_PVLAN_DISABLE",
    "BRIDGE_INGRESS_STP_STATE",
    "NO_TX_TARGET",
    // Neighbours: the next hop does not answer ARP/ND.
    "NEIGH_CREATEFAIL",
    "NEIGH_FAILED",
    "NEIGH_QUEUEFULL",
    "NEIGH_DEAD",
    "NEIGH_HH_FILLFAIL",
    // Queues and the node's capacity.
    "QDISC_DROP",
    "QDISC_OVERLIMIT",
    "QDISC_CONGESTED",
    "CAKE_FLOOD",
    "FQ_BAND_LIMIT",
    "FQ_HORIZON_LIMIT",
    "FQ_FLOW_LIMIT",
    "DUALPI2_STEP_DROP",
    "CPU_BACKLOG",
    "FULL_RING",
    "NOMEM",
    "PFMEMALLOC",
    "DEV_READY",
    "RECURSION_LIMIT",
    "SKB_RX_HEADROOM",
    // Malformed, corrupted or oversized on the way.
    "PKT_TOO_SMALL",
    "PKT_TOO_BIG",
    "HDR_TRUNC",
    "DEV_HDR",
    "IP_CSUM",
    "IP_INHDR",
    "TCP_CSUM",
    "UDP_CSUM",
    "ICMP_CSUM",
    "SKB_CSUM",
    "SKB_GSO_SEG",
    "SKB_BAD_GSO",
    "INVALID_PROTO",
    "IPV6_BAD_EXTHDR",
    // 6.18: more IPv6 extension headers than `net.ipv6.max_*_opts_number` allows.
    "IPV6_TOO_MANY_EXTHDRS",
    "FRAG_REASM_TIMEOUT",
    "FRAG_TOO_FAR",
    "TAP_FILTER",
    "TAP_TXFILTER",
    // Tunnels (not on an EKS pod path, but the network's when they are).
    "IP_TUNNEL_ECN",
    "TUNNEL_TXINFO",
    "VXLAN_INVALID_HDR",
    "VXLAN_VNI_NOT_FOUND",
    "VXLAN_ENTRY_EXISTS",
];

/// The class of a drop reason. A reason neither table names (a newer kernel) is a path
/// drop unless its family is an endpoint's (`TCP_`, `SOCKET_`, `UNIX_`): better a warning to
/// look at than a drop nobody sees.
pub fn of_reason(reason: &str) -> DropClass {
    if ENDPOINT_REASONS.iter().any(|(r, _)| *r == reason) {
        return DropClass::Endpoint;
    }
    if PATH_REASONS.contains(&reason) || reason == "TCP_CSUM" {
        return DropClass::Path;
    }
    let endpoint_family = ["TCP_", "SOCKET_", "UNIX_"];
    if endpoint_family.iter().any(|p| reason.starts_with(p)) {
        DropClass::Endpoint
    } else {
        DropClass::Path
    }
}

/// Whether a table names `reason` (the VM tests check every reason of each kernel).
pub fn is_classified(reason: &str) -> bool {
    ENDPOINT_REASONS.iter().any(|(r, _)| *r == reason) || PATH_REASONS.contains(&reason)
}

/// Where a packet freed without a reason (`NOT_SPECIFIED`) is the path's, by function
/// prefix, with the kernel's reasoning. On 6.1 and 6.12 the input route's failures carry no
/// reason of their own (the reasons came with 6.13): `ip_route_input_slow` refuses a martian
/// source (a stale rule or address that makes the pod's own address local or unroutable on
/// the way back) or destination with -EINVAL, and `ip_rcv_finish_core` frees the packet with
/// `NOT_SPECIFIED` (only -EXDEV becomes `IP_RPFILTER`); a route of type unreachable or
/// prohibit sends it to `ip_error`, a blackhole to `dst_discard`, which free it the same way.
pub const ROUTE_LOCATIONS: &[(&str, &str)] = &[
    (
        "ip_rcv_finish",
        "the input route failed: a martian source or destination (ip_route_input_slow)",
    ),
    (
        "ip_sublist_rcv",
        "the input route failed (the list receive path of ip_rcv_finish_core)",
    ),
    (
        "ip_list_rcv",
        "the input route failed (the list receive path of ip_rcv_finish_core)",
    ),
    ("ip_route_input", "the input route failed"),
    ("ip_mkroute_input", "the input route failed"),
    ("__mkroute_input", "the input route failed"),
    ("ip_handle_martian", "a martian source"),
    (
        "ip_error",
        "the route is unreachable or prohibited (no route, a stale table)",
    ),
    ("dst_discard", "a blackhole route"),
    ("ip_forward", "forwarding refused (TTL, DF, xfrm)"),
    (
        "ip6_pkt_drop",
        "the route is unreachable or prohibited (IPv6)",
    ),
    (
        "ip6_pkt_discard",
        "the route is unreachable or prohibited (IPv6)",
    ),
    (
        "ip6_pkt_prohibit",
        "the route is unreachable or prohibited (IPv6)",
    ),
    ("ip6_forward", "forwarding refused (IPv6)"),
    ("ip6_rcv_finish", "the input route failed (IPv6)"),
    ("ip6_route_input", "the input route failed (IPv6)"),
    ("__neigh_event_send", "the next hop does not answer ARP/ND"),
    (
        "neigh_",
        "the next hop does not answer ARP/ND (its queue freed)",
    ),
];

/// The class of one drop: by its reason where the kernel gives one, by where it happened
/// (its freeing function) where it gives none. `NOT_SPECIFIED` is the endpoint's unless it
/// was freed where the input route or the next hop failed ([`ROUTE_LOCATIONS`]): a stale
/// rule's martian drop on 6.1 is a path drop like its `IP_RPFILTER` sibling. Without reasons
/// (5.10) the function decides ([`of_location`]); without either, the path (better looked at
/// than missed).
pub fn of_drop(reason: Option<&str>, location: Option<&str>) -> DropClass {
    match (reason, location) {
        (Some("NOT_SPECIFIED"), Some(l)) if is_route_location(l) => DropClass::Path,
        (Some(r), _) => of_reason(r),
        (None, Some(l)) => of_location(l),
        (None, None) => DropClass::Path,
    }
}

/// Whether `function` (as kallsyms names it, `.constprop.0` and such suffixes included) is
/// where the input route or the next hop frees a packet ([`ROUTE_LOCATIONS`]).
pub fn is_route_location(function: &str) -> bool {
    ROUTE_LOCATIONS
        .iter()
        .any(|(prefix, _)| function.starts_with(prefix))
}

/// Functions that free an skb that never was a packet: `RTM_GETROUTE` (`ip route get`, and
/// sgpath's own lookups) builds a dummy skb with the asked source and destination and, when
/// the lookup fails (a stale rule's martian, an unreachable route), frees it with
/// `kfree_skb` on 5.10 and 6.1. Such a "drop" carries a pod's address and would be charged
/// to its path: it is no drop at all.
pub const ROUTE_QUERY_LOCATIONS: &[&str] = &["inet_rtm_getroute", "inet6_rtm_getroute"];

/// Whether `function` freed a route query's dummy skb ([`ROUTE_QUERY_LOCATIONS`]).
pub fn is_route_query(function: &str) -> bool {
    ROUTE_QUERY_LOCATIONS
        .iter()
        .any(|f| function == *f || function.strip_prefix(f).is_some_and(|s| s.starts_with('.')))
}

/// Functions that free packets on 5.10 (no reasons) for an endpoint's reasons, by prefix,
/// with the kernel's reasoning.
pub const ENDPOINT_LOCATIONS: &[(&str, &str)] = &[
    (
        "sk_stream_kill_queues",
        "a TCP socket closed with data queued: teardown (QUEUE_PURGE)",
    ),
    (
        "skb_queue_purge",
        "a socket's queue purged at close: teardown (QUEUE_PURGE)",
    ),
    ("inet_csk_destroy_sock", "a TCP socket destroyed: teardown"),
    (
        "tcp_",
        "TCP's receive path and state machine (tcp_v4_rcv: NO_SOCKET, tcp_rcv_state_process, ...)",
    ),
    (
        "sk_",
        "a socket's own filter or memory (sk_filter_trim_cap, sk_reset_timer, ...)",
    ),
    (
        "sock_",
        "a socket's queue (sock_queue_rcv_skb: the reader is slow)",
    ),
    ("__udp4_lib_rcv", "no UDP socket on the port (NO_SOCKET)"),
    ("__udp6_lib_rcv", "no UDP socket on the port (NO_SOCKET)"),
    (
        "udp",
        "a UDP socket's queue or filter (udp_queue_rcv_one_skb, ...)",
    ),
    ("unix_", "a UNIX socket, never pod IP traffic"),
    ("netlink_", "a netlink socket, never pod IP traffic"),
    (
        "packet_rcv",
        "an AF_PACKET socket's copy (tcpdump), not the packet itself",
    ),
    (
        "tpacket_rcv",
        "an AF_PACKET socket's copy (tcpdump), not the packet itself",
    ),
    (
        "raw_rcv",
        "a raw socket's copy (ping), not the packet itself",
    ),
];

/// The class of the function that freed a packet (5.10). Everything the table does not
/// name: netfilter (`nf_hook_slow`), routing (`ip_rcv_finish`, `ip_forward`,
/// `ip_route_input_slow`), neighbours (`__neigh_event_send`, `neigh_*`), queues
/// (`__dev_queue_xmit`, `enqueue_to_backlog`, `pfifo_fast_enqueue`), tc
/// (`__netif_receive_skb_core`, `sch_handle_egress`), veth (`veth_xmit`): the path.
pub fn of_location(function: &str) -> DropClass {
    if ENDPOINT_LOCATIONS
        .iter()
        .any(|(prefix, _)| function.starts_with(prefix))
    {
        DropClass::Endpoint
    } else {
        DropClass::Path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teardown_and_closed_ports_are_the_endpoints() {
        for r in [
            "QUEUE_PURGE",
            "NOT_SPECIFIED",
            "NO_SOCKET",
            "TCP_OLD_DATA",
            "TCP_NEW_THING",
        ] {
            assert_eq!(of_reason(r), DropClass::Endpoint, "{r}");
        }
        for r in [
            "NETFILTER_DROP",
            "TC_INGRESS",
            "NEIGH_FAILED",
            "TCP_CSUM",
            "SOMETHING_NEW",
        ] {
            assert_eq!(of_reason(r), DropClass::Path, "{r}");
        }
        for l in [
            "sk_stream_kill_queues",
            "skb_queue_purge",
            "tcp_v4_rcv",
            "__udp4_lib_rcv",
        ] {
            assert_eq!(of_location(l), DropClass::Endpoint, "{l}");
        }
        for l in [
            "nf_hook_slow",
            "ip_rcv_finish",
            "__neigh_event_send",
            "veth_xmit",
        ] {
            assert_eq!(of_location(l), DropClass::Path, "{l}");
        }
    }

    /// 6.1 frees a martian source behind a stale rule with `NOT_SPECIFIED` in
    /// `ip_rcv_finish` (`ip_rcv_finish_core` inlined): the path's, as its rp_filter sibling
    /// `IP_RPFILTER` is; the same reason in a socket's teardown stays the endpoint's.
    #[test]
    fn not_specified_is_judged_by_where_it_happened() {
        for l in [
            "ip_rcv_finish",
            "ip_rcv_finish_core.constprop.0",
            "ip_route_input_slow",
            "ip_error",
            "dst_discard",
            "ip_forward",
            "ip6_pkt_drop",
            "__neigh_event_send",
        ] {
            assert_eq!(
                of_drop(Some("NOT_SPECIFIED"), Some(l)),
                DropClass::Path,
                "{l}"
            );
        }
        for l in [
            "tcp_rcv_state_process",
            "tcp_v4_rcv",
            "skb_queue_purge_reason",
            "kfree_skb_list_reason",
            "skb_release_data",
            "unknown",
        ] {
            assert_eq!(
                of_drop(Some("NOT_SPECIFIED"), Some(l)),
                DropClass::Endpoint,
                "{l}"
            );
        }
        assert_eq!(of_drop(Some("NOT_SPECIFIED"), None), DropClass::Endpoint);
        // Other reasons are their own class wherever they happened.
        assert_eq!(
            of_drop(Some("NO_SOCKET"), Some("ip_rcv_finish")),
            DropClass::Endpoint
        );
        assert_eq!(
            of_drop(Some("NETFILTER_DROP"), Some("nf_hook_slow")),
            DropClass::Path
        );
        // Without reasons the function decides; without either, the path.
        assert_eq!(of_drop(None, Some("tcp_v4_rcv")), DropClass::Endpoint);
        assert_eq!(of_drop(None, Some("ip_rcv_finish")), DropClass::Path);
        assert_eq!(of_drop(None, None), DropClass::Path);
        // No route location is an endpoint's location.
        for (prefix, _) in ROUTE_LOCATIONS {
            assert_eq!(of_location(prefix), DropClass::Path, "{prefix}");
        }
    }

    #[test]
    fn no_reason_is_in_both_tables() {
        for (r, _) in ENDPOINT_REASONS {
            assert!(!PATH_REASONS.contains(r), "{r} in both");
        }
        assert!(is_classified("QUEUE_PURGE") && is_classified("NETFILTER_DROP"));
        assert!(!is_classified("TCP_NEW_THING"));
    }
}
