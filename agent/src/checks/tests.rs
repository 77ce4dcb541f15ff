//! Every check against a healthy strict node model and the same node with one fault.

use ipnet::IpNet;

use super::{FindingId, Severity, run};
use crate::model::{
    Family, Link, LinkKind, Node, OperState, Route, RouteKind, RouteScope, Rule, RuleAction,
    Sysctls, Topology,
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

fn rule(
    priority: u32,
    src: Option<&str>,
    dst: Option<&str>,
    iif: Option<&str>,
    table: u32,
) -> Rule {
    Rule {
        family: Family::Ipv4,
        priority,
        src: src.map(net),
        dst: dst.map(net),
        iif: iif.map(String::from),
        oif: None,
        fwmark: None,
        fwmask: None,
        ipproto: None,
        action: RuleAction::Lookup,
        invert: false,
        table,
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

fn findings(node: &Node) -> Vec<(FindingId, Severity, String)> {
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
    let mut dummy = link(20, "nodelocaldns", LinkKind::Dummy, None);
    dummy.addresses.push(net("169.254.20.10/32"));
    n.links.push(dummy);
    expect_only(&n, FindingId::NodelocalDnsStrict, "169.254.20.10");
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
