//! Classification from netlink messages: build RTM_NEW* messages as the kernel sends
//! them, convert them with the collectors' `from_message`, classify, check the paths.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlink_packet_route::{
    AddressFamily, IpProtocol,
    link::{InfoData, InfoKind, InfoVlan, LinkAttribute, LinkInfo, LinkMessage, State},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};

use super::{links, routes, rules};
use crate::model::{EnforcingMode, Node, PathKind, TABLE_MAIN, Topology};

fn link(
    index: u32,
    name: &str,
    kind: Option<InfoKind>,
    link_attr: Option<u32>,
    netnsid: Option<i32>,
) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes = vec![
        LinkAttribute::IfName(name.into()),
        LinkAttribute::Mtu(9001),
        LinkAttribute::OperState(State::Up),
    ];
    if let Some(i) = link_attr {
        m.attributes.push(LinkAttribute::Link(i));
    }
    if let Some(n) = netnsid {
        m.attributes.push(LinkAttribute::LinkNetNsId(n));
    }
    match kind {
        Some(InfoKind::Vlan) => {
            let id = name.rsplit('.').next().unwrap().parse().unwrap();
            m.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vlan),
                LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(id)])),
            ]));
        }
        Some(k) => m
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(k)])),
        None => {}
    }
    m
}

fn route(
    table: u32,
    dst: Option<(IpAddr, u8)>,
    gw: Option<IpAddr>,
    oif: u32,
    scope: RouteScope,
) -> RouteMessage {
    let mut m = RouteMessage::default();
    let v6 = dst.map(|(a, _)| a.is_ipv6()).unwrap_or(false) || gw.is_some_and(|g| g.is_ipv6());
    m.header.address_family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    // As the kernel does: the u8 field says RT_TABLE_COMPAT above 255, RTA_TABLE has the id.
    m.header.table = if table > 255 { 252 } else { table as u8 };
    m.header.scope = scope;
    m.header.kind = RouteType::Unicast;
    m.attributes.push(RouteAttribute::Table(table));
    if let Some((a, len)) = dst {
        m.header.destination_prefix_length = len;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(a)));
    }
    if let Some(g) = gw {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    m.attributes.push(RouteAttribute::Oif(oif));
    m
}

fn host(ip: &str) -> Option<(IpAddr, u8)> {
    let a: IpAddr = ip.parse().unwrap();
    Some((a, if a.is_ipv4() { 32 } else { 128 }))
}

#[derive(Default)]
struct R<'a> {
    v6: bool,
    prio: u32,
    src: Option<&'a str>,
    dst: Option<&'a str>,
    iif: Option<&'a str>,
    ipproto: Option<IpProtocol>,
    table: u32,
}

fn rule(r: R<'_>) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = if r.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.header.action = RuleAction::ToTable;
    m.header.table = if r.table > 255 { 252 } else { r.table as u8 };
    m.attributes.push(RuleAttribute::Table(r.table));
    if r.prio != 0 {
        m.attributes.push(RuleAttribute::Priority(r.prio));
    }
    if let Some(s) = r.src {
        let a: IpAddr = s.parse().unwrap();
        m.header.src_len = if a.is_ipv4() { 32 } else { 128 };
        m.attributes.push(RuleAttribute::Source(a));
    }
    if let Some(d) = r.dst {
        let a: IpAddr = d.parse().unwrap();
        m.header.dst_len = if a.is_ipv4() { 32 } else { 128 };
        m.attributes.push(RuleAttribute::Destination(a));
    }
    if let Some(i) = r.iif {
        m.attributes.push(RuleAttribute::Iifname(i.into()));
    }
    if let Some(p) = r.ipproto {
        m.attributes.push(RuleAttribute::IpProtocol(p));
    }
    m
}

fn node(l: &[LinkMessage], rt: &[RouteMessage], ru: &[RuleMessage]) -> Node {
    let links: Vec<_> = l.iter().map(links::from_message).collect();
    let names: BTreeMap<u32, String> = links.iter().map(|l| (l.ifindex, l.name.clone())).collect();
    Node {
        kernel: "test".into(),
        routes: rt
            .iter()
            .filter_map(|m| routes::from_message(m, &names))
            .collect(),
        rules: ru.iter().filter_map(rules::from_message).collect(),
        links,
        ..Default::default()
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

const GW: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1));

/// A strict-mode node as in VPC CNI PR #1376: trunk eth1, `vlan.eth.1`, `vlanaad671050aa`,
/// table 101, both iif rules and the local rule at 20; plus an ordinary pod on a secondary
/// ENI of network card 1 whose table id (10102) does not fit in a u8.
fn strict_node() -> Node {
    node(
        &[
            link(1, "lo", None, None, None),
            link(2, "eth0", None, None, None),
            link(3, "eth1", None, None, None),
            link(10, "vlan.eth.1", Some(InfoKind::Vlan), Some(3), None),
            link(
                11,
                "vlanaad671050aa",
                Some(InfoKind::Veth),
                Some(2),
                Some(0),
            ),
            link(12, "eni5e4f2c1b0a9", Some(InfoKind::Veth), Some(2), Some(1)),
        ],
        &[
            route(101, None, Some(GW), 10, RouteScope::Universe),
            route(101, host("192.168.0.1"), None, 10, RouteScope::Link),
            route(101, host("192.168.26.147"), None, 11, RouteScope::Link),
            route(254, host("192.168.40.7"), None, 12, RouteScope::Link),
            route(10102, None, Some(GW), 2, RouteScope::Universe),
        ],
        &[
            rule(R {
                prio: 10,
                iif: Some("vlan.eth.1"),
                table: 101,
                ..Default::default()
            }),
            rule(R {
                prio: 10,
                iif: Some("vlanaad671050aa"),
                table: 101,
                ..Default::default()
            }),
            rule(R {
                prio: 20,
                table: 255,
                ..Default::default()
            }),
            rule(R {
                prio: 512,
                dst: Some("192.168.40.7"),
                table: TABLE_MAIN,
                ..Default::default()
            }),
            rule(R {
                prio: 1536,
                src: Some("192.168.40.7"),
                table: 10102,
                ..Default::default()
            }),
        ],
    )
}

#[test]
fn strict_branch_pod_takes_its_vlan_table_and_both_iif_rules() {
    let t = Topology::from_node(&strict_node());
    assert_eq!(t.mode, Some(EnforcingMode::Strict));
    assert_eq!(t.trunks.len(), 1);
    assert_eq!(
        (t.trunks[0].name.as_str(), t.trunks[0].vlans.as_slice()),
        ("eth1", &[1u16][..])
    );
    let p = t.path_of_veth("vlanaad671050aa").unwrap();
    assert_eq!(p.kind, PathKind::BranchEni);
    assert_eq!(p.pod_ip, ip("192.168.26.147"));
    assert_eq!(
        (
            p.vlan_id,
            p.vlan_link.as_deref(),
            p.trunk.as_deref(),
            p.route_table
        ),
        (Some(1), Some("vlan.eth.1"), Some("eth1"), 101)
    );
    let sel: Vec<_> = p
        .rules
        .iter()
        .map(|r| (r.priority, r.selector.as_str(), r.table))
        .collect();
    assert_eq!(
        sel,
        [
            (10, "from all iif vlan.eth.1", 101),
            (10, "from all iif vlanaad671050aa", 101)
        ]
    );
}

#[test]
fn table_ids_above_255_survive_for_secondary_eni_pods() {
    let n = strict_node();
    assert!(
        n.routes.iter().any(|r| r.table == 10102),
        "RTA_TABLE must override the u8 header"
    );
    let t = Topology::from_node(&n);
    let p = t.path_of_veth("eni5e4f2c1b0a9").unwrap();
    assert_eq!(
        (p.kind, p.pod_ip, p.route_table, p.vlan_id),
        (PathKind::NodeEni, ip("192.168.40.7"), 10102, None)
    );
    assert_eq!(
        p.rules.iter().map(|r| r.priority).collect::<Vec<_>>(),
        [512, 1536]
    );
}

#[test]
fn ipv6_strict_pod_and_rules_are_classified() {
    let pod = "2600:1f14::5";
    let n = node(
        &[
            link(3, "eth1", None, None, None),
            link(20, "vlan.eth.2", Some(InfoKind::Vlan), Some(3), None),
            link(
                21,
                "vlan0123456789a",
                Some(InfoKind::Veth),
                Some(2),
                Some(3),
            ),
        ],
        &[
            route(
                102,
                None,
                Some(IpAddr::V6("fe80:ec2::1".parse().unwrap())),
                20,
                RouteScope::Universe,
            ),
            route(102, host(pod), None, 21, RouteScope::Link),
        ],
        &[
            rule(R {
                v6: true,
                prio: 0,
                src: Some("fe80:ec2::1"),
                ipproto: Some(IpProtocol::Other(58)),
                table: 255,
                ..Default::default()
            }),
            rule(R {
                v6: true,
                prio: 10,
                iif: Some("vlan.eth.2"),
                table: 102,
                ..Default::default()
            }),
            rule(R {
                v6: true,
                prio: 10,
                iif: Some("vlan0123456789a"),
                table: 102,
                ..Default::default()
            }),
        ],
    );
    assert_eq!(n.rules[0].selector(), "from fe80:ec2::1 ipproto ipv6-icmp");
    let t = Topology::from_node(&n);
    let p = t.path_of_veth("vlan0123456789a").unwrap();
    assert_eq!(p.pod_ip, Some(IpAddr::V6(pod.parse::<Ipv6Addr>().unwrap())));
    assert_eq!((p.vlan_id, p.route_table, p.rules.len()), (Some(2), 102, 2));
}

#[test]
fn vlan_link_whose_parent_is_gone_has_no_trunk() {
    let n = node(
        &[
            link(30, "vlan.eth.4", Some(InfoKind::Vlan), Some(99), None),
            link(
                31,
                "vlan1111111111a",
                Some(InfoKind::Veth),
                Some(2),
                Some(0),
            ),
        ],
        &[route(104, host("192.168.9.9"), None, 31, RouteScope::Link)],
        &[rule(R {
            prio: 10,
            iif: Some("vlan1111111111a"),
            table: 104,
            ..Default::default()
        })],
    );
    let t = Topology::from_node(&n);
    assert!(t.trunks.is_empty());
    assert_eq!(t.vlan_links[0].trunk, None);
    assert_eq!(t.vlan_links[0].parent_ifindex, Some(99));
    let p = t.path_of_veth("vlan1111111111a").unwrap();
    assert_eq!(
        (p.vlan_link.as_deref(), p.trunk.as_deref(), p.vlan_id),
        (Some("vlan.eth.4"), None, Some(4))
    );
}

#[test]
fn veth_with_no_peer_and_no_route_is_a_path_without_ip() {
    let n = node(
        &[link(40, "eni9999999999a", Some(InfoKind::Veth), None, None)],
        &[],
        &[],
    );
    let t = Topology::from_node(&n);
    assert_eq!(t.host_veths[0].peer_netns_id, None);
    let p = t.path_of_veth("eni9999999999a").unwrap();
    assert_eq!(
        (p.kind, p.pod_ip, p.route_table, p.rules.len()),
        (PathKind::NodeEni, None, TABLE_MAIN, 0)
    );
    assert_eq!(t.mode, None);
}

#[test]
fn standard_branch_pod_is_found_by_its_1536_rule_into_a_vlan_table() {
    let n = node(
        &[link(
            50,
            "eni0a1b2c3d4e5",
            Some(InfoKind::Veth),
            Some(2),
            Some(0),
        )],
        &[route(254, host("192.168.5.5"), None, 50, RouteScope::Link)],
        &[
            rule(R {
                prio: 512,
                dst: Some("192.168.5.5"),
                table: 254,
                ..Default::default()
            }),
            rule(R {
                prio: 1536,
                src: Some("192.168.5.5"),
                table: 103,
                ..Default::default()
            }),
        ],
    );
    let t = Topology::from_node(&n);
    let p = t.path_of_veth("eni0a1b2c3d4e5").unwrap();
    assert_eq!(
        (
            p.kind,
            p.mode,
            p.vlan_id,
            p.vlan_link.clone(),
            p.route_table
        ),
        (
            PathKind::BranchEni,
            Some(EnforcingMode::Standard),
            Some(3),
            None,
            103
        )
    );
    assert_eq!(t.mode, Some(EnforcingMode::Standard));
}

#[test]
fn non_cni_veths_and_vlans_are_not_paths() {
    let n = node(
        &[
            link(60, "cilium_host", Some(InfoKind::Veth), Some(61), None),
            link(62, "eth0.100", Some(InfoKind::Vlan), Some(2), None),
        ],
        &[],
        &[],
    );
    let t = Topology::from_node(&n);
    assert!(t.paths.is_empty() && t.vlan_links.is_empty());
}

/// The trunk moved to another namespace: the kernel keeps the VLAN, sets
/// IFLA_LINK_NETNSID, and IFLA_LINK is an ifindex over there, which here may belong to
/// an unrelated link (ifindex 3 below).
#[test]
fn vlan_link_whose_parent_moved_to_another_netns_has_no_trunk() {
    let n = node(
        &[
            link(3, "eni0000000000a", Some(InfoKind::Veth), Some(2), Some(0)),
            link(30, "vlan.eth.4", Some(InfoKind::Vlan), Some(3), Some(1)),
        ],
        &[],
        &[],
    );
    let t = Topology::from_node(&n);
    assert!(t.trunks.is_empty(), "{:?}", t.trunks);
    assert_eq!(
        (
            t.vlan_links[0].trunk.clone(),
            t.vlan_links[0].parent_elsewhere
        ),
        (None, true)
    );
}

#[test]
fn inverted_rule_is_not_a_from_pod_rule() {
    let mut m = rule(R {
        prio: 1536,
        src: Some("192.168.5.5"),
        table: 103,
        ..Default::default()
    });
    m.header.flags = netlink_packet_route::rule::RuleFlags::Invert;
    let r = rules::from_message(&m).unwrap();
    assert_eq!(r.selector(), "not from 192.168.5.5");
    assert!(!r.is_from_host("192.168.5.5".parse().unwrap()));
}

#[test]
fn ecmp_default_route_names_its_first_hop() {
    use netlink_packet_route::route::RouteNextHop;
    let mut m = route(254, None, None, 2, RouteScope::Universe);
    m.attributes
        .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
    let hop = |ifindex: u32, gw: &str| {
        let mut h = RouteNextHop::default();
        h.interface_index = ifindex;
        h.attributes = vec![RouteAttribute::Gateway(RouteAddress::from(
            gw.parse::<IpAddr>().unwrap(),
        ))];
        h
    };
    m.attributes.push(RouteAttribute::MultiPath(vec![
        hop(2, "192.168.0.1"),
        hop(3, "192.168.0.2"),
    ]));
    let n = node(
        &[
            link(2, "ens5", None, None, None),
            link(3, "ens6", None, None, None),
        ],
        &[m],
        &[],
    );
    assert_eq!(n.routes[0].oif.as_deref(), Some("ens5"));
    assert_eq!(Topology::from_node(&n).primary_eni.as_deref(), Some("ens5"));
}
