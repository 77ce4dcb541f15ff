//! Routes of every table over rtnetlink (`ip route show table all`, `ip -6 route show table all`).

use std::collections::BTreeMap;

use ipnet::IpNet;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope as NlScope, RouteType},
};
use rtnetlink::sys::Socket;

use super::{CollectError, netlink};
use crate::model::{Family, Route, RouteKind, RouteScope};

/// Dump the routes of all tables, both families (RTM_GETROUTE, NLM_F_DUMP, table unspec),
/// on `socket` (see [`netlink::socket`]), as the kernel's messages: [`from_messages`]
/// names their links. Blocking: [`super::node`] runs it on a thread of its own while it
/// reads the rest.
///
/// # Errors
/// [`CollectError::Dump`] when the IPv4 dump fails; a failed IPv6 dump (IPv6 disabled)
/// gives no v6 routes.
pub fn dump(socket: &Socket) -> Result<Vec<RouteMessage>, CollectError> {
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        match netlink::dump(socket, RouteNetlinkMessage::GetRoute(req)) {
            Ok(msgs) => routes.extend(msgs.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(m) => Some(m),
                _ => None,
            })),
            Err(_) if family == AddressFamily::Inet6 => {}
            Err(source) => {
                return Err(CollectError::Dump {
                    what: "routes",
                    source,
                });
            }
        }
    }
    Ok(routes)
}

/// Convert dumped messages; `names` maps ifindex to link name.
pub fn from_messages(msgs: &[RouteMessage], names: &BTreeMap<u32, String>) -> Vec<Route> {
    msgs.iter().filter_map(|m| from_message(m, names)).collect()
}

/// Convert one RTM_NEWROUTE message; `names` maps ifindex to link name.
pub fn from_message(msg: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<Route> {
    let family = match msg.header.address_family {
        AddressFamily::Inet => Family::Ipv4,
        AddressFamily::Inet6 => Family::Ipv6,
        _ => return None,
    };
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut prefsrc = None;
    // RTA_TABLE carries the real id; the u8 header field says 252 (RT_TABLE_COMPAT) above 255.
    let mut table = u32::from(msg.header.table);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = ip(a),
            RouteAttribute::Gateway(a) => gateway = ip(a),
            RouteAttribute::PrefSource(a) => prefsrc = ip(a),
            RouteAttribute::Oif(i) => {
                oif = Some(names.get(i).cloned().unwrap_or_else(|| format!("if{i}")))
            }
            RouteAttribute::Table(t) => table = *t,
            // ECMP (`nexthop via ... dev ...`): name the first hop's device and gateway.
            RouteAttribute::MultiPath(hops) => {
                if let Some(hop) = hops.first() {
                    oif = oif.or_else(|| {
                        Some(
                            names
                                .get(&hop.interface_index)
                                .cloned()
                                .unwrap_or_else(|| format!("if{}", hop.interface_index)),
                        )
                    });
                    gateway = gateway.or_else(|| {
                        hop.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(g) => ip(g),
                            _ => None,
                        })
                    });
                }
            }
            _ => {}
        }
    }
    let dst = match (dst, family) {
        (Some(a), _) => IpNet::new(a, msg.header.destination_prefix_length).ok()?,
        (None, Family::Ipv4) => IpNet::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0).ok()?,
        (None, Family::Ipv6) => IpNet::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0).ok()?,
    };
    Some(Route {
        family,
        table,
        dst,
        gateway,
        oif,
        scope: scope(msg.header.scope),
        kind: kind(msg.header.kind),
        prefsrc,
    })
}

fn ip(a: &RouteAddress) -> Option<std::net::IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

fn scope(s: NlScope) -> RouteScope {
    match s {
        NlScope::Universe => RouteScope::Universe,
        NlScope::Site => RouteScope::Site,
        NlScope::Link => RouteScope::Link,
        NlScope::Host => RouteScope::Host,
        NlScope::NoWhere => RouteScope::Nowhere,
        other => RouteScope::Other(u8::from(other)),
    }
}

fn kind(k: RouteType) -> RouteKind {
    match k {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local => RouteKind::Local,
        RouteType::Broadcast => RouteKind::Broadcast,
        RouteType::Anycast => RouteKind::Anycast,
        RouteType::Multicast => RouteKind::Multicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Unreachable => RouteKind::Unreachable,
        RouteType::Prohibit => RouteKind::Prohibit,
        RouteType::Throw => RouteKind::Throw,
        _ => RouteKind::Other,
    }
}
