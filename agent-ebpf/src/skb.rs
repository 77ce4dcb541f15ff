//! Reading a `struct sk_buff` from a `tp_btf` program by the offsets userspace found in the
//! running kernel's BTF (they differ between kernels; [`CONFIG`] holds them).
//! Fields are direct loads (see [`field`]). Packet bytes are read one of two ways, each a
//! [`Mode`] that the programs are built in twice (`path_rx` and `path_rx_typed`, ...):
//! - [`Typed`] (6.2+): loads through a pointer cast to the header's struct with the kfunc
//!   `bpf_rdonly_cast`, which the verifier checks against the kernel's BTF and turns into a
//!   register move; each field read is one load, and only the fields a site needs are read.
//! - [`Probe`] (5.10, 6.1): one helper read (`bpf_probe_read_kernel`) of [`HEADER_BYTES`]
//!   onto the stack, then loads from there.
//!
//! The agent picks the typed programs when the kernel's BTF has the kfunc and the structs,
//! and falls back to the probe programs when the kernel refuses them.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_probe_read_kernel as probe_read};
use sgpath_ebpf::{
    BTF_TYPE_PLACEHOLDER, KFUNC_CALL_PLACEHOLDER, ProbeConfig,
    packet::{self, ConnKey, Copied, HEADER_BYTES, Hdr, Headers, PodAddr},
};

/// Set by userspace at load time (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig::zeroed();

/// One field of [`CONFIG`]. Field by field, not a copy of the struct: the BPF stack is
/// 512 bytes.
macro_rules! cfg {
    ($field:ident) => {{
        // SAFETY: a read-only global; volatile so the compiler does not fold the zeroed value.
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(&CONFIG.$field) };
        v
    }};
}

/// Inode of the node's network namespace.
#[inline(always)]
pub fn node_netns() -> u32 {
    cfg!(node_netns)
}

/// A field of a BTF-typed kernel object (`ctx.arg` of a tp_btf program, or a pointer loaded
/// from one), loaded directly: `CONFIG` is a frozen read-only map, so the verifier knows each
/// offset as a constant and checks the load against the running kernel's BTF. The JIT turns it
/// into a plain load whose fault (a null `dev`, say) reads as 0: no helper call per field.
/// Pointers to non-struct types (`head`, `data`) load as plain numbers, not dereferencable.
#[inline(always)]
unsafe fn field<T>(base: *const u8, offset: u32) -> T {
    // SAFETY: see above; the verifier rejects the program rather than let a bad load through.
    unsafe { core::ptr::read_volatile(base.add(offset as usize) as *const T) }
}

/// The skb's device.
#[inline(always)]
pub fn dev(skb: *const u8) -> *const u8 {
    unsafe { field(skb, cfg!(skb_dev)) }
}

/// `dev->ifindex`.
#[inline(always)]
pub fn ifindex(dev: *const u8) -> u32 {
    unsafe { field(dev, cfg!(dev_ifindex)) }
}

/// Inode number of `dev`'s network namespace (`dev_net(dev)->ns.inum`), what
/// `stat -L -c %i /proc/<pid>/ns/net` prints.
#[inline(always)]
pub fn netns(dev: *const u8) -> Option<u32> {
    net_inum(unsafe { field(dev, cfg!(dev_nd_net)) })
}

/// The namespace of the socket that owns `skb`: a locally generated packet dropped before
/// it has a device (the output hook of netfilter) still has its socket.
#[inline(always)]
pub fn sk_netns(skb: *const u8) -> Option<u32> {
    let sk: *const u8 = unsafe { field(skb, cfg!(skb_sk)) };
    if sk.is_null() {
        return None;
    }
    net_inum(unsafe { field(sk, cfg!(sk_net)) })
}

#[inline(always)]
fn net_inum(net: *const u8) -> Option<u32> {
    if net.is_null() {
        return None;
    }
    Some(unsafe { field(net, cfg!(net_ns_inum)) })
}

/// Whether the skb still belongs to a socket: on transmit, a packet the node itself sent
/// (forwarded packets have none).
#[inline(always)]
pub fn has_socket(skb: *const u8) -> bool {
    !socket(skb).is_null()
}

/// The skb's socket, null when it has none.
#[inline(always)]
pub fn socket(skb: *const u8) -> *const u8 {
    unsafe { field(skb, cfg!(skb_sk)) }
}

/// Whether a packet the node sends from `sk` may be a request (`packet::node_may_request`),
/// from the socket's fields alone.
#[inline(always)]
pub fn may_request(sk: *const u8) -> bool {
    unsafe {
        packet::node_may_request(
            field(sk, cfg!(sk_type)),
            field(sk, cfg!(sk_protocol)),
            field(sk, cfg!(sk_state)),
            field(sk, cfg!(sk_dport)),
        )
    }
}

/// The namespace of socket `sk`.
#[inline(always)]
pub fn sock_netns(sk: *const u8) -> Option<u32> {
    net_inum(unsafe { field(sk, cfg!(sk_net)) })
}

/// Whether `sk` is a TCP socket (`sk_protocol`).
#[inline(always)]
pub fn sock_is_tcp(sk: *const u8) -> bool {
    let proto: u16 = unsafe { field(sk, cfg!(sk_protocol)) };
    proto == packet::PROTO_TCP as u16
}

/// `sk->sk_err`: ECONNREFUSED after a RST or ICMP port unreachable refused its SYN.
#[inline(always)]
pub fn sock_err(sk: *const u8) -> i32 {
    unsafe { field(sk, cfg!(sk_err)) }
}

/// The connection of TCP socket `sk` as `CONNS` keys the request it sent: its local address
/// and port are the client, its peer the server. IPv4 sockets by `skc_rcv_saddr` and
/// `skc_daddr`; IPv6 ones (their IPv4-mapped peers included, in the maps' own form) by the
/// `in6_addr`s, copied with a helper read. `None` for another family or a failed read.
///
/// The local port is `inet_sport`, never `skc_num`: on SYN_SENT -> CLOSE (a refusal),
/// `tcp_set_state` unhashes the socket and releases its port (`__inet_put_port` sets
/// `inet_num` to 0) before `inet_sk_state_store` fires `inet_sock_set_state`, so `skc_num`
/// reads 0 there and the key would miss the entry (5.10 to 6.12 alike).
#[inline(always)]
pub fn sock_conn(sk: *const u8) -> Option<ConnKey> {
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;
    let family: u16 = unsafe { field(sk, cfg!(sk_family)) };
    let (client, server) = match family {
        AF_INET => {
            let src: u32 = unsafe { field(sk, cfg!(sk_rcv_saddr)) };
            let dst: u32 = unsafe { field(sk, cfg!(sk_daddr)) };
            (
                PodAddr::v4(src.to_ne_bytes()),
                PodAddr::v4(dst.to_ne_bytes()),
            )
        }
        AF_INET6 => {
            let at = |off: u32| sk.wrapping_add(off as usize) as *const [u8; 16];
            // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
            let src = unsafe { bpf_probe_read_kernel(at(cfg!(sk_v6_rcv_saddr))) }.ok()?;
            let dst = unsafe { bpf_probe_read_kernel(at(cfg!(sk_v6_daddr))) }.ok()?;
            (PodAddr { octets: src }, PodAddr { octets: dst })
        }
        _ => return None,
    };
    // `inet_sport` lies past `struct sock`, beyond what the verifier lets a tp_btf `sock *`
    // load directly: a helper read.
    let at_sport = sk.wrapping_add(cfg!(sk_sport) as usize) as *const u16;
    // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
    let sport = unsafe { bpf_probe_read_kernel(at_sport) }.ok()?;
    let dport: u16 = unsafe { field(sk, cfg!(sk_dport)) };
    Some(ConnKey {
        client,
        server,
        client_port: u16::from_be(sport),
        server_port: u16::from_be(dport),
        proto: packet::PROTO_TCP,
        _pad: [0; 3],
    })
}

/// Whether `skb->protocol` is IPv4 or IPv6.
#[inline(always)]
pub fn is_ip(skb: *const u8) -> bool {
    matches!(
        u16::from_be(unsafe { field(skb, cfg!(skb_protocol)) }),
        0x0800 | 0x86dd
    )
}

/// How many wire packets the skb stands for: `skb_shinfo(skb)->gso_segs` for a GSO or GRO
/// skb (a TCP stream crosses a veth as 64 KiB super-packets), else 1. `skb_shared_info` has
/// no BTF pointer to it (`head + end`): a typed load through a cast on 6.2+, a helper read
/// before. Only a nonlinear skb (`data_len` > 0) pays it. A GSO or GRO skb keeps its payload
/// in page fragments or a frag list on every device with scatter-gather (veth, ENA, VLAN);
/// a small datagram is linear and one packet.
#[inline(always)]
pub fn segments<M: Mode>(skb: *const u8) -> u64 {
    let data_len: u32 = unsafe { field(skb, cfg!(skb_data_len)) };
    if data_len == 0 {
        return 1;
    }
    let head: u64 = unsafe { field(skb, cfg!(skb_head)) };
    let end: u32 = unsafe { field(skb, cfg!(skb_end)) };
    if head == 0 {
        return 1;
    }
    M::shared_u16(head + end as u64, cfg!(shinfo_gso_segs)).map_or(1, |s| s.max(1) as u64)
}

/// `skb->data`: where the IP header is on receive, before the stack sets the network
/// header. Null when unset.
#[inline(always)]
pub fn data(skb: *const u8) -> *const u8 {
    unsafe { field(skb, cfg!(skb_data)) }
}

/// `skb->head + skb->network_header`; null when unset.
#[inline(always)]
pub fn network_header(skb: *const u8) -> *const u8 {
    let head: u64 = unsafe { field(skb, cfg!(skb_head)) };
    let nh: u16 = unsafe { field(skb, cfg!(skb_network_header)) };
    if head == 0 || nh == 0xffff {
        return core::ptr::null();
    }
    (head + nh as u64) as *const u8
}

/// How a program variant reads packet bytes.
pub trait Mode {
    type H: Headers;
    /// The headers whose IP header is at `at`; `None` when `at` is null or unreadable.
    fn headers(at: *const u8) -> Option<Self::H>;
    /// The u16 `off` bytes into the `skb_shared_info` at `at`.
    fn shared_u16(at: u64, off: u32) -> Option<u16>;
}

/// One helper read of [`HEADER_BYTES`] onto the stack (5.10, 6.1). Not zeroed first: the
/// helper writes every byte.
pub struct Probe;

impl Mode for Probe {
    type H = Copied;
    #[inline(always)]
    fn headers(at: *const u8) -> Option<Copied> {
        if at.is_null() {
            return None;
        }
        let mut buf = MaybeUninit::<Copied>::uninit();
        // SAFETY: the helper fails cleanly on a bad address; on success all bytes are set.
        let rc = unsafe {
            probe_read(
                buf.as_mut_ptr() as *mut c_void,
                HEADER_BYTES as u32,
                at as *const c_void,
            )
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: written in full above.
        Some(unsafe { buf.assume_init() })
    }

    #[inline(always)]
    fn shared_u16(at: u64, off: u32) -> Option<u16> {
        // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
        unsafe { bpf_probe_read_kernel((at + off as u64) as *const u16) }.ok()
    }
}

/// Loads through BTF-typed pointers (6.2+): the IP header's address, cast per read to the
/// struct the read lies in.
pub struct Typed(u64);

impl Mode for Typed {
    type H = Typed;
    #[inline(always)]
    fn headers(at: *const u8) -> Option<Typed> {
        (!at.is_null()).then_some(Typed(at as u64))
    }

    #[inline(always)]
    fn shared_u16(at: u64, off: u32) -> Option<u16> {
        // SAFETY: a load the verifier checks against `skb_shared_info` (`off` is a known
        // constant: `CONFIG` is frozen).
        unsafe {
            let base = rdonly_cast::<{ BTF_TYPE_PLACEHOLDER + Hdr::SharedInfo as i32 }>(at);
            Some(core::ptr::read_volatile(
                base.add(off as usize) as *const u16
            ))
        }
    }
}

impl Typed {
    /// A load of `T` at `off` in the `hdr` struct `at` bytes after the IP header. A fault
    /// (the verifier makes these loads exception-handled) reads as 0.
    #[inline(always)]
    fn load<T>(&self, hdr: Hdr, at: usize, off: usize) -> T {
        let p = self.0 + at as u64;
        // SAFETY: the verifier checks the load against `hdr`'s struct in the kernel's BTF.
        unsafe {
            let base = match hdr {
                Hdr::Ip => rdonly_cast::<{ BTF_TYPE_PLACEHOLDER + Hdr::Ip as i32 }>(p),
                Hdr::Ip6 => rdonly_cast::<{ BTF_TYPE_PLACEHOLDER + Hdr::Ip6 as i32 }>(p),
                Hdr::Tcp => rdonly_cast::<{ BTF_TYPE_PLACEHOLDER + Hdr::Tcp as i32 }>(p),
                Hdr::Udp => rdonly_cast::<{ BTF_TYPE_PLACEHOLDER + Hdr::Udp as i32 }>(p),
                Hdr::Icmp => rdonly_cast::<{ BTF_TYPE_PLACEHOLDER + Hdr::Icmp as i32 }>(p),
                Hdr::SharedInfo => {
                    rdonly_cast::<{ BTF_TYPE_PLACEHOLDER + Hdr::SharedInfo as i32 }>(p)
                }
            };
            core::ptr::read_volatile(base.add(off) as *const T)
        }
    }
}

impl Headers for Typed {
    #[inline(always)]
    fn u8(&self, hdr: Hdr, at: usize, off: usize) -> u8 {
        self.load(hdr, at, off)
    }
    #[inline(always)]
    fn raw16(&self, hdr: Hdr, at: usize, off: usize) -> u16 {
        self.load(hdr, at, off)
    }
    #[inline(always)]
    fn raw32(&self, hdr: Hdr, at: usize, off: usize) -> u32 {
        self.load(hdr, at, off)
    }
    #[inline(always)]
    fn raw64(&self, hdr: Hdr, at: usize, off: usize) -> u64 {
        self.load(hdr, at, off)
    }
}

/// `bpf_rdonly_cast(p, <BTF id of TY's struct>)`, as placeholders the agent rewrites before
/// load ([`KFUNC_CALL_PLACEHOLDER`]). `pure`: the same cast twice is one call.
#[inline(always)]
unsafe fn rdonly_cast<const TY: i32>(p: u64) -> *const u8 {
    let out: *const u8;
    // SAFETY: after the agent's rewrite, a kfunc call the verifier checks; it clobbers
    // r1-r5 as every call does.
    unsafe {
        core::arch::asm!(
            "r2 = {ty}",
            "call {call}",
            ty = const TY,
            call = const KFUNC_CALL_PLACEHOLDER,
            inlateout("r1") p => _,
            lateout("r0") out,
            lateout("r2") _,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(pure, nomem, nostack),
        );
    }
    out
}
