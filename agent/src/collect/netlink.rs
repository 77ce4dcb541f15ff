//! A plain rtnetlink socket, for the two reads where rtnetlink's connection task (a
//! channel send per message) costs more than the work: the route dump (10,000 messages on
//! a busy node) and batched route lookups. Both run on worker threads, so the socket is
//! always opened by the caller: a netlink socket belongs to the namespace of the thread
//! that opens it, and only the caller is sure to be in the node's.

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A bound rtnetlink socket in the calling thread's namespace.
///
/// # Errors
/// The I/O error of socket(2), bind(2) or connect(2).
pub fn socket() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Append one request numbered `seq` (with `flags` besides NLM_F_REQUEST) to `batch`.
pub fn append(batch: &mut Vec<u8>, msg: RouteNetlinkMessage, seq: u32, flags: u16) {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let start = batch.len();
    batch.resize(start + nl.buffer_len(), 0);
    nl.serialize(&mut batch[start..]);
}

/// Receive one datagram into `buf` and hand each message in it to `each`.
///
/// # Errors
/// The I/O error of recv(2), or `InvalidData` for a message that does not parse.
pub fn recv_each(
    socket: &Socket,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(NetlinkMessage<RouteNetlinkMessage>),
) -> std::io::Result<()> {
    buf.clear();
    socket.recv(buf, 0)?;
    let mut rest = &buf[..];
    while !rest.is_empty() {
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        // Messages are aligned to 4 bytes.
        let len = (msg.header.length as usize + 3) & !3;
        rest = rest.get(len..).unwrap_or_default();
        each(msg);
    }
    Ok(())
}

/// Receive buffer: a dump sends up to 32 KiB per datagram.
pub const RECV_BUFFER: usize = 64 * 1024;

/// Run one dump request to its end and return its messages.
///
/// # Errors
/// The I/O error of the socket, or the kernel's refusal as an OS error (EAFNOSUPPORT for
/// IPv6 on a kernel without it).
pub fn dump(
    socket: &Socket,
    request: RouteNetlinkMessage,
) -> std::io::Result<Vec<RouteNetlinkMessage>> {
    const SEQ: u32 = 1;
    let mut batch = Vec::new();
    append(&mut batch, request, SEQ, NLM_F_DUMP);
    socket.send(&batch, 0)?;
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(RECV_BUFFER);
    let mut end: Option<std::io::Result<()>> = None;
    while end.is_none() {
        recv_each(socket, &mut buf, |msg| {
            if msg.header.sequence_number != SEQ || end.is_some() {
                return;
            }
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Done(_) => end = Some(Ok(())),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    end = Some(Err(std::io::Error::from_raw_os_error(-e.raw_code())))
                }
                _ => {}
            }
        })?;
    }
    end.unwrap_or(Ok(())).map(|()| out)
}
