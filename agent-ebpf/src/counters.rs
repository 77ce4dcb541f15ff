//! The per-path counters: packets and bytes a host veth handed to its pod or received from
//! it, packets it received with a foreign source, and a pod's packets leaving the node by
//! each uplink. Per-CPU, no locks.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use sgpath_ebpf::{
    LeftViaKey, MAX_LEFT_VIA, MAX_PATHS, PathCounters, ProgError,
    packet::{Direction, PodAddr},
};

use crate::errors::bump_error;

#[map]
static PATH_COUNTERS: PerCpuArray<PathCounters> = PerCpuArray::with_max_entries(MAX_PATHS, 0);

#[map]
static LEFT_VIA: PerCpuHashMap<LeftViaKey, u64> = PerCpuHashMap::with_max_entries(MAX_LEFT_VIA, 0);

/// A packet of `len` IP bytes (`segs` wire packets) crossed `path`'s host veth in `dir`.
#[inline(always)]
pub fn forwarded(segs: u64, path: u32, dir: Direction, len: u32) {
    let Some(c) = PATH_COUNTERS.get_ptr_mut(path) else {
        return;
    };
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

/// `path`'s host veth received `segs` packets with source `src`, not its pod's.
#[inline(always)]
pub fn foreign(segs: u64, path: u32, src: &PodAddr) {
    if let Some(c) = PATH_COUNTERS.get_ptr_mut(path) {
        // SAFETY: per-CPU value, only this CPU touches it during this run.
        unsafe {
            (*c).foreign_packets += segs;
            (*c).foreign_source = *src;
        }
    }
}

/// `segs` packets of `path`'s pod left the node by `ifindex`.
#[inline(always)]
pub fn left_via(path: u32, ifindex: u32, segs: u64) {
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
