use std::convert::Infallible;

use super::*;
use crate::model::{
    LinkKind, Route, RouteKind, RouteScope, TABLE_LOCAL, TABLE_MAIN,
    fib::{self, Outcome},
    lookup::Refusal,
};

const A: &str = "vlanaaaaaaaaaaa";
const B: &str = "vlanbbbbbbbbbbb";
const O: &str = "eni3bbf5fcab96";
const POD_A: &str = "192.168.3.219";
const BASTION: &str = "10.0.1.10";
const NODE_IP: &str = "192.168.1.10";

use crate::model::fixtures::{ip, link, route, rule, uni};

fn local(table: u32, dst: &str, dev: &str) -> Route {
    route(table, dst, None, Some(dev), RouteKind::Local)
}

/// A strict node: pod A on VLAN 1, pod B on VLAN 7, ordinary pod O, NodeLocal DNSCache.
fn node() -> Node {
    let mut n = Node {
        links: vec![
            link(1, "lo", LinkKind::Device, None, &["127.0.0.1/8"]),
            link(2, "eth0", LinkKind::Device, None, &["192.168.1.10/16"]),
            link(3, "eth1", LinkKind::Device, None, &[]),
            link(10, "vlan.eth.1", LinkKind::Vlan, Some(3), &[]),
            link(11, "vlan.eth.7", LinkKind::Vlan, Some(3), &[]),
            link(12, A, LinkKind::Veth, None, &[]),
            link(13, B, LinkKind::Veth, None, &[]),
            link(14, O, LinkKind::Veth, None, &[]),
            link(
                20,
                "nodelocaldns",
                LinkKind::Dummy,
                None,
                &["169.254.20.10/32"],
            ),
        ],
        routes: vec![
            uni(TABLE_MAIN, "0.0.0.0/0", Some("192.168.0.1"), "eth0"),
            uni(TABLE_MAIN, "192.168.0.0/16", None, "eth0"),
            uni(TABLE_MAIN, "192.168.7.31/32", None, O),
            uni(101, "0.0.0.0/0", Some("192.168.0.1"), "vlan.eth.1"),
            uni(101, "192.168.0.1/32", None, "vlan.eth.1"),
            uni(101, "192.168.3.219/32", None, A),
            uni(107, "0.0.0.0/0", Some("192.168.0.1"), "vlan.eth.7"),
            uni(107, "192.168.0.1/32", None, "vlan.eth.7"),
            uni(107, "192.168.26.147/32", None, B),
            local(TABLE_LOCAL, "192.168.1.10/32", "eth0"),
            local(TABLE_LOCAL, "169.254.20.10/32", "nodelocaldns"),
            local(TABLE_LOCAL, "127.0.0.0/8", "lo"),
        ],
        rules: vec![
            rule(10, None, None, Some(A), 101),
            rule(10, None, None, Some("vlan.eth.1"), 101),
            rule(10, None, None, Some(B), 107),
            rule(10, None, None, Some("vlan.eth.7"), 107),
            rule(20, None, None, None, TABLE_LOCAL),
            rule(512, None, Some("192.168.7.31/32"), None, TABLE_MAIN),
            rule(32766, None, None, None, TABLE_MAIN),
            rule(32767, None, None, None, 253),
        ],
        ..Default::default()
    };
    for (k, v) in [
        ("net.ipv4.ip_forward", 1),
        ("net.ipv4.conf.all.rp_filter", 0),
        ("net.ipv4.conf.eth0.rp_filter", 2),
    ] {
        n.sysctls.0.insert(k.into(), v);
    }
    n
}

/// The kernel, played by the node's own rules and tables.
fn kernel(n: &Node, flow: &Flow<'_>) -> Answer {
    match fib::select(n, flow).outcome {
        Outcome::Route(r) => Ok(r.clone()),
        Outcome::Refused(e) => Err(e),
        Outcome::NoRoute => Err(Refusal::NetUnreachable),
    }
}

/// Trace `from` (a pod IP) to `to` with `kernel`, or with `refuse` answering the
/// forward lookup instead.
fn trace_with(n: &Node, from: &str, to: &str, forward: Option<Answer>) -> Trace {
    let topo = Topology::from_node(n);
    let path = topo
        .paths
        .iter()
        .find(|p| p.pod_ip == Some(ip(from)))
        .unwrap()
        .clone();
    let req = Request {
        from: &path,
        to: ip(to),
        proto: Proto::Tcp,
        port: Some(443),
    };
    let mut first = forward;
    run(n, &topo, &req, |flow, _| {
        Ok::<_, Infallible>(first.take().unwrap_or_else(|| kernel(n, flow)))
    })
    .unwrap()
}

fn trace(n: &Node, from: &str, to: &str) -> Trace {
    trace_with(n, from, to, None)
}

fn inbound_to(n: &Node, from: &str, to: &str) -> Inbound {
    let topo = Topology::from_node(n);
    let pod = topo
        .paths
        .iter()
        .find(|p| p.pod_ip == Some(ip(to)))
        .unwrap()
        .clone();
    inbound(n, &topo, ip(from), &pod, Proto::Tcp, Some(80), |flow, _| {
        Ok::<_, Infallible>(kernel(n, flow))
    })
    .unwrap()
}

#[test]
fn the_bastion_reaches_a_strict_pod_through_its_vlan_and_its_branch_enis_rules_decide() {
    let t = inbound_to(&node(), BASTION, POD_A);
    assert_eq!(t.arrival.ingress.as_deref(), Some("vlan.eth.1"));
    assert_eq!(t.arrival.egress_kind, Egress::PodVeth);
    assert_eq!(t.security_groups, Deciders::BranchEni);
    assert_eq!(t.sender_security_groups, None);
    assert!(
        t.decided_by
            .starts_with("The inbound rules of the branch ENI on VLAN 1 (vlan.eth.1)"),
        "{}",
        t.decided_by
    );
    assert!(t.works, "{}", t.verdict);
    assert_eq!(t.answer.forward.egress.as_deref(), Some("vlan.eth.1"));
}

#[test]
fn the_bastion_reaches_an_ordinary_pod_through_the_node_eni() {
    let t = inbound_to(&node(), BASTION, "192.168.7.31");
    assert_eq!(t.arrival.ingress.as_deref(), Some("eth0"));
    assert_eq!(t.security_groups, Deciders::NodeEni);
    assert!(t.works, "{}", t.verdict);
}

#[test]
fn the_nodes_own_request_to_a_strict_pod_meets_both_enis_rules() {
    let t = inbound_to(&node(), NODE_IP, POD_A);
    // Sent by the node (no iif), out of a node ENI, back in through the pod's VLAN.
    assert_eq!(t.arrival.ingress, None);
    assert_eq!(t.arrival.egress_kind, Egress::NodeEni);
    assert_eq!(t.security_groups, Deciders::BranchEni);
    assert_eq!(t.sender_security_groups, Some(Deciders::NodeEni));
}

#[test]
fn a_stale_rule_lets_the_request_in_and_loses_the_answer() {
    let t = inbound_to(&stale(node()), BASTION, POD_A);
    assert!(!t.works);
    assert!(
        t.verdict.starts_with("The request reaches the pod through")
            && t.verdict.contains("its answer does not get back"),
        "{}",
        t.verdict
    );
}

/// Pod A re-created under the same name: the old pod's `iif` rule to table 107 (pod
/// B's VLAN) survived and comes first (VPC CNI #1375).
fn stale(mut n: Node) -> Node {
    n.rules.insert(0, rule(10, None, None, Some(A), 107));
    n
}

#[test]
fn strict_pod_to_the_bastion_comes_back_the_same_way() {
    let t = trace(&node(), POD_A, BASTION);
    assert_eq!(t.forward.egress.as_deref(), Some("vlan.eth.1"));
    assert_eq!(
        t.forward.rule.as_ref().map(|r| r.to_string()).as_deref(),
        Some("10: from all iif vlanaaaaaaaaaaa lookup 101")
    );
    assert_eq!(t.reply.len(), 1);
    assert_eq!(t.reply[0].ingress.as_deref(), Some("vlan.eth.1"));
    assert!(t.works);
    assert_eq!(
        t.decided_by,
        "The security groups of the branch ENI on VLAN 1 (vlan.eth.1, trunk eth1) decide."
    );
    assert_eq!(
        t.verdict,
        "The packet reaches 10.0.1.10, and the answer comes back the same way to vlanaaaaaaaaaaa."
    );
}

#[test]
fn strict_pod_to_the_node_hairpins_through_the_vpc() {
    let t = trace(&node(), POD_A, NODE_IP);
    assert_eq!(
        (t.security_groups, t.receiver_security_groups),
        (Deciders::BranchEni, Some(Deciders::NodeEni))
    );
    let hops: Vec<(Option<&str>, Option<&str>)> = t
        .reply
        .iter()
        .map(|l| (l.ingress.as_deref(), l.egress.as_deref()))
        .collect();
    assert_eq!(hops, [(None, Some("eth0")), (Some("vlan.eth.1"), Some(A))]);
    assert_eq!(
        t.decided_by,
        "The security groups of the branch ENI on VLAN 1 (vlan.eth.1, trunk eth1) decide what leaves, and the node ENI's inbound rules decide what comes in."
    );
    assert_eq!(
        t.verdict,
        "The packet reaches 192.168.1.10; the answer leaves by eth0, hairpins through the VPC and comes back in through vlan.eth.1 to vlanaaaaaaaaaaa."
    );
    assert!(t.works);
}

/// The trace and the `tcp-early-demux-enabled` check tell one story: with early demux on,
/// a strict pod's TCP answer to the node fails in both; with it off, neither says so.
#[test]
fn early_demux_breaks_a_strict_pods_tcp_to_the_node_as_the_check_says() {
    for on in [0, 1] {
        let mut n = node();
        n.sysctls
            .0
            .insert(crate::model::Sysctls::TCP_EARLY_DEMUX.into(), on);
        let topo = Topology::from_node(&n);
        let check = crate::checks::run(&n, &topo)
            .iter()
            .any(|f| f.id == crate::checks::FindingId::TcpEarlyDemuxEnabled);
        let t = trace(&n, POD_A, NODE_IP);
        assert_eq!(check, on == 1);
        assert_eq!(t.works, on == 0, "{}", t.verdict);
        assert_eq!(
            t.verdict.contains("tcp_early_demux"),
            on == 1,
            "{}",
            t.verdict
        );
        // Not the pod's traffic elsewhere: the bastion is fine either way.
        assert!(trace(&n, POD_A, BASTION).works);
    }
}

#[test]
fn strict_pod_to_nodelocal_dns_never_reaches_it() {
    let t = trace(&node(), POD_A, "169.254.20.10");
    assert_eq!(t.forward.egress_kind, Egress::BranchVlan);
    assert!(t.reply.is_empty());
    assert_eq!(t.receiver_security_groups, None);
    assert!(!t.works);
    assert_eq!(
        t.verdict,
        "The packet never reaches 169.254.20.10: 169.254.20.10 is an address only this node has, but the pod's packet leaves through vlan.eth.1, and the VPC does not bring it back."
    );
}

/// The garbled verdict of issue 8 ("no security group: the flow stays on the node
/// decide"), with the #1662 workaround in place: the kernel delivers 169.254.20.10 on
/// the node for the strict pod and the answer comes back by the rule at 9.
#[test]
fn regression_local_delivery_verdict_is_a_sentence() {
    let mut n = node();
    n.routes
        .push(local(101, "169.254.20.10/32", "nodelocaldns"));
    n.rules.insert(
        0,
        rule(
            9,
            Some("169.254.20.10/32"),
            Some("192.168.3.219/32"),
            None,
            101,
        ),
    );
    let t = trace(&n, POD_A, "169.254.20.10");
    assert_eq!(t.forward.egress_kind, Egress::Local);
    assert_eq!(t.forward.table, Some(101));
    assert_eq!(
        t.reply[0].rule.as_ref().map(|r| r.to_string()).as_deref(),
        Some("9: from 169.254.20.10 to 192.168.3.219 lookup 101")
    );
    assert_eq!(
        t.decided_by,
        "No security group: the flow stays on the node."
    );
    assert_eq!(
        t.verdict,
        "The packet reaches 169.254.20.10, and the answer comes back the same way to vlanaaaaaaaaaaa."
    );
    assert!(t.works);
}

#[test]
fn strict_pod_to_another_strict_pod_meets_both_branch_enis() {
    let t = trace(&node(), POD_A, "192.168.26.147");
    assert_eq!(t.receiver_security_groups, Some(Deciders::BranchEni));
    assert_eq!(
        t.decided_by,
        "The security groups of the branch ENI on VLAN 1 (vlan.eth.1, trunk eth1) decide what leaves, and the target's branch ENI's inbound rules decide what comes in."
    );
    assert_eq!(
        t.verdict,
        "The packet reaches 192.168.26.147; the answer leaves by vlan.eth.7, hairpins through the VPC and comes back in through vlan.eth.1 to vlanaaaaaaaaaaa."
    );
}

/// Pod A's request to the bastion, its forward leg as the kernel answers it, explained
/// with the answer's legs `reply` (each a flow and the kernel's answer for it).
fn explained(n: &Node, proto: Proto, port: u16, reply: &[(Flow<'_>, Answer)]) -> Trace {
    let topo = Topology::from_node(n);
    let pod = topo
        .paths
        .iter()
        .find(|p| p.pod_ip == Some(ip(POD_A)))
        .unwrap();
    let req = Request {
        from: pod,
        to: ip(BASTION),
        proto,
        port: Some(port),
    };
    let fwd = Flow {
        iif: Some(A),
        src: Some(ip(POD_A)),
        dst: ip(BASTION),
        ipproto: Some(proto.number()),
    };
    let forward = leg(n, &topo, &fwd, &kernel(n, &fwd));
    let reply = reply.iter().map(|(f, a)| leg(n, &topo, f, a)).collect();
    explain(n, &topo, &req, forward, reply)
}

#[test]
fn without_an_answer_to_follow_the_verdict_says_so() {
    let t = explained(&node(), Proto::Udp, 53, &[]);
    assert_eq!(
        t.verdict,
        "The packet leaves through vlan.eth.1; sgpath has no answer to follow."
    );
    assert_eq!(t.same_path, None);
}

#[test]
fn ordinary_pod_uses_the_node_eni() {
    let t = trace(&node(), "192.168.7.31", BASTION);
    assert_eq!(t.security_groups, Deciders::NodeEni);
    assert_eq!(
        t.decided_by,
        "The security groups of the node ENI eth0 decide."
    );
    assert!(t.works, "{}", t.verdict);
}

/// rp_filter on: the kernel refuses the stale-ruled pod's packet (EXDEV); trace names
/// the rule and table that selected the route and the rule that causes the refusal.
#[test]
fn reverse_path_refusal_names_the_stale_rule() {
    let mut n = stale(node());
    n.sysctls.0.insert("net.ipv4.conf.all.rp_filter".into(), 1);
    let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::ReversePath)));
    let f = &t.forward;
    assert_eq!(f.error.as_deref(), Some("EXDEV (reverse path filter)"));
    assert_eq!(
        f.rule.as_ref().map(|r| r.to_string()).as_deref(),
        Some("10: from all iif vlanaaaaaaaaaaa lookup 107")
    );
    assert_eq!(f.table, Some(107));
    assert_eq!(
        f.route.as_deref(),
        Some("default via 192.168.0.1 dev vlan.eth.7 table 107")
    );
    assert_eq!(f.cause, f.rule);
    assert_eq!(
        f.why.as_deref(),
        Some(
            "rp_filter is strict (1) on vlanaaaaaaaaaaa, and the route back to the source 192.168.3.219 does not go through vlanaaaaaaaaaaa: for a packet coming in on vlan.eth.7, rule \"10: from all iif vlan.eth.7 lookup 107\" leads to \"default via 192.168.0.1 dev vlan.eth.7 table 107\", out through vlan.eth.7. The cause is rule \"10: from all iif vlanaaaaaaaaaaa lookup 107\": it sends the pod's traffic to table 107, which does not route 192.168.3.219 back through vlanaaaaaaaaaaa."
        )
    );
    assert_eq!(
        t.decided_by,
        "No security group: the node drops the packet before it reaches an ENI."
    );
    assert_eq!(
        t.verdict,
        format!(
            "The node refuses the pod's packet with EXDEV (reverse path filter). {}",
            f.why.as_deref().unwrap()
        )
    );
    assert!(t.reply.is_empty() && !t.works);
}

/// The stale rule's table has no `iif` rule for its VLAN: the way back is looked up in
/// main, yet the pod's own table 101 is the one that routes it, so the stale rule is
/// still the cause.
#[test]
fn reverse_path_refusal_blames_the_stale_rule_when_the_way_back_is_main() {
    let mut n = stale(node());
    n.rules.retain(|r| r.iif.as_deref() != Some("vlan.eth.7"));
    n.sysctls.0.insert("net.ipv4.conf.all.rp_filter".into(), 1);
    let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::ReversePath)));
    assert_eq!(
        t.forward.cause.as_ref().map(|r| r.to_string()).as_deref(),
        Some("10: from all iif vlanaaaaaaaaaaa lookup 107")
    );
    assert!(
        t.forward.why.as_deref().unwrap().contains(
            "rule \"32766: from all lookup main\" leads to \"192.168.0.0/16 dev eth0 scope link\", out through eth0."
        ),
        "{:?}",
        t.forward.why
    );
}

/// Kernels with drop reasons answer EINVAL where older ones answered EXDEV: the same
/// explanation, and a word on the errno.
#[test]
fn reverse_path_refusal_reported_as_einval() {
    let mut n = stale(node());
    n.sysctls.0.insert("net.ipv4.conf.all.rp_filter".into(), 1);
    let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::Invalid)));
    let why = t.forward.why.as_deref().unwrap();
    assert!(
        why.starts_with("rp_filter is strict (1) on vlanaaaaaaaaaaa"),
        "{why}"
    );
    assert!(
        why.ends_with("Newer kernels report rp_filter's refusal as EINVAL rather than EXDEV."),
        "{why}"
    );
    assert_eq!(t.forward.cause, t.forward.rule);
    // rp_filter off: EINVAL is something else.
    n.sysctls.0.insert("net.ipv4.conf.all.rp_filter".into(), 0);
    let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::Invalid)));
    assert_eq!(
        t.forward.why.as_deref(),
        Some(
            "The kernel treats the packet as a martian (an invalid source or destination address)."
        )
    );
}

/// A missing `iif vlan.eth.N` rule with rp_filter on: the forward table is right, the
/// way back is not, and the rule that sends it elsewhere is named.
#[test]
fn reverse_path_refusal_without_the_vlan_rule_names_the_main_rule() {
    let mut n = node();
    n.rules.retain(|r| r.iif.as_deref() != Some("vlan.eth.1"));
    let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::ReversePath)));
    assert_eq!(
        t.forward.cause.as_ref().map(|r| r.to_string()).as_deref(),
        Some("32766: from all lookup main")
    );
    assert!(
        t.forward.why.as_deref().unwrap().ends_with(
            "The cause is rule \"32766: from all lookup main\": it sends a packet coming in on vlan.eth.1 to table main, which does not route 192.168.3.219 back through vlanaaaaaaaaaaa."
        ),
        "{:?}",
        t.forward.why
    );
}

/// rp_filter off: the stale rule's packet leaves by pod B's VLAN, and the VPC drops it.
#[test]
fn a_packet_leaving_by_another_pods_vlan_is_dropped_by_the_vpc() {
    let t = trace(&stale(node()), POD_A, BASTION);
    let drop = t.forward.vpc_drop.as_ref().expect("VPC drop");
    assert_eq!((drop.link.as_str(), drop.vlan_id), ("vlan.eth.7", Some(7)));
    assert!(t.reply.is_empty() && !t.works);
    assert_eq!(t.security_groups, Deciders::None);
    assert_eq!(
        t.decided_by,
        "No security group: the VPC drops the packet by its source/destination check before any group sees it."
    );
    assert_eq!(
        t.verdict,
        "The pod's packet goes no further: it leaves by the branch ENI on VLAN 7 (vlan.eth.7), whose only address is 192.168.26.147; its source 192.168.3.219 is not one of them, so the VPC's source/destination check drops it."
    );
}

/// Without its `iif vlan<hash>` rule the strict pod's packet falls to the main table and
/// leaves by eth0, which does not own the pod's address.
#[test]
fn a_strict_pod_leaving_by_the_node_eni_is_dropped_unless_snat() {
    let mut n = node();
    n.rules.retain(|r| r.iif.as_deref() != Some(A));
    let t = trace(&n, POD_A, BASTION);
    assert_eq!(
        t.verdict,
        "The pod's packet goes no further: it leaves by the node ENI eth0, whose addresses are 192.168.1.10, 192.168.7.31; its source 192.168.3.219 is not one of them, so the VPC's source/destination check drops it, unless the CNI's SNAT rewrites the source to the node's address, as it does for destinations outside the VPC."
    );
}

/// Without `iif vlan.eth.1`, the bastion's answer to pod A follows the main table out
/// of eth0 with the bastion's address as its source.
#[test]
fn an_answer_leaving_by_the_node_eni_is_dropped_by_the_vpc() {
    let mut n = node();
    n.rules.retain(|r| r.iif.as_deref() != Some("vlan.eth.1"));
    let t = trace(&n, POD_A, BASTION);
    assert_eq!(t.reply.len(), 1, "not followed past the VPC drop");
    assert_eq!(t.same_path, Some(false));
    assert_eq!(
        t.verdict,
        "The packet reaches 10.0.1.10, but the answer goes no further: it leaves by the node ENI eth0, whose addresses are 192.168.1.10, 192.168.7.31; its source 10.0.1.10 is not one of them, so the VPC's source/destination check drops it."
    );
}

#[test]
fn an_answer_that_leaves_elsewhere_does_not_work() {
    // An answer that ends on another pod's veth.
    let back = Flow {
        iif: Some("vlan.eth.1"),
        src: Some(ip(BASTION)),
        dst: ip(POD_A),
        ipproto: Some(6),
    };
    let to_b = Ok(uni(107, "192.168.3.219/32", None, B));
    let t = explained(&node(), Proto::Tcp, 443, &[(back, to_b)]);
    assert_eq!(t.same_path, Some(false));
    assert_eq!(
        t.verdict,
        "The packet reaches 10.0.1.10, but the answer leaves through vlanbbbbbbbbbbb instead of going back to vlanaaaaaaaaaaa."
    );
}

#[test]
fn an_answer_refused_on_the_way_back() {
    let mut n = node();
    n.routes
        .retain(|r| !(r.table == 101 && r.dst.addr() == ip(POD_A)));
    n.routes.push(Route {
        scope: RouteScope::Universe,
        ..route(101, "192.168.3.219/32", None, None, RouteKind::Unreachable)
    });
    n.pod_addresses
        .insert(A.into(), vec!["192.168.3.219/32".parse().unwrap()]);
    let t = trace(&n, POD_A, BASTION);
    assert_eq!(
        t.reply[0].rule.as_ref().map(|r| r.to_string()).as_deref(),
        Some("10: from all iif vlan.eth.1 lookup 101")
    );
    assert_eq!(t.same_path, Some(false));
    assert_eq!(
        t.verdict,
        "The packet reaches 10.0.1.10, but the node refuses the answer coming in on vlan.eth.1 with EHOSTUNREACH (host unreachable). Rule \"10: from all iif vlan.eth.1 lookup 101\" leads to table 101, whose route \"unreachable 192.168.3.219 table 101\" makes 192.168.3.219 unreachable."
    );
}

#[test]
fn no_route_names_the_table_that_should_have_one() {
    let mut n = node();
    n.routes.retain(|r| !r.is_default());
    let t = trace(&n, POD_A, BASTION);
    assert_eq!(t.forward.table, Some(101));
    assert_eq!(
        t.verdict,
        "The node refuses the pod's packet with ENETUNREACH (no route). No route to 10.0.1.10: rule \"10: from all iif vlanaaaaaaaaaaa lookup 101\" sends the packet to table 101, which has no route for it, and the tables after it (local, main, default) have none either."
    );
}

#[test]
fn forwarding_off_is_said() {
    let mut n = node();
    n.sysctls.0.insert("net.ipv4.ip_forward".into(), 0);
    let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::HostUnreachable)));
    assert_eq!(t.forward.table, Some(101), "the rule that chose the route");
    assert_eq!(
        t.forward.why.as_deref(),
        Some(
            "Forwarding is off (net.ipv4.ip_forward = 0), so the node routes nothing that comes in on vlanaaaaaaaaaaa."
        )
    );
}

#[test]
fn an_unreachable_route_is_named() {
    let mut n = node();
    n.routes.push(Route {
        scope: RouteScope::Universe,
        ..route(101, "10.0.0.0/8", None, None, RouteKind::Unreachable)
    });
    let t = trace(&n, POD_A, BASTION);
    assert_eq!(
        t.forward.error.as_deref(),
        Some("EHOSTUNREACH (host unreachable)")
    );
    assert_eq!(
        t.forward.why.as_deref(),
        Some(
            "Rule \"10: from all iif vlanaaaaaaaaaaa lookup 101\" leads to table 101, whose route \"unreachable 10.0.0.0/8 table 101\" makes 10.0.1.10 unreachable."
        )
    );
}

#[test]
fn a_martian_source_is_named() {
    let n = node();
    let topo = Topology::from_node(&n);
    let flow = Flow {
        iif: Some(O),
        src: Some(ip(NODE_IP)),
        dst: ip(BASTION),
        ipproto: Some(6),
    };
    let l = leg(&n, &topo, &flow, &Err(Refusal::Invalid));
    assert_eq!(
        l.why.as_deref(),
        Some(
            "The source 192.168.1.10 is an address of this node, so the kernel treats a packet from it coming in on eni3bbf5fcab96 as a martian."
        )
    );
}

#[test]
fn leg_summaries_read_as_evidence() {
    let n = node();
    let topo = Topology::from_node(&n);
    let flow = Flow {
        iif: Some(A),
        src: Some(ip(POD_A)),
        dst: ip(BASTION),
        ipproto: None,
    };
    assert_eq!(
        leg(&n, &topo, &flow, &kernel(&n, &flow)).summary(),
        "rule \"10: from all iif vlanaaaaaaaaaaa lookup 101\" picks \"default via 192.168.0.1 dev vlan.eth.1 table 101\""
    );
    assert_eq!(
        leg(&n, &topo, &flow, &Err(Refusal::NoDevice)).summary(),
        "the kernel refuses it with ENODEV (interface down or gone)"
    );
}
