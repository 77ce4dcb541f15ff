//! `kfree_skb_reason` and `kfree_skb_location`: tp_btf `kfree_skb` (net/core/skbuff.c), the
//! kernel's drop point. The reason argument exists from 5.17 (`enum skb_drop_reason`, values
//! differ per kernel: userspace names them from BTF); 5.10 has only the freeing function
//! (`location`), so userspace loads `kfree_skb_location` there or with
//! `--drop-source location`.
//!
//! A drop is charged to the path of the pod IP in its header (source: `from_pod`,
//! destination: `to_pod`), and only when the skb's device (or, before it has one, its
//! socket) is in the node's namespace or a pod's (`NETNS_ROLES`): drops in any other
//! namespace (the lab's VPC) stay invisible, as AWS's are on a real node.
//!
//! A drop a pod could fake charges only that pod's path: one inside a pod's namespace, or
//! on a host veth of the node's, counts only for the path of that namespace or veth (a
//! pod sending with its neighbour's address, or to it, and dropped there, is no drop of the
//! neighbour's).

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use sgpath_ebpf::{
    DropKey, DropSlot, IfaceRole, MAX_DROP_KEYS, MAX_PATHS, NO_PATH, ProgError,
    packet::{self, Direction, NetnsRole},
};

use crate::{
    errors::bump_error,
    pods,
    skb::{self, Mode, Probe, Typed},
};

#[map]
static DROPS: PerCpuHashMap<DropKey, u64> = PerCpuHashMap::with_max_entries(MAX_DROP_KEYS, 0);

/// Sized by userspace like the path maps.
#[map]
static DROP_SLOTS: PerCpuArray<DropSlot> = PerCpuArray::with_max_entries(MAX_PATHS, 0);

/// With reasons, headers by helper read (6.1).
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_reason(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);
    charge::<Probe>(skb, location, reason);
    0
}

/// With reasons, headers by BTF-typed loads (6.2+).
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_reason_typed(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);
    charge::<Typed>(skb, location, reason);
    0
}

/// Without reasons (5.10, or `--drop-source location`), headers by helper read.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_location(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    charge::<Probe>(skb, location, 0);
    0
}

#[inline(always)]
fn charge<M: Mode>(skb: *const u8, location: u64, reason: u32) {
    if skb.is_null() {
        return;
    }
    // Where it happened, first: the device's namespace, or before it has a device (the
    // output hook of netfilter) its socket's. The node's is a compare with `CONFIG`; only
    // another namespace costs a lookup (is it a pod's?).
    let dev = skb::dev(skb);
    let inum = if dev.is_null() {
        skb::sk_netns(skb)
    } else {
        skb::netns(dev)
    };
    let Some(inum) = inum else {
        return;
    };
    let (role, mut only) = if inum == skb::node_netns() {
        (NetnsRole::Node as u8, NO_PATH)
    } else {
        match pods::netns(inum) {
            Some(ns) => (ns.role, ns.path),
            None => return,
        }
    };
    if !skb::is_ip(skb) {
        return;
    }
    // The one path this drop may charge, when the place it happened belongs to a pod: its
    // namespace, or its host veth in the node's.
    let mut veth_pod = None;
    if only == NO_PATH && !dev.is_null() {
        if let Some(iface) = pods::iface(skb::ifindex(dev)) {
            if iface.role == IfaceRole::HostVeth as u8 {
                only = iface.path;
                veth_pod = pods::pod_of(iface.path);
            }
        }
    }
    // Only the addresses are read (and the few bytes beside them `parse_ip` needs).
    let Some(h) = M::headers(skb::network_header(skb)) else {
        return;
    };
    let Some(ip) = packet::parse_ip(&h) else {
        return;
    };
    for (addr, dir) in [(ip.src, Direction::FromPod), (ip.dst, Direction::ToPod)] {
        // On a host veth its pod's address is known: no hash lookup.
        let path = match veth_pod {
            Some(pod) => pod.same(&addr).then_some(only),
            None => pods::path_of(&addr),
        };
        let Some(path) = path else {
            continue;
        };
        if only != NO_PATH && path != only {
            continue;
        }
        // The path's slot on this CPU: its kind, or empty (claimed here), is one update.
        let kind = DropSlot::kind(dir as u8, role, reason);
        if let Some(slot) = DROP_SLOTS.get_ptr_mut(path) {
            // SAFETY: per-CPU value; only this CPU's runs write it (tracing programs do not
            // nest on a CPU). Volatile: the key words are stored before the count.
            unsafe {
                let slot = &mut *slot;
                if slot.kind == kind && slot.location == location {
                    slot.count += 1;
                    continue;
                }
                if slot.kind == 0 && slot.location == 0 && location != 0 {
                    core::ptr::write_volatile(&mut slot.kind, kind);
                    core::ptr::write_volatile(&mut slot.location, location);
                    core::ptr::write_volatile(&mut slot.count, slot.count + 1);
                    continue;
                }
            }
        }
        let key = DropKey {
            path: path as u16,
            direction: dir as u8,
            netns_role: role,
            reason,
            location,
        };
        match DROPS.get_ptr_mut(&key) {
            // SAFETY: per-CPU value.
            Some(n) => unsafe { *n += 1 },
            None => {
                if DROPS.insert(&key, &1, 0).is_err() {
                    bump_error(ProgError::DropMapFull);
                }
            }
        }
    }
}
