//! Per-path counters and kernel drops: loads the `tp_btf` programs with the running
//! kernel's struct offsets, keeps their maps in step with the topology, reads them.
//!
//! | program              | hook (tp_btf)        | minimum kernel | without it                       |
//! |----------------------|----------------------|----------------|----------------------------------|
//! | `path_rx`            | `netif_receive_skb`  | 5.5            | no `from_pod` counts, no SYNs    |
//! | `path_tx`            | `net_dev_start_xmit` | 5.5            | no `to_pod` counts, no `left_via`|
//! | `kfree_skb_reason`   | `kfree_skb`          | 5.17 (reason)  | `kfree_skb_location` instead     |
//! | `kfree_skb_location` | `kfree_skb`          | 5.5            | no drops                         |
//! | `conn_state`         | `inet_sock_set_state`| 5.5            | the node's TCP requests to pods never answered |
//!
//! Tracepoints rather than tc filters for the counts: `netif_receive_skb` fires before
//! tc/tcx ingress and `net_dev_start_xmit` after tc/tcx egress, so another program's
//! priority-1 filter that returns a verdict (the AWS network policy agent's) can neither hide
//! a packet from them nor make them count one it dropped, on 5.10, 6.1 and 6.12 alike.
//!
//! Side effects: loads BPF programs and maps and attaches four tracepoint links; dropping
//! [`PathProbes`] detaches them all (links are owned by this process: nothing outlives it).

use std::collections::BTreeMap;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePoint,
};
use sgpath_ebpf::{
    CONFIG_GLOBAL, CONNS_MAP, ConnState, DROP_SLOTS_MAP, DROPS_MAP, DropKey, DropSlot,
    IFACES_HIGH_MAP, IFACES_MAP, IfaceInfo, LEFT_VIA_MAP, LeftViaKey, MAX_CONNS, MAX_DROP_KEYS,
    MAX_LEFT_VIA, MAX_PATHS, NETNS_ROLES_MAP, NetnsInfo, PATH_COUNTERS_MAP, PATH_PODS_MAP,
    POD_PATHS_MAP, PROG_ERRORS_MAP, PathCounters, ProbeConfig, ProgError, ifindex_slots,
    packet::{ConnKey, PodAddr},
};

use super::{
    ProbeError,
    typed::{self, HeaderRead, TypedIds},
};
use crate::collect::btf::{Btf as KernelBtf, BtfError};

/// The program that answers the node's own TCP requests to pods where its socket takes the
/// answer (`tp_btf/inet_sock_set_state`): a SYN-ACK that crossed the pod's host veth has not
/// reached the node yet (a strict pod's answer still crosses the VPC), so only the node's
/// socket leaving SYN_SENT proves it came back.
pub const CONN_STATE_PROG: &str = "conn_state";

/// Where drop names come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DropSource {
    /// The kernel's `enum skb_drop_reason` (5.17+).
    Reason,
    /// The function that freed the packet.
    Location,
}

/// Struct offsets the programs need, from the running kernel's BTF.
///
/// # Errors
/// [`BtfError`] naming the struct or member the kernel lacks.
pub fn probe_config(btf: &KernelBtf, node_netns: u32) -> Result<ProbeConfig, BtfError> {
    Ok(ProbeConfig {
        skb_dev: btf.member_offset("sk_buff", "dev")?,
        skb_head: btf.member_offset("sk_buff", "head")?,
        skb_data: btf.member_offset("sk_buff", "data")?,
        skb_network_header: btf.member_offset("sk_buff", "network_header")?,
        skb_protocol: btf.member_offset("sk_buff", "protocol")?,
        dev_ifindex: btf.member_offset("net_device", "ifindex")?,
        // possible_net_t holds one pointer, `net`, at its start.
        dev_nd_net: btf.member_offset("net_device", "nd_net")?,
        net_ns_inum: btf.member_offset("net", "ns")? + btf.member_offset("ns_common", "inum")?,
        node_netns,
        skb_sk: btf.member_offset("sk_buff", "sk")?,
        // struct sock starts with its sock_common.
        sk_net: btf.member_offset("sock_common", "skc_net")?,
        skb_end: btf.member_offset("sk_buff", "end")?,
        shinfo_gso_segs: btf.member_offset("skb_shared_info", "gso_segs")?,
        skb_data_len: btf.member_offset("sk_buff", "data_len")?,
        sk_type: btf.member_offset("sock", "sk_type")?,
        sk_protocol: btf.member_offset("sock", "sk_protocol")?,
        sk_state: btf.member_offset("sock_common", "skc_state")?,
        sk_dport: btf.member_offset("sock_common", "skc_dport")?,
        sk_family: btf.member_offset("sock_common", "skc_family")?,
        sk_daddr: btf.member_offset("sock_common", "skc_daddr")?,
        sk_rcv_saddr: btf.member_offset("sock_common", "skc_rcv_saddr")?,
        sk_sport: btf.member_offset("inet_sock", "inet_sport")?,
        sk_v6_daddr: btf.member_offset("sock_common", "skc_v6_daddr")?,
        sk_v6_rcv_saddr: btf.member_offset("sock_common", "skc_v6_rcv_saddr")?,
        sk_err: btf.member_offset("sock", "sk_err")?,
    })
}

/// How many entries the maps that grow with the node hold (`--max-paths`, `--max-conns`,
/// `--max-drop-keys`); the programs' own definitions are the defaults. `PATH_COUNTERS` is
/// per CPU: on a 96-CPU node each path costs 3 KiB, so a node with few pods may want less.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Paths (`POD_PATHS`, `PATH_COUNTERS`).
    pub paths: u32,
    /// Connections awaiting an answer (`CONNS`).
    pub conns: u32,
    /// (path, direction, namespace, reason, location) pairs with drops (`DROPS`).
    pub drop_keys: u32,
}

impl Default for MapSizes {
    fn default() -> MapSizes {
        MapSizes {
            paths: MAX_PATHS,
            conns: MAX_CONNS,
            drop_keys: MAX_DROP_KEYS,
        }
    }
}

impl MapSizes {
    /// The map a kind of program error is about, and how many entries it holds.
    pub fn of(&self, kind: ProgError) -> (&'static str, u32) {
        match kind {
            ProgError::DropMapFull => (DROPS_MAP, self.drop_keys),
            ProgError::ConnMapFull => (CONNS_MAP, self.conns),
            ProgError::LeftViaMapFull => (LEFT_VIA_MAP, MAX_LEFT_VIA),
        }
    }
}

/// One path's raw counts, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawPathCounts {
    pub forwarded: PathCounters,
    /// (direction, netns role, reason, location) -> drops.
    pub drops: Vec<(DropKey, u64)>,
    /// Egress ifindex -> packets of the pod that left the node there.
    pub left_via: Vec<(u32, u64)>,
}

/// What [`PathProbes::read`] returns: counts by path id, and the programs' own errors.
pub type Readings = (BTreeMap<u32, RawPathCounts>, BTreeMap<ProgError, u64>);

/// The loaded and attached path programs.
pub struct PathProbes {
    ebpf: Ebpf,
    pub drop_source: DropSource,
    /// How the attached programs read headers.
    pub header_read: HeaderRead,
    /// (helper-read name, attached program, hook) of each attached program.
    programs: Vec<(&'static str, &'static str, &'static str)>,
    pub sizes: MapSizes,
    /// Entries of the `IFACES` array (ifindexes below it), and those set now.
    iface_slots: u32,
    ifaces_set: Vec<u32>,
    /// Path ids whose `PATH_PODS` entry is set now.
    path_pods_set: Vec<u32>,
}

impl PathProbes {
    /// Loads the programs with `config` and attaches them. `drop_source` picks the drop
    /// program; `Reason` needs a kernel with drop reasons. With `typed` (the kernel has
    /// `bpf_rdonly_cast`, 6.2+) the typed-read programs are tried first; if the kernel
    /// refuses one, the helper-read programs are loaded instead, with a warning naming why.
    ///
    /// # Errors
    /// [`ProbeError`] naming the program and what the kernel refused.
    pub fn attach(
        config: ProbeConfig,
        drop_source: DropSource,
        sizes: MapSizes,
        typed: Option<TypedIds>,
    ) -> Result<PathProbes, ProbeError> {
        // The node's ifindexes now, with room to grow; beyond it, `IFACES_HIGH`.
        let max_ifindex = nix::net::if_::if_nameindex()
            .map(|ifs| ifs.iter().map(|i| i.index()).max().unwrap_or(0))
            .unwrap_or(0);
        let iface_slots = ifindex_slots(max_ifindex);
        let patched = typed.and_then(|ids| match typed::patch(super::OBJECT, &ids) {
            Ok((object, _)) => Some(object),
            Err(e) => {
                tracing::warn!(event = "typed-reads-unavailable", error = %e, "reading headers with a helper");
                None
            }
        });
        let object = patched.as_ref().map_or(super::OBJECT, |o| o.bytes());
        let mut ebpf = EbpfLoader::new()
            .override_global(CONFIG_GLOBAL, &config, true)
            .map_max_entries(POD_PATHS_MAP, sizes.paths)
            .map_max_entries(PATH_PODS_MAP, sizes.paths)
            .map_max_entries(IFACES_MAP, iface_slots)
            // The counted paths' namespaces and the node's.
            .map_max_entries(NETNS_ROLES_MAP, sizes.paths.saturating_add(1))
            .map_max_entries(PATH_COUNTERS_MAP, sizes.paths)
            .map_max_entries(DROP_SLOTS_MAP, sizes.paths)
            .map_max_entries(CONNS_MAP, sizes.conns)
            .map_max_entries(DROPS_MAP, sizes.drop_keys)
            .load(object)
            .map_err(ProbeError::Load)?;
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
        let bases = [
            ("path_rx", "netif_receive_skb"),
            ("path_tx", "net_dev_start_xmit"),
            (drop_source.program(), "kfree_skb"),
            (CONN_STATE_PROG, "inet_sock_set_state"),
        ];
        let mut header_read = if patched.is_some() {
            HeaderRead::Typed
        } else {
            HeaderRead::Probe
        };
        if header_read == HeaderRead::Typed
            && let Err(e) = load_all(&mut ebpf, &btf, &bases, HeaderRead::Typed)
        {
            tracing::warn!(event = "typed-reads-refused", error = %e, "reading headers with a helper");
            unload_all(&mut ebpf, &bases, HeaderRead::Typed);
            header_read = HeaderRead::Probe;
        }
        if header_read == HeaderRead::Probe {
            load_all(&mut ebpf, &btf, &bases, HeaderRead::Probe)?;
        }
        let mut programs = Vec::new();
        for (base, tracepoint) in bases {
            let name = header_read.program(base);
            program_mut(&mut ebpf, name)?
                .attach()
                .map_err(|source| ProbeError::Program { name, source })?;
            programs.push((base, name, tracepoint));
        }
        Ok(PathProbes {
            ebpf,
            drop_source,
            header_read,
            programs,
            sizes,
            iface_slots,
            ifaces_set: Vec::new(),
            path_pods_set: Vec::new(),
        })
    }

    /// The attached programs: (name, `tp_btf/<hook>`).
    pub fn programs(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        self.programs
            .iter()
            .map(|&(_, name, hook)| (name, format!("tp_btf/{hook}")))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingProgram { name })?;
        HashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })
    }

    /// Tells the programs which pod IP belongs to which path id, what each interface of the
    /// node is (host veth or uplink, by ifindex), each path's pod address, and which
    /// namespaces are the node's and its pods': adds what is new, overwrites what changed and
    /// removes what is gone, so the maps equal the arguments afterwards.
    ///
    /// In the order of [`plan`]: a veth's interface entry is written only after its path's
    /// pod address, and removed before it, so the programs never see a veth whose path has
    /// no address because of the order of two writes.
    ///
    /// # Errors
    /// [`ProbeError::Map`] when a map refuses an entry (full).
    pub fn sync(
        &mut self,
        pods: &[(PodAddr, u32)],
        ifaces: &[(u32, IfaceInfo)],
        path_pods: &[(u32, PodAddr)],
        netns: &[(u32, NetnsInfo)],
    ) -> Result<(), ProbeError> {
        let slots = self.iface_slots;
        let (low, high): (Vec<_>, Vec<_>) = ifaces.iter().partition(|(i, _)| *i < slots);
        let high_was: Vec<u32> = {
            let map = self.hash::<u32, IfaceInfo>(IFACES_HIGH_MAP)?;
            map.keys().filter_map(Result::ok).collect()
        };
        let steps = plan(
            (&self.ifaces_set, &low),
            (&high_was, &high),
            (&self.path_pods_set, path_pods),
        );
        for step in steps {
            match step {
                Step::Iface(i, info) => {
                    self.array(IFACES_MAP)?
                        .set(i, info, 0)
                        .map_err(|source| ProbeError::Map {
                            name: IFACES_MAP,
                            source,
                        })?
                }
                Step::IfaceHigh(i, Some(info)) => self
                    .hash::<u32, IfaceInfo>(IFACES_HIGH_MAP)?
                    .insert(i, info, 0)
                    .map_err(|source| ProbeError::Map {
                        name: IFACES_HIGH_MAP,
                        source,
                    })?,
                Step::IfaceHigh(i, None) => {
                    // Gone already is fine.
                    let _ = self.hash::<u32, IfaceInfo>(IFACES_HIGH_MAP)?.remove(&i);
                }
                Step::PathPod(id, addr) => {
                    self.array(PATH_PODS_MAP)?
                        .set(id, addr, 0)
                        .map_err(|source| ProbeError::Map {
                            name: PATH_PODS_MAP,
                            source,
                        })?
                }
                Step::PodPaths => sync_map(
                    self.hash::<PodAddr, u32>(POD_PATHS_MAP)?,
                    POD_PATHS_MAP,
                    pods,
                )?,
            }
        }
        self.ifaces_set = low.iter().map(|(i, _)| *i).collect();
        self.path_pods_set = path_pods.iter().map(|(i, _)| *i).collect();
        sync_map(
            self.hash::<u32, NetnsInfo>(NETNS_ROLES_MAP)?,
            NETNS_ROLES_MAP,
            netns,
        )?;
        Ok(())
    }

    fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingProgram { name })?;
        Array::try_from(map).map_err(|source| ProbeError::Map { name, source })
    }

    /// The connection map's entries (see `model::conns`).
    ///
    /// # Errors
    /// [`ProbeError::Map`] when the map cannot be read.
    pub fn conns(&mut self) -> Result<Vec<(ConnKey, ConnState)>, ProbeError> {
        let map = self.hash::<ConnKey, ConnState>(CONNS_MAP)?;
        map.iter()
            .collect::<Result<_, _>>()
            .map_err(|source| ProbeError::Map {
                name: CONNS_MAP,
                source,
            })
    }

    /// Deletes swept connections; one already gone is fine.
    ///
    /// # Errors
    /// [`ProbeError::Map`] when the map cannot be opened.
    pub fn forget_conns(&mut self, keys: &[ConnKey]) -> Result<(), ProbeError> {
        let mut map = self.hash::<ConnKey, ConnState>(CONNS_MAP)?;
        for k in keys {
            let _ = map.remove(k);
        }
        Ok(())
    }

    /// The kernel's own accounting of each attached program: (name, runs, total run time),
    /// named as the helper-read program (`path_rx` for `path_rx_typed`).
    /// Counts only while `aya::sys::enable_stats(Stats::RunTime)` holds its fd (or
    /// `kernel.bpf_stats_enabled=1`). For benchmarks.
    ///
    /// # Errors
    /// [`ProbeError::Program`] when the kernel refuses BPF_OBJ_GET_INFO_BY_FD.
    pub fn run_stats(&self) -> Result<Vec<(&'static str, u64, std::time::Duration)>, ProbeError> {
        let mut out = Vec::new();
        for &(base, name, _) in &self.programs {
            let prog: &BtfTracePoint = self
                .ebpf
                .program(name)
                .ok_or(ProbeError::MissingProgram { name })?
                .try_into()
                .map_err(|source| ProbeError::Program { name, source })?;
            let info = prog
                .info()
                .map_err(|source| ProbeError::Program { name, source })?;
            out.push((base, info.run_count(), info.run_time()));
        }
        Ok(out)
    }

    /// Forgets everything counted for path `id`, so the id can be given to another path:
    /// zeroes its counters and removes its drops and `left_via` entries. Call it once the
    /// path's pod is out of the maps ([`PathProbes::sync`]), so nothing charges it any more.
    ///
    /// # Errors
    /// [`ProbeError::Map`] when a map refuses the update, [`ProbeError::Cpus`] when the
    /// number of CPUs is unknown.
    pub fn reset_path(&mut self, id: u32) -> Result<(), ProbeError> {
        self.zero_per_cpu::<PathCounters>(PATH_COUNTERS_MAP, id)?;
        self.zero_per_cpu::<DropSlot>(DROP_SLOTS_MAP, id)?;
        self.remove_per_cpu_keys(DROPS_MAP, |k: &DropKey| u32::from(k.path) == id)?;
        self.remove_per_cpu_keys(LEFT_VIA_MAP, |k: &LeftViaKey| k.path == id)
    }

    /// Sets entry `id` of per-CPU array `name` to `V`'s zero on every CPU.
    fn zero_per_cpu<V: aya::Pod + Default + Clone>(
        &mut self,
        name: &'static str,
        id: u32,
    ) -> Result<(), ProbeError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| ProbeError::Cpus(e))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![V::default(); cpus])
            .map_err(ProbeError::Cpus)?;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingProgram { name })?;
        let mut array: PerCpuArray<_, V> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
        array
            .set(id, zeros, 0)
            .map_err(|source| ProbeError::Map { name, source })
    }

    /// Removes the keys of per-CPU hash `name` (values `u64`) that `stale` picks; a key gone
    /// already is fine.
    fn remove_per_cpu_keys<K: aya::Pod>(
        &mut self,
        name: &'static str,
        stale: impl Fn(&K) -> bool,
    ) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingProgram { name })?;
        let mut hash: PerCpuHashMap<_, K, u64> =
            PerCpuHashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
        let keys: Vec<K> = hash.keys().filter_map(Result::ok).filter(&stale).collect();
        for k in keys {
            let _ = hash.remove(&k);
        }
        Ok(())
    }

    /// Counts by path id, summed over CPUs, and the programs' own error counts.
    ///
    /// # Errors
    /// [`ProbeError::Map`] when a map cannot be read.
    pub fn read(&self, paths: u32) -> Result<Readings, ProbeError> {
        let map_err = |name| move |source| ProbeError::Map { name, source };
        let mut out: BTreeMap<u32, RawPathCounts> = BTreeMap::new();
        let map = self
            .ebpf
            .map(PATH_COUNTERS_MAP)
            .ok_or(ProbeError::MissingProgram {
                name: PATH_COUNTERS_MAP,
            })?;
        let counters: PerCpuArray<_, PathCounters> =
            PerCpuArray::try_from(map).map_err(map_err(PATH_COUNTERS_MAP))?;
        for id in 0..paths {
            let per_cpu = counters.get(&id, 0).map_err(map_err(PATH_COUNTERS_MAP))?;
            let f = &mut out.entry(id).or_default().forwarded;
            for c in per_cpu.iter() {
                f.to_pod_packets += c.to_pod_packets;
                f.to_pod_bytes += c.to_pod_bytes;
                f.from_pod_packets += c.from_pod_packets;
                f.from_pod_bytes += c.from_pod_bytes;
                f.foreign_packets += c.foreign_packets;
                if c.foreign_packets > 0 {
                    f.foreign_source = c.foreign_source;
                }
            }
        }
        let map = self
            .ebpf
            .map(DROPS_MAP)
            .ok_or(ProbeError::MissingProgram { name: DROPS_MAP })?;
        let drops: PerCpuHashMap<_, DropKey, u64> =
            PerCpuHashMap::try_from(map).map_err(map_err(DROPS_MAP))?;
        for entry in drops.iter() {
            let (key, per_cpu) = entry.map_err(map_err(DROPS_MAP))?;
            let n: u64 = per_cpu.iter().sum();
            out.entry(u32::from(key.path))
                .or_default()
                .drops
                .push((key, n));
        }
        // Each CPU's slot of each path: a kind's drops are its slots' and its hash entry's.
        let map = self
            .ebpf
            .map(DROP_SLOTS_MAP)
            .ok_or(ProbeError::MissingProgram {
                name: DROP_SLOTS_MAP,
            })?;
        let slots: PerCpuArray<_, DropSlot> =
            PerCpuArray::try_from(map).map_err(map_err(DROP_SLOTS_MAP))?;
        for id in 0..paths.min(u32::from(u16::MAX) + 1) {
            let per_cpu = slots.get(&id, 0).map_err(map_err(DROP_SLOTS_MAP))?;
            for slot in per_cpu.iter() {
                let Some(key) = slot.key(id as u16) else {
                    continue;
                };
                let drops = &mut out.entry(id).or_default().drops;
                match drops.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, n)) => *n += slot.count,
                    None => drops.push((key, slot.count)),
                }
            }
        }
        let map = self
            .ebpf
            .map(LEFT_VIA_MAP)
            .ok_or(ProbeError::MissingProgram { name: LEFT_VIA_MAP })?;
        let left: PerCpuHashMap<_, LeftViaKey, u64> =
            PerCpuHashMap::try_from(map).map_err(map_err(LEFT_VIA_MAP))?;
        for entry in left.iter() {
            let (key, per_cpu) = entry.map_err(map_err(LEFT_VIA_MAP))?;
            let n: u64 = per_cpu.iter().sum();
            out.entry(key.path)
                .or_default()
                .left_via
                .push((key.ifindex, n));
        }
        let mut errors = BTreeMap::new();
        if let Some(map) = self.ebpf.map(PROG_ERRORS_MAP) {
            let errs: PerCpuArray<_, u64> =
                PerCpuArray::try_from(map).map_err(map_err(PROG_ERRORS_MAP))?;
            for slot in 0..sgpath_ebpf::PROG_ERROR_SLOTS {
                if let (Ok(kind), Ok(per_cpu)) = (ProgError::try_from(slot), errs.get(&slot, 0)) {
                    // Zeros too: every kind is a series from the start, so `increase()`
                    // sees its first error.
                    errors.insert(kind, per_cpu.iter().sum());
                }
            }
        }
        Ok((out, errors))
    }
}

/// One write of [`PathProbes::sync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// `IFACES[ifindex]` (zeroed: not probed).
    Iface(u32, IfaceInfo),
    /// `IFACES_HIGH[ifindex]`, or its removal.
    IfaceHigh(u32, Option<IfaceInfo>),
    /// `PATH_PODS[path]` (zeroed: not known).
    PathPod(u32, PodAddr),
    /// `POD_PATHS` made equal to the pod addresses.
    PodPaths,
}

impl DropSource {
    /// The helper-read drop program of this source.
    pub fn program(self) -> &'static str {
        match self {
            DropSource::Reason => "kfree_skb_reason",
            DropSource::Location => "kfree_skb_location",
        }
    }
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut BtfTracePoint, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram { name })?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })
}

/// Loads (verifies) the programs of `bases` read the `read` way; the first refusal is the
/// error.
fn load_all(
    ebpf: &mut Ebpf,
    btf: &Btf,
    bases: &[(&'static str, &'static str)],
    read: HeaderRead,
) -> Result<(), ProbeError> {
    for &(base, tracepoint) in bases {
        let name = read.program(base);
        program_mut(ebpf, name)?
            .load(tracepoint, btf)
            .map_err(|source| ProbeError::Program { name, source })?;
    }
    Ok(())
}

/// Unloads whatever [`load_all`] loaded before a refusal (nothing was attached).
fn unload_all(ebpf: &mut Ebpf, bases: &[(&'static str, &'static str)], read: HeaderRead) {
    for &(base, _) in bases {
        if let Ok(p) = program_mut(ebpf, read.program(base)) {
            let _ = p.unload();
        }
    }
}

/// The order of the writes that take the maps from what they held (`was`) to what they
/// should (`want`): (indexes set before, entries wanted) of `IFACES`, `IFACES_HIGH` and
/// `PATH_PODS`.
///
/// 1. interfaces that are gone or change, cleared: no packet counts on a path on its way out;
/// 2. pod addresses, cleared and written, and the address -> path map;
/// 3. interfaces written: a new veth starts counting with its pod's address in place, so its
///    pod's first packets are its own, never foreign.
fn plan(
    ifaces: (&[u32], &[(u32, IfaceInfo)]),
    high: (&[u32], &[(u32, IfaceInfo)]),
    path_pods: (&[u32], &[(u32, PodAddr)]),
) -> Vec<Step> {
    let mut steps = Vec::new();
    let kept = |want: &[(u32, IfaceInfo)], i: u32| want.iter().any(|(w, _)| *w == i);
    for &i in ifaces.0.iter().filter(|i| !kept(ifaces.1, **i)) {
        steps.push(Step::Iface(i, IfaceInfo::default()));
    }
    for &i in high.0.iter().filter(|i| !kept(high.1, **i)) {
        steps.push(Step::IfaceHigh(i, None));
    }
    let (pods_was, pods_want) = path_pods;
    for &id in pods_was
        .iter()
        .filter(|id| !pods_want.iter().any(|(w, _)| w == *id))
    {
        steps.push(Step::PathPod(id, PodAddr::default()));
    }
    steps.extend(pods_want.iter().map(|&(id, addr)| Step::PathPod(id, addr)));
    steps.push(Step::PodPaths);
    steps.extend(ifaces.1.iter().map(|&(i, info)| Step::Iface(i, info)));
    steps.extend(
        high.1
            .iter()
            .map(|&(i, info)| Step::IfaceHigh(i, Some(info))),
    );
    steps
}

/// Makes `map` hold exactly `want`.
fn sync_map<K: aya::Pod + PartialEq, V: aya::Pod>(
    mut map: HashMap<&mut MapData, K, V>,
    name: &'static str,
    want: &[(K, V)],
) -> Result<(), ProbeError> {
    let err = |source| ProbeError::Map { name, source };
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.iter().any(|(w, _)| w == k))
        .collect();
    for k in stale {
        map.remove(&k).map_err(err)?;
    }
    for (k, v) in want {
        map.insert(k, v, 0).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sgpath_ebpf::{IfaceRole, NO_PATH};

    fn veth(path: u32) -> IfaceInfo {
        IfaceInfo {
            role: IfaceRole::HostVeth as u8,
            _pad: [0; 3],
            path,
        }
    }

    fn at(steps: &[Step], step: Step) -> usize {
        steps
            .iter()
            .position(|s| *s == step)
            .unwrap_or_else(|| panic!("{step:?} not in {steps:?}"))
    }

    /// A new pod's veth is probed only once its address is in place: its first packets are
    /// its own, never foreign.
    #[test]
    fn a_new_pods_address_is_written_before_its_veth() {
        let pod = PodAddr::v4([192, 168, 3, 219]);
        let uplink = IfaceInfo {
            role: IfaceRole::Uplink as u8,
            _pad: [0; 3],
            path: NO_PATH,
        };
        let steps = plan(
            (&[2], &[(2, uplink), (7, veth(0))]),
            (&[], &[(70_000, veth(1))]),
            (&[], &[(0, pod), (1, PodAddr::v4([192, 168, 3, 7]))]),
        );
        assert!(at(&steps, Step::PathPod(0, pod)) < at(&steps, Step::Iface(7, veth(0))));
        let high_pod = Step::PathPod(1, PodAddr::v4([192, 168, 3, 7]));
        assert!(at(&steps, high_pod) < at(&steps, Step::IfaceHigh(70_000, Some(veth(1)))));
        assert!(at(&steps, Step::PodPaths) < at(&steps, Step::Iface(7, veth(0))));
    }

    /// A gone pod's veth stops counting before its address is cleared.
    #[test]
    fn a_gone_pods_veth_is_cleared_before_its_address() {
        let steps = plan((&[2, 7], &[]), (&[70_000], &[]), (&[0, 1], &[]));
        let off = at(&steps, Step::Iface(7, IfaceInfo::default()));
        let off_high = at(&steps, Step::IfaceHigh(70_000, None));
        for id in [0, 1] {
            let cleared = at(&steps, Step::PathPod(id, PodAddr::default()));
            assert!(off < cleared && off_high < cleared, "{steps:?}");
        }
    }

    /// A path whose pod IP is not known has its veth probed and no address: its slot stays
    /// zero, which the programs read as unknown (counted, never foreign).
    #[test]
    fn a_path_without_a_known_ip_leaves_its_slot_unset() {
        let steps = plan((&[], &[(7, veth(3))]), (&[], &[]), (&[3], &[]));
        assert_eq!(
            steps,
            [
                Step::PathPod(3, PodAddr::default()),
                Step::PodPaths,
                Step::Iface(7, veth(3)),
            ]
        );
        assert!(sgpath_ebpf::packet::is_unset(&PodAddr::default()));
    }
}
