//! Builders for the model's unit tests: links, routes and rules as `ip` would print them,
//! shared by the trace, ENI, lookup and FIB tests so each test module holds only its node.

use std::net::IpAddr;

use super::{Family, Link, LinkKind, OperState, Route, RouteKind, RouteScope, Rule, RuleAction};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An up link; a `vlan.eth.N` name gives it VLAN id N, a veth gets a peer in netns 0.
pub fn link(ifindex: u32, name: &str, kind: LinkKind, parent: Option<u32>, addr: &[&str]) -> Link {
    Link {
        vlan_id: name.strip_prefix("vlan.eth.").and_then(|v| v.parse().ok()),
        link_ifindex: parent,
        oper_state: OperState::Up,
        peer_netns_id: (kind == LinkKind::Veth).then_some(0),
        addresses: addr.iter().map(|a| a.parse().unwrap()).collect(),
        ..Link::new(ifindex, name, kind)
    }
}

/// An IPv4 route; scope link without a gateway, universe with one.
pub fn route(table: u32, dst: &str, gw: Option<&str>, dev: Option<&str>, kind: RouteKind) -> Route {
    Route {
        family: Family::Ipv4,
        table,
        dst: dst.parse().unwrap(),
        gateway: gw.map(ip),
        oif: dev.map(String::from),
        scope: if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        },
        kind,
        prefsrc: None,
    }
}

/// A unicast route out of `dev`.
pub fn uni(table: u32, dst: &str, gw: Option<&str>, dev: &str) -> Route {
    route(table, dst, gw, Some(dev), RouteKind::Unicast)
}

/// An IPv4 `lookup` rule.
pub fn rule(
    priority: u32,
    src: Option<&str>,
    dst: Option<&str>,
    iif: Option<&str>,
    table: u32,
) -> Rule {
    Rule {
        family: Family::Ipv4,
        priority,
        src: src.map(|s| s.parse().unwrap()),
        dst: dst.map(|s| s.parse().unwrap()),
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
