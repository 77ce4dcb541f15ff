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
use crate::model::{Answer, Lookup, Node, Refusal, Topology, lookup};

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

/// Lookups in flight at once on one connection: the kernel answers each RTM_GETROUTE as
/// it reads it, so keeping a few queued saves a round trip through the runtime per lookup.
const IN_FLIGHT: usize = 32;

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
            None => Ok(Err(Refusal::NetUnreachable)),
        },
        Err(rtnetlink::Error::NetlinkError(e)) => Ok(Err(Refusal::from_errno(-e.raw_code()))),
        Err(source) => Err(CollectError::Netlink {
            what: "route lookup",
            source,
        }),
    }
}

/// Look several flows up on one connection, a few in flight at once; answers in order.
///
/// # Errors
/// [`CollectError::Netlink`] when the socket fails.
pub async fn lookup_many(
    handle: &Handle,
    names: &std::collections::BTreeMap<u32, String>,
    flows: &[Flow],
) -> Result<Vec<Answer>, CollectError> {
    use futures::StreamExt;
    futures::stream::iter(flows)
        .map(|f| lookup(handle, names, f))
        .buffered(IN_FLIGHT)
        .try_collect()
        .await
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
    let out = lookup_many(&handle, names, flows).await;
    conn.abort();
    out
}

/// Ask the kernel, for every pod, where its packets to the addresses that matter go
/// ([`lookup::questions`]): `ip route get <addr> from <pod ip> iif <host veth>`, and for
/// the node's service addresses also the answer, `ip route get <pod ip> from <addr>`.
///
/// # Errors
/// [`CollectError::Netlink`] when the socket fails; refused lookups are answers.
pub async fn pod_lookups(
    handle: &Handle,
    node: &Node,
    topo: &Topology,
) -> Result<Vec<Lookup>, CollectError> {
    let names = node
        .links
        .iter()
        .map(|l| (l.ifindex, l.name.clone()))
        .collect();
    let questions = lookup::questions(node, topo);
    let mut flows = Vec::with_capacity(questions.len() * 2);
    for q in &questions {
        flows.push(Flow {
            src: Some(q.pod_ip),
            dst: q.addr,
            iif: Some(q.ifindex),
            mark: None,
            ipproto: None,
            dport: None,
        });
        if q.asks_reply() {
            flows.push(Flow {
                src: Some(q.addr),
                dst: q.pod_ip,
                iif: None,
                mark: None,
                ipproto: None,
                dport: None,
            });
        }
    }
    let mut answers = lookup_many(handle, &names, &flows).await?.into_iter();
    let mut out = Vec::with_capacity(questions.len());
    for q in questions {
        let Some(forward) = answers.next() else { break };
        let reply = if q.asks_reply() { answers.next() } else { None };
        out.push(Lookup {
            host_veth: q.host_veth,
            pod_ip: q.pod_ip,
            target: q.target,
            addr: q.addr,
            forward,
            reply,
        });
    }
    Ok(out)
}
