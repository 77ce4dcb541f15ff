//! Per-path forwarded counters shared by `path_rx` and `path_tx`: `HOST_VETHS` (ifindexes
//! of host veths in the node's namespace, kept by userspace) selects the interface,
//! `POD_PATHS` charges the packet to the path of the pod IP in its header (so a host veth's
//! IPv6 link-local chatter counts nowhere), `PATH_COUNTERS` (per-CPU array indexed by path
//! id) counts it. One map lookup for a packet on any other interface.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use sgpath_ebpf::{
    MAX_PATHS, PathCounters, ProbeConfig,
    packet::{Direction, PodAddr},
};

use crate::skb;

#[map]
pub static HOST_VETHS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PATHS, 0);

#[map]
pub static POD_PATHS: HashMap<PodAddr, u32> = HashMap::with_max_entries(MAX_PATHS, 0);

#[map]
static PATH_COUNTERS: PerCpuArray<PathCounters> = PerCpuArray::with_max_entries(MAX_PATHS, 0);

#[inline(always)]
pub fn count(cfg: &ProbeConfig, skb: *const u8, dev: *const u8, dir: Direction) {
    if dev.is_null() {
        return;
    }
    let Some(ifindex) = skb::ifindex(cfg, dev) else {
        return;
    };
    // SAFETY: read-only use of a value userspace wrote.
    if unsafe { HOST_VETHS.get(&ifindex) }.is_none() {
        return;
    }
    // ifindexes repeat across namespaces: only the node's own veths count.
    if skb::netns(cfg, dev) != Some(cfg.node_netns) || !skb::is_ip(cfg, skb) {
        return;
    }
    let ip = match dir {
        Direction::FromPod => skb::ip_at_data(cfg, skb),
        Direction::ToPod => skb::ip_at_network_header(cfg, skb),
    };
    let Some(ip) = ip else { return };
    let addr = match dir {
        Direction::FromPod => ip.src,
        Direction::ToPod => ip.dst,
    };
    // SAFETY: read-only use of a value userspace wrote.
    let Some(&path) = (unsafe { POD_PATHS.get(&addr) }) else {
        return;
    };
    let Some(c) = PATH_COUNTERS.get_ptr_mut(path) else {
        return;
    };
    let segs = skb::segments(cfg, skb);
    // SAFETY: per-CPU value, only this CPU touches it during this run.
    let c = unsafe { &mut *c };
    match dir {
        Direction::ToPod => {
            c.to_pod_packets += segs;
            c.to_pod_bytes += ip.len as u64;
        }
        Direction::FromPod => {
            c.from_pod_packets += segs;
            c.from_pod_bytes += ip.len as u64;
        }
    }
}
