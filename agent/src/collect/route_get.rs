//! Ask the kernel where a packet goes: RTM_GETROUTE for one flow, as
//! `ip route get fibmatch <dst> from <src> iif <dev> mark <m> ipproto <p> dport <n>` does.
//! Nothing is sent on the wire. Lookups go to the kernel in batches (several requests per
//! `sendmsg`; the kernel answers each in turn), a long list on two sockets at once.

use std::{collections::BTreeMap, net::IpAddr};

use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage},
};
use rtnetlink::sys::Socket;

use super::{CollectError, netlink, routes};
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

/// Lookups a second worker thread must have before it is started: below this the thread
/// and its socket cost more than they save.
const PER_WORKER: usize = 256;

/// Look flows up, [`BATCH`] requests per `sendmsg`; answers in the order of `flows`.
/// `names` maps ifindex to link name for the routes. The kernel answers a lookup in the
/// asking thread, so a long list is split between two threads, each with a socket opened
/// here (in this thread's namespace).
///
/// # Errors
/// [`CollectError::Socket`] when a socket cannot be opened, [`CollectError::Lookups`]
/// when it fails or answers something unreadable; a refused lookup is an [`Answer`].
pub fn lookup_all(
    names: &BTreeMap<u32, String>,
    flows: &[Flow],
) -> Result<Vec<Answer>, CollectError> {
    if flows.is_empty() {
        return Ok(Vec::new());
    }
    let socket = || netlink::socket().map_err(|source| CollectError::Socket { source });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 || flows.len() < 2 * PER_WORKER {
        return lookup_on(&socket()?, names, flows);
    }
    // Two halves, each on its own socket and thread; answers in the flows' order.
    let (first, second) = flows.split_at(flows.len().div_ceil(2));
    let (a, b) = (socket()?, socket()?);
    std::thread::scope(|s| {
        let later = s.spawn(move || lookup_on(&b, names, second));
        let mut answers = lookup_on(&a, names, first)?;
        let rest = later
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        answers.extend(rest);
        Ok(answers)
    })
}

/// [`lookup_all`]'s work on one socket.
fn lookup_on(
    socket: &Socket,
    names: &BTreeMap<u32, String>,
    flows: &[Flow],
) -> Result<Vec<Answer>, CollectError> {
    let failed = |source: std::io::Error| CollectError::Lookups { source };
    let mut answers: Vec<Option<Answer>> = vec![None; flows.len()];
    let mut batch = Vec::new();
    let mut reply: Vec<u8> = Vec::with_capacity(netlink::RECV_BUFFER);
    for (first, chunk) in (0..flows.len()).step_by(BATCH).zip(flows.chunks(BATCH)) {
        batch.clear();
        for (i, f) in chunk.iter().enumerate() {
            // Sequence numbers start at 1: the kernel's own messages carry 0.
            let seq = (first + i + 1) as u32;
            netlink::append(
                &mut batch,
                RouteNetlinkMessage::GetRoute(request(f)),
                seq,
                0,
            );
        }
        socket.send(&batch, 0).map_err(failed)?;
        let mut pending = chunk.len();
        while pending > 0 {
            netlink::recv_each(socket, &mut reply, |msg| {
                let answer = match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)) => {
                        routes::from_message(&m, names).ok_or(Refusal::NetUnreachable)
                    }
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        Err(Refusal::from_errno(-e.raw_code()))
                    }
                    _ => return,
                };
                let slot = (msg.header.sequence_number as usize)
                    .checked_sub(1)
                    .and_then(|i| answers.get_mut(i));
                if let Some(slot @ None) = slot {
                    *slot = Some(answer);
                    pending -= 1;
                }
            })
            .map_err(failed)?;
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// Long enough for two workers; asks this namespace's loopback routes (no packet is
    /// sent). Every third flow names an input interface that does not exist, so the kernel
    /// refuses it: a refusal anywhere but at those places means answers changed order.
    #[test]
    fn a_long_list_split_between_two_sockets_keeps_its_order() {
        let flows: Vec<Flow> = (0..3 * PER_WORKER)
            .map(|i| Flow {
                src: None,
                dst: Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250 + 1) as u8).into(),
                iif: (i % 3 == 0).then_some(u32::MAX - 1),
                mark: None,
                ipproto: None,
                dport: None,
            })
            .collect();
        let answers = lookup_all(&BTreeMap::new(), &flows).unwrap();
        assert_eq!(answers.len(), flows.len());
        for (i, a) in answers.iter().enumerate() {
            match a {
                Ok(route) => {
                    assert!(i % 3 != 0, "flow {i} (unknown iif) answered {route:?}");
                    assert_eq!(route.dst.to_string(), "127.0.0.0/8", "flow {i}");
                }
                Err(refusal) => assert_eq!(i % 3, 0, "flow {i} refused: {refusal:?}"),
            }
        }
    }
}
