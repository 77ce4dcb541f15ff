//! Userspace side of the eBPF probes: load the embedded object, attach the tc counters to
//! interfaces, read the per-CPU maps, detach on drop. The per-path counters and drops are in
//! [`paths`].
//!
//! | program      | hook                 | minimum kernel | without it          |
//! |--------------|----------------------|----------------|---------------------|
//! | `if_ingress` | tcx ingress / clsact | 4.1 (tcx 6.6)  | no packet counters  |
//! | `if_egress`  | tcx egress / clsact  | 4.1 (tcx 6.6)  | no packet counters  |
//!
//! Side effects: loads BPF programs and maps; on kernels before 6.6 (no tcx) adds a clsact
//! qdisc to each interface that has none. Dropping [`IfProbes`] detaches every program and
//! deletes the clsact qdiscs it added, so nothing is left behind.

use std::collections::BTreeMap;

use aya::util::KernelVersion;
use aya::{
    Ebpf,
    maps::PerCpuHashMap,
    programs::{SchedClassifier, TcAttachType, tc},
};
use sgpath_ebpf::{IF_COUNTERS_MAP, IfCounters};

/// The eBPF object built by `build.rs` from `agent-ebpf`.
pub mod paths;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sgpath-ebpf"));

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
    #[error("attaching {name} to {iface}: {source} (needs CAP_NET_ADMIN)")]
    Attach {
        name: &'static str,
        iface: String,
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

/// Counters of one interface summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IfTotals {
    pub ingress_packets: u64,
    pub ingress_bytes: u64,
    pub egress_packets: u64,
    pub egress_bytes: u64,
    pub other_packets: u64,
}

/// The tc counters, attached to a set of interfaces of the current network namespace.
/// Dropping it detaches every program.
pub struct IfProbes {
    ebpf: Ebpf,
    /// Interfaces (name, ifindex) where we created the clsact qdisc (pre-tcx kernels).
    added_clsact: Vec<(String, u32)>,
}

const PROGRAMS: [(&str, TcAttachType); 2] = [
    ("if_ingress", TcAttachType::Ingress),
    ("if_egress", TcAttachType::Egress),
];

impl IfProbes {
    /// Load the programs (not yet attached).
    ///
    /// # Errors
    /// [`ProbeError`] when the kernel refuses the object or a program.
    pub fn load() -> Result<IfProbes, ProbeError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(ProbeError::Load)?;
        for (name, _) in PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(ProbeError::MissingProgram { name })?
                .try_into()
                .map_err(|source| ProbeError::Program { name, source })?;
            prog.load()
                .map_err(|source| ProbeError::Program { name, source })?;
        }
        Ok(IfProbes {
            ebpf,
            added_clsact: Vec::new(),
        })
    }

    /// Attach both counters to `iface` (by name, in the calling thread's namespace).
    ///
    /// # Errors
    /// [`ProbeError::Attach`] naming the interface.
    pub fn attach(&mut self, iface: &str) -> Result<(), ProbeError> {
        // Kernels before 6.6 have no tcx: aya attaches through a clsact qdisc, which must
        // exist. An existing one (another tool's) is used and left alone.
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !tcx && tc::qdisc_add_clsact(iface).is_ok() {
            let ifindex = nix::net::if_::if_nametoindex(iface).unwrap_or(0);
            self.added_clsact.push((iface.to_string(), ifindex));
        }
        for (name, at) in PROGRAMS {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or(ProbeError::MissingProgram { name })?
                .try_into()
                .map_err(|source| ProbeError::Program { name, source })?;
            prog.attach(iface, at)
                .map_err(|source| ProbeError::Attach {
                    name,
                    iface: iface.to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Run one program `repeat` times on `frame` inside the kernel (BPF_PROG_TEST_RUN,
    /// nothing attached, nothing on the wire) and return the kernel's mean time per run.
    /// For benchmarks: the packet-path cost of a hook.
    ///
    /// # Errors
    /// [`ProbeError::Program`] when the kernel refuses the test run (needs CAP_BPF or root).
    pub fn time_per_packet(
        &self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<std::time::Duration, ProbeError> {
        use aya::programs::{TestRun, TestRunOptions};
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or(ProbeError::MissingProgram { name })?
            .try_into()
            .map_err(|source| ProbeError::Program { name, source })?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        };
        let res = prog
            .test_run(opts)
            .map_err(|source| ProbeError::Program { name, source })?;
        Ok(res.duration)
    }

    /// Per-interface counters summed over CPUs, by ifindex.
    ///
    /// # Errors
    /// [`ProbeError::Map`] when the map cannot be read.
    pub fn read(&self) -> Result<BTreeMap<u32, IfTotals>, ProbeError> {
        let map = self
            .ebpf
            .map(IF_COUNTERS_MAP)
            .ok_or(ProbeError::MissingProgram {
                name: IF_COUNTERS_MAP,
            })?;
        let map: PerCpuHashMap<_, u32, IfCounters> =
            PerCpuHashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: IF_COUNTERS_MAP,
                source,
            })?;
        let mut out = BTreeMap::new();
        for entry in map.iter() {
            let (ifindex, per_cpu) = entry.map_err(|source| ProbeError::Map {
                name: IF_COUNTERS_MAP,
                source,
            })?;
            let mut t = IfTotals::default();
            for c in per_cpu.iter() {
                t.ingress_packets += c.ingress_packets;
                t.ingress_bytes += c.ingress_bytes;
                t.egress_packets += c.egress_packets;
                t.egress_bytes += c.egress_bytes;
                t.other_packets += c.other_packets;
            }
            out.insert(ifindex, t);
        }
        Ok(out)
    }
}

impl Drop for IfProbes {
    /// Programs detach when `ebpf` drops; the clsact qdiscs we created go here
    /// (`tc qdisc del dev <iface> clsact`).
    fn drop(&mut self) {
        if self.added_clsact.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok((conn, handle, _)) = rtnetlink::new_connection() else { return };
            let conn = tokio::spawn(conn);
            for (iface, ifindex) in &self.added_clsact {
                let mut req = handle.clone().qdisc().del(*ifindex as i32);
                req.message_mut().header.parent = netlink_packet_route::tc::TcHandle::CLSACT;
                req.message_mut().header.handle = netlink_packet_route::tc::TcHandle { major: 0xffff, minor: 0 };
                if let Err(e) = req.execute().await {
                    tracing::warn!(%iface, error = %e, "could not delete the clsact qdisc sgpath added");
                }
            }
            conn.abort();
        });
    }
}
