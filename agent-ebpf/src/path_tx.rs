//! `path_tx`: tp_btf `net_dev_start_xmit` (net/core/dev.c, right before the driver, 5.5+ as
//! tp_btf). Counts what the node hands to a pod: packets a host veth of the node's namespace
//! transmits, charged to that veth's path as `to_pod`. It fires after tc/tcx egress, so it
//! sees exactly what every egress filter let through.

use crate::{skb::Typed, walk};
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use sgpath_ebpf::packet::Hook;

/// Headers by helper read (5.10, 6.1).
#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn path_tx(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let dev: *const u8 = ctx.arg(1);
    if walk::in_node(dev) {
        walk::observe_copied(skb, dev, Hook::Transmit);
    }
    0
}

/// Headers by BTF-typed loads (6.2+).
#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn path_tx_typed(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let dev: *const u8 = ctx.arg(1);
    if walk::in_node(dev) {
        walk::observe::<Typed>(skb, dev, Hook::Transmit);
    }
    0
}
