//! IPv4 `rp_filter` of every interface from one RTM_GETNETCONF dump (`ip -4 netconf show`),
//! instead of a /proc/sys file per link: on a node with 250 pods that was 500 syscalls and
//! most of the snapshot's system time. netlink-packet-route does not model netconf, so the
//! request and the few attributes read are spelled out here.

use std::collections::BTreeMap;
use std::io;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NlasIterator,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

const RTM_NEWNETCONF: u16 = 80;
const RTM_GETNETCONF: u16 = 82;
const NETCONFA_IFINDEX: u16 = 1;
const NETCONFA_RP_FILTER: u16 = 3;
/// `NETCONFA_IFINDEX_ALL` and `NETCONFA_IFINDEX_DEFAULT`.
const IFINDEX_ALL: i32 = -1;
const IFINDEX_DEFAULT: i32 = -2;
/// `struct netconfmsg` is one byte (the family), padded to 4 (NLMSG_ALIGN).
const NETCONFMSG_LEN: usize = 4;

/// Which configuration a netconf entry holds: `net.ipv4.conf.{all,default,<dev>}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Conf {
    All,
    Default,
    Link(u32),
}

/// `rp_filter` of `all`, `default` and each IPv4-enabled link of this namespace.
///
/// # Errors
/// The socket's, or an error the kernel answered.
pub fn rp_filters() -> io::Result<BTreeMap<Conf, i64>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut req = [0u8; 16 + NETCONFMSG_LEN];
    let mut hdr = NetlinkBuffer::new(&mut req[..]);
    hdr.set_length((16 + NETCONFMSG_LEN) as u32);
    hdr.set_message_type(RTM_GETNETCONF);
    hdr.set_flags(NLM_F_REQUEST | NLM_F_DUMP);
    hdr.set_sequence_number(1);
    req[16] = libc::AF_INET as u8;
    sock.send(&req, 0)?;
    let mut out = BTreeMap::new();
    loop {
        let (buf, _) = sock.recv_from_full()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "netconf dump cut short",
            ));
        }
        let mut at = 0;
        while at < buf.len() {
            let msg = NetlinkBuffer::new_checked(&buf[at..]).map_err(invalid)?;
            match msg.message_type() {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = msg
                        .payload()
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("four bytes")));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                RTM_NEWNETCONF => {
                    if let Some((conf, rp)) = entry(msg.payload())? {
                        out.insert(conf, rp);
                    }
                }
                _ => {}
            }
            at += (msg.length() as usize).next_multiple_of(4);
        }
    }
}

/// The interface and rp_filter of one RTM_NEWNETCONF payload; `None` without either.
fn entry(payload: &[u8]) -> io::Result<Option<(Conf, i64)>> {
    let attrs = payload.get(NETCONFMSG_LEN..).unwrap_or_default();
    let (mut ifindex, mut rp) = (None, None);
    for nla in NlasIterator::new(attrs) {
        let nla = nla.map_err(invalid)?;
        let Ok(v) = <[u8; 4]>::try_from(nla.value()) else {
            continue;
        };
        match nla.kind() {
            NETCONFA_IFINDEX => ifindex = Some(i32::from_ne_bytes(v)),
            NETCONFA_RP_FILTER => rp = Some(i64::from(i32::from_ne_bytes(v))),
            _ => {}
        }
    }
    let conf = match ifindex {
        Some(IFINDEX_ALL) => Conf::All,
        Some(IFINDEX_DEFAULT) => Conf::Default,
        Some(i) if i > 0 => Conf::Link(i as u32),
        _ => return Ok(None),
    };
    Ok(rp.map(|rp| (conf, rp)))
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netconf dump: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `entry` on a payload as the kernel builds it: netconfmsg, then 8-byte attributes.
    #[test]
    fn reads_ifindex_and_rp_filter() {
        let mut p = vec![libc::AF_INET as u8, 0, 0, 0];
        for (kind, v) in [(NETCONFA_IFINDEX, 7i32), (2, 1), (NETCONFA_RP_FILTER, 2)] {
            p.extend_from_slice(&8u16.to_ne_bytes());
            p.extend_from_slice(&kind.to_ne_bytes());
            p.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(entry(&p).unwrap(), Some((Conf::Link(7), 2)));
        p[8..12].copy_from_slice(&IFINDEX_ALL.to_ne_bytes());
        assert_eq!(entry(&p).unwrap(), Some((Conf::All, 2)));
        p[8..12].copy_from_slice(&IFINDEX_DEFAULT.to_ne_bytes());
        assert_eq!(entry(&p).unwrap(), Some((Conf::Default, 2)));
        assert_eq!(entry(&p[..12]).unwrap(), None, "no rp_filter");
    }
}
