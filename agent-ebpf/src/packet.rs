//! Decisions the path and drop programs make, as plain functions over the bytes of an IP
//! header, so they are unit-tested on the host with real packets. No side effects.

/// An IPv4 or IPv6 address as the maps key it: IPv6 as is, IPv4 mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodAddr {
    pub octets: [u8; 16],
}

impl PodAddr {
    /// The IPv4-mapped form of `a.b.c.d`.
    pub const fn v4(o: [u8; 4]) -> PodAddr {
        PodAddr {
            octets: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
            ],
        }
    }
}

/// How many header bytes the programs copy out of a packet: an IPv6 header plus the first
/// 16 bytes of TCP (ports and flags), more than IPv4 without options needs.
pub const HEADER_BYTES: usize = 56;

/// IP protocol numbers the programs look into.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// The DNS port.
pub const DNS_PORT: u16 = 53;

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// ICMP destination unreachable, code port unreachable: what a host sends back for a UDP
/// datagram (or, with some firewalls' REJECT, a SYN) to a port nothing listens on.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;

/// Source, destination and length of one IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHeader {
    pub src: PodAddr,
    pub dst: PodAddr,
    /// The packet's length by its own header (IPv4 total length, IPv6 40 + payload length),
    /// so bytes compare across hooks whatever link-layer header the skb still carries.
    pub len: u32,
    /// Ports and flags of a TCP or UDP packet whose transport header follows the IP header
    /// directly: IPv4 without options and not a later fragment, IPv6 without extension
    /// headers. For an ICMPv4 port unreachable, the ports of the datagram it refuses, seen
    /// from the refusing side (`sport` the refused port), flags [`REFUSAL_FLAGS`]. `None` for
    /// everything else (the connection probes skip it).
    pub l4: Option<L4>,
}

/// The transport header fields the connection probes use. Six bytes, no niche: the
/// kernel rejects the BTF LLVM writes for `Option<IpHeader>` when a field with invalid
/// values (a bool) moves its tag ("Invalid member bits_offset").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4 {
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for UDP); [`REFUSAL_FLAGS`] for an ICMP port unreachable.
    pub flags: u8,
}

/// `L4::flags` of an ICMP port unreachable: every TCP flag, RST included, so a real TCP
/// packet with these flags is a refusal too (it resets).
pub const REFUSAL_FLAGS: u8 = 0xff;

/// What a packet means to the unanswered-connection probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Opens a connection that expects an answer: a TCP SYN (without ACK), or a DNS query
    /// (UDP to port 53; TCP to 53 is a SYN of kind [`ConnKind::Dns`]).
    Request(ConnKind),
    /// Answers one: a SYN-ACK, or a UDP datagram from port 53.
    Answer,
    /// Refuses one: a TCP RST, or an ICMP port unreachable, from the server. Nothing listens
    /// on the port, but the network (security groups included) let the request through and
    /// the answer back.
    Refused,
}

/// How a tracked connection was answered (`ConnState::answered`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    /// Nothing yet.
    None = 0,
    /// A SYN-ACK or a DNS reply.
    Accepted = 1,
    /// A RST or an ICMP port unreachable: the port is closed.
    Refused = 2,
}

impl From<u8> for Answer {
    fn from(v: u8) -> Answer {
        match v {
            1 => Answer::Accepted,
            2 => Answer::Refused,
            _ => Answer::None,
        }
    }
}

/// Which kind of connection a request opens.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnKind {
    /// A TCP connection (SYN) to any port but 53.
    Syn = 1,
    /// A DNS query: UDP to 53, or a TCP SYN to 53.
    Dns = 2,
}

impl TryFrom<u8> for ConnKind {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(ConnKind::Syn),
            2 => Ok(ConnKind::Dns),
            other => Err(other),
        }
    }
}

impl L4 {
    /// Whether this packet opens or answers a tracked connection; `None` for the rest of
    /// the stream (the common case: no map is touched).
    #[inline(always)]
    pub fn signal(&self) -> Option<Signal> {
        let kind = if self.dport == DNS_PORT {
            ConnKind::Dns
        } else {
            ConnKind::Syn
        };
        if self.flags == REFUSAL_FLAGS {
            return Some(Signal::Refused);
        }
        match self.proto {
            PROTO_TCP if self.flags & TCP_RST != 0 => Some(Signal::Refused),
            PROTO_TCP if self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN => Some(Signal::Request(kind)),
            PROTO_TCP if self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => {
                Some(Signal::Answer)
            }
            PROTO_UDP if self.dport == DNS_PORT => Some(Signal::Request(ConnKind::Dns)),
            PROTO_UDP if self.sport == DNS_PORT => Some(Signal::Answer),
            _ => None,
        }
    }
}

/// A tracked connection, named from its client's side: the same key for the request and
/// its answer, whichever way the packet goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub client: PodAddr,
    pub server: PodAddr,
    pub client_port: u16,
    pub server_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl ConnKey {
    /// The connection a request opens: its source is the client.
    #[inline(always)]
    pub fn of_request(ip: &IpHeader, l4: &L4) -> ConnKey {
        ConnKey {
            client: ip.src,
            server: ip.dst,
            client_port: l4.sport,
            server_port: l4.dport,
            proto: l4.proto,
            _pad: [0; 3],
        }
    }

    /// The connection an answer belongs to: its destination is the client.
    #[inline(always)]
    pub fn of_answer(ip: &IpHeader, l4: &L4) -> ConnKey {
        ConnKey {
            client: ip.dst,
            server: ip.src,
            client_port: l4.dport,
            server_port: l4.sport,
            proto: l4.proto,
            _pad: [0; 3],
        }
    }
}

/// The transport header at `h[at..]` of a TCP or UDP packet whose transport bytes
/// (`payload`, by the IP header's own length) hold what is read: ports and flags of TCP (14
/// bytes), ports of UDP (8). A shorter packet's copied bytes beyond its end are not its own.
#[inline(always)]
fn l4_at(h: &[u8; HEADER_BYTES], at: usize, proto: u8, payload: u32) -> Option<L4> {
    let needs = match proto {
        PROTO_TCP => 14,
        PROTO_UDP => 8,
        _ => return None,
    };
    if payload < needs {
        return None;
    }
    Some(L4 {
        proto,
        sport: u16::from_be_bytes([h[at], h[at + 1]]),
        dport: u16::from_be_bytes([h[at + 2], h[at + 3]]),
        flags: if proto == PROTO_TCP { h[at + 13] } else { 0 },
    })
}

/// Bytes of an ICMPv4 port unreachable that [`icmp_refusal`] reads: its 20-byte IP header,
/// the 8-byte ICMP header, the quoted 20-byte IPv4 header and the quoted ports.
const ICMP_REFUSAL_BYTES: u32 = 20 + 8 + 20 + 4;

/// An ICMPv4 port unreachable at `h[20..]` (after a 20-byte IPv4 header of total length
/// `len`) about a TCP or UDP datagram between the same two hosts: that datagram's ports,
/// swapped so that the refusal keys its connection as an answer does. What proves it:
/// - the ICMP is long enough (by its own header) to hold the quoted header and ports,
///   checked before any quoted byte is read (a short packet's copied bytes beyond its end
///   are not its own);
/// - the quoted header has no options (its ports at a constant offset);
/// - the ICMP's source is the quoted destination (only the server itself refuses: a
///   router's or firewall's ICMP stays unmatched, and the request unanswered) and the ICMP's
///   destination is the quoted source (it goes back to the client that sent the datagram,
///   not to a third host whose connection it would close).
///
/// ICMPv6 quotes sit beyond the bytes copied: not matched.
#[inline(always)]
fn icmp_refusal(h: &[u8; HEADER_BYTES], len: u32) -> Option<L4> {
    if len < ICMP_REFUSAL_BYTES {
        return None;
    }
    if h[20] != ICMP_DEST_UNREACH || h[21] != ICMP_PORT_UNREACH || h[28] != 0x45 {
        return None;
    }
    let proto = h[28 + 9];
    let from_server = h[12] == h[44] && h[13] == h[45] && h[14] == h[46] && h[15] == h[47];
    let to_client = h[16] == h[40] && h[17] == h[41] && h[18] == h[42] && h[19] == h[43];
    if !from_server || !to_client || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return None;
    }
    Some(L4 {
        proto,
        sport: u16::from_be_bytes([h[50], h[51]]),
        dport: u16::from_be_bytes([h[48], h[49]]),
        flags: REFUSAL_FLAGS,
    })
}

/// Whether `a` is an address no pod owns alone: IPv6 link-local, multicast or unspecified,
/// IPv4 0.0.0.0. A pod sends these (neighbour discovery, DAD) without them being anyone's.
#[inline(always)]
pub fn is_link_scoped(a: &PodAddr) -> bool {
    let o = &a.octets;
    let v4 = o[10] == 0xff && o[11] == 0xff && o[..10] == [0; 10];
    if v4 {
        return o[12] == 0 && o[13] == 0 && o[14] == 0 && o[15] == 0;
    }
    (o[0] == 0xfe && o[1] & 0xc0 == 0x80) || o[0] == 0xff || *o == [0; 16]
}

/// Which tracepoint saw a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Receive,
    Transmit,
}

/// Where a packet was seen: the interface's role and the hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// A pod's host veth received it: it comes from the pod.
    VethReceive,
    /// A pod's host veth sends it: it goes to the pod.
    VethTransmit,
    /// It leaves the node by a node ENI or `vlan.eth.N`.
    UplinkTransmit,
}

/// The site of a packet `hook` saw on an interface of `role` (`crate::IfaceRole` as
/// stored in `IFACES`), or `None`: an uplink's receive side tells nothing (answers are
/// matched on the host veth), and an interface of no role is not probed.
#[inline(always)]
pub fn site(hook: Hook, role: u8) -> Option<Site> {
    let veth = role == crate::IfaceRole::HostVeth as u8;
    let uplink = role == crate::IfaceRole::Uplink as u8;
    match hook {
        Hook::Receive if veth => Some(Site::VethReceive),
        Hook::Transmit if veth => Some(Site::VethTransmit),
        Hook::Transmit if uplink => Some(Site::UplinkTransmit),
        _ => None,
    }
}

/// `SOCK_STREAM` and `SOCK_DGRAM` (`sock.sk_type`), and `TCP_SYN_SENT` (`skc_state`).
pub const SOCK_STREAM: u16 = 1;
pub const SOCK_DGRAM: u16 = 2;
pub const TCP_SYN_SENT: u8 = 2;

/// Whether a packet the node sends from a socket of this type, protocol, state and
/// destination port (big-endian, 0 when unconnected) may be a request `conns` tracks: a
/// TCP socket sends SYNs only in SYN_SENT; a connected UDP socket's port is known. Anything
/// else (an unconnected UDP socket, raw sockets) may be: its packet is read.
#[inline(always)]
pub fn node_may_request(sk_type: u16, protocol: u16, state: u8, dport_be: u16) -> bool {
    const TCP: u16 = PROTO_TCP as u16;
    const UDP: u16 = PROTO_UDP as u16;
    match (sk_type, protocol) {
        (SOCK_STREAM, TCP) => state == TCP_SYN_SENT,
        (SOCK_DGRAM, UDP) => dport_be == 0 || u16::from_be(dport_be) == DNS_PORT,
        _ => true,
    }
}

/// Whose request a SYN or DNS query is, and which pod it is handed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestOwner {
    /// The path whose request it is: the pod's own (`FromPod`), or the node's connection to
    /// the pod (`ToPod`).
    pub path: Option<u32>,
    pub direction: Direction,
    /// The path whose pod the SYN is handed to (`syn_in`).
    pub in_path: Option<u32>,
}

/// Decides a request's owner. `veth_path`: the path of the host veth it crossed (its pod's
/// address checked; `None` on an uplink); `dst_path`: the path of its destination address
/// (looked up only on an uplink); `has_socket`: the skb still carries its socket (only the
/// node's own packets do; forwarded ones, the bastion's or another pod's, do not).
#[inline(always)]
pub fn request_owner(
    site: Site,
    veth_path: Option<u32>,
    dst_path: Option<u32>,
    has_socket: bool,
    tcp: bool,
) -> RequestOwner {
    match site {
        Site::VethReceive => RequestOwner {
            path: veth_path,
            direction: Direction::FromPod,
            in_path: None,
        },
        Site::VethTransmit | Site::UplinkTransmit => {
            let dst = veth_path.or(dst_path);
            RequestOwner {
                path: if has_socket { dst } else { None },
                direction: Direction::ToPod,
                in_path: if site == Site::VethTransmit && tcp {
                    dst
                } else {
                    None
                },
            }
        }
    }
}

/// `TCP_ESTABLISHED` and `TCP_CLOSE` (`skc_state`), `ECONNREFUSED` (`sk_err`).
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_CLOSE: i32 = 7;
pub const ECONNREFUSED: i32 = 111;

/// Whether an answer or refusal seen on a host veth settles the connection it keys, given
/// the entry's protocol, path and direction. Not for the node's own TCP requests to a pod
/// (a path, `ToPod`: only the node's packets open those): the pod's SYN-ACK crossing its
/// veth is not the node receiving it (a strict pod's answer still leaves by its VLAN,
/// crosses the VPC and comes back in on the node ENI, where `tcp_early_demux` can lose it).
/// Their answer is the node's socket leaving SYN_SENT ([`node_socket_answer`]).
#[inline(always)]
pub fn veth_answer_counts(proto: u8, path: u32, direction: u8) -> bool {
    !(proto == PROTO_TCP && path != crate::NO_PATH && direction == Direction::ToPod as u8)
}

/// What a node TCP socket's state change from `old` to `new` says about its connection's
/// request, with `sk_err` at the time: SYN_SENT -> ESTABLISHED, the SYN-ACK reached the
/// socket (answered); SYN_SENT -> CLOSE with ECONNREFUSED, a RST or ICMP port unreachable
/// did (refused); anything else (the application gave up, a timeout, an ICMP from a router)
/// says nothing.
#[inline(always)]
pub fn node_socket_answer(old: i32, new: i32, sk_err: i32) -> Option<Answer> {
    if old != TCP_SYN_SENT as i32 {
        return None;
    }
    match new {
        TCP_ESTABLISHED => Some(Answer::Accepted),
        TCP_CLOSE if sk_err == ECONNREFUSED => Some(Answer::Refused),
        _ => None,
    }
}

/// What a packet on a host veth is to that veth's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// The pod's own (received from it with its address, or sent to its address).
    Own,
    /// Received from the pod with another routable address: counted as foreign on the veth's
    /// path, nowhere else.
    Foreign,
    /// Not the path's business (link-local chatter, a packet to another address).
    Ignore,
    /// The veth's pod address is not known yet (a new pod before its address is read, or a
    /// pod whose address sgpath cannot read): counted as forwarded on the veth's path, never
    /// as foreign, and it opens or answers no connection (nothing says whose it is).
    Unverified,
}

/// Whether a pod address slot is unset: `PATH_PODS` holds zeros for a path whose pod IP is
/// not known (no address is all zeros: IPv4 is mapped, `::` is nobody's).
#[inline(always)]
pub fn is_unset(pod: &PodAddr) -> bool {
    pod.octets == [0; 16]
}

/// Attributes a packet a host veth received from its pod (`from_pod`) or hands to it, by
/// the pod-side address: the source on receive, the destination on transmit. An unset pod
/// address ([`is_unset`]) makes nothing foreign: the pod is not known yet, so nothing it
/// sends can be told from its own.
#[inline(always)]
pub fn attribute(from_pod: bool, pod: &PodAddr, ip: &IpHeader) -> Attribution {
    let addr = if from_pod { &ip.src } else { &ip.dst };
    if is_unset(pod) {
        return if is_link_scoped(addr) {
            Attribution::Ignore
        } else {
            Attribution::Unverified
        };
    }
    if addr == pod {
        Attribution::Own
    } else if from_pod && !is_link_scoped(addr) {
        Attribution::Foreign
    } else {
        Attribution::Ignore
    }
}

/// Parses the IP header at the start of `h` (the skb's network header). `None` for anything
/// that is not IPv4 or IPv6.
#[inline(always)]
pub fn parse_ip(h: &[u8; HEADER_BYTES]) -> Option<IpHeader> {
    match h[0] >> 4 {
        4 => {
            // Constant offsets only (the verifier checks stack reads): IHL 5, fragment
            // offset 0.
            let plain = h[0] & 0x0f == 5 && h[6] & 0x1f == 0 && h[7] == 0;
            let len = u16::from_be_bytes([h[2], h[3]]) as u32;
            Some(IpHeader {
                src: PodAddr::v4([h[12], h[13], h[14], h[15]]),
                dst: PodAddr::v4([h[16], h[17], h[18], h[19]]),
                len,
                l4: match (plain, h[9]) {
                    (false, _) => None,
                    (true, PROTO_ICMP) => icmp_refusal(h, len),
                    (true, proto) => l4_at(h, 20, proto, len.saturating_sub(20)),
                },
            })
        }
        6 => {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            let mut i = 0;
            while i < 16 {
                src[i] = h[8 + i];
                dst[i] = h[24 + i];
                i += 1;
            }
            let payload = u16::from_be_bytes([h[4], h[5]]) as u32;
            Some(IpHeader {
                src: PodAddr { octets: src },
                dst: PodAddr { octets: dst },
                len: 40 + payload,
                l4: l4_at(h, 40, h[6], payload),
            })
        }
        _ => None,
    }
}

/// Which way a packet goes relative to a pod.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToPod = 0,
    FromPod = 1,
}

impl TryFrom<u8> for Direction {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            0 => Ok(Direction::ToPod),
            1 => Ok(Direction::FromPod),
            other => Err(other),
        }
    }
}

/// Where a drop happened, by the network namespace of the skb's device.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsRole {
    /// The node's own namespace (where sgpath runs).
    Node = 1,
    /// A pod's namespace, the far end of a host veth.
    Pod = 2,
}

impl TryFrom<u8> for NetnsRole {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(NetnsRole::Node),
            2 => Ok(NetnsRole::Pod),
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_requests_are_read_only_when_they_may_be_one() {
        let est = 1u8; // TCP_ESTABLISHED
        assert!(node_may_request(SOCK_STREAM, 6, TCP_SYN_SENT, 0));
        assert!(!node_may_request(SOCK_STREAM, 6, est, 443u16.to_be()));
        // A connected UDP socket: its port says it; an unconnected one may send to 53.
        assert!(node_may_request(SOCK_DGRAM, 17, 1, 53u16.to_be()));
        assert!(!node_may_request(SOCK_DGRAM, 17, 1, 7200u16.to_be()));
        assert!(node_may_request(SOCK_DGRAM, 17, 7, 0));
        // Raw sockets (a hand-made SYN) and other protocols are read.
        assert!(node_may_request(3, 6, 7, 0));
        assert!(node_may_request(SOCK_DGRAM, 1, 7, 0));
        // MPTCP (262) is no TCP socket by truncation.
        assert!(node_may_request(SOCK_STREAM, 262, est, 0));
    }

    fn pad(bytes: &[u8]) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[..bytes.len()].copy_from_slice(bytes);
        h
    }

    #[test]
    fn parses_a_real_ipv4_udp_header() {
        // 192.168.3.219 -> 169.254.20.10, UDP, total length 92 (captured with tcpdump -xx).
        let h = pad(&[
            0x45, 0x00, 0x00, 0x5c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 192, 168, 3,
            219, 169, 254, 20, 10, 0xd3, 0x3f, 0x00, 0x35,
        ]);
        let ip = parse_ip(&h).unwrap();
        assert_eq!(ip.src, PodAddr::v4([192, 168, 3, 219]));
        assert_eq!(ip.dst, PodAddr::v4([169, 254, 20, 10]));
        assert_eq!(ip.len, 92);
    }

    #[test]
    fn parses_an_ipv6_header() {
        let mut b = vec![0x60, 0, 0, 0, 0x00, 0x10, 17, 64];
        let src: [u8; 16] = [0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst: [u8; 16] = [0xfd, 0, 0xe, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x23];
        b.extend(src);
        b.extend(dst);
        let ip = parse_ip(&pad(&b)).unwrap();
        assert_eq!(ip.src.octets, src);
        assert_eq!(ip.dst.octets, dst);
        assert_eq!(ip.len, 56);
    }

    /// 192.168.3.219:41234 -> 10.0.1.10:80, TCP SYN (IPv4, no options), then the SYN-ACK.
    fn syn(flags: u8, sport: u16, dport: u16) -> [u8; HEADER_BYTES] {
        let mut b = vec![
            0x45, 0x00, 0x00, 0x3c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 192, 168, 3,
            219, 10, 0, 1, 10,
        ];
        b.extend(sport.to_be_bytes());
        b.extend(dport.to_be_bytes());
        b.extend([0, 0, 0, 1, 0, 0, 0, 0, 0xa0, flags, 0xfa, 0xf0]);
        pad(&b)
    }

    #[test]
    fn tcp_syn_opens_and_syn_ack_answers() {
        let ip = parse_ip(&syn(0x02, 41234, 80)).unwrap();
        let l4 = ip.l4.unwrap();
        assert_eq!((l4.proto, l4.sport, l4.dport), (PROTO_TCP, 41234, 80));
        assert_eq!(l4.signal(), Some(Signal::Request(ConnKind::Syn)));
        let ack_ip = parse_ip(&syn(0x12, 80, 41234)).unwrap();
        let ack = ack_ip.l4.unwrap();
        assert_eq!(ack.signal(), Some(Signal::Answer));
        // The SYN-ACK (addresses swapped in the test packet too) keys the same connection.
        let mut reply = ack_ip;
        (reply.src, reply.dst) = (ip.dst, ip.src);
        assert_eq!(
            ConnKey::of_answer(&reply, &ack),
            ConnKey::of_request(&ip, &l4)
        );
        assert_eq!(ConnKey::of_request(&ip, &l4).server_port, 80);
        // The rest of the stream (ACK, PSH|ACK, FIN|ACK) is nothing to the probes.
        for flags in [0x10, 0x18, 0x11] {
            assert_eq!(
                parse_ip(&syn(flags, 41234, 80))
                    .unwrap()
                    .l4
                    .unwrap()
                    .signal(),
                None
            );
        }
        // A SYN to 53 opens a DNS connection.
        assert_eq!(
            parse_ip(&syn(0x02, 41234, 53))
                .unwrap()
                .l4
                .unwrap()
                .signal(),
            Some(Signal::Request(ConnKind::Dns))
        );
    }

    #[test]
    fn udp_dns_query_and_answer() {
        let query = parse_ip(&pad(&[
            0x45, 0x00, 0x00, 0x5c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 192, 168, 3,
            219, 169, 254, 20, 10, 0xd3, 0x3f, 0x00, 0x35,
        ]))
        .unwrap();
        assert_eq!(
            query.l4.unwrap().signal(),
            Some(Signal::Request(ConnKind::Dns))
        );
        let answer = parse_ip(&pad(&[
            0x45, 0x00, 0x00, 0x6c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 169, 254, 20,
            10, 192, 168, 3, 219, 0x00, 0x35, 0xd3, 0x3f,
        ]))
        .unwrap();
        assert_eq!(answer.l4.unwrap().signal(), Some(Signal::Answer));
    }

    #[test]
    fn no_transport_header_behind_options_or_fragments() {
        let mut h = syn(0x02, 41234, 80);
        h[0] = 0x46; // IHL 6: options
        assert_eq!(parse_ip(&h).unwrap().l4, None);
        let mut h = syn(0x02, 41234, 80);
        h[7] = 0x10; // a later fragment
        assert_eq!(parse_ip(&h).unwrap().l4, None);
    }

    #[test]
    fn ipv6_tcp_ports() {
        let mut b = vec![0x60, 0, 0, 0, 0x00, 0x14, PROTO_TCP, 64];
        b.extend([0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        b.extend([0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        b.extend(443u16.to_be_bytes());
        b.extend(8443u16.to_be_bytes());
        b.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02]);
        let l4 = parse_ip(&pad(&b)).unwrap().l4.unwrap();
        assert_eq!((l4.sport, l4.dport), (443, 8443));
        assert_eq!(l4.signal(), Some(Signal::Request(ConnKind::Syn)));
    }

    #[test]
    fn ignores_what_is_not_ip() {
        // An ARP request's first bytes (hardware type 1).
        assert_eq!(parse_ip(&pad(&[0x00, 0x01, 0x08, 0x00, 6, 4])), None);
    }

    #[test]
    fn rst_and_icmp_port_unreachable_refuse_the_request_they_answer() {
        let req_ip = parse_ip(&syn(0x02, 41234, 80)).unwrap();
        let request = ConnKey::of_request(&req_ip, &req_ip.l4.unwrap());
        // RST|ACK from the server: refused, keyed like the SYN-ACK would be.
        let mut rst_ip = parse_ip(&syn(0x14, 80, 41234)).unwrap();
        (rst_ip.src, rst_ip.dst) = (req_ip.dst, req_ip.src);
        let rst = rst_ip.l4.unwrap();
        assert_eq!(rst.signal(), Some(Signal::Refused));
        assert_eq!(ConnKey::of_answer(&rst_ip, &rst), request);
        // A bare RST too.
        assert_eq!(
            parse_ip(&syn(0x04, 80, 41234))
                .unwrap()
                .l4
                .unwrap()
                .signal(),
            Some(Signal::Refused)
        );
        // ICMP port unreachable from 10.0.1.10 quoting a UDP datagram 192.168.3.219:5353 ->
        // 10.0.1.10:53.
        let icmp = |src: [u8; 4], code: u8| {
            let mut b = vec![
                0x45, 0, 0, 56, 0, 0, 0, 0, 64, PROTO_ICMP, 0, 0, src[0], src[1], src[2], src[3],
                192, 168, 3, 219, 3, code, 0, 0, 0, 0, 0, 0,
            ];
            b.extend([
                0x45, 0, 0, 40, 0, 0, 0, 0, 64, PROTO_UDP, 0, 0, 192, 168, 3, 219, 10, 0, 1, 10,
            ]);
            b.extend(5353u16.to_be_bytes());
            b.extend(53u16.to_be_bytes());
            parse_ip(&pad(&b)).unwrap()
        };
        let refused = icmp([10, 0, 1, 10], 3);
        let l4 = refused.l4.unwrap();
        assert_eq!(l4.signal(), Some(Signal::Refused));
        let query = ConnKey {
            client: PodAddr::v4([192, 168, 3, 219]),
            server: PodAddr::v4([10, 0, 1, 10]),
            client_port: 5353,
            server_port: 53,
            proto: PROTO_UDP,
            _pad: [0; 3],
        };
        assert_eq!(ConnKey::of_answer(&refused, &l4), query);
        // From a router, or another code (host unreachable, admin prohibited): no refusal.
        assert_eq!(icmp([10, 0, 0, 1], 3).l4, None);
        assert_eq!(icmp([10, 0, 1, 10], 1).l4, None);
        assert_eq!(icmp([10, 0, 1, 10], 13).l4, None);
    }

    /// An ICMP port unreachable from 10.0.1.10 to `to`, quoting a UDP datagram
    /// 192.168.3.219:5353 -> 10.0.1.10:53, `len` bytes long by its own header.
    fn icmp_to(to: [u8; 4], len: u16) -> [u8; HEADER_BYTES] {
        let mut b = vec![0x45, 0];
        b.extend(len.to_be_bytes());
        b.extend([0, 0, 0, 0, 64, PROTO_ICMP, 0, 0, 10, 0, 1, 10]);
        b.extend(to);
        b.extend([3, 3, 0, 0, 0, 0, 0, 0]);
        b.extend([
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, PROTO_UDP, 0, 0, 192, 168, 3, 219, 10, 0, 1, 10,
        ]);
        b.extend(5353u16.to_be_bytes());
        b.extend(53u16.to_be_bytes());
        pad(&b)
    }

    #[test]
    fn an_icmp_refusal_goes_back_to_the_client_it_quotes() {
        let client = [192, 168, 3, 219];
        let ok = parse_ip(&icmp_to(client, 56)).unwrap().l4.unwrap();
        assert_eq!((ok.sport, ok.dport, ok.flags), (53, 5353, REFUSAL_FLAGS));
        // Sent to a third host: it would close a connection that host never opened here.
        assert_eq!(parse_ip(&icmp_to([192, 168, 3, 7], 56)).unwrap().l4, None);
        assert_eq!(parse_ip(&icmp_to([10, 0, 1, 10], 56)).unwrap().l4, None);
    }

    #[test]
    fn a_short_icmp_is_no_refusal() {
        let client = [192, 168, 3, 219];
        // Exactly the bytes read (headers and the quoted ports) is enough ...
        assert!(parse_ip(&icmp_to(client, 52)).unwrap().l4.is_some());
        // ... one less, or an ICMP header alone (the copied bytes beyond its end are
        // another packet's), is not, whatever those bytes say.
        for len in [51, 28, 0] {
            assert_eq!(parse_ip(&icmp_to(client, len)).unwrap().l4, None, "{len}");
        }
    }

    #[test]
    fn a_short_tcp_or_udp_packet_has_no_transport_header() {
        // A SYN whose total length leaves 13 bytes of TCP: its flags byte is not its own.
        let mut h = syn(0x02, 41234, 80);
        h[2..4].copy_from_slice(&33u16.to_be_bytes());
        assert_eq!(parse_ip(&h).unwrap().l4, None);
        h[2..4].copy_from_slice(&34u16.to_be_bytes());
        assert!(parse_ip(&h).unwrap().l4.is_some());
        // UDP: 8 bytes of header.
        let mut udp = pad(&[
            0x45, 0x00, 0x00, 27, 0, 0, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 192, 168, 3, 219, 10,
            0, 1, 10, 0xd3, 0x3f, 0x00, 0x35,
        ]);
        assert_eq!(parse_ip(&udp).unwrap().l4, None);
        udp[3] = 28;
        assert_eq!(
            parse_ip(&udp).unwrap().l4.unwrap().signal(),
            Some(Signal::Request(ConnKind::Dns))
        );
    }

    /// A path whose pod IP is not known yet (an unset `PATH_PODS` slot): its veth's packets
    /// are counted, never foreign, whatever their source; link-local chatter stays ignored.
    #[test]
    fn an_unknown_pod_address_counts_nothing_as_foreign() {
        let unset = PodAddr::default();
        assert!(is_unset(&unset));
        assert!(!is_unset(&PodAddr::v4([0, 0, 0, 0])));
        let first = parse_ip(&syn(0x02, 41234, 80)).unwrap();
        assert_eq!(attribute(true, &unset, &first), Attribution::Unverified);
        let mut other = first;
        other.src = PodAddr::v4([192, 168, 3, 7]);
        assert_eq!(attribute(true, &unset, &other), Attribution::Unverified);
        let mut to_pod = first;
        (to_pod.src, to_pod.dst) = (first.dst, first.src);
        assert_eq!(attribute(false, &unset, &to_pod), Attribution::Unverified);
        let mut nd = first;
        nd.src = PodAddr {
            octets: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        };
        assert_eq!(attribute(true, &unset, &nd), Attribution::Ignore);
    }

    /// A new pod's first packets: once its address is in its slot (written before its veth
    /// is probed), they are its own from the first one.
    #[test]
    fn a_new_pods_first_packets_are_its_own() {
        let pod = PodAddr::v4([192, 168, 3, 219]);
        let first = parse_ip(&syn(0x02, 41234, 80)).unwrap();
        assert_eq!(attribute(true, &pod, &first), Attribution::Own);
        assert_ne!(attribute(true, &pod, &first), Attribution::Foreign);
    }

    #[test]
    fn a_veth_counts_its_pods_address_only() {
        let pod = PodAddr::v4([192, 168, 3, 219]);
        let own = parse_ip(&syn(0x02, 41234, 80)).unwrap();
        assert_eq!(attribute(true, &pod, &own), Attribution::Own);
        let mut spoofed = own;
        spoofed.src = PodAddr::v4([192, 168, 3, 7]);
        assert_eq!(attribute(true, &pod, &spoofed), Attribution::Foreign);
        // Link-local, multicast and unspecified sources are nobody's.
        for a in [
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            [0; 16],
        ] {
            spoofed.src = PodAddr { octets: a };
            assert_eq!(
                attribute(true, &pod, &spoofed),
                Attribution::Ignore,
                "{a:?}"
            );
        }
        spoofed.src = PodAddr::v4([0, 0, 0, 0]);
        assert_eq!(attribute(true, &pod, &spoofed), Attribution::Ignore);
        // Sent to the pod: its address as destination, else not its business.
        let mut to_pod = own;
        (to_pod.src, to_pod.dst) = (own.dst, pod);
        assert_eq!(attribute(false, &pod, &to_pod), Attribution::Own);
        to_pod.dst = PodAddr::v4([192, 168, 3, 7]);
        assert_eq!(attribute(false, &pod, &to_pod), Attribution::Ignore);
    }

    /// The node's TCP request to a pod is answered where the node's socket takes the answer,
    /// never on the pod's veth; everything else is answered on the veth as before.
    #[test]
    fn the_nodes_tcp_requests_are_answered_at_its_socket() {
        let (to, from) = (Direction::ToPod as u8, Direction::FromPod as u8);
        // The node's probe of a pod (a path, to the pod): the veth's SYN-ACK does not count.
        assert!(!veth_answer_counts(PROTO_TCP, 3, to));
        // Its DNS over UDP has no socket state: the veth's answer counts.
        assert!(veth_answer_counts(PROTO_UDP, 3, to));
        // The pod's own connections, and the bastion's (no path), as before.
        assert!(veth_answer_counts(PROTO_TCP, 3, from));
        assert!(veth_answer_counts(PROTO_TCP, crate::NO_PATH, to));
        // The socket: SYN_SENT -> ESTABLISHED answered, -> CLOSE refused only by a RST or
        // ICMP port unreachable (ECONNREFUSED).
        let syn_sent = TCP_SYN_SENT as i32;
        assert_eq!(
            node_socket_answer(syn_sent, TCP_ESTABLISHED, 0),
            Some(Answer::Accepted)
        );
        assert_eq!(
            node_socket_answer(syn_sent, TCP_CLOSE, ECONNREFUSED),
            Some(Answer::Refused)
        );
        // Given up (connect timeout, close before an answer) or a router's unreachable.
        for err in [0, 110, 113] {
            assert_eq!(node_socket_answer(syn_sent, TCP_CLOSE, err), None, "{err}");
        }
        // Any other change (an established connection closing) says nothing.
        assert_eq!(
            node_socket_answer(TCP_ESTABLISHED, TCP_CLOSE, ECONNREFUSED),
            None
        );
        assert_eq!(node_socket_answer(syn_sent, 4, 0), None);
    }

    #[test]
    fn sites_and_request_owners() {
        use crate::IfaceRole::{HostVeth, Uplink};
        assert_eq!(site(Hook::Receive, HostVeth as u8), Some(Site::VethReceive));
        assert_eq!(
            site(Hook::Transmit, HostVeth as u8),
            Some(Site::VethTransmit)
        );
        assert_eq!(
            site(Hook::Transmit, Uplink as u8),
            Some(Site::UplinkTransmit)
        );
        assert_eq!(site(Hook::Receive, Uplink as u8), None);
        assert_eq!(site(Hook::Transmit, 0), None);
        // The pod's own SYN, on its veth.
        let own = request_owner(Site::VethReceive, Some(3), None, false, true);
        assert_eq!(
            (own.path, own.direction, own.in_path),
            (Some(3), Direction::FromPod, None)
        );
        // The node's probe, handed to the pod: the node's request and a SYN in.
        let probe = request_owner(Site::VethTransmit, Some(3), None, true, true);
        assert_eq!((probe.path, probe.in_path), (Some(3), Some(3)));
        // The bastion's SYN handed in: no socket, so nobody's request, but a SYN in.
        let fwd = request_owner(Site::VethTransmit, Some(3), None, false, true);
        assert_eq!((fwd.path, fwd.in_path), (None, Some(3)));
        // The node's probe to a strict pod leaving by eth0: its request, not yet handed in.
        let out = request_owner(Site::UplinkTransmit, None, Some(5), true, true);
        assert_eq!(
            (out.path, out.direction, out.in_path),
            (Some(5), Direction::ToPod, None)
        );
        // A DNS query over UDP handed in is no SYN in.
        let dns = request_owner(Site::VethTransmit, Some(3), None, true, false);
        assert_eq!(dns.in_path, None);
    }
}
