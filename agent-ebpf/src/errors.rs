//! `PROG_ERRORS`: what the programs could not count (a full map), per CPU. The programs
//! never fail a packet; they count the miss here and userspace reports it.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use sgpath_ebpf::{PROG_ERROR_SLOTS, ProgError};

#[map]
static PROG_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROG_ERROR_SLOTS, 0);

/// Counts one `e`.
#[inline(always)]
pub fn bump_error(e: ProgError) {
    if let Some(slot) = PROG_ERRORS.get_ptr_mut(e as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}
