//! Types shared between the eBPF programs (`src/main.rs`) and the userspace agent.
//!
//! Everything here crosses the kernel boundary: fixed-width integers and `#[repr(C)]`
//! structs with explicit padding only, sizes asserted at compile time. No side effects.
#![no_std]

/// Name of the per-CPU hash map `ifindex -> IfCounters` the tc programs fill.
pub const IF_COUNTERS_MAP: &str = "IF_COUNTERS";
/// Name of the per-CPU array map of program error counters (index: [`ProgError`]).
pub const PROG_ERRORS_MAP: &str = "PROG_ERRORS";
/// Maximum number of interfaces counted at once (a node has at most ~120 VLANs plus veths).
pub const MAX_INTERFACES: u32 = 4096;

/// Packet counters of one interface as seen by the tc hooks, per CPU.
///
/// `ingress` counts what the interface received (tc ingress), `egress` what it sent.
/// Only IPv4 and IPv6 frames are counted; ARP and other ethertypes go to `other_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    pub ingress_packets: u64,
    pub ingress_bytes: u64,
    pub egress_packets: u64,
    pub egress_bytes: u64,
    pub other_packets: u64,
}

/// Errors a program counts instead of failing closed (index into `PROG_ERRORS`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgError {
    /// The per-interface counter map was full: the packet passed uncounted.
    MapFull = 0,
}

/// Number of [`ProgError`] slots.
pub const PROG_ERROR_SLOTS: u32 = 1;

impl TryFrom<u32> for ProgError {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            0 => Ok(ProgError::MapFull),
            other => Err(other),
        }
    }
}

const _: () = assert!(core::mem::size_of::<IfCounters>() == 40);

// SAFETY: plain #[repr(C)] integers without padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for IfCounters {}
