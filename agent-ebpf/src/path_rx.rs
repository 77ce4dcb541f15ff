//! `path_rx`: tp_btf `netif_receive_skb` (net/core/dev.c, `__netif_receive_skb_core`, 5.5+
//! as tp_btf). Counts what a pod sends into the node: packets received on a host veth of the
//! node's namespace, charged to that veth's path as `from_pod`.
//!
//! A tracepoint, not tc: it fires before tc/tcx ingress, so a priority-1 filter of another
//! program (the AWS network policy agent's) cannot hide packets from it on any kernel; what
//! such a filter drops is counted by `kfree_skb` and subtracted by userspace.

use crate::{
    skb::{self, Typed},
    walk,
};
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use sgpath_ebpf::packet::Hook;

/// Headers by helper read (5.10, 6.1).
#[btf_tracepoint(function = "netif_receive_skb")]
pub fn path_rx(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let dev = skb::dev(skb);
    if walk::in_node(dev) {
        walk::observe_copied(skb, dev, Hook::Receive);
    }
    0
}

/// Headers by BTF-typed loads (6.2+).
#[btf_tracepoint(function = "netif_receive_skb")]
pub fn path_rx_typed(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let dev = skb::dev(skb);
    if walk::in_node(dev) {
        walk::observe::<Typed>(skb, dev, Hook::Receive);
    }
    0
}
