//! What userspace tells the programs about the node: each probed interface (`IFACES`:
//! role, and for a host veth its path and pod address), each pod address's path
//! (`POD_PATHS`), and whose namespaces count drops (`NETNS_ROLES`). Read-only here.

use aya_ebpf::{macros::map, maps::HashMap};
use sgpath_ebpf::{IfaceInfo, MAX_NETNS, MAX_PATHS, NetnsInfo, packet::PodAddr};

#[map]
static IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(MAX_PATHS, 0);

#[map]
static POD_PATHS: HashMap<PodAddr, u32> = HashMap::with_max_entries(MAX_PATHS, 0);

#[map]
static NETNS_ROLES: HashMap<u32, NetnsInfo> = HashMap::with_max_entries(MAX_NETNS, 0);

/// What interface `ifindex` of the node's namespace is, if it is probed.
#[inline(always)]
pub fn iface(ifindex: u32) -> Option<&'static IfaceInfo> {
    // SAFETY: read-only use of a value userspace wrote.
    unsafe { IFACES.get(&ifindex) }
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
