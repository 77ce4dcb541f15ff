//! The measurement floor: empty programs on the hooks sgpath uses, for `cargo xtask bench`
//! only (the agent never loads this object). The kernel's own run-time accounting
//! (BPF_ENABLE_STATS) of an empty program is the cost of the hook and of the accounting
//! itself; sgpath's programs are measured against it in the same run.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

    #[btf_tracepoint(function = "netif_receive_skb")]
    pub fn floor_rx(_ctx: BtfTracePointContext) -> i32 {
        0
    }

    #[btf_tracepoint(function = "net_dev_start_xmit")]
    pub fn floor_tx(_ctx: BtfTracePointContext) -> i32 {
        0
    }

    #[btf_tracepoint(function = "kfree_skb")]
    pub fn floor_kfree_skb(_ctx: BtfTracePointContext) -> i32 {
        0
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
