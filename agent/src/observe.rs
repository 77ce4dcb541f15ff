//! `sgpath observe`: snapshot the node, attach the path and drop probes, count for a while,
//! detach, and print the inspect report with `counters` on each path.
//!
//! Side effects: loads and attaches eBPF programs for `--duration`; they are detached before
//! the report prints (also on Ctrl-C and SIGTERM), so nothing outlives the process.

use std::process::ExitCode;

use anyhow::Context;
use sgpath::{
    checks,
    collect::{self, btf::Btf, kallsyms::Kallsyms, netns},
    ebpf::paths::{DropSource, PathProbes, RawPathCounts, probe_config},
    model::{
        Drop, PathCounters, Topology,
        conns::{ConnTracker, pod_addr},
    },
    report::{self, ProbeStatus},
};
use sgpath_ebpf::{
    IfaceRole,
    packet::{Direction, NetnsRole},
};

use crate::cli::{DropSourceArg, ObserveArgs, Output};

/// Prefix the kernel's drop reason names carry.
const REASON_PREFIX: &str = "SKB_DROP_REASON_";

pub fn run(args: ObserveArgs) -> anyhow::Result<ExitCode> {
    let rt = crate::runtime()?;
    let sources = collect::Sources {
        cni_config: args.cni_config,
        ..Default::default()
    };
    let (node, topo) = rt.block_on(collect::node_with_topology(&sources))?;
    for w in &node.read_warnings {
        eprintln!("sgpath: warning: {w}");
    }

    let btf = Btf::from_kernel().context("observe needs the kernel's BTF")?;
    let reasons = btf.enum_variants("skb_drop_reason");
    let drop_source = match (args.drop_source, &reasons) {
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
    let mut probes = PathProbes::attach(config, drop_source)?;
    let mut ids = PathIds::default();
    let namespaces = rt.block_on(ids.sync(&mut probes, &node, &topo, node_netns))?;
    // Signal handlers before "observing" is printed: a SIGTERM right after it must end the
    // count, not the process (the default action would leave no report).
    let (mut term, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _rt = rt.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    eprintln!(
        "sgpath: observing {} paths ({namespaces} pod namespaces) for {:?}; drops named by {}",
        topo.paths.len(),
        args.duration,
        match drop_source {
            DropSource::Reason => "reason",
            DropSource::Location => "location",
        }
    );
    let mut conns = ConnTracker::new(args.syn_timeout);
    // Pods that come and go while counting: re-read the node on every netlink change.
    // Connections are swept on their own timer.
    let (node, topo_now, namespaces) = rt.block_on(async {
        let mut watch = collect::watch::Watch::new()?;
        let stop = wait(args.duration, &mut term, &mut interrupt);
        tokio::pin!(stop);
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        let (mut node, mut topo, mut namespaces) = (node, topo, namespaces);
        let mut watching = true;
        loop {
            tokio::select! {
                r = &mut stop => { r?; break; }
                _ = sweep.tick() => sweep_conns(&mut probes, &mut conns)?,
                alive = watch.changed(), if watching => {
                    if !alive { watching = false; continue; }
                    (node, topo) = collect::node_with_topology(&sources).await?;
                    namespaces = ids.sync(&mut probes, &node, &topo, node_netns).await?;
                }
            }
        }
        anyhow::Ok((node, topo, namespaces))
    })?;
    let mut topo = topo_now;
    sweep_conns(&mut probes, &mut conns)?;
    let (raw, errors) = probes.read(ids.next)?;
    drop(probes);

    let kallsyms = Kallsyms::read().unwrap_or_default();
    for path in topo.paths.iter_mut() {
        let id = ids
            .by_veth
            .get(&path.host_veth)
            .copied()
            .unwrap_or(u32::MAX);
        let counts = raw.get(&id).cloned().unwrap_or_default();
        let mut c = counters(&counts, reasons.as_ref(), drop_source, &kallsyms);
        for &(ifindex, n) in &counts.left_via {
            let name = node
                .link(ifindex)
                .map_or_else(|| format!("ifindex {ifindex}"), |l| l.name.clone());
            *c.from_pod.left_via.entry(name).or_default() += n;
        }
        conns.apply(id, &mut c);
        path.counters = Some(c);
    }
    let findings = checks::run(&node, &topo);
    let mut report = report::Report::new(&node, &topo, findings);
    report.drop_source = Some(drop_source);
    report.probes = Some(ProbeStatus {
        programs: [
            ("path_rx", "tp_btf/netif_receive_skb"),
            ("path_tx", "tp_btf/net_dev_start_xmit"),
            (
                match drop_source {
                    DropSource::Reason => "kfree_skb_reason",
                    DropSource::Location => "kfree_skb_location",
                },
                "tp_btf/kfree_skb",
            ),
        ]
        .into_iter()
        .map(|(p, h)| (p.to_owned(), h.to_owned()))
        .collect(),
        interfaces: interface_roles(&node, &topo)
            .into_iter()
            .filter_map(|(ifindex, role)| {
                let name = node.link(ifindex)?.name.clone();
                let what = match role {
                    IfaceRole::HostVeth => "host-veth: path_rx, path_tx (counters, connections)",
                    IfaceRole::Uplink => "uplink: path_tx (left_via, the node's connections)",
                };
                Some((name, what.to_owned()))
            })
            .collect(),
        connections_tracked: conns.tracked(),
        pod_namespaces: namespaces,
        errors: errors
            .into_iter()
            .map(|(k, v)| (format!("{k:?}"), v))
            .collect(),
    });
    let text = match args.output {
        Output::Json => report.to_json() + "\n",
        Output::Text => report::text::render(&report),
    };
    crate::write_stdout(&text)?;
    Ok(match report.worst() {
        Some(checks::Severity::Warning | checks::Severity::Error) => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

/// Path ids the probes charge to, stable while pods come and go: by host veth name.
#[derive(Default)]
struct PathIds {
    by_veth: std::collections::BTreeMap<String, u32>,
    next: u32,
}

impl PathIds {
    /// Gives every path of `topo` an id and puts the pods, host veths and namespaces in the
    /// probes' maps; returns how many pod namespaces count.
    async fn sync(
        &mut self,
        probes: &mut PathProbes,
        node: &sgpath::model::Node,
        topo: &Topology,
        node_netns: u32,
    ) -> anyhow::Result<usize> {
        let mut pods = Vec::new();
        for p in &topo.paths {
            let id = match self.by_veth.get(&p.host_veth) {
                Some(&id) => id,
                None => {
                    let id = self.next;
                    self.next += 1;
                    self.by_veth.insert(p.host_veth.clone(), id);
                    id
                }
            };
            if let Some(ip) = p.pod_ip {
                pods.push((pod_addr(ip), id));
            }
        }
        let veth_names: Vec<&str> = topo.paths.iter().map(|p| p.host_veth.as_str()).collect();
        let mut namespaces = vec![(node_netns, NetnsRole::Node)];
        namespaces.extend(
            netns::pod_inodes(node, &veth_names)
                .await
                .into_iter()
                .map(|i| (i, NetnsRole::Pod)),
        );
        probes.sync(&pods, &interface_roles(node, topo), &namespaces)?;
        Ok(namespaces.len() - 1)
    }
}

/// Sleeps for `duration`, or until Ctrl-C or SIGTERM.
async fn wait(
    duration: std::time::Duration,
    term: &mut tokio::signal::unix::Signal,
    interrupt: &mut tokio::signal::unix::Signal,
) -> anyhow::Result<()> {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = interrupt.recv() => eprintln!("sgpath: interrupted; reporting what was counted"),
        _ = term.recv() => eprintln!("sgpath: SIGTERM; reporting what was counted"),
    }
    Ok(())
}

/// How often the connection map is swept: a connection counts at most this late after its
/// timeout.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Counts what the connection map newly says and forgets what the tracker is done with.
fn sweep_conns(probes: &mut PathProbes, conns: &mut ConnTracker) -> anyhow::Result<()> {
    let entries = probes.conns()?;
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let now = std::time::Duration::from(now);
    let forget = conns.sweep(&entries, now);
    probes.forget_conns(&forget)?;
    Ok(())
}

/// What each probed interface of the node is: every pod's host veth, and every way off the
/// node (node ENIs, `vlan.eth.N`), by ifindex. Not the trunk: every frame a `vlan.eth.N`
/// sends crosses it again, tagged, and was counted where it left.
fn interface_roles(node: &sgpath::model::Node, topo: &Topology) -> Vec<(u32, IfaceRole)> {
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

/// Names the raw drops (reason from BTF, location from kallsyms) and builds the counters.
fn counters(
    raw: &RawPathCounts,
    reasons: Option<&std::collections::BTreeMap<i64, String>>,
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
        &drops,
    )
}
