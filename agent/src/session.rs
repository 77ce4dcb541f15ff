//! A counting session: the node's latest snapshot, the attached path and drop probes, the
//! path ids they charge to, and the connection tracker. `observe` runs one for a while and
//! prints its report; `agent` runs one until it is told to stop and reports on request.
//!
//! Side effects: [`Session::attach`] loads and attaches the eBPF programs; dropping the
//! [`Session`] detaches them all. [`Session::resync`] re-reads the node over rtnetlink and
//! enters pod namespaces (to learn their inodes); [`Session::sweep`] and [`Session::report`]
//! read and prune the probes' maps.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Context;
use sgpath::{
    checks::{self, Finding},
    collect::{self, btf::Btf, kallsyms::Kallsyms, netns},
    ebpf::{
        paths::{DropSource, MapSizes, PathProbes, RawPathCounts, probe_config},
        typed::{HeaderRead, TypedIds},
    },
    model::{
        Drop, Node, Path, PathCounters, Topology,
        conns::{ConnTracker, pod_addr},
    },
    report::{self, ProbeStatus, Report},
};
use sgpath_ebpf::{
    IfaceInfo, IfaceRole, NO_PATH, NetnsInfo, ProgError,
    packet::{Direction, NetnsRole, PodAddr},
};

use crate::cli::{DropSourceArg, HeaderReadArg};

/// Prefix the kernel's drop reason names carry.
const REASON_PREFIX: &str = "SKB_DROP_REASON_";

/// How often the connection map should be swept ([`Session::sweep`]): a connection counts
/// at most this late after its timeout.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// What a session counts with.
#[derive(Clone, Debug)]
pub struct Options {
    pub sources: collect::Sources,
    pub drop_source: DropSourceArg,
    pub header_read: HeaderReadArg,
    /// How long a SYN or DNS query waits for its answer (`--syn-timeout`).
    pub syn_timeout: Duration,
    /// Entries of the maps that grow with the node (`--max-paths` ...).
    pub map_sizes: MapSizes,
    /// The span findings from counts judge (`--window`); `None`: since the session
    /// attached (`observe`).
    pub window: Option<Duration>,
}

/// The probes attached to the node, and what they count for.
pub struct Session {
    sources: collect::Sources,
    node_netns: u32,
    probes: PathProbes,
    ids: PathIds,
    conns: ConnTracker,
    node: Node,
    /// The snapshot's lookups explained, once per snapshot (see `Report::with_lookups`).
    lookups: Option<Vec<report::LookupReport>>,
    topo: Topology,
    namespaces: usize,
    reasons: Option<BTreeMap<i64, String>>,
    /// Read on the first report: a module loaded before then is named.
    kallsyms: Option<Kallsyms>,
    /// Per kind of program error: the count last seen, and when it last grew.
    overflow: BTreeMap<ProgError, (u64, Instant)>,
    /// Earlier counters, the bases of the window's figures.
    window: Option<Window>,
}

/// Which counters a path has: a new one each time a host veth takes a slot in the probes'
/// maps, whose counters then start from zero. Not the veth's name: the VPC CNI names it from
/// a hash of the pod's namespace and name, so a recreated StatefulSet pod gets its
/// predecessor's, and comparing the two pods' counts would hide the new one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Generation(u64);

/// Snapshots of every path's since-start counters, taken at most every tenth of the span:
/// a path's window is its counters now minus the oldest snapshot still within the span, so
/// evidence stays in it for at most one span. Snapshots are by [`Generation`]: a path
/// compares its counters only with earlier counts of the same pod.
struct Window {
    span: Duration,
    snapshots: std::collections::VecDeque<(Instant, BTreeMap<Generation, PathCounters>)>,
}

impl Window {
    fn new(span: Duration) -> Window {
        Window {
            span,
            snapshots: Default::default(),
        }
    }

    /// The window's figures of each of `paths` (`generation`: which counters a path has,
    /// `None` without a slot), and their counters recorded. A path's window is:
    /// - its counters minus the base snapshot's (the oldest within the span) of the same
    ///   generation;
    /// - its counters as they are when the base has not that generation (a pod new since,
    ///   or a path gone and back: its counters started after the base) or when a counter
    ///   is lower than the base's (they restarted: see [`PathCounters::since`]);
    /// - its counters as they are with no snapshot at all: the session's first report,
    ///   also an agent's first after a restart. The probes' maps are created empty when it
    ///   attaches, so that is what it counted since, never the previous agent's counts.
    fn apply(
        &mut self,
        now: Instant,
        paths: &mut [Path],
        generation: impl Fn(&Path) -> Option<Generation>,
    ) {
        // The oldest snapshot within the span; after a gap without reports, the newest one
        // before it (never none: that would count the whole lifetime again).
        while self.snapshots.len() > 1
            && self
                .snapshots
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > self.span)
        {
            self.snapshots.pop_front();
        }
        let base = self.snapshots.front().map(|(_, s)| s);
        for p in paths.iter_mut() {
            let generation = generation(p);
            p.window = p.counters.as_ref().map(|c| {
                match base.zip(generation).and_then(|(b, g)| b.get(&g)) {
                    Some(b) => c.since(b),
                    // Counters newer than the base, or no base yet: all in the window.
                    None => c.clone(),
                }
            });
        }
        let due = self
            .snapshots
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= self.span / 10);
        if due {
            let counters = paths
                .iter()
                .filter_map(|p| Some((generation(p)?, p.counters.clone()?)))
                .collect();
            self.snapshots.push_back((now, counters));
        }
    }
}

/// How long `probe-map-full` stays raised after a map last overflowed.
const MAP_FULL_WINDOW: Duration = Duration::from_secs(60);

impl Session {
    /// Attaches the probes for the snapshot `node` and `topo` (taken with `opts.sources`) and
    /// puts its pods, interfaces and namespaces in their maps.
    ///
    /// # Errors
    /// When the kernel has no BTF, refuses a program or a map entry, or lacks drop reasons
    /// while `opts.drop_source` asks for them.
    pub async fn attach(node: Node, topo: Topology, opts: &Options) -> anyhow::Result<Session> {
        let btf = Btf::from_kernel().context("counting needs the kernel's BTF")?;
        let reasons = btf.enum_variants("skb_drop_reason");
        let drop_source = match (opts.drop_source, &reasons) {
            (DropSourceArg::Location, _) | (DropSourceArg::Auto, None) => DropSource::Location,
            (DropSourceArg::Reason | DropSourceArg::Auto, Some(_)) => DropSource::Reason,
            (DropSourceArg::Reason, None) => anyhow::bail!(
                "--drop-source reason: kernel {} has no drop reasons (they arrived in 5.17); use \
                 --drop-source location",
                node.kernel
            ),
        };
        let node_netns = netns::own_inode().context("cannot stat /proc/thread-self/ns/net")?;
        let config = probe_config(&btf, node_netns)?;
        let typed = match TypedIds::of(&btf) {
            _ if opts.header_read == HeaderReadArg::Probe => None,
            Ok(ids) => Some(ids),
            Err(missing) => {
                tracing::info!(
                    event = "typed-reads-unavailable",
                    missing,
                    "the kernel's BTF has no {missing}: reading headers with a helper"
                );
                None
            }
        };
        // Parsed, vmlinux's BTF holds tens of MiB: gone before aya parses its own copy.
        drop(btf);
        let mut probes = PathProbes::attach(config, drop_source, opts.map_sizes, typed)?;
        crate::release_freed_memory();
        let mut ids = PathIds {
            max: opts.map_sizes.paths,
            ..Default::default()
        };
        let mut conns = ConnTracker::new(opts.syn_timeout);
        if let Some(span) = opts.window {
            // The flows the window's findings show and confirm: the window's own.
            conns = conns.within(span);
        }
        let namespaces = ids
            .sync(&mut probes, &mut conns, &node, &topo, node_netns)
            .await?;
        Ok(Session {
            sources: opts.sources.clone(),
            node_netns,
            probes,
            ids,
            conns,
            node,
            lookups: None,
            topo,
            namespaces,
            reasons,
            kallsyms: None,
            overflow: BTreeMap::new(),
            window: opts.window.map(Window::new),
        })
    }

    /// How drops are named.
    pub fn drop_source(&self) -> DropSource {
        self.probes.drop_source
    }

    /// The latest snapshot's topology.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// Pod namespaces whose drops count.
    pub fn pod_namespaces(&self) -> usize {
        self.namespaces
    }

    /// The names of the programs attached, with their hooks.
    pub fn programs(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        self.probes.programs()
    }

    /// How the programs read headers.
    pub fn header_read(&self) -> HeaderRead {
        self.probes.header_read
    }

    /// Re-reads the node (after a netlink change, or to resync after a lost one) and puts
    /// new paths in the probes' maps, removing gone ones. A path keeps its counters while
    /// its host veth exists; one that goes and comes back (also within one sync: a new
    /// ifindex) starts again from zero, as a new generation of the window's.
    ///
    /// # Errors
    /// When the node cannot be read or a map refuses an entry; the session keeps its
    /// previous snapshot.
    pub async fn resync(&mut self) -> anyhow::Result<()> {
        let (mut node, mut topo) = collect::node_with_topology(&self.sources).await?;
        if self.node.cluster.is_some() {
            node.cluster = self.node.cluster.clone();
            topo = Topology::from_node(&node);
        }
        node.security_groups = self.node.security_groups.clone();
        self.namespaces = self
            .ids
            .sync(
                &mut self.probes,
                &mut self.conns,
                &node,
                &topo,
                self.node_netns,
            )
            .await?;
        (self.node, self.topo) = (node, topo);
        self.lookups = None;
        Ok(())
    }

    /// Takes a new Kubernetes context: the paths are labelled again (pods, ENIs, groups),
    /// and the next report's checks see it. The paths themselves do not change.
    pub fn set_cluster(&mut self, cluster: Option<std::sync::Arc<sgpath::model::k8s::Cluster>>) {
        self.node.cluster = cluster;
        self.topo = Topology::from_node(&self.node);
        self.lookups = None;
    }

    /// Takes newly read security-group rules: the next report's checks judge with them.
    pub fn set_security_groups(&mut self, rules: Option<std::sync::Arc<sgpath::model::sg::Rules>>) {
        self.node.security_groups = rules;
    }

    /// Counts what the connection map newly says and forgets what the tracker is done with.
    ///
    /// # Errors
    /// When the connection map cannot be read.
    pub fn sweep(&mut self) -> anyhow::Result<()> {
        let entries = self.probes.conns()?;
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
        let forget = self.conns.sweep(&entries, Duration::from(now));
        self.probes.forget_conns(&forget)?;
        Ok(())
    }

    /// The inspect report of the latest snapshot, with each path's counters since the
    /// session attached and the findings of the checks over both.
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn report(&mut self) -> anyhow::Result<Report> {
        let (raw, errors) = self.probes.read(self.ids.next)?;
        let kallsyms = self
            .kallsyms
            .get_or_insert_with(|| Kallsyms::read().unwrap_or_default());
        let drop_source = self.probes.drop_source;
        let node = &self.node;
        let mut topo = self.topo.clone();
        for path in topo.paths.iter_mut() {
            // A path without a slot (`--max-paths` reached) has no counters, not zeros.
            let Some(&Slot { id, .. }) = self.ids.by_veth.get(&path.host_veth) else {
                path.counters = None;
                continue;
            };
            let counts = raw.get(&id).cloned().unwrap_or_default();
            let mut c = counters(&counts, self.reasons.as_ref(), drop_source, kallsyms);
            if counts.forwarded.foreign_packets > 0 {
                c.from_pod.foreign_source =
                    Some(sgpath::model::conns::ip(&counts.forwarded.foreign_source));
            }
            for &(ifindex, n) in &counts.left_via {
                let name = node
                    .link(ifindex)
                    .map_or_else(|| format!("ifindex {ifindex}"), |l| l.name.clone());
                *c.from_pod.left_via.entry(name).or_default() += n;
            }
            self.conns.apply(id, &mut c);
            path.counters = Some(c);
        }
        if let Some(w) = &mut self.window {
            let slots = &self.ids.by_veth;
            w.apply(Instant::now(), &mut topo.paths, |p| {
                slots.get(&p.host_veth).map(|s| s.generation)
            });
        }
        let mut findings = checks::run(node, &topo);
        findings.extend(overflowing(&mut self.overflow, &errors, &self.probes.sizes));
        if !self.ids.uncounted.is_empty() {
            let veths: Vec<String> = self.ids.uncounted.iter().cloned().collect();
            findings.push(checks::paths_uncounted(&veths, self.ids.max));
        }
        findings
            .sort_by(|a, b| (b.severity, a.id, &a.subject).cmp(&(a.severity, b.id, &b.subject)));
        let lookups = self
            .lookups
            .get_or_insert_with(|| report::lookup_reports(node, &self.topo))
            .clone();
        let mut report = report::Report::with_lookups(node, &topo, findings, lookups);
        report.drop_source = Some(drop_source);
        report.header_read = Some(self.header_read());
        report.probes = Some(ProbeStatus {
            programs: self.programs().map(|(p, h)| (p.to_owned(), h)).collect(),
            interfaces: interface_roles(node, &topo)
                .into_iter()
                .filter_map(|(ifindex, role)| {
                    let name = node.link(ifindex)?.name.clone();
                    let what = match role {
                        IfaceRole::HostVeth => {
                            "host-veth: path_rx, path_tx (counters, connections)"
                        }
                        IfaceRole::Uplink => "uplink: path_tx (left_via, the node's connections)",
                    };
                    Some((name, what.to_owned()))
                })
                .collect(),
            connections_tracked: self.conns.tracked(),
            paths_uncounted: self.ids.uncounted.len(),
            pod_namespaces: self.namespaces,
            errors: errors
                .into_iter()
                .map(|(k, v)| (format!("{k:?}"), v))
                .collect(),
        });
        Ok(report)
    }
}

/// `probe-map-full` for each kind of program error whose count grew within the last
/// [`MAP_FULL_WINDOW`]; `seen` is each kind's count last seen and when it last grew.
fn overflowing(
    seen: &mut BTreeMap<ProgError, (u64, Instant)>,
    errors: &BTreeMap<ProgError, u64>,
    sizes: &MapSizes,
) -> Vec<Finding> {
    let now = Instant::now();
    let mut out = Vec::new();
    for (&kind, &total) in errors.iter().filter(|(_, n)| **n > 0) {
        let (count, grew) = seen.entry(kind).or_insert((0, now));
        if total > *count {
            (*count, *grew) = (total, now);
        }
        let ago = now.duration_since(*grew);
        if ago < MAP_FULL_WINDOW {
            out.push(checks::map_full(kind, sizes.of(kind), total, ago.as_secs()));
        }
    }
    out
}

/// Path ids the probes charge to, by host veth name. An id stays with its path while the
/// veth exists; when the veth goes, the id is reset and, later, given to a new path: a
/// daemon sees far more pods come and go than the maps have slots (`max`). A veth of the
/// same name with another ifindex is another veth (its pod was recreated between two
/// syncs): it goes and comes as one would.
#[derive(Default)]
struct PathIds {
    /// Ids given at most: the path maps' size.
    max: u32,
    by_veth: BTreeMap<String, Slot>,
    /// Generations given so far.
    generations: u64,
    /// Paths left without an id at the last sync: the maps were full.
    uncounted: std::collections::BTreeSet<String>,
    /// One past the highest id ever given.
    next: u32,
    /// Reset ids, oldest first. An id is freed only once its path's connection entries are
    /// deleted, so nothing of the old pod is tallied on the next.
    free: std::collections::VecDeque<u32>,
}

/// A host veth's place in the probes' maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    /// The path id its packets are charged to.
    id: u32,
    /// The veth's ifindex: a new veth of the same name has another.
    ifindex: u32,
    generation: Generation,
}

impl PathIds {
    /// Removes the slots of the veths gone from `topo`, or replaced in `node` by another of
    /// the same name (another ifindex), and returns them (veth, id). Their ids are not
    /// free yet: the caller frees them once nothing of theirs remains in the maps.
    fn release_gone(&mut self, node: &Node, topo: &Topology) -> Vec<(String, u32)> {
        let gone: Vec<(String, u32)> = self
            .by_veth
            .iter()
            .filter(|(veth, slot)| {
                !topo.paths.iter().any(|p| &p.host_veth == *veth)
                    || ifindex(node, veth) != slot.ifindex
            })
            .map(|(v, slot)| (v.clone(), slot.id))
            .collect();
        for (veth, _) in &gone {
            self.by_veth.remove(veth);
        }
        gone
    }

    /// `veth`'s slot: the one it holds, else a new one (a new generation) with a freed id
    /// or an id never given; `None` when all `max` are taken.
    fn take(&mut self, node: &Node, veth: &str) -> Option<Slot> {
        if let Some(&slot) = self.by_veth.get(veth) {
            return Some(slot);
        }
        let id = self.free.pop_front().or_else(|| {
            (self.next < self.max).then(|| {
                self.next += 1;
                self.next - 1
            })
        })?;
        self.generations += 1;
        let slot = Slot {
            id,
            ifindex: ifindex(node, veth),
            generation: Generation(self.generations),
        };
        self.by_veth.insert(veth.to_owned(), slot);
        Some(slot)
    }

    /// Gives every path of `topo` an id and puts the pods, host veths and namespaces in the
    /// probes' maps; resets the ids of the paths that went. Returns how many pod namespaces
    /// count.
    async fn sync(
        &mut self,
        probes: &mut PathProbes,
        conns: &mut ConnTracker,
        node: &Node,
        topo: &Topology,
        node_netns: u32,
    ) -> anyhow::Result<usize> {
        let gone = self.release_gone(node, topo);
        let mut pods = Vec::new();
        let mut uncounted = std::collections::BTreeSet::new();
        for p in &topo.paths {
            let Some(Slot { id, .. }) = self.take(node, &p.host_veth) else {
                // Told once per path, not at every sync while the maps stay full.
                if !self.uncounted.contains(&p.host_veth) {
                    tracing::warn!(
                        event = "paths-full",
                        path = %p.host_veth,
                        "{} paths counted already: this one is not (--max-paths)",
                        self.max
                    );
                }
                uncounted.insert(p.host_veth.clone());
                continue;
            };
            if let Some(ip) = p.pod_ip {
                pods.push((pod_addr(ip), id));
            }
        }
        // Only counted paths go in the maps, which are sized for them.
        let veth_names: Vec<&str> = topo
            .paths
            .iter()
            .map(|p| p.host_veth.as_str())
            .filter(|v| !uncounted.contains(*v))
            .collect();
        let node_ns = NetnsInfo {
            role: NetnsRole::Node as u8,
            _pad: [0; 3],
            path: NO_PATH,
        };
        let mut namespaces = vec![(node_netns, node_ns)];
        namespaces.extend(
            netns::pod_inodes(node, &veth_names)
                .await
                .into_iter()
                .filter_map(|(veth, inode)| {
                    let info = NetnsInfo {
                        role: NetnsRole::Pod as u8,
                        _pad: [0; 3],
                        path: self.by_veth.get(&veth)?.id,
                    };
                    Some((inode, info))
                }),
        );
        let mut ifaces = interface_infos(node, topo, &self.by_veth);
        ifaces.retain(|&(ifindex, _)| {
            !node
                .link(ifindex)
                .is_some_and(|l| uncounted.contains(&l.name))
        });
        // One path per pod IP in the address map (drops, uplinks): the first. Two veths with
        // one IP (`pod-ip-conflict`) still count each its own packets (by veth).
        pods.sort_by_key(|&(addr, id)| (addr, id));
        pods.dedup_by_key(|&mut (addr, _)| addr);
        let path_pods = path_pods(topo, &self.by_veth);
        probes.sync(&pods, &ifaces, &path_pods, &namespaces)?;
        // Nothing charges the gone paths any more: forget them.
        let freed = !gone.is_empty();
        if freed {
            // The gone pods' connections go with them: no entry of theirs can be tallied
            // for the ids' next owners.
            let ids: Vec<u32> = gone.iter().map(|&(_, id)| id).collect();
            let stale: Vec<_> = probes
                .conns()?
                .into_iter()
                .filter(|(_, st)| ids.contains(&st.path) || ids.contains(&st.in_path))
                .map(|(k, _)| k)
                .collect();
            probes.forget_conns(&stale)?;
            for id in ids {
                probes.reset_path(id)?;
                conns.forget_path(id, &stale);
                self.free.push_back(id);
            }
        }
        self.uncounted = uncounted;
        // Slots freed while paths wait for one: they take them now, not at the next change.
        if freed && !self.uncounted.is_empty() {
            return Box::pin(self.sync(probes, conns, node, topo, node_netns)).await;
        }
        Ok(namespaces.len() - 1)
    }
}

/// `veth`'s ifindex in `node`; 0 (no interface has it) when `node` has no such link.
fn ifindex(node: &Node, veth: &str) -> u32 {
    node.link_by_name(veth).map_or(0, |l| l.ifindex)
}

/// What each probed interface of the node is: every pod's host veth, and every way off the
/// node (node ENIs, `vlan.eth.N`), by ifindex. Not the trunk: every frame a `vlan.eth.N`
/// sends crosses it again, tagged, and was counted where it left.
fn interface_roles(node: &Node, topo: &Topology) -> Vec<(u32, IfaceRole)> {
    let veths = topo
        .paths
        .iter()
        .map(|p| (&p.host_veth, IfaceRole::HostVeth));
    let uplinks = topo
        .enis
        .iter()
        .map(|e| &e.link)
        .chain(topo.vlan_links.iter().map(|v| &v.name))
        .filter(|n| !topo.trunks.iter().any(|t| &t.name == *n))
        .map(|n| (n, IfaceRole::Uplink));
    let mut out: Vec<(u32, IfaceRole)> = veths
        .chain(uplinks)
        .filter_map(|(name, role)| Some((node.link_by_name(name)?.ifindex, role)))
        .collect();
    out.sort_by_key(|&(i, _)| i);
    out.dedup_by_key(|&mut (i, _)| i);
    out
}

/// What the programs need of each probed interface: its role and, for a host veth, its path
/// id (the veth decides whose a packet is).
fn interface_infos(
    node: &Node,
    topo: &Topology,
    ids: &BTreeMap<String, Slot>,
) -> Vec<(u32, IfaceInfo)> {
    interface_roles(node, topo)
        .into_iter()
        .map(|(ifindex, role)| {
            let path = node
                .link(ifindex)
                .filter(|_| role == IfaceRole::HostVeth)
                .and_then(|l| Some(ids.get(&l.name)?.id));
            let info = IfaceInfo {
                role: role as u8,
                _pad: [0; 3],
                path: path.unwrap_or(NO_PATH),
            };
            (ifindex, info)
        })
        .collect()
}

/// Each counted path's pod address (its end of the host veth), by path id: a host veth's
/// packets are its pod's when they carry it.
fn path_pods(topo: &Topology, ids: &BTreeMap<String, Slot>) -> Vec<(u32, PodAddr)> {
    topo.paths
        .iter()
        .filter_map(|p| Some((ids.get(&p.host_veth)?.id, pod_addr(p.pod_ip?))))
        .collect()
}

/// Names the raw drops (reason from BTF, location from kallsyms) and builds the counters.
fn counters(
    raw: &RawPathCounts,
    reasons: Option<&BTreeMap<i64, String>>,
    source: DropSource,
    kallsyms: &Kallsyms,
) -> PathCounters {
    let drops: Vec<Drop> = raw
        .drops
        .iter()
        .map(|(key, count)| Drop {
            to_pod: Direction::try_from(key.direction) == Ok(Direction::ToPod),
            in_node: NetnsRole::try_from(key.netns_role) == Ok(NetnsRole::Node),
            reason: match (source, reasons) {
                (DropSource::Reason, Some(names)) => Some(
                    names
                        .get(&(key.reason as i64))
                        .map(|n| n.strip_prefix(REASON_PREFIX).unwrap_or(n).to_owned())
                        .unwrap_or_else(|| format!("reason-{}", key.reason)),
                ),
                _ => None,
            },
            location: kallsyms.function(key.location).map(str::to_owned),
            count: *count,
        })
        .collect();
    let f = &raw.forwarded;
    PathCounters::build(
        (f.to_pod_packets, f.to_pod_bytes),
        (f.from_pod_packets, f.from_pod_bytes),
        f.foreign_packets,
        &drops,
    )
}

#[cfg(test)]
mod tests {
    use sgpath::{
        checks::FindingId,
        model::{Link, LinkKind, PathKind, add_port},
    };

    use super::*;

    const VETH: &str = "vlan0a1b2c3d4e5";
    const SPAN: Duration = Duration::from_secs(300);

    /// A branch pod's path behind [`VETH`] with `unanswered` SYNs to 8080 and `packets`
    /// out, as counted since its slot was given.
    fn path(unanswered: u64, packets: u64) -> Path {
        let mut c = PathCounters::build((0, 0), (packets, packets * 100), 0, &[]);
        add_port(&mut c.from_pod.syn_unanswered, 8080, unanswered);
        Path {
            kind: PathKind::BranchEni,
            mode: None,
            pod_ip: Some("192.168.3.219".parse().unwrap()),
            host_veth: VETH.into(),
            vlan_id: Some(1),
            vlan_link: Some("vlan.eth.1".into()),
            trunk: None,
            route_table: 101,
            rules: Vec::new(),
            eni_id: None,
            pod: None,
            counters: Some(c),
            window: None,
        }
    }

    fn node(ifindex: u32) -> Node {
        Node {
            links: vec![Link::new(ifindex, VETH, LinkKind::Veth)],
            ..Default::default()
        }
    }

    fn topo(paths: Vec<Path>) -> Topology {
        Topology {
            paths,
            ..Default::default()
        }
    }

    fn ids() -> PathIds {
        PathIds {
            max: 4,
            ..Default::default()
        }
    }

    fn unanswered(p: &Path) -> u64 {
        p.window.as_ref().unwrap().from_pod.syn_unanswered[&8080.into()]
    }

    #[test]
    fn a_pod_recreated_behind_the_same_veth_raises_within_one_window() {
        let t0 = Instant::now();
        let mut ids = ids();
        let mut w = Window::new(SPAN);
        // The old pod: one unanswered connection and 900 packets, recorded at t0.
        let (old_node, mut old) = (node(10), topo(vec![path(1, 900)]));
        let old_slot = ids.take(&old_node, VETH).unwrap();
        w.apply(t0, &mut old.paths, |_| Some(old_slot.generation));
        // Recreated between two syncs: same name (the CNI hashes namespace and pod name),
        // another interface. Its slot goes, the new veth takes a new one.
        let new_node = node(11);
        let mut new = topo(vec![path(2, 950)]);
        assert_eq!(ids.release_gone(&new_node, &new), [(VETH.to_owned(), 0)]);
        let new_slot = ids.take(&new_node, VETH).unwrap();
        assert_ne!(new_slot.generation, old_slot.generation);
        let slots = &ids.by_veth;
        w.apply(t0 + SPAN / 10, &mut new.paths, |p| {
            slots.get(&p.host_veth).map(|s| s.generation)
        });
        // The new pod's own counts, not 2 - 1 (nor 0 once below the old pod's).
        assert_eq!(unanswered(&new.paths[0]), 2);
        assert_eq!(
            new.paths[0]
                .window
                .as_ref()
                .unwrap()
                .from_pod
                .forwarded_packets,
            950
        );
        let raised: Vec<_> = sgpath::checks::run(&new_node, &new)
            .into_iter()
            .filter(|f| f.id == FindingId::SgSuspectedBlock)
            .collect();
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].subject, "192.168.3.219");
    }

    #[test]
    fn a_veth_kept_keeps_its_slot_and_generation() {
        let mut ids = ids();
        let (n, t) = (node(10), topo(vec![path(0, 0)]));
        let slot = ids.take(&n, VETH).unwrap();
        assert_eq!(ids.release_gone(&n, &t), []);
        assert_eq!(ids.take(&n, VETH), Some(slot));
    }

    #[test]
    fn a_path_gone_and_back_is_a_new_generation_counted_whole() {
        let t0 = Instant::now();
        let mut ids = ids();
        let mut w = Window::new(SPAN);
        let n = node(10);
        let mut before = topo(vec![path(5, 100)]);
        let first = ids.take(&n, VETH).unwrap();
        w.apply(t0, &mut before.paths, |_| Some(first.generation));
        // Gone at one sync (its id is reset by the caller), back at the next, same ifindex.
        assert_eq!(ids.release_gone(&n, &topo(vec![])), [(VETH.to_owned(), 0)]);
        let again = ids.take(&n, VETH).unwrap();
        assert_ne!(again.generation, first.generation);
        // Its counters restarted from zero: 3 unanswered since it came back, all in the
        // window, though the old generation's 5 are still in the base snapshot.
        let mut back = topo(vec![path(3, 200)]);
        w.apply(t0 + SPAN / 5, &mut back.paths, |_| Some(again.generation));
        assert_eq!(unanswered(&back.paths[0]), 3);
        assert_eq!(
            back.paths[0]
                .window
                .as_ref()
                .unwrap()
                .from_pod
                .forwarded_packets,
            200
        );
    }

    #[test]
    fn counters_lower_than_the_same_generations_base_restart_the_window() {
        // However the slot's counters restarted unseen, a lower count is no saturated zero.
        let t0 = Instant::now();
        let mut w = Window::new(SPAN);
        let g = Some(Generation(1));
        w.apply(t0, &mut [path(5, 900)], |_| g);
        let mut now = [path(2, 40)];
        w.apply(t0 + SPAN / 2, &mut now, |_| g);
        assert_eq!(unanswered(&now[0]), 2);
    }

    #[test]
    fn a_sparse_ring_judges_each_path_against_the_oldest_snapshot() {
        let t0 = Instant::now();
        let span = Duration::from_secs(100);
        let mut w = Window::new(span);
        let (a, b) = (Generation(1), Generation(2));
        let generation = |p: &Path| Some(if p.pod_ip.is_some() { a } else { b });
        let b_path = |n: u64| Path {
            pod_ip: None,
            ..path(n, 0)
        };
        // t0: only A. 20 s: only B (A missing from that snapshot). 50 s: both.
        w.apply(t0, &mut [path(1, 0)], generation);
        w.apply(t0 + Duration::from_secs(20), &mut [b_path(3)], generation);
        let mut both = [path(4, 0), b_path(5)];
        w.apply(t0 + Duration::from_secs(50), &mut both, generation);
        // A against t0's snapshot, its gap at 20 s notwithstanding; B, newer than that
        // snapshot, whole.
        assert_eq!((unanswered(&both[0]), unanswered(&both[1])), (3, 5));
        // 115 s: t0's snapshot is out of the span, 20 s's is the base.
        let mut later = [b_path(8)];
        w.apply(t0 + Duration::from_secs(115), &mut later, generation);
        assert_eq!(unanswered(&later[0]), 5);
        // After a gap without reports, the newest snapshot before it stays the base:
        // never none, which would count the whole lifetime again.
        let mut after_gap = [b_path(9)];
        w.apply(t0 + Duration::from_secs(900), &mut after_gap, generation);
        assert_eq!(unanswered(&after_gap[0]), 1);
    }

    #[test]
    fn an_agents_first_window_is_what_it_counted_since_it_attached() {
        // A restarted agent has no snapshot: its maps were created empty when it attached,
        // so its totals are its first window, the previous agent's counts are not in them.
        let t0 = Instant::now();
        let mut w = Window::new(SPAN);
        let g = Some(Generation(1));
        let mut first = [path(2, 30)];
        w.apply(t0, &mut first, |_| g);
        assert_eq!(first[0].window, first[0].counters);
        // Its next report within the span is judged against that first snapshot.
        let mut next = [path(3, 50)];
        w.apply(t0 + Duration::from_secs(1), &mut next, |_| g);
        assert_eq!(unanswered(&next[0]), 1);
        assert_eq!(
            next[0].window.as_ref().unwrap().from_pod.forwarded_packets,
            20
        );
    }
}
