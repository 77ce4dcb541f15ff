//! The eBPF programs of sgpath, built for `bpfel-unknown-none` by `agent/build.rs`.
//!
//! One module per attach point; each program's name is the string the loader looks up.
//! Programs fail open: they never change a packet's verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `asm!` for the placeholder kfunc call (`skb::rdonly_cast`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod conn_state;
#[cfg(target_arch = "bpf")]
mod conns;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod errors;
#[cfg(target_arch = "bpf")]
mod kfree_skb;
#[cfg(target_arch = "bpf")]
mod path_rx;
#[cfg(target_arch = "bpf")]
mod path_tx;
#[cfg(target_arch = "bpf")]
mod pods;
#[cfg(target_arch = "bpf")]
mod skb;
#[cfg(target_arch = "bpf")]
mod walk;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// On the host the bin target is an empty program, so `cargo build --workspace` works.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
