//! `if_ingress` / `if_egress`: tc (tcx on >= 6.6, clsact before) programs counting each
//! interface's IPv4/IPv6 packets and bytes into the per-CPU `IF_COUNTERS` map.
//!
//! Minimum kernel: 4.1 (cls_bpf direct-action); tcx needs 6.6 and aya falls back to
//! netlink clsact by itself. Both return `TC_ACT_UNSPEC` (-1), which is "continue with the
//! next program" under tcx and legacy tc alike: we observe, never decide.

use aya_ebpf::{
    macros::{classifier, map},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::TcContext,
};
use sgpath_ebpf::{IfCounters, MAX_INTERFACES, PROG_ERROR_SLOTS, ProgError};

const TC_ACT_UNSPEC: i32 = -1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

#[map]
static IF_COUNTERS: PerCpuHashMap<u32, IfCounters> =
    PerCpuHashMap::with_max_entries(MAX_INTERFACES, 0);

#[map]
static PROG_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROG_ERROR_SLOTS, 0);

#[derive(Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

#[classifier]
pub fn if_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn if_egress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(ctx: &TcContext, dir: Direction) {
    // SAFETY: the verifier guarantees ctx.skb.skb points at the __sk_buff for this run.
    let (ifindex, protocol, len) = unsafe {
        let skb = &*ctx.skb.skb;
        (
            skb.ifindex,
            u16::from_be(skb.protocol as u16),
            skb.len as u64,
        )
    };
    let counters = match IF_COUNTERS.get_ptr_mut(&ifindex) {
        Some(c) => c,
        None => {
            // First packet of this interface on this CPU. Per-CPU values: no lock needed.
            if IF_COUNTERS
                .insert(&ifindex, &IfCounters::default(), 0)
                .is_err()
            {
                bump_error(ProgError::MapFull);
                return;
            }
            match IF_COUNTERS.get_ptr_mut(&ifindex) {
                Some(c) => c,
                None => return,
            }
        }
    };
    // SAFETY: a per-CPU map value, only this CPU touches it during this program run.
    let c = unsafe { &mut *counters };
    match (protocol, dir) {
        (ETH_P_IP | ETH_P_IPV6, Direction::Ingress) => {
            c.ingress_packets += 1;
            c.ingress_bytes += len;
        }
        (ETH_P_IP | ETH_P_IPV6, Direction::Egress) => {
            c.egress_packets += 1;
            c.egress_bytes += len;
        }
        _ => c.other_packets += 1,
    }
}

#[inline(always)]
pub fn bump_error(e: ProgError) {
    if let Some(slot) = PROG_ERRORS.get_ptr_mut(e as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}
