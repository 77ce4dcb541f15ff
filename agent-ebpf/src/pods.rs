//! What userspace tells the programs about the node: each probed interface by ifindex
//! (`IFACES`, an array: the hot path's one lookup, which the verifier inlines into a bounds
//! check and an add), each path's pod address (`PATH_PODS`, an array by path id), each pod
//! address's path (`POD_PATHS`: only uplinks and drops need it), and whose namespaces count
//! drops (`NETNS_ROLES`). Read-only here.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use sgpath_ebpf::{IfaceInfo, MAX_HIGH_IFACES, MAX_NETNS, MAX_PATHS, NetnsInfo, packet::PodAddr};

/// Sized by userspace (`ifindex_slots`); this is only the object's default.
#[map]
static IFACES: Array<IfaceInfo> = Array::with_max_entries(4096, 0);

#[map]
static IFACES_HIGH: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(MAX_HIGH_IFACES, 0);

#[map]
static PATH_PODS: Array<PodAddr> = Array::with_max_entries(MAX_PATHS, 0);

#[map]
static POD_PATHS: HashMap<PodAddr, u32> = HashMap::with_max_entries(MAX_PATHS, 0);

#[map]
static NETNS_ROLES: HashMap<u32, NetnsInfo> = HashMap::with_max_entries(MAX_NETNS, 0);

/// What interface `ifindex` of the node's namespace is, if it is probed.
#[inline(always)]
pub fn iface(ifindex: u32) -> Option<&'static IfaceInfo> {
    match IFACES.get(ifindex) {
        Some(info) if info.role != 0 => Some(info),
        Some(_) => None,
        // Beyond the array: the rare node whose ifindexes outgrew it.
        // SAFETY: read-only use of a value userspace wrote.
        None => unsafe { IFACES_HIGH.get(&ifindex) },
    }
}

/// The address of `path`'s pod.
#[inline(always)]
pub fn pod_of(path: u32) -> Option<&'static PodAddr> {
    PATH_PODS.get(path)
}

/// The path of a pod IP.
#[inline(always)]
pub fn path_of(addr: &PodAddr) -> Option<u32> {
    // SAFETY: as above.
    unsafe { POD_PATHS.get(addr) }.copied()
}

/// Whose namespace inode `inum` is: the node's or a pod's; `None` for any other.
#[inline(always)]
pub fn netns(inum: u32) -> Option<&'static NetnsInfo> {
    // SAFETY: as above.
    unsafe { NETNS_ROLES.get(&inum) }
}
