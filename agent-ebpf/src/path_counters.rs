//! What `path_rx` and `path_tx` do with a packet on an interface of the node's namespace.
//! `IFACES` (kept by userspace) says what the interface is; everything else is one map
//! lookup and out.
//!
//! | interface | receive (`path_rx`)                  | transmit (`path_tx`)              |
//! |-----------|--------------------------------------|-----------------------------------|
//! | host veth | `from_pod` of the veth's path        | `to_pod` of the veth's path       |
//! | uplink    | -                                    | `left_via` of the source's path   |
//!
//! A host veth counts a packet only with its pod's address on the pod's side (source on
//! receive, destination on transmit, [`packet::attribute`]): a pod sending with a
//! neighbour's address counts as `foreign` on its own path and touches nothing else.
//! Link-local chatter counts nowhere. SYNs, SYN-ACKs, RSTs and DNS packets also go to
//! [`conns`].

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};
use sgpath_ebpf::{
    IfaceInfo, IfaceRole, LeftViaKey, MAX_LEFT_VIA, MAX_PATHS, NO_PATH, PathCounters, ProgError,
    packet::{self, Attribution, Direction, PodAddr},
};

use crate::{conns, errors::bump_error, skb};

#[map]
pub static IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(MAX_PATHS, 0);

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
    let Some(iface) = (unsafe { IFACES.get(&ifindex) }) else {
        return;
    };
    let veth = iface.role == IfaceRole::HostVeth as u8;
    let site = match hook {
        Hook::Receive if veth => Site::VethReceive,
        Hook::Transmit if veth => Site::VethTransmit,
        Hook::Transmit if iface.role == IfaceRole::Uplink as u8 => Site::UplinkTransmit,
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
    // The path whose pod sent or gets the packet: the veth's, once its address checks out.
    let path = match site {
        Site::VethReceive | Site::VethTransmit => {
            let from_pod = site == Site::VethReceive;
            match packet::attribute(from_pod, &iface.pod, &ip) {
                Attribution::Own => {
                    let dir = if from_pod {
                        Direction::FromPod
                    } else {
                        Direction::ToPod
                    };
                    forwarded(skb, iface.path, dir, ip.len);
                    Some(iface.path)
                }
                Attribution::Foreign => {
                    foreign(skb, iface.path, &ip.src);
                    return;
                }
                Attribution::Ignore => return,
            }
        }
        Site::UplinkTransmit => {
            if let Some(path) = path_of(&ip.src) {
                left_via(path, ifindex, skb::segments(skb));
            }
            None
        }
    };
    if let Some(signal) = ip.l4.and_then(|l4| l4.signal()) {
        conns::track(skb, site, path.unwrap_or(NO_PATH), &ip, signal);
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
fn foreign(skb: *const u8, path: u32, src: &PodAddr) {
    if let Some(c) = PATH_COUNTERS.get_ptr_mut(path) {
        // SAFETY: per-CPU value, only this CPU touches it during this run.
        unsafe {
            (*c).foreign_packets += skb::segments(skb);
            (*c).foreign_source = *src;
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
