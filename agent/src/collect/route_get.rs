//! Ask the kernel where a packet goes: RTM_GETROUTE for one flow, as
//! `ip route get fibmatch <dst> from <src> iif <dev> mark <m> ipproto <p> dport <n>` does.
//! Nothing is sent on the wire. Many lookups share one rtnetlink socket and go to the
//! kernel in batches (several requests per `sendmsg`; the kernel answers each in turn).

use std::{collections::BTreeMap, net::IpAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage},
};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

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

/// Requests per `sendmsg`. Each answer is a few hundred bytes at most, so a batch stays
/// far below the socket's receive buffer and no answer is dropped (ENOBUFS).
const BATCH: usize = 64;

/// The RTM_GETROUTE request for one flow.
fn request(flow: &Flow) -> RouteMessage {
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
    msg
}

/// Append one request, numbered `seq`, to a batch.
fn append(batch: &mut Vec<u8>, flow: &Flow, seq: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(request(flow))),
    );
    nl.finalize();
    let start = batch.len();
    batch.resize(start + nl.buffer_len(), 0);
    nl.serialize(&mut batch[start..]);
}

/// Look flows up on one rtnetlink socket, [`BATCH`] requests per `sendmsg`; answers in
/// the order of `flows`. `names` maps ifindex to link name for the routes.
///
/// # Errors
/// [`CollectError::Socket`] when the socket cannot be opened, [`CollectError::Lookups`]
/// when it fails or answers something unreadable; a refused lookup is an [`Answer`].
pub fn lookup_all(
    names: &BTreeMap<u32, String>,
    flows: &[Flow],
) -> Result<Vec<Answer>, CollectError> {
    let failed = |source: std::io::Error| CollectError::Lookups { source };
    let mut socket =
        Socket::new(NETLINK_ROUTE).map_err(|source| CollectError::Socket { source })?;
    socket.bind_auto().map_err(failed)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(failed)?;
    let mut answers: Vec<Option<Answer>> = vec![None; flows.len()];
    let mut batch = Vec::new();
    let mut reply: Vec<u8> = Vec::with_capacity(64 * 1024);
    for (first, chunk) in (0..flows.len()).step_by(BATCH).zip(flows.chunks(BATCH)) {
        batch.clear();
        for (i, f) in chunk.iter().enumerate() {
            // Sequence numbers start at 1: the kernel's own messages carry 0.
            append(&mut batch, f, (first + i + 1) as u32);
        }
        socket.send(&batch, 0).map_err(failed)?;
        let mut pending = chunk.len();
        while pending > 0 {
            reply.clear();
            socket.recv(&mut reply, 0).map_err(failed)?;
            let mut rest = &reply[..];
            while !rest.is_empty() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| failed(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
                // Messages are aligned to 4 bytes.
                let len = (msg.header.length as usize + 3) & !3;
                rest = rest.get(len..).unwrap_or_default();
                let answer = match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)) => {
                        routes::from_message(&m, names).ok_or(Refusal::NetUnreachable)
                    }
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        Err(Refusal::from_errno(-e.raw_code()))
                    }
                    _ => continue,
                };
                let slot = (msg.header.sequence_number as usize)
                    .checked_sub(1)
                    .and_then(|i| answers.get_mut(i));
                if let Some(slot @ None) = slot {
                    *slot = Some(answer);
                    pending -= 1;
                }
            }
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or(Err(Refusal::NetUnreachable)))
        .collect())
}

/// Ask the kernel, for every pod, where its packets to the addresses that matter go
/// ([`lookup::questions`]): `ip route get <addr> from <pod ip> iif <host veth>`, and for
/// the node's service addresses also the answer, `ip route get <pod ip> from <addr>`.
///
/// # Errors
/// As [`lookup_all`]; refused lookups are answers.
pub fn pod_lookups(node: &Node, topo: &Topology) -> Result<Vec<Lookup>, CollectError> {
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
    let mut answers = lookup_all(&names, &flows)?.into_iter();
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
