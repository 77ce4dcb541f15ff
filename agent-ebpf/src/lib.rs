//! Types shared between the eBPF programs (`src/main.rs`) and the userspace agent.
//!
//! Everything here crosses the kernel boundary: fixed-width integers and `#[repr(C)]`
//! structs with explicit padding only, sizes asserted at compile time. No side effects.
#![cfg_attr(not(test), no_std)]

pub mod packet;

use packet::{ConnKey, PodAddr};

/// Name of the per-CPU array map of program error counters (index: [`ProgError`]).
pub const PROG_ERRORS_MAP: &str = "PROG_ERRORS";

/// Errors a program counts instead of failing closed (index into `PROG_ERRORS`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProgError {
    /// The drop map was full: a drop went uncounted.
    DropMapFull = 0,
    /// The connection map was full: a SYN or DNS query went untracked.
    ConnMapFull = 1,
    /// The `left_via` map was full: a packet leaving the node went uncounted.
    LeftViaMapFull = 2,
}

/// Number of [`ProgError`] slots.
pub const PROG_ERROR_SLOTS: u32 = 3;

impl TryFrom<u32> for ProgError {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            0 => Ok(ProgError::DropMapFull),
            1 => Ok(ProgError::ConnMapFull),
            2 => Ok(ProgError::LeftViaMapFull),
            other => Err(other),
        }
    }
}

/// Array `IFACES`: ifindex of an interface in the node's namespace -> [`IfaceInfo`]; an
/// entry with role 0 is an interface nobody probes. Sized by userspace to the node's ifindex
/// space with room to grow ([`ifindex_slots`]); a higher ifindex goes to [`IFACES_HIGH_MAP`].
pub const IFACES_MAP: &str = "IFACES";
/// Hash `IFACES_HIGH`: the interfaces whose ifindex is beyond `IFACES` (a node whose
/// ifindexes grew past the room left at start, after weeks of pod churn).
pub const IFACES_HIGH_MAP: &str = "IFACES_HIGH";
/// Array `PATH_PODS`, indexed by path id: the address of the path's pod (its end of the host
/// veth), against which a host veth's packets are attributed.
pub const PATH_PODS_MAP: &str = "PATH_PODS";
/// Hash `CONNS`: [`ConnKey`] -> [`ConnState`], the connections waiting for (or lingering
/// after) their answer; userspace sweeps it.
pub const CONNS_MAP: &str = "CONNS";
/// Per-CPU hash `LEFT_VIA`: [`LeftViaKey`] -> packets.
pub const LEFT_VIA_MAP: &str = "LEFT_VIA";
/// Map `POD_PATHS`: pod IP ([`PodAddr`]) -> path id.
pub const POD_PATHS_MAP: &str = "POD_PATHS";
/// Map `NETNS_ROLES`: network namespace inode -> [`NetnsInfo`].
pub const NETNS_ROLES_MAP: &str = "NETNS_ROLES";
/// Per-CPU array `PATH_COUNTERS`, indexed by path id.
pub const PATH_COUNTERS_MAP: &str = "PATH_COUNTERS";
/// Per-CPU hash `DROPS`: [`DropKey`] -> drops.
pub const DROPS_MAP: &str = "DROPS";
/// Per-CPU array `DROP_SLOTS`, indexed by path id: [`DropSlot`], the path's first kind of
/// drop on each CPU, counted without a hash lookup.
pub const DROP_SLOTS_MAP: &str = "DROP_SLOTS";
/// The global the programs read their [`ProbeConfig`] from.
pub const CONFIG_GLOBAL: &str = "CONFIG";

/// The `imm` of the placeholder call the typed-read programs make where they call the
/// kfunc `bpf_rdonly_cast` (6.2+): aya 0.14 cannot emit kfunc calls, so the programs emit a
/// helper call with this number, and the agent rewrites it before load into a kfunc call
/// (`src_reg` BPF_PSEUDO_KFUNC_CALL, `imm` the kfunc's id in the kernel's BTF). The verifier
/// then turns the call into a register move: the cast costs nothing at run time.
pub const KFUNC_CALL_PLACEHOLDER: i32 = 0x5347_7000;
/// The `imm` of `r2 = <imm>` before each placeholder call: this plus a
/// [`packet::Hdr`] discriminant; the agent writes the struct's BTF id there.
pub const BTF_TYPE_PLACEHOLDER: i32 = 0x5347_7100;

/// Paths (pods) counted at once; path ids are below this.
pub const MAX_PATHS: u32 = 4096;
/// Network namespaces (the node's and its pods') whose drops count.
pub const MAX_NETNS: u32 = 4096;
/// Distinct (path, direction, namespace, reason, location) drop keys.
pub const MAX_DROP_KEYS: u32 = 8192;
/// Connections tracked at once (waiting for an answer, or lingering so that retransmits are
/// not new connections).
pub const MAX_CONNS: u32 = 16384;
/// Distinct (path, egress interface) pairs.
pub const MAX_LEFT_VIA: u32 = 8192;
/// `ConnState::path` of a connection no path opened.
pub const NO_PATH: u32 = u32::MAX;
/// Entries of `IFACES_HIGH` (the interfaces beyond the array).
pub const MAX_HIGH_IFACES: u32 = 4096;

/// Entries of the `IFACES` array for a node whose highest ifindex is `max_ifindex`: four
/// times the room it uses now (every pod's veth pair takes new ifindexes; a node that ran
/// through that many needs the overflow hash), at least 4096 (32 KiB), at most 2^18 (2 MiB).
pub const fn ifindex_slots(max_ifindex: u32) -> u32 {
    let want = (max_ifindex as u64 + 1) * 4;
    let mut slots = 4096u64;
    while slots < want && slots < (1 << 18) {
        slots *= 2;
    }
    slots as u32
}

/// What an interface of the node's namespace is to the path programs.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfaceRole {
    /// A pod's host veth (`vlan<hash>`, `eni<hash>`): the path's own counters.
    HostVeth = 1,
    /// A way off the node (node ENI, trunk, `vlan.eth.N`): `left_via`, and the node's own
    /// connections to pods.
    Uplink = 2,
}

/// Value of `IFACES`: what an interface of the node's namespace is and, for a host veth,
/// the path it counts for. The veth that carried a packet decides its path, not the address
/// in the header: a pod cannot write on a neighbour's path (its address: `PATH_PODS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    /// [`IfaceRole`]; 0: not probed.
    pub role: u8,
    pub _pad: [u8; 3],
    /// A host veth's path id ([`NO_PATH`] for an uplink).
    pub path: u32,
}

/// Value of `NETNS_ROLES`: whose namespace an inode is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsInfo {
    /// [`packet::NetnsRole`].
    pub role: u8,
    pub _pad: [u8; 3],
    /// A pod namespace's path id: drops inside it charge only that path. [`NO_PATH`] for the
    /// node's namespace.
    pub path: u32,
}

/// One tracked connection, written by the programs, read and swept by userspace. Plain
/// stores without atomics: racing CPUs can only write the same values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// The path whose request it is ([`NO_PATH`]: none, e.g. the bastion's connection in).
    pub path: u32,
    /// The path whose pod the SYN was handed to (`syn_in`), or [`NO_PATH`].
    pub in_path: u32,
    /// [`packet::ConnKind`].
    pub kind: u8,
    /// [`packet::Direction`] of the request on `path`: `FromPod` (the pod's own) or `ToPod`
    /// (the node's connection to the pod).
    pub direction: u8,
    /// [`packet::Answer`]: none yet, accepted (SYN-ACK, DNS reply) or refused (RST, ICMP
    /// port unreachable).
    pub answered: u8,
    pub _pad: [u8; 5],
    /// `bpf_ktime_get_ns` of the first request and of the latest (retransmits).
    pub first_ns: u64,
    pub last_ns: u64,
}

/// Key of `LEFT_VIA`: packets of `path`'s pod that left the node by `ifindex`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LeftViaKey {
    pub path: u32,
    pub ifindex: u32,
}

/// Kernel struct offsets (bytes) read from the running kernel's BTF, and the node's network
/// namespace inode. Set once by userspace at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    pub skb_dev: u32,
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_network_header: u32,
    pub skb_protocol: u32,
    pub dev_ifindex: u32,
    pub dev_nd_net: u32,
    /// Offset of `ns.inum` in `struct net`.
    pub net_ns_inum: u32,
    /// Inode of the node's network namespace (`stat -L -c %i /proc/self/ns/net`).
    pub node_netns: u32,
    pub skb_sk: u32,
    /// Offset of `__sk_common.skc_net` in `struct sock`.
    pub sk_net: u32,
    /// `sk_buff.end`: the offset of `skb_shared_info` from `head` (64-bit kernels).
    pub skb_end: u32,
    /// `skb_shared_info.gso_segs`: how many wire packets a GSO/GRO skb stands for.
    pub shinfo_gso_segs: u32,
    /// `sk_buff.data_len`: bytes in page fragments (0: a linear skb, one packet).
    pub skb_data_len: u32,
    /// `sock.sk_type`, `sock.sk_protocol` (u16 each, 5.6+), `sock_common.skc_state` (u8)
    /// and `sock_common.skc_dport` (big-endian u16): whether the node's own packet on an
    /// uplink may be a request ([`packet::node_may_request`]), without reading it.
    pub sk_type: u32,
    pub sk_protocol: u32,
    pub sk_state: u32,
    pub sk_dport: u32,
    /// `sock_common.skc_family` (u16), `skc_daddr` and `skc_rcv_saddr` (IPv4, big-endian),
    /// `inet_sock.inet_sport` (the local port, big-endian), `skc_v6_daddr` and
    /// `skc_v6_rcv_saddr` (`in6_addr`), and `sock.sk_err` (int): the connection a node
    /// socket's state change is about, and whether a RST or ICMP refused it (`conn_state`).
    /// Not `skc_num`: `tcp_set_state(TCP_CLOSE)` releases the port (`__inet_put_port` zeroes
    /// `inet_num`) before `inet_sk_state_store` fires the tracepoint; `inet_sport` stays.
    pub sk_family: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_sport: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_err: u32,
}

impl ProbeConfig {
    pub const fn zeroed() -> ProbeConfig {
        ProbeConfig {
            skb_dev: 0,
            skb_head: 0,
            skb_data: 0,
            skb_network_header: 0,
            skb_protocol: 0,
            dev_ifindex: 0,
            dev_nd_net: 0,
            net_ns_inum: 0,
            node_netns: 0,
            skb_sk: 0,
            sk_net: 0,
            skb_end: 0,
            shinfo_gso_segs: 0,
            skb_data_len: 0,
            sk_type: 0,
            sk_protocol: 0,
            sk_state: 0,
            sk_dport: 0,
            sk_family: 0,
            sk_daddr: 0,
            sk_rcv_saddr: 0,
            sk_sport: 0,
            sk_v6_daddr: 0,
            sk_v6_rcv_saddr: 0,
            sk_err: 0,
        }
    }
}

/// Forwarded packets and IP bytes of one path, per CPU: `to_pod` what its host veth handed
/// to the pod, `from_pod` what the host veth received from it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounters {
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
    /// Packets the host veth received with a source address not its pod's (spoofed, or a
    /// stale veth): counted here only, never on the path whose address they carry.
    pub foreign_packets: u64,
    /// The latest foreign source address this CPU saw (for the finding's evidence).
    pub foreign_source: PodAddr,
}

/// One kind of drop on one path, 16 bytes (the hash of every drop covers them all).
/// `path` is a path id (below 65536, `--max-paths`' bound), `direction` a
/// [`packet::Direction`], `netns_role` a [`packet::NetnsRole`]; `reason` is the kernel's
/// `enum skb_drop_reason` value (0 when the program runs without reasons) and `location` the
/// address that freed the skb.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub path: u16,
    pub direction: u8,
    pub netns_role: u8,
    pub reason: u32,
    pub location: u64,
}

/// One path's drops of one kind on one CPU, counted in place: the common case (a flood of
/// the same drop, a security group or a rule denying a pod's traffic) is a per-CPU array
/// update instead of a hash lookup, which costs about as much as the rest of the program.
///
/// The program claims an empty slot with the first drop it charges to the path on its CPU
/// (`kind`, then `location`, then `count`); other kinds go to `DROPS`. A slot keeps its kind
/// until userspace zeroes it with the path. Readers (userspace, on another CPU, with plain
/// copies) count a slot only when both key words are set: each word is one aligned 8-byte
/// store, so a slot caught mid-claim is left out of that read, never counted under a
/// half-written key, whatever order the CPU makes the stores visible in. A kind's drops
/// are its slots' counts plus its `DROPS` entry's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSlot {
    /// [`DropSlot::kind`] of (direction, netns role, reason); 0 while the slot is empty
    /// (a netns role is never 0).
    pub kind: u64,
    /// `DropKey::location` (a kernel address: never 0).
    pub location: u64,
    pub count: u64,
}

impl DropSlot {
    /// The kind word of a drop: direction, netns role and reason of a [`DropKey`].
    #[inline(always)]
    pub const fn kind(direction: u8, netns_role: u8, reason: u32) -> u64 {
        (reason as u64) << 32 | (netns_role as u64) << 8 | direction as u64
    }

    /// The drop key of a slot of path `path`, if both its words are set.
    pub fn key(&self, path: u16) -> Option<DropKey> {
        if self.kind == 0 || self.location == 0 {
            return None;
        }
        Some(DropKey {
            path,
            direction: self.kind as u8,
            netns_role: (self.kind >> 8) as u8,
            reason: (self.kind >> 32) as u32,
            location: self.location,
        })
    }
}

const _: () = assert!(core::mem::size_of::<DropSlot>() == 24);
const _: () = assert!(core::mem::size_of::<IfaceInfo>() == 8);
const _: () = assert!(core::mem::size_of::<NetnsInfo>() == 8);
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 100);
const _: () = assert!(core::mem::size_of::<PathCounters>() == 56);
const _: () = assert!(core::mem::size_of::<DropKey>() == 16);
const _: () = assert!(core::mem::size_of::<PodAddr>() == 16);
const _: () = assert!(core::mem::size_of::<ConnKey>() == 40);
const _: () = assert!(core::mem::size_of::<ConnState>() == 32);
const _: () = assert!(core::mem::size_of::<LeftViaKey>() == 8);

// SAFETY: plain #[repr(C)] integers without padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeConfig {}
// SAFETY: as above; `_pad` is explicit and always zero.
#[cfg(feature = "user")]
unsafe impl aya::Pod for IfaceInfo {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for NetnsInfo {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PathCounters {}
// SAFETY: as above; no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DropKey {}
// SAFETY: three u64.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DropSlot {}
// SAFETY: 16 bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PodAddr {}
// SAFETY: as above; `_pad` is always zero.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ConnKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ConnState {}
// SAFETY: two u32.
#[cfg(feature = "user")]
unsafe impl aya::Pod for LeftViaKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_slot_is_counted_only_with_both_key_words() {
        let key = DropKey {
            path: 7,
            direction: 1,
            netns_role: 2,
            reason: 6,
            location: 0xffff_ffff_8123_4567,
        };
        let full = DropSlot {
            kind: DropSlot::kind(1, 2, 6),
            location: key.location,
            count: 3,
        };
        assert_eq!(full.key(7), Some(key));
        // Caught mid-claim, either word missing: not counted under a half-written key.
        assert_eq!(DropSlot { kind: 0, ..full }.key(7), None);
        assert_eq!(
            DropSlot {
                location: 0,
                ..full
            }
            .key(7),
            None
        );
        assert_eq!(DropSlot::default().key(7), None);
    }
}
