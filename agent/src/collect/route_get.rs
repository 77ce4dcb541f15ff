//! Ask the kernel where a packet goes: RTM_GETROUTE for one flow, as
//! `ip route get fibmatch <dst> from <src> iif <dev> mark <m> ipproto <p> dport <n>` does.
//! Nothing is sent on the wire.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage},
};
use rtnetlink::Handle;

use super::{CollectError, routes};
use crate::model::Route;

/// One flow to look up.
#[derive(Clone, Debug)]
pub struct Flow {
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    /// Input interface: the lookup is done as for a packet received on it (forwarding,
    /// rp_filter included). `None` looks up as a locally generated packet.
    pub iif: Option<u32>,
    pub mark: Option<u32>,
    /// IP protocol number (6 tcp, 17 udp) and destination port, for rules that select on them.
    pub ipproto: Option<u8>,
    pub dport: Option<u16>,
}

/// The kernel's answer: the route the lookup matched (in its real table), or the errno
/// the kernel returned (EXDEV: rp_filter refused it; ENETUNREACH: no route).
pub type Answer = Result<Route, i32>;

/// Look one flow up.
///
/// # Errors
/// [`CollectError::Netlink`] only when the socket fails; a refused lookup is an `Answer`.
pub async fn lookup(
    handle: &Handle,
    names: &std::collections::BTreeMap<u32, String>,
    flow: &Flow,
) -> Result<Answer, CollectError> {
    let mut msg = RouteMessage::default();
    let v6 = flow.dst.is_ipv6();
    msg.header.address_family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    msg.header.destination_prefix_length = if v6 { 128 } else { 32 };
    // FIB_MATCH: return the route entry that matched; LOOKUP_TABLE: with its real table.
    msg.header.flags = RouteFlags::FibMatch | RouteFlags::LookupTable;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(flow.dst)));
    if let Some(src) = flow.src {
        msg.header.source_prefix_length = if v6 { 128 } else { 32 };
        msg.attributes
            .push(RouteAttribute::Source(RouteAddress::from(src)));
    }
    if let Some(iif) = flow.iif {
        msg.attributes.push(RouteAttribute::Iif(iif));
    }
    if let Some(mark) = flow.mark {
        msg.attributes.push(RouteAttribute::Mark(mark));
    }
    if let Some(p) = flow.ipproto {
        msg.attributes.push(RouteAttribute::IpProto(p));
    }
    if let Some(port) = flow.dport {
        msg.attributes.push(RouteAttribute::Dport(port));
    }
    match handle
        .route()
        .get(msg)
        .execute()
        .try_collect::<Vec<RouteMessage>>()
        .await
    {
        Ok(msgs) => match msgs.first().and_then(|m| routes::from_message(m, names)) {
            Some(r) => Ok(Ok(r)),
            None => Ok(Err(libc::ENETUNREACH)),
        },
        Err(rtnetlink::Error::NetlinkError(e)) => Ok(Err(-e.raw_code())),
        Err(source) => Err(CollectError::Netlink {
            what: "route lookup",
            source,
        }),
    }
}

/// Open a connection, look several flows up, close it.
///
/// # Errors
/// [`CollectError`] when the socket cannot be opened or fails.
pub async fn lookup_all(
    names: &std::collections::BTreeMap<u32, String>,
    flows: &[Flow],
) -> Result<Vec<Answer>, CollectError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| CollectError::Socket { source })?;
    let conn = tokio::spawn(conn);
    let mut out = Vec::new();
    for f in flows {
        out.push(lookup(&handle, names, f).await?);
    }
    conn.abort();
    Ok(out)
}
