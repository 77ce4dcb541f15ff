//! What the probes' maps cost in kernel memory, as a formula in the number of possible CPUs
//! and the `--max-*` sizes. It follows the kernel's own accounting (`map_mem_usage`, 6.4+:
//! the `memlock` that `bpftool map show` prints), map type by map type:
//!
//! | map type          | bytes                                                                   |
//! |-------------------|-------------------------------------------------------------------------|
//! | array             | `H + n·v`                                                               |
//! | per-CPU array     | `H + n·8 + n·v·C`                                                       |
//! | hash              | `H + 16·B + 32·C + (n + C)·(48 + k + v) + 8·C`                          |
//! | per-CPU hash      | `H + 16·B + 32·C + n·(48 + k + 8) + n·v·C`                              |
//!
//! `n` entries, `k` and `v` the key and value sizes rounded up to 8, `C` the possible CPUs,
//! `B` the buckets (`n` rounded up to a power of two), `H` the map's own struct (a few
//! hundred bytes, left out). A hash is preallocated: every entry costs from the start.
//!
//! The per-CPU maps are what grows with the node: per path (`PATH_COUNTERS`), per drop key
//! and per `left_via` pair, each times `C`. The kernel charges the lot to the agent's memory
//! cgroup (5.11+), so the DaemonSet's memory limit must hold it (see deploy/).

use super::paths::MapSizes;
use sgpath_ebpf::{
    ConnState, DropKey, IfaceInfo, LeftViaKey, MAX_HIGH_IFACES, MAX_LEFT_VIA, NetnsInfo,
    PathCounters, ProgError, packet::ConnKey, packet::PodAddr,
};

/// How a map type lays out its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Array,
    PerCpuArray,
    Hash,
    PerCpuHash,
}

/// One map: its kind, key and value sizes (bytes) and entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key: u64,
    pub value: u64,
    pub entries: u64,
}

/// `struct htab_elem` on 64-bit kernels (hash node, free-list link, hash).
const HTAB_ELEM: u64 = 48;
/// `struct bucket`: list head and lock.
const BUCKET: u64 = 16;
/// `HASHTAB_MAP_LOCK_COUNT` per-CPU ints of every hash.
const HASH_LOCKS: u64 = 8 * 4;

fn up8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

impl MapSpec {
    /// Bytes the kernel accounts for this map with `cpus` possible CPUs (`H` left out).
    pub fn bytes(&self, cpus: u64) -> u64 {
        let (n, k, v) = (self.entries, up8(self.key), up8(self.value));
        let buckets = n.next_power_of_two();
        match self.kind {
            MapKind::Array => n * v,
            MapKind::PerCpuArray => n * 8 + n * v * cpus,
            MapKind::Hash => {
                BUCKET * buckets + HASH_LOCKS * cpus + (n + cpus) * (HTAB_ELEM + k + v) + 8 * cpus
            }
            MapKind::PerCpuHash => {
                BUCKET * buckets + HASH_LOCKS * cpus + n * (HTAB_ELEM + k + 8) + n * v * cpus
            }
        }
    }
}

fn size<T>() -> u64 {
    std::mem::size_of::<T>() as u64
}

/// The probes' maps with these sizes and `iface_slots` entries of `IFACES`.
pub fn maps(sizes: &MapSizes, iface_slots: u32) -> Vec<MapSpec> {
    let paths = u64::from(sizes.paths);
    let spec = |name, kind, key, value, entries| MapSpec {
        name,
        kind,
        key,
        value,
        entries,
    };
    use MapKind::*;
    vec![
        spec(
            "IFACES",
            Array,
            4,
            size::<IfaceInfo>(),
            u64::from(iface_slots),
        ),
        spec(
            "IFACES_HIGH",
            Hash,
            4,
            size::<IfaceInfo>(),
            u64::from(MAX_HIGH_IFACES),
        ),
        spec("PATH_PODS", Array, 4, size::<PodAddr>(), paths),
        spec("POD_PATHS", Hash, size::<PodAddr>(), 4, paths),
        spec("NETNS_ROLES", Hash, 4, size::<NetnsInfo>(), paths + 1),
        spec(
            "PATH_COUNTERS",
            PerCpuArray,
            4,
            size::<PathCounters>(),
            paths,
        ),
        spec(
            "LEFT_VIA",
            PerCpuHash,
            size::<LeftViaKey>(),
            8,
            u64::from(MAX_LEFT_VIA),
        ),
        spec(
            "CONNS",
            Hash,
            size::<ConnKey>(),
            size::<ConnState>(),
            u64::from(sizes.conns),
        ),
        spec(
            "DROPS",
            PerCpuHash,
            size::<DropKey>(),
            8,
            u64::from(sizes.drop_keys),
        ),
        spec(
            "DROP_SLOTS",
            PerCpuArray,
            4,
            size::<sgpath_ebpf::DropSlot>(),
            u64::from(sizes.paths),
        ),
        spec(
            "PROG_ERRORS",
            PerCpuArray,
            4,
            8,
            u64::from(sgpath_ebpf::PROG_ERROR_SLOTS),
        ),
    ]
}

/// Total bytes of the probes' maps with `cpus` possible CPUs.
pub fn total(sizes: &MapSizes, iface_slots: u32, cpus: u64) -> u64 {
    maps(sizes, iface_slots).iter().map(|m| m.bytes(cpus)).sum()
}

// `ProgError` is what PROG_ERRORS counts; keep the slots in step.
const _: () = assert!(ProgError::LeftViaMapFull as u32 + 1 == sgpath_ebpf::PROG_ERROR_SLOTS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_maps_grow_with_cpus_and_nothing_else_does_much() {
        let sizes = MapSizes::default();
        let slots = sgpath_ebpf::ifindex_slots(100);
        let (c2, c8, c192) = (
            total(&sizes, slots, 2),
            total(&sizes, slots, 8),
            total(&sizes, slots, 192),
        );
        // Linear in CPUs: the per-CPU part is the same per CPU.
        assert_eq!((c192 - c2) / 190, (c8 - c2) / 6);
        let per_cpu = (c8 - c2) / 6;
        // Per CPU: PATH_COUNTERS (4096 x 56) + DROP_SLOTS (4096 x 24) + DROPS (8192 x 8) +
        // LEFT_VIA (8192 x 8) + a little: what a path and a drop key cost on every CPU.
        let paths = 4096 * (56 + 24);
        assert!(per_cpu > paths + 2 * 8192 * 8, "{per_cpu}");
        assert!(per_cpu < paths + 2 * 8192 * 8 + 4096, "{per_cpu}");
        // The fixed part: CONNS dominates (16384 x 120).
        let fixed = c2 - 2 * per_cpu;
        assert!(fixed > 16384 * 120 && fixed < 6 << 20, "{fixed}");
    }

    #[test]
    fn hash_formula_matches_the_kernels_terms() {
        // CONNS with 16384 entries, 40-byte keys and 32-byte values on 2 CPUs:
        // 16 x 16384 buckets + 32 x 2 lock ints + (16384 + 2) x (48 + 40 + 32) + 8 x 2.
        let m = maps(&MapSizes::default(), 4096)
            .into_iter()
            .find(|m| m.name == "CONNS")
            .unwrap();
        assert_eq!(m.bytes(2), 16 * 16384 + 64 + 16386 * 120 + 16);
    }
}
