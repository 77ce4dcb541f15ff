//! Decisions the path and drop programs make, as plain functions over the bytes of an IP
//! header, so they are unit-tested on the host with real packets. No side effects.

/// An IPv4 or IPv6 address as the maps key it: IPv6 as is, IPv4 mapped (`::ffff:a.b.c.d`).
/// 8-aligned, so the programs build and compare it as two 64-bit words, never byte by byte.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodAddr {
    pub octets: [u8; 16],
}

impl PodAddr {
    /// The IPv4-mapped form of `a.b.c.d`.
    pub const fn v4(o: [u8; 4]) -> PodAddr {
        PodAddr::v4_raw(u32::from_ne_bytes(o))
    }

    /// The IPv4-mapped form of an address as it lies in a header (network order, loaded as
    /// a native u32): two word stores, no zeroing of a byte array.
    #[inline(always)]
    pub const fn v4_raw(raw: u32) -> PodAddr {
        let prefix = u32::from_ne_bytes([0, 0, 0xff, 0xff]) as u64;
        #[cfg(target_endian = "little")]
        let low = prefix | (raw as u64) << 32;
        #[cfg(target_endian = "big")]
        let low = prefix << 32 | raw as u64;
        PodAddr::from_words([0, low])
    }

    /// The address from its two words as they lie in memory.
    #[inline(always)]
    pub const fn from_words(w: [u64; 2]) -> PodAddr {
        // SAFETY: 16 bytes either way; a transmute keeps it two word stores (splitting the
        // words into bytes makes the compiler juggle sixteen).
        PodAddr {
            octets: unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(w) },
        }
    }

    /// The two words as they lie in memory.
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        // SAFETY: 16 bytes, 8-aligned (`repr(align(8))`).
        unsafe { core::ptr::read(self as *const PodAddr as *const [u64; 2]) }
    }

    /// Equality in two word compares (the derived `==` may compare bytes).
    #[inline(always)]
    pub fn same(&self, other: &PodAddr) -> bool {
        let (a, b) = (self.words(), other.words());
        a[0] == b[0] && a[1] == b[1]
    }
}

/// How many header bytes the helper-read programs copy out of a packet (5.10, 6.1): an IPv6
/// header plus the first 16 bytes of TCP (ports and flags), more than IPv4 without options
/// needs, and an ICMPv4 port unreachable with the ports it quotes.
pub const HEADER_BYTES: usize = 56;

/// The kernel struct a read of packet bytes (or of the skb's shared info) lies in. On 6.2+
/// the programs read a header through a pointer cast to its struct in the running kernel's
/// BTF (`bpf_rdonly_cast`), and the verifier checks every load against that struct's
/// members: so each read names its struct, where the struct starts (bytes after the IP
/// header) and the offset in it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hdr {
    Ip = 0,
    Ip6 = 1,
    Tcp = 2,
    Udp = 3,
    Icmp = 4,
    /// `skb_shared_info` (at `skb->head + skb->end`): `gso_segs`.
    SharedInfo = 5,
}

impl Hdr {
    /// Every struct the programs read, in the order of their discriminants.
    pub const ALL: [Hdr; 6] = [
        Hdr::Ip,
        Hdr::Ip6,
        Hdr::Tcp,
        Hdr::Udp,
        Hdr::Icmp,
        Hdr::SharedInfo,
    ];

    /// The struct's name in the kernel's BTF.
    pub const fn struct_name(self) -> &'static str {
        match self {
            Hdr::Ip => "iphdr",
            Hdr::Ip6 => "ipv6hdr",
            Hdr::Tcp => "tcphdr",
            Hdr::Udp => "udphdr",
            Hdr::Icmp => "icmphdr",
            Hdr::SharedInfo => "skb_shared_info",
        }
    }
}

/// A packet's header bytes, however the program reads them: loads through a BTF-typed
/// pointer (6.2+), or bytes copied with one helper read ([`Copied`], 5.10 and 6.1, and the
/// host's tests). Reads of 2, 4 and 8 bytes are as they lie in memory (network order),
/// each aligned to its size from the IP header (the copied bytes sit on the stack, where
/// the verifier wants aligned loads).
pub trait Headers {
    /// The byte `off` into the `hdr` struct that starts `at` bytes after the IP header.
    fn u8(&self, hdr: Hdr, at: usize, off: usize) -> u8;
    fn raw16(&self, hdr: Hdr, at: usize, off: usize) -> u16;
    fn raw32(&self, hdr: Hdr, at: usize, off: usize) -> u32;
    fn raw64(&self, hdr: Hdr, at: usize, off: usize) -> u64;

    /// A big-endian u16 field.
    #[inline(always)]
    fn be16(&self, hdr: Hdr, at: usize, off: usize) -> u16 {
        u16::from_be(self.raw16(hdr, at, off))
    }
}

/// Header bytes copied out of the packet, 8-aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied(pub [u8; HEADER_BYTES]);

impl Copied {
    #[inline(always)]
    fn read<T: Copy + Default>(&self, i: usize) -> T {
        let n = core::mem::size_of::<T>();
        debug_assert!(i.is_multiple_of(n), "unaligned read of {n} bytes at {i}");
        if i + n > HEADER_BYTES {
            return T::default();
        }
        // SAFETY: in bounds; aligned (the buffer is 8-aligned and every read is aligned to
        // its size from the IP header).
        unsafe { core::ptr::read(self.0.as_ptr().add(i) as *const T) }
    }
}

impl Headers for Copied {
    #[inline(always)]
    fn u8(&self, _: Hdr, at: usize, off: usize) -> u8 {
        self.read(at + off)
    }
    #[inline(always)]
    fn raw16(&self, _: Hdr, at: usize, off: usize) -> u16 {
        self.read(at + off)
    }
    #[inline(always)]
    fn raw32(&self, _: Hdr, at: usize, off: usize) -> u32 {
        self.read(at + off)
    }
    #[inline(always)]
    fn raw64(&self, _: Hdr, at: usize, off: usize) -> u64 {
        self.read(at + off)
    }
}

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

/// Source, destination and length of one IP packet, and where its transport header is:
/// what every counted packet needs, read in a handful of loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHeader {
    pub src: PodAddr,
    pub dst: PodAddr,
    /// The packet's length by its own header (IPv4 total length, IPv6 40 + payload length),
    /// so bytes compare across hooks whatever link-layer header the skb still carries.
    pub len: u32,
    /// The protocol of a transport header that follows the IP header directly (IPv4 without
    /// options and not a later fragment, IPv6 without extension headers), else 0: the
    /// connection probes skip the packet. Read by [`transport`], only when a site needs it.
    pub proto: u8,
    /// Where that transport header starts: 20 (IPv4) or 40 (IPv6).
    pub l4_at: u8,
    pub _pad: [u8; 2],
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

/// The transport header of `ip` (which has one: `ip.proto` != 0), read only as far as a
/// connection signal could be in it: a TCP segment's flags first, its ports only when it
/// carries SYN or RST (the rest of a stream is nothing to the probes and costs one load);
/// a UDP datagram's ports; an ICMPv4 port unreachable's quoted ports ([`icmp_refusal`]).
/// The transport bytes (by the IP header's own length) must hold what is read: 14 bytes of
/// TCP, 8 of UDP. A shorter packet's bytes beyond its end are not its own.
#[inline(always)]
pub fn transport<H: Headers>(h: &H, ip: &IpHeader) -> Option<L4> {
    // Each read at a constant offset: the helper-read copy sits on the stack, where the
    // verifier wants every read's offset known (and aligned).
    if ip.l4_at == 20 {
        transport_at::<H, 20>(h, ip)
    } else {
        transport_at::<H, 40>(h, ip)
    }
}

#[inline(always)]
fn transport_at<H: Headers, const AT: usize>(h: &H, ip: &IpHeader) -> Option<L4> {
    let payload = ip.len.saturating_sub(AT as u32);
    match ip.proto {
        PROTO_TCP => {
            if payload < 14 {
                return None;
            }
            let flags = h.u8(Hdr::Tcp, AT, 13);
            if flags & (TCP_SYN | TCP_RST) == 0 {
                return None;
            }
            Some(L4 {
                proto: PROTO_TCP,
                sport: h.be16(Hdr::Tcp, AT, 0),
                dport: h.be16(Hdr::Tcp, AT, 2),
                flags,
            })
        }
        PROTO_UDP if payload >= 8 => Some(L4 {
            proto: PROTO_UDP,
            sport: h.be16(Hdr::Udp, AT, 0),
            dport: h.be16(Hdr::Udp, AT, 2),
            flags: 0,
        }),
        PROTO_ICMP if AT == 20 => icmp_refusal(h, ip.len),
        _ => None,
    }
}

/// Bytes of an ICMPv4 port unreachable that [`icmp_refusal`] reads: its 20-byte IP header,
/// the 8-byte ICMP header, the quoted 20-byte IPv4 header and the quoted ports.
const ICMP_REFUSAL_BYTES: u32 = 20 + 8 + 20 + 4;

/// An ICMPv4 port unreachable after a 20-byte IPv4 header of total length `len`, about a
/// TCP or UDP datagram between the same two hosts: that datagram's ports, swapped so that
/// the refusal keys its connection as an answer does. What proves it:
/// - the ICMP is long enough (by its own header) to hold the quoted header and ports,
///   checked before any quoted byte is read (a short packet's bytes beyond its end are not
///   its own);
/// - the quoted header has no options (its ports at a constant offset);
/// - the ICMP's source is the quoted destination (only the server itself refuses: a
///   router's or firewall's ICMP stays unmatched, and the request unanswered) and the ICMP's
///   destination is the quoted source (it goes back to the client that sent the datagram,
///   not to a third host whose connection it would close).
///
/// ICMPv6 quotes sit beyond the bytes the helper read copies: not matched.
#[inline(always)]
fn icmp_refusal<H: Headers>(h: &H, len: u32) -> Option<L4> {
    const QUOTED: usize = 28;
    if len < ICMP_REFUSAL_BYTES {
        return None;
    }
    if h.u8(Hdr::Icmp, 20, 0) != ICMP_DEST_UNREACH
        || h.u8(Hdr::Icmp, 20, 1) != ICMP_PORT_UNREACH
        || h.u8(Hdr::Ip, QUOTED, 0) != 0x45
    {
        return None;
    }
    let proto = h.u8(Hdr::Ip, QUOTED, 9);
    let from_server = h.raw32(Hdr::Ip, 0, 12) == h.raw32(Hdr::Ip, QUOTED, 16);
    let to_client = h.raw32(Hdr::Ip, 0, 16) == h.raw32(Hdr::Ip, QUOTED, 12);
    if !from_server || !to_client || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return None;
    }
    Some(L4 {
        proto,
        sport: h.be16(Hdr::Udp, QUOTED + 20, 2),
        dport: h.be16(Hdr::Udp, QUOTED + 20, 0),
        flags: REFUSAL_FLAGS,
    })
}

/// Whether `a` is an address no pod owns alone: IPv6 link-local, multicast or unspecified,
/// IPv4 0.0.0.0. A pod sends these (neighbour discovery, DAD) without them being anyone's.
#[inline(always)]
pub fn is_link_scoped(a: &PodAddr) -> bool {
    let [high, low] = a.words();
    if high == 0 && low == PodAddr::v4_raw(0).words()[1] {
        return true; // 0.0.0.0
    }
    let o = &a.octets;
    (o[0] == 0xfe && o[1] & 0xc0 == 0x80) || o[0] == 0xff || (high == 0 && low == 0)
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
    pod.words() == [0, 0]
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
    if addr.same(pod) {
        Attribution::Own
    } else if from_pod && !is_link_scoped(addr) {
        Attribution::Foreign
    } else {
        Attribution::Ignore
    }
}

/// Parses the IP header (the skb's network header): addresses, length, and where a
/// transport header follows. `None` for anything that is not IPv4 or IPv6.
#[inline(always)]
pub fn parse_ip<H: Headers>(h: &H) -> Option<IpHeader> {
    match h.u8(Hdr::Ip, 0, 0) >> 4 {
        4 => {
            let len = h.be16(Hdr::Ip, 0, 2) as u32;
            // The transport header at a constant offset: IHL 5, fragment offset 0.
            let plain = h.u8(Hdr::Ip, 0, 0) & 0x0f == 5 && h.be16(Hdr::Ip, 0, 6) & 0x1fff == 0;
            Some(IpHeader {
                src: PodAddr::v4_raw(h.raw32(Hdr::Ip, 0, 12)),
                dst: PodAddr::v4_raw(h.raw32(Hdr::Ip, 0, 16)),
                len,
                proto: if plain { h.u8(Hdr::Ip, 0, 9) } else { 0 },
                l4_at: 20,
                _pad: [0; 2],
            })
        }
        6 => Some(IpHeader {
            src: PodAddr::from_words([h.raw64(Hdr::Ip6, 0, 8), h.raw64(Hdr::Ip6, 0, 16)]),
            dst: PodAddr::from_words([h.raw64(Hdr::Ip6, 0, 24), h.raw64(Hdr::Ip6, 0, 32)]),
            len: 40 + h.be16(Hdr::Ip6, 0, 4) as u32,
            proto: h.u8(Hdr::Ip6, 0, 6),
            l4_at: 40,
            _pad: [0; 2],
        }),
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

    /// The IP header of `h`, read as the helper-read programs do.
    fn parse_ip(h: &[u8; HEADER_BYTES]) -> Option<IpHeader> {
        super::parse_ip(&Copied(*h))
    }

    /// What the connection probes read of `h`'s transport header.
    fn l4(h: &[u8; HEADER_BYTES]) -> Option<L4> {
        let c = Copied(*h);
        transport(&c, &super::parse_ip(&c)?)
    }

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
        let l4 = l4(&syn(0x02, 41234, 80)).unwrap();
        assert_eq!((l4.proto, l4.sport, l4.dport), (PROTO_TCP, 41234, 80));
        assert_eq!(l4.signal(), Some(Signal::Request(ConnKind::Syn)));
        let ack_ip = parse_ip(&syn(0x12, 80, 41234)).unwrap();
        let ack = super::tests::l4(&syn(0x12, 80, 41234)).unwrap();
        assert_eq!(ack.signal(), Some(Signal::Answer));
        // The SYN-ACK (addresses swapped in the test packet too) keys the same connection.
        let mut reply = ack_ip;
        (reply.src, reply.dst) = (ip.dst, ip.src);
        assert_eq!(
            ConnKey::of_answer(&reply, &ack),
            ConnKey::of_request(&ip, &l4)
        );
        assert_eq!(ConnKey::of_request(&ip, &l4).server_port, 80);
        // The rest of the stream (ACK, PSH|ACK, FIN|ACK) is nothing to the probes: not even
        // its ports are read.
        for flags in [0x10, 0x18, 0x11] {
            assert_eq!(super::tests::l4(&syn(flags, 41234, 80)), None);
        }
        // A SYN to 53 opens a DNS connection.
        assert_eq!(
            super::tests::l4(&syn(0x02, 41234, 53)).unwrap().signal(),
            Some(Signal::Request(ConnKind::Dns))
        );
    }

    #[test]
    fn udp_dns_query_and_answer() {
        let query = l4(&pad(&[
            0x45, 0x00, 0x00, 0x5c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 192, 168, 3,
            219, 169, 254, 20, 10, 0xd3, 0x3f, 0x00, 0x35,
        ]))
        .unwrap();
        assert_eq!(query.signal(), Some(Signal::Request(ConnKind::Dns)));
        let answer = l4(&pad(&[
            0x45, 0x00, 0x00, 0x6c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 169, 254, 20,
            10, 192, 168, 3, 219, 0x00, 0x35, 0xd3, 0x3f,
        ]))
        .unwrap();
        assert_eq!(answer.signal(), Some(Signal::Answer));
    }

    #[test]
    fn no_transport_header_behind_options_or_fragments() {
        let mut h = syn(0x02, 41234, 80);
        h[0] = 0x46; // IHL 6: options
        assert_eq!(l4(&h), None);
        let mut h = syn(0x02, 41234, 80);
        h[7] = 0x10; // a later fragment
        assert_eq!(l4(&h), None);
    }

    #[test]
    fn ipv6_tcp_ports() {
        let mut b = vec![0x60, 0, 0, 0, 0x00, 0x14, PROTO_TCP, 64];
        b.extend([0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        b.extend([0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        b.extend(443u16.to_be_bytes());
        b.extend(8443u16.to_be_bytes());
        b.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02]);
        let l4 = l4(&pad(&b)).unwrap();
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
        let request = ConnKey::of_request(&req_ip, &l4(&syn(0x02, 41234, 80)).unwrap());
        // RST|ACK from the server: refused, keyed like the SYN-ACK would be.
        let mut rst_ip = parse_ip(&syn(0x14, 80, 41234)).unwrap();
        (rst_ip.src, rst_ip.dst) = (req_ip.dst, req_ip.src);
        let rst = l4(&syn(0x14, 80, 41234)).unwrap();
        assert_eq!(rst.signal(), Some(Signal::Refused));
        assert_eq!(ConnKey::of_answer(&rst_ip, &rst), request);
        // A bare RST too.
        assert_eq!(
            l4(&syn(0x04, 80, 41234)).unwrap().signal(),
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
            pad(&b)
        };
        let refused = parse_ip(&icmp([10, 0, 1, 10], 3)).unwrap();
        let l4 = l4(&icmp([10, 0, 1, 10], 3)).unwrap();
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
        assert_eq!(super::tests::l4(&icmp([10, 0, 0, 1], 3)), None);
        assert_eq!(super::tests::l4(&icmp([10, 0, 1, 10], 1)), None);
        assert_eq!(super::tests::l4(&icmp([10, 0, 1, 10], 13)), None);
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
        let ok = l4(&icmp_to(client, 56)).unwrap();
        assert_eq!((ok.sport, ok.dport, ok.flags), (53, 5353, REFUSAL_FLAGS));
        // Sent to a third host: it would close a connection that host never opened here.
        assert_eq!(l4(&icmp_to([192, 168, 3, 7], 56)), None);
        assert_eq!(l4(&icmp_to([10, 0, 1, 10], 56)), None);
    }

    #[test]
    fn a_short_icmp_is_no_refusal() {
        let client = [192, 168, 3, 219];
        // Exactly the bytes read (headers and the quoted ports) is enough ...
        assert!(l4(&icmp_to(client, 52)).is_some());
        // ... one less, or an ICMP header alone (the copied bytes beyond its end are
        // another packet's), is not, whatever those bytes say.
        for len in [51, 28, 0] {
            assert_eq!(l4(&icmp_to(client, len)), None, "{len}");
        }
    }

    #[test]
    fn a_short_tcp_or_udp_packet_has_no_transport_header() {
        // A SYN whose total length leaves 13 bytes of TCP: its flags byte is not its own.
        let mut h = syn(0x02, 41234, 80);
        h[2..4].copy_from_slice(&33u16.to_be_bytes());
        assert_eq!(l4(&h), None);
        h[2..4].copy_from_slice(&34u16.to_be_bytes());
        assert!(l4(&h).is_some());
        // UDP: 8 bytes of header.
        let mut udp = pad(&[
            0x45, 0x00, 0x00, 27, 0, 0, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 192, 168, 3, 219, 10,
            0, 1, 10, 0xd3, 0x3f, 0x00, 0x35,
        ]);
        assert_eq!(l4(&udp), None);
        udp[3] = 28;
        assert_eq!(
            l4(&udp).unwrap().signal(),
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
