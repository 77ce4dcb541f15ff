//! Userspace side of the eBPF probes: the embedded object, and why loading it can fail.
//! The programs, their maps and how they are attached, read and detached are in [`paths`].
//!
//! | program              | hook                          | minimum kernel        |
//! |----------------------|-------------------------------|-----------------------|
//! | `path_rx`            | tp_btf `netif_receive_skb`    | 5.5 (tp_btf)          |
//! | `path_tx`            | tp_btf `net_dev_start_xmit`   | 5.5                   |
//! | `kfree_skb_reason`   | tp_btf `kfree_skb`            | 5.17 (drop reasons)   |
//! | `kfree_skb_location` | tp_btf `kfree_skb`            | 5.5 (5.10: AL2)       |
//! | `*_typed` of the first three | the same          | 6.2 (`bpf_rdonly_cast`, [`typed`]) |

pub mod memory;
pub mod paths;
pub mod typed;

/// The eBPF object built by `build.rs` from `agent-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sgpath-ebpf"));

/// The embedded object, as built (typed programs unpatched).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// Empty programs on the same hooks (`floor_rx`, `floor_tx`, `floor_kfree_skb`): the
/// benchmark loads them to measure the floor sgpath's programs are held against. The agent
/// never loads them.
pub static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sgpath-floor"));

/// Why probes could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the eBPF object failed (needs CAP_BPF and CAP_PERFMON, or root): {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the kernel's BTF is unreadable (needs CONFIG_DEBUG_INFO_BTF): {0}")]
    Btf(String),
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot count the possible CPUs (/sys/devices/system/cpu/possible): {0}")]
    Cpus(#[source] std::io::Error),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}
