//! What `path_rx` and `path_tx` do with a packet on an interface of the node's namespace.
//! `IFACES` (kept by userspace) says what the interface is; everything else is one map
//! lookup and out.
//!
//! | interface | receive (`path_rx`)             | transmit (`path_tx`)                      |
//! |-----------|---------------------------------|-------------------------------------------|
//! | host veth | `from_pod` of the source's path | `to_pod` of the destination's path        |
//! | uplink    | -                               | `left_via` of the source's path           |
//!
//! The pod IP in the header picks the path (`POD_PATHS`), so a host veth's IPv6 link-local
//! chatter counts nowhere. SYNs, SYN-ACKs and DNS packets also go to [`conns`].

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};
use sgpath_ebpf::{
    IfaceRole, LeftViaKey, MAX_LEFT_VIA, MAX_PATHS, PathCounters, ProgError,
    packet::{Direction, PodAddr},
};

use crate::{conns, if_counters::bump_error, skb};

#[map]
static IFACES: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PATHS, 0);

#[map]
pub static POD_PATHS: HashMap<PodAddr, u32> = HashMap::with_max_entries(MAX_PATHS, 0);

#[map]
static PATH_COUNTERS: PerCpuArray<PathCounters> = PerCpuArray::with_max_entries(MAX_PATHS, 0);

#[map]
static LEFT_VIA: PerCpuHashMap<LeftViaKey, u64> = PerCpuHashMap::with_max_entries(MAX_LEFT_VIA, 0);

/// Which tracepoint saw the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Receive,
    Transmit,
}

/// Where a packet was seen: the interface's role and the hook.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// A pod's host veth received it: it comes from the pod.
    VethReceive,
    /// A pod's host veth sends it: it goes to the pod.
    VethTransmit,
    /// It leaves the node by a node ENI, trunk or `vlan.eth.N`.
    UplinkTransmit,
}

/// The path of a pod IP.
#[inline(always)]
pub fn path_of(addr: &PodAddr) -> Option<u32> {
    // SAFETY: read-only use of a value userspace wrote.
    unsafe { POD_PATHS.get(addr) }.copied()
}

// Out of line: one body for both tracepoints, in its own stack frame.
#[inline(never)]
pub fn observe(skb: *const u8, dev: *const u8, hook: Hook) {
    if dev.is_null() {
        return;
    }
    // ifindexes repeat across namespaces: only the node's own interfaces count. Two loads,
    // so first: a pod's own packets leave before any map lookup.
    if skb::netns(dev) != Some(skb::node_netns()) {
        return;
    }
    let ifindex = skb::ifindex(dev);
    // SAFETY: read-only use of a value userspace wrote.
    let role = unsafe { IFACES.get(&ifindex) }.copied().unwrap_or(0);
    let site = match hook {
        Hook::Receive if role == IfaceRole::HostVeth as u8 => Site::VethReceive,
        Hook::Transmit if role == IfaceRole::HostVeth as u8 => Site::VethTransmit,
        Hook::Transmit if role == IfaceRole::Uplink as u8 => Site::UplinkTransmit,
        // An uplink's receive side tells nothing (answers are matched on the host veth).
        _ => return,
    };
    if !skb::is_ip(skb) {
        return;
    }
    let at = match hook {
        // On receive the stack has not set the network header yet: the IP header is at data.
        Hook::Receive => skb::data(skb),
        Hook::Transmit => skb::network_header(skb),
    };
    let Some(ip) = skb::header(at) else { return };
    match site {
        Site::VethReceive => {
            if let Some(path) = path_of(&ip.src) {
                forwarded(skb, path, Direction::FromPod, ip.len);
            }
        }
        Site::VethTransmit => {
            if let Some(path) = path_of(&ip.dst) {
                forwarded(skb, path, Direction::ToPod, ip.len);
            }
        }
        Site::UplinkTransmit => {
            if let Some(path) = path_of(&ip.src) {
                left_via(path, ifindex, skb::segments(skb));
            }
        }
    }
    if let Some(l4) = ip.l4 {
        if let Some(signal) = l4.signal() {
            conns::track(skb, site, &ip, &l4, signal);
        }
    }
}

#[inline(always)]
fn forwarded(skb: *const u8, path: u32, dir: Direction, len: u32) {
    let Some(c) = PATH_COUNTERS.get_ptr_mut(path) else {
        return;
    };
    let segs = skb::segments(skb);
    // SAFETY: per-CPU value, only this CPU touches it during this run.
    let c = unsafe { &mut *c };
    match dir {
        Direction::ToPod => {
            c.to_pod_packets += segs;
            c.to_pod_bytes += len as u64;
        }
        Direction::FromPod => {
            c.from_pod_packets += segs;
            c.from_pod_bytes += len as u64;
        }
    }
}

#[inline(always)]
fn left_via(path: u32, ifindex: u32, segs: u64) {
    let key = LeftViaKey { path, ifindex };
    match LEFT_VIA.get_ptr_mut(&key) {
        // SAFETY: per-CPU value.
        Some(n) => unsafe { *n += segs },
        None => {
            if LEFT_VIA.insert(&key, &segs, 0).is_err() {
                bump_error(ProgError::LeftViaMapFull);
            }
        }
    }
}
