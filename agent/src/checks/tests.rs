//! Every check against a healthy strict node model and the same node with one fault.

use ipnet::IpNet;

use super::{FindingId, Severity, run};
use crate::model::fixtures::rule;
use crate::model::{
    Family, Link, LinkKind, Lookup, Node, OperState, Refusal, Route, RouteKind, RouteScope,
    Sysctls, Topology, fib, lookup,
};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn link(ifindex: u32, name: &str, kind: LinkKind, parent: Option<u32>) -> Link {
    Link {
        vlan_id: name.strip_prefix("vlan.eth.").and_then(|v| v.parse().ok()),
        link_ifindex: parent,
        mtu: Some(9001),
        oper_state: OperState::Up,
        peer_netns_id: (kind == LinkKind::Veth).then_some(0),
        ..Link::new(ifindex, name, kind)
    }
}

fn route(table: u32, dst: &str, gw: Option<&str>, dev: &str, scope: RouteScope) -> Route {
    Route {
        family: Family::Ipv4,
        table,
        dst: net(dst),
        gateway: gw.map(|g| g.parse().unwrap()),
        oif: Some(dev.into()),
        scope,
        kind: RouteKind::Unicast,
        prefsrc: None,
    }
}

const STRICT_VETH: &str = "vlandb72de41212";
const ENI_VETH: &str = "eni3bbf5fcab96";

/// A healthy strict node: trunk eth1, one strict pod on VLAN 1, one ordinary pod.
fn healthy() -> Node {
    let mut sysctls = Sysctls::default();
    for (k, v) in [
        ("net.ipv4.tcp_early_demux", 0),
        ("net.ipv4.ip_forward", 1),
        ("net.ipv4.conf.all.rp_filter", 0),
        ("net.ipv4.conf.eth0.rp_filter", 2),
    ] {
        sysctls.0.insert(k.into(), v);
    }
    Node {
        kernel: "6.12".into(),
        links: vec![
            link(2, "eth0", LinkKind::Device, None),
            link(3, "eth1", LinkKind::Device, None),
            link(10, "vlan.eth.1", LinkKind::Vlan, Some(3)),
            link(11, STRICT_VETH, LinkKind::Veth, Some(2)),
            link(12, ENI_VETH, LinkKind::Veth, Some(2)),
        ],
        routes: vec![
            route(
                254,
                "0.0.0.0/0",
                Some("192.168.0.1"),
                "eth0",
                RouteScope::Universe,
            ),
            route(254, "192.168.7.31/32", None, ENI_VETH, RouteScope::Link),
            route(
                101,
                "0.0.0.0/0",
                Some("192.168.0.1"),
                "vlan.eth.1",
                RouteScope::Universe,
            ),
            route(101, "192.168.0.1/32", None, "vlan.eth.1", RouteScope::Link),
            route(101, "192.168.3.219/32", None, STRICT_VETH, RouteScope::Link),
        ],
        rules: vec![
            rule(10, None, None, Some("vlan.eth.1"), 101),
            rule(10, None, None, Some(STRICT_VETH), 101),
            rule(20, None, None, None, 255),
            rule(512, None, Some("192.168.7.31/32"), None, 254),
            rule(32766, None, None, None, 254),
        ],
        sysctls,
        ..Default::default()
    }
}

/// The healthy strict node, for other checks' tests.
pub(super) fn strict_node() -> Node {
    healthy()
}

/// What a kernel with these rules and routes would answer to sgpath's lookups: the
/// questions `collect` asks, answered by walking the fixture's rules and tables.
fn with_lookups(mut node: Node) -> Node {
    let topo = Topology::from_node(&node);
    let answer = |n: &Node, flow: &fib::Flow<'_>| match fib::select(n, flow).outcome {
        fib::Outcome::Route(r) => Ok(r.clone()),
        fib::Outcome::Refused(e) => Err(e),
        fib::Outcome::NoRoute => Err(Refusal::NetUnreachable),
    };
    node.lookups = lookup::questions(&node, &topo)
        .into_iter()
        .map(|q| {
            let mut l = Lookup {
                host_veth: q.host_veth.clone(),
                pod_ip: q.pod_ip,
                target: q.target.clone(),
                addr: q.addr,
                forward: Err(Refusal::NetUnreachable),
                reply: None,
            };
            l.forward = answer(&node, &l.forward_flow());
            if q.asks_reply() {
                l.reply = Some(answer(&node, &l.reply_flow()));
            }
            l
        })
        .collect();
    node
}

fn local_route(table: u32, addr: &str, dev: &str) -> Route {
    Route {
        kind: RouteKind::Local,
        scope: RouteScope::Host,
        ..route(table, addr, None, dev, RouteScope::Host)
    }
}

/// A dummy interface holding `addr`, with the kernel's local route for it.
fn add_dummy(n: &mut Node, ifindex: u32, name: &str, addr: &str) {
    let mut dummy = link(ifindex, name, LinkKind::Dummy, None);
    dummy.addresses.push(net(&format!("{addr}/32")));
    n.links.push(dummy);
    n.routes.push(local_route(255, &format!("{addr}/32"), name));
}

fn findings(node: &Node) -> Vec<(FindingId, Severity, String)> {
    let node = &with_lookups(node.clone());
    let topo = Topology::from_node(node);
    run(node, &topo)
        .into_iter()
        .map(|f| (f.id, f.severity, f.subject))
        .collect()
}

/// Assert that `node` has exactly one finding, with this id and subject.
fn expect_only(node: &Node, id: FindingId, subject: &str) {
    assert_eq!(only(node), (id, subject.to_string()));
}

/// The only finding of `node`, as (id, subject).
fn only(node: &Node) -> (FindingId, String) {
    let f = findings(node);
    assert_eq!(f.len(), 1, "expected one finding, got {f:?}");
    (f[0].0, f[0].2.clone())
}

#[test]
fn healthy_node_has_no_findings() {
    assert_eq!(findings(&healthy()), []);
}

#[test]
fn tcp_early_demux_with_strict_pods() {
    let mut n = healthy();
    n.sysctls.0.insert("net.ipv4.tcp_early_demux".into(), 1);
    expect_only(
        &n,
        FindingId::TcpEarlyDemuxEnabled,
        "net.ipv4.tcp_early_demux",
    );
}

#[test]
fn tcp_early_demux_without_strict_pods_is_fine() {
    let mut n = healthy();
    n.sysctls.0.insert("net.ipv4.tcp_early_demux".into(), 1);
    n.links.retain(|l| l.name != STRICT_VETH);
    n.rules.retain(|r| {
        r.iif.as_deref() != Some(STRICT_VETH) && r.iif.as_deref() != Some("vlan.eth.1")
    });
    assert!(
        findings(&n)
            .iter()
            .all(|f| f.0 != FindingId::TcpEarlyDemuxEnabled)
    );
}

#[test]
fn missing_iif_rule_of_the_veth() {
    let mut n = healthy();
    n.rules.retain(|r| r.iif.as_deref() != Some(STRICT_VETH));
    expect_only(&n, FindingId::VlanRuleMissing, STRICT_VETH);
}

#[test]
fn missing_iif_rule_of_the_vlan_link() {
    let mut n = healthy();
    n.rules.retain(|r| r.iif.as_deref() != Some("vlan.eth.1"));
    expect_only(&n, FindingId::VlanRuleMissing, "vlan.eth.1");
}

#[test]
fn stale_rule_for_a_deleted_veth() {
    let mut n = healthy();
    n.rules
        .push(rule(10, None, None, Some("vlan0000000000a"), 107));
    expect_only(&n, FindingId::VlanRuleStale, "vlan0000000000a");
}

#[test]
fn stale_rule_sending_a_live_veth_to_the_wrong_table() {
    let mut n = healthy();
    // Pod re-created with the same name; the old rule survived and comes first (#1375).
    n.rules
        .insert(0, rule(10, None, None, Some(STRICT_VETH), 105));
    let topo = Topology::from_node(&n);
    let p = topo.path_of_veth(STRICT_VETH).unwrap();
    // The kernel uses table 105; the pod still lives on VLAN 1.
    assert_eq!(
        (p.route_table, p.vlan_id, p.vlan_link.as_deref()),
        (105, Some(1), Some("vlan.eth.1"))
    );
    expect_only(&n, FindingId::VlanRuleStale, STRICT_VETH);
}

#[test]
fn vlan_table_without_default_route() {
    let mut n = healthy();
    n.routes.retain(|r| !(r.table == 101 && r.is_default()));
    expect_only(&n, FindingId::VlanTableIncomplete, "vlan.eth.1");
}

#[test]
fn vlan_table_without_gateway_route() {
    let mut n = healthy();
    n.routes
        .retain(|r| !(r.table == 101 && r.dst == net("192.168.0.1/32")));
    expect_only(&n, FindingId::VlanTableIncomplete, "vlan.eth.1");
}

#[test]
fn vlan_whose_trunk_is_gone() {
    let mut n = healthy();
    n.links.retain(|l| l.name != "eth1");
    expect_only(&n, FindingId::VlanParentMissing, "vlan.eth.1");
}

/// Someone deleted a live strict pod's `vlan.eth.1`: one page, the missing VLAN link; its
/// `iif vlan.eth.1` rule is the pod's own, not a stale one to delete.
#[test]
fn vlan_link_deleted_under_a_live_pod() {
    let mut n = healthy();
    n.links.retain(|l| l.name != "vlan.eth.1");
    n.routes.retain(|r| r.oif.as_deref() != Some("vlan.eth.1"));
    expect_only(&n, FindingId::VlanParentMissing, "vlan.eth.1");
}

#[test]
fn vlan_whose_trunk_is_down() {
    let mut n = healthy();
    n.links
        .iter_mut()
        .find(|l| l.name == "eth1")
        .unwrap()
        .oper_state = OperState::Down;
    expect_only(&n, FindingId::VlanParentMissing, "vlan.eth.1");
}

#[test]
fn local_rule_still_at_zero() {
    let mut n = healthy();
    n.rules.push(rule(0, None, None, None, 255));
    expect_only(&n, FindingId::LocalRuleMisplaced, "rule lookup local");
}

#[test]
fn local_rule_not_moved_to_twenty() {
    let mut n = healthy();
    n.rules
        .iter_mut()
        .find(|r| r.priority == 20)
        .unwrap()
        .priority = 0;
    expect_only(&n, FindingId::LocalRuleMisplaced, "rule lookup local");
}

#[test]
fn ordinary_pod_without_its_512_rule() {
    let mut n = healthy();
    n.rules.retain(|r| r.priority != 512);
    expect_only(&n, FindingId::PodRouteMissing, "192.168.7.31");
}

#[test]
fn ordinary_pod_without_its_route_known_from_its_namespace() {
    let mut n = healthy();
    n.routes.retain(|r| r.oif.as_deref() != Some(ENI_VETH));
    n.pod_addresses.insert(
        ENI_VETH.into(),
        vec![net("192.168.7.31/32"), net("fe80::1/64")],
    );
    expect_only(&n, FindingId::PodRouteMissing, "192.168.7.31");
}

#[test]
fn rp_filter_strict_on_primary_eni() {
    let mut n = healthy();
    n.sysctls.0.insert("net.ipv4.conf.eth0.rp_filter".into(), 1);
    expect_only(
        &n,
        FindingId::RpFilterStrictPrimary,
        "net.ipv4.conf.eth0.rp_filter",
    );
}

#[test]
fn rp_filter_all_overrides_loose_primary() {
    let mut n = healthy();
    n.sysctls.0.insert("net.ipv4.conf.all.rp_filter".into(), 1);
    n.sysctls.0.insert("net.ipv4.conf.eth0.rp_filter".into(), 0);
    expect_only(
        &n,
        FindingId::RpFilterStrictPrimary,
        "net.ipv4.conf.eth0.rp_filter",
    );
}

#[test]
fn ip_forward_off() {
    let mut n = healthy();
    n.sysctls.0.insert("net.ipv4.ip_forward".into(), 0);
    expect_only(&n, FindingId::IpForwardDisabled, "net.ipv4.ip_forward");
}

#[test]
fn nodelocal_dns_in_strict_mode() {
    let mut n = healthy();
    add_dummy(&mut n, 20, "nodelocaldns", "169.254.20.10");
    expect_only(&n, FindingId::NodelocalDnsStrict, "169.254.20.10");
    let n = with_lookups(n);
    let f = run(&n, &Topology::from_node(&n));
    assert_eq!(
        f[0].evidence,
        [
            "169.254.20.10 is on nodelocaldns".to_string(),
            format!(
                "pod 192.168.3.219 ({STRICT_VETH}): rule \"10: from all iif {STRICT_VETH} lookup 101\" picks \"default via 192.168.0.1 dev vlan.eth.1 table 101\", so its DNS to 169.254.20.10 leaves the node through vlan.eth.1"
            ),
        ]
    );
}

/// The #1662 workaround: `local 169.254.20.10` in the pod's table N+100 and a rule before
/// priority 10 that sends the answer to that table. The kernel delivers it on the node, so
/// the check must not say it leaves (it did, re-deriving from the table alone).
#[test]
fn nodelocal_dns_workaround_is_not_a_finding() {
    let mut n = healthy();
    add_dummy(&mut n, 20, "nodelocaldns", "169.254.20.10");
    n.routes
        .push(local_route(101, "169.254.20.10/32", "nodelocaldns"));
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
    assert_eq!(findings(&n), []);
}

/// Half the workaround: the node delivers the query, but its answer follows the main
/// table out of eth0 instead of going back to the pod.
#[test]
fn nodelocal_dns_without_the_answer_rule() {
    let mut n = healthy();
    add_dummy(&mut n, 20, "nodelocaldns", "169.254.20.10");
    n.routes
        .push(local_route(101, "169.254.20.10/32", "nodelocaldns"));
    expect_only(&n, FindingId::NodelocalDnsStrict, "169.254.20.10");
    let n = with_lookups(n);
    let f = run(&n, &Topology::from_node(&n));
    assert_eq!(
        f[0].evidence[1],
        format!(
            "pod 192.168.3.219 ({STRICT_VETH}): the node delivers its DNS to 169.254.20.10 itself, but for the answer rule \"32766: from all lookup main\" picks \"default via 192.168.0.1 dev eth0\", so it does not go back to {STRICT_VETH}"
        )
    );
}

/// The Pod Identity agent on a strict node (VPC CNI #2797): the strict pod cannot reach
/// it, the ordinary pod can.
#[test]
fn pod_identity_agent_unreachable_from_a_strict_pod() {
    let mut n = healthy();
    add_dummy(&mut n, 21, "pod-id-link0", "169.254.170.23");
    expect_only(&n, FindingId::NodeServiceUnreachable, "192.168.3.219");
    let n = with_lookups(n);
    let f = run(&n, &Topology::from_node(&n));
    assert_eq!(
        f[0].evidence,
        [
            format!(
                "pod 192.168.3.219 behind {STRICT_VETH} is a strict-mode branch pod on vlan.eth.1"
            ),
            format!(
                "169.254.170.23 is on pod-id-link0: rule \"10: from all iif {STRICT_VETH} lookup 101\" picks \"default via 192.168.0.1 dev vlan.eth.1 table 101\", so the pod's traffic to 169.254.170.23 leaves the node through vlan.eth.1"
            ),
        ]
    );
    assert!(
        f[0].remediation
            .contains("POD_SECURITY_GROUP_ENFORCING_MODE=standard")
    );
}

/// Standard mode keeps the local rule at 0: the node delivers node-local addresses to
/// branch pods, so nothing is unreachable.
#[test]
fn pod_identity_agent_in_standard_mode_is_reachable() {
    let mut n = healthy();
    n.links.retain(|l| l.name != STRICT_VETH);
    n.links
        .push(link(11, "eni0a1b2c3d4e5", LinkKind::Veth, Some(2)));
    n.routes.retain(|r| r.oif.as_deref() != Some(STRICT_VETH));
    n.routes.push(route(
        254,
        "192.168.3.219/32",
        None,
        "eni0a1b2c3d4e5",
        RouteScope::Link,
    ));
    n.rules.retain(|r| r.priority != 10 && r.priority != 20);
    n.rules.insert(0, rule(0, None, None, None, 255));
    n.rules
        .push(rule(512, None, Some("192.168.3.219/32"), None, 254));
    n.rules
        .push(rule(1536, Some("192.168.3.219/32"), None, None, 101));
    n.rules.sort_by_key(|r| r.priority);
    add_dummy(&mut n, 21, "pod-id-link0", "169.254.170.23");
    let topo = Topology::from_node(&n);
    assert_eq!(topo.mode, Some(crate::model::EnforcingMode::Standard));
    assert_eq!(findings(&n), []);
}

/// A refused lookup is a refusal, not a route: the evidence says what the kernel said.
#[test]
fn a_refused_service_lookup_is_named() {
    let mut n = healthy();
    add_dummy(&mut n, 21, "pod-id-link0", "169.254.170.23");
    let mut n = with_lookups(n);
    for l in n
        .lookups
        .iter_mut()
        .filter(|l| l.addr.to_string() == "169.254.170.23")
    {
        l.forward = Err(Refusal::ReversePath);
    }
    let f: Vec<_> = run(&n, &Topology::from_node(&n))
        .into_iter()
        .filter(|f| f.id == FindingId::NodeServiceUnreachable)
        .collect();
    assert_eq!(f.len(), 2, "the ordinary pod is refused too: {f:?}");
    assert!(
        f.iter().all(|f| f.evidence[1].ends_with("the kernel refuses it with EXDEV (reverse path filter), so the pod's traffic to 169.254.170.23 is dropped on the node")),
        "{f:?}"
    );
}

#[test]
fn tcp_early_demux_says_what_it_breaks() {
    let mut n = healthy();
    n.sysctls.0.insert("net.ipv4.tcp_early_demux".into(), 1);
    let f = run(&n, &Topology::from_node(&n));
    assert_eq!(
        f[0].evidence,
        [
            "net.ipv4.tcp_early_demux = 1".to_string(),
            "it breaks TCP and HTTP liveness and readiness probes to strict branch pods: the probe leaves eth0 and returns through the trunk".to_string(),
            format!("strict-mode branch pods (1): {STRICT_VETH} (192.168.3.219)"),
        ]
    );
}

#[test]
fn pod_veth_mtu_above_trunk() {
    let mut n = healthy();
    n.links
        .iter_mut()
        .find(|l| l.name == STRICT_VETH)
        .unwrap()
        .mtu = Some(9100);
    expect_only(&n, FindingId::MtuMismatch, STRICT_VETH);
}

#[test]
fn findings_sort_worst_first() {
    let mut n = healthy();
    n.sysctls.0.insert("net.ipv4.tcp_early_demux".into(), 1);
    n.sysctls.0.insert("net.ipv4.ip_forward".into(), 0);
    let f = findings(&n);
    assert_eq!(f[0].1, Severity::Error);
    assert_eq!(f[1].1, Severity::Warning);
}

#[test]
fn ids_are_kebab_case_and_match_serde() {
    for id in FindingId::ALL {
        assert_eq!(serde_json::to_value(id).unwrap(), id.as_str());
    }
}

#[test]
fn vlan_link_down_while_trunk_up() {
    let mut n = healthy();
    n.links
        .iter_mut()
        .find(|l| l.name == "vlan.eth.1")
        .unwrap()
        .oper_state = OperState::Down;
    expect_only(&n, FindingId::VlanParentMissing, "vlan.eth.1");
}

#[test]
fn strict_pod_whose_vlan_link_does_not_exist() {
    let mut n = healthy();
    n.links.retain(|l| l.name != "vlan.eth.1");
    n.routes.retain(|r| r.oif.as_deref() != Some("vlan.eth.1"));
    n.rules.retain(|r| r.iif.as_deref() != Some("vlan.eth.1"));
    expect_only(&n, FindingId::VlanParentMissing, "vlan.eth.1");
}
