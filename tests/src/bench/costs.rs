//! Cost per packet, against the floor: each of the agent's programs' run time per run as the
//! kernel accounts it (BPF_ENABLE_STATS), next to an empty program on the same hook
//! (`sgpath::ebpf::FLOOR_OBJECT`) measured on the same traffic in the same run. The floor is
//! what the hook and the accounting cost by themselves: two clock reads and a counter update
//! per run.
//!
//! Three floods, because the tracepoints fire for every packet of the machine and a program
//! does different work on each: a pod's packet on its host veth (the full path), the node's
//! own traffic on an uplink, and packets in other namespaces (a pod's own `eth0`, the VPC's
//! end of the uplink), which must leave at once.
//!
//! Side effects: `sgpath agent` started and stopped per round; the floor programs attached
//! by this process while their floods run (detached when dropped).

use std::time::Duration;

use aya::{Btf, Ebpf, EbpfLoader, programs::BtfTracePoint};

use super::{
    MAX_PAIRS, PAIRS,
    flood::Flood,
    ns_per_run,
    packet_path::{Costs, FLOWS},
    pod_node::{NODE_IP, PodNode},
    prog_stats, start_agent_with,
    stats::{CONFIDENCE, Goal, Interval, Summary, Table},
};

/// Datagrams per flood: enough runs for a stable mean, short enough for 30 floods.
const PACKETS: u64 = 300_000;

/// [`PACKETS`] times `$SGB_SCALE` (default 1): the per-kernel VMs run a tenth, TCG being
/// tens of times slower.
fn packets() -> u64 {
    let scale: f64 = std::env::var("SGB_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((PACKETS as f64 * scale) as u64).max(1000)
}

/// `$SGB_TCG`: the bench runs in a VM under TCG (xtask's per-kernel VMs). TCG emulates
/// the JIT's code instruction by instruction and every memory access through its soft MMU,
/// so a program's ratio to the empty one grows with its loads: no goal is judged there.
fn under_tcg() -> bool {
    std::env::var_os("SGB_TCG").is_some()
}

/// The dropped flood's first port, and the node's nftables rule that drops it (input hook,
/// as the drop benchmark's).
const DROP_PORT: u16 = 7300;
const DROP_RULE: &str = "table inet sgb_cost_drop {\n chain input {\n \
     type filter hook input priority 0;\n udp dport 7300-7363 drop\n }\n}\n";
/// The VPC's end of the node's `eth0`.
const VPC_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 98, 0, 1);

/// The empty programs, attached while this lives.
pub struct Floor(#[allow(dead_code)] Ebpf);

impl Floor {
    /// Loads and attaches `floor_rx`, `floor_tx` and `floor_kfree_skb`.
    pub fn attach() -> Floor {
        let btf = Btf::from_sys_fs().expect("the kernel's BTF");
        let mut ebpf = EbpfLoader::new()
            .load(sgpath::ebpf::FLOOR_OBJECT)
            .expect("load the floor object");
        for (name, hook) in [
            ("floor_rx", "netif_receive_skb"),
            ("floor_tx", "net_dev_start_xmit"),
            ("floor_kfree_skb", "kfree_skb"),
        ] {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("{name} is missing from the floor object"))
                .try_into()
                .expect("a tp_btf program");
            p.load(hook, &btf)
                .unwrap_or_else(|e| panic!("load {name}: {e}"));
            p.attach().unwrap_or_else(|e| panic!("attach {name}: {e}"));
        }
        Floor(ebpf)
    }

    /// Costs per run of the floor programs during `f`.
    pub fn around(f: impl FnOnce()) -> Costs {
        let floor = Floor::attach();
        let me = std::process::id();
        let before = prog_stats(me);
        f();
        let costs = ns_per_run(&before, &prog_stats(me));
        drop(floor);
        costs
    }
}

/// Which traffic a flood is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Traffic {
    /// A pod's datagrams to the node: its host veth receives them.
    PodToNode,
    /// The node's datagrams to a pod: its host veth transmits them.
    NodeToPod,
    /// The node's own datagrams out of its `eth0` (an uplink) to the VPC.
    NodeToVpc,
    /// A pod's datagrams dropped by nftables in the node (the drop benchmark's floods).
    PodToNodeDropped,
}

impl Traffic {
    const FLOODED: [Traffic; 4] = [
        Traffic::PodToNode,
        Traffic::NodeToPod,
        Traffic::NodeToVpc,
        Traffic::PodToNodeDropped,
    ];

    fn flood(self, node: &PodNode) -> Flood {
        let (pod, node_ns) = (&node.pods[0], node.node());
        let (from_ns, from, to_ns, to) = match self {
            Traffic::PodToNode | Traffic::PodToNodeDropped => {
                (pod.ns.clone(), pod.ip, node_ns, NODE_IP)
            }
            Traffic::NodeToPod => (node_ns, NODE_IP, pod.ns.clone(), pod.ip),
            Traffic::NodeToVpc => (node_ns, NODE_IP, format!("{}-vpc", node.prefix), VPC_IP),
        };
        let dropped = self == Traffic::PodToNodeDropped;
        Flood {
            from_ns,
            from,
            to_ns,
            to,
            // Dropped by `DROP_RULE`.
            port: if dropped { DROP_PORT } else { 7200 },
            flows: FLOWS,
            packets: packets(),
            rate: None,
            receive: !dropped,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Traffic::PodToNode => "pod -> node",
            Traffic::NodeToPod => "node -> pod",
            Traffic::NodeToVpc => "node -> VPC",
            Traffic::PodToNodeDropped => "pod -> node, dropped by nft",
        }
    }
}

/// Per traffic, the agent's and the floor's costs of each run.
#[derive(Default)]
pub struct Measured {
    pub agent: Vec<(Traffic, Costs)>,
    pub floor: Vec<(Traffic, Costs)>,
}

/// Rounds, each the three floods with the agent attached, then with the floor: [`PAIRS`]
/// at least, then more (up to [`MAX_PAIRS`]) until every row of those floods is decided by
/// its interval.
pub fn measure(node: &PodNode) -> Measured {
    measure_with(node, &[])
}

/// [`measure`] with the agent started with `extra` arguments (`--header-read probe`: the
/// helper-read programs 5.10 and 6.1 run, measured on this kernel).
pub fn measure_with(node: &PodNode, extra: &[&str]) -> Measured {
    // The kernel times programs only while someone holds this fd: only in this section,
    // since timing costs two clock reads per run of every program (no node runs so).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let mut m = Measured::default();
    let ns = node.node();
    crate::observe::nft(&ns, DROP_RULE);
    for round in 0..MAX_PAIRS {
        let agent = start_agent_with(node, extra);
        std::thread::sleep(Duration::from_millis(500));
        for t in Traffic::FLOODED {
            let flood = t.flood(node);
            let before = prog_stats(agent.pid());
            flood.run();
            m.agent
                .push((t, ns_per_run(&before, &prog_stats(agent.pid()))));
        }
        let _ = agent.terminate();
        for t in Traffic::FLOODED {
            let flood = t.flood(node);
            m.floor.push((
                t,
                Floor::around(|| {
                    let _ = flood.run();
                }),
            ));
        }
        let decided = under_tcg()
            || ROWS
                .iter()
                .filter(|r| Traffic::FLOODED.contains(&r.traffic))
                .all(|r| r.judge(&m).is_some_and(|(_, g)| g != Goal::Undecided));
        if round + 1 >= PAIRS && decided {
            break;
        }
    }
    crate::observe::ns_run(&ns, &["nft", "delete", "table", "inet", "sgb_cost_drop"]);
    m
}

/// What a program does with a traffic's packets, and the goal that holds it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    /// The whole path: at most twice the floor (the interval of the per-round ratio).
    Full,
    /// Not pod traffic: at most the floor plus 10 ns (the interval of the per-round
    /// difference).
    EarlyExit,
}

/// One row of the section.
struct Row {
    prog: &'static str,
    floor: &'static str,
    traffic: Traffic,
    work: Work,
    what: &'static str,
}

const ROWS: [Row; 7] = [
    Row {
        prog: "path_rx",
        floor: "floor_rx",
        traffic: Traffic::PodToNode,
        work: Work::Full,
        what: "a pod's packet on its host veth",
    },
    Row {
        prog: "path_tx",
        floor: "floor_tx",
        traffic: Traffic::NodeToPod,
        work: Work::Full,
        what: "a pod's packet on its host veth",
    },
    Row {
        prog: "path_tx",
        floor: "floor_tx",
        traffic: Traffic::NodeToVpc,
        work: Work::EarlyExit,
        what: "the node's own, on its uplink",
    },
    Row {
        prog: "path_rx",
        floor: "floor_rx",
        traffic: Traffic::NodeToVpc,
        work: Work::EarlyExit,
        what: "another namespace's (the VPC's)",
    },
    Row {
        prog: "path_tx",
        floor: "floor_tx",
        traffic: Traffic::PodToNode,
        work: Work::EarlyExit,
        what: "another namespace's (the pod's eth0)",
    },
    Row {
        prog: "path_rx",
        floor: "floor_rx",
        traffic: Traffic::NodeToPod,
        work: Work::EarlyExit,
        what: "another namespace's (the pod's eth0)",
    },
    Row {
        prog: "kfree_skb_reason",
        floor: "floor_kfree_skb",
        traffic: Traffic::PodToNodeDropped,
        work: Work::Full,
        what: "a pod's packet dropped in the node",
    },
];

impl Row {
    /// (sgpath, floor) ns per run of each round with both.
    fn pairs(&self, m: &Measured) -> Vec<(f64, f64)> {
        let of = |v: &[(Traffic, Costs)], prog: &str| -> Vec<Option<f64>> {
            v.iter()
                .filter(|(t, _)| *t == self.traffic)
                .map(|(_, c)| {
                    lookup(c, prog)
                        .filter(|(_, runs)| *runs > 0)
                        .map(|(ns, _)| ns)
                })
                .collect()
        };
        of(&m.agent, self.prog)
            .into_iter()
            .zip(of(&m.floor, self.floor))
            .filter_map(|(a, f)| Some((a?, f?)))
            .collect()
    }

    /// The interval of the row's figure (ratio, or difference in ns) and its verdict.
    fn judge(&self, m: &Measured) -> Option<(Interval, Goal)> {
        let pairs = self.pairs(m);
        let (values, goal): (Vec<f64>, f64) = match self.work {
            Work::Full => (pairs.iter().map(|(a, f)| a / f).collect(), 2.0),
            Work::EarlyExit => (pairs.iter().map(|(a, f)| a - f).collect(), 10.0),
        };
        let i = Interval::of(&values)?;
        Some((i, i.judge(goal, false)))
    }
}

/// The section: one row per (program, traffic) the goals name.
pub fn section(m: &Measured) -> String {
    let mut t = Table::new(&[
        "program",
        "traffic",
        "packet",
        "runs per flood",
        "sgpath, ns per run",
        "empty program (floor), ns per run",
        "sgpath / floor, or sgpath - floor (ns)",
    ]);
    for row in &ROWS {
        let (Some(ns), Some(fl)) = (
            per_run(&m.agent, row.traffic, row.prog),
            per_run(&m.floor, row.traffic, row.floor),
        ) else {
            continue;
        };
        let runs = Summary::of(
            &m.agent
                .iter()
                .filter(|(t, _)| *t == row.traffic)
                .filter_map(|(_, c)| lookup(c, row.prog).map(|v| v.1 as f64))
                .collect::<Vec<_>>(),
        )
        .map_or(0.0, |s| s.median);
        let (figure, met) = match row.judge(m) {
            Some((i, g)) => match row.work {
                Work::Full => (i.show_in(2, "x"), g),
                Work::EarlyExit => (format!("+{}", i.show_in(0, " ns")), g),
            },
            None => (format!("{:.2}x", ns.median / fl.median), Goal::Undecided),
        };
        let goal = match row.work {
            _ if under_tcg() => "none under TCG",
            Work::Full => "<= 2x floor",
            Work::EarlyExit => "<= floor + 10 ns",
        };
        let met = if under_tcg() { Goal::None } else { met };
        t.row(
            &[
                format!("`{}`", row.prog),
                row.traffic.label().into(),
                row.what.into(),
                format!("{runs:.0}"),
                ns.show(0),
                fl.show(0),
                figure,
            ],
            goal,
            met,
        );
    }
    format!(
        "The kernel's own accounting (BPF_ENABLE_STATS, held by the bench during this section \
         only): run time over run \
         count of each program, read with `bpftool prog show -j` before and after each flood. \
         The floor is an empty program on the same hook (`agent-ebpf/src/floor.rs`, never \
         loaded by the agent), measured on the same traffic in the same round: each round is \
         the four floods ({packets} datagrams of 64-byte frames in {FLOWS} flows) with \
         `sgpath agent` attached, then with the floor programs alone; {PAIRS} rounds at \
         least, more (up to {MAX_PAIRS}) until every row's interval clears its goal ({n} \
         here). The dropped flood is the pod's, every datagram dropped by an nftables rule in \
         the node's input hook (`udp dport {DROP_PORT}-...  drop`; on 5.10 the drop program is \
         `kfree_skb_location`). ns per run: median (min–max) over the \
         floods. The last figure is per round, sgpath's over the floor's (a ratio) or minus \
         it (ns), shown as its median and the {CONFIDENCE} interval of that median [low, \
         high] (sign test: the order statistics of the rounds). Each tracepoint fires for \
         every packet of the machine, so a flood's runs include the other namespaces' \
         packets; the traffic column says which packet a row's runs are. Headers read: {} \
         (`typed`: the `*_typed` programs' BTF-typed loads, 6.2+; `probe`: one helper \
         read).\n\n{}",
        header_read(&m.agent),
        t.markdown(),
        packets = packets(),
        n = m
            .agent
            .iter()
            .filter(|(t, _)| *t == Traffic::PodToNode)
            .count(),
    )
}

/// A program's (ns per run, runs) in one flood's costs, whichever way it reads headers
/// (`path_rx` or `path_rx_typed`) and, for the drop program, whichever names drops
/// (`kfree_skb_location` on 5.10). The kernel truncates program names to 15 characters;
/// bpftool may show either.
fn lookup(c: &Costs, name: &str) -> Option<(f64, u64)> {
    let mut names = vec![format!("{name}_typed"), name.to_owned()];
    if name == "kfree_skb_reason" {
        names.push("kfree_skb_location".into());
    }
    names
        .iter()
        .find_map(|name| {
            c.iter()
                .find(|(n, _)| name.starts_with(n.as_str()) && n.len() >= 15.min(name.len()))
        })
        .map(|(_, v)| *v)
}

/// How the agent's programs read headers in these costs: `typed` when its path programs
/// were the `*_typed` ones.
pub fn header_read(of: &[(Traffic, Costs)]) -> &'static str {
    if of
        .iter()
        .any(|(_, c)| c.keys().any(|n| n.starts_with("path_rx_typed")))
    {
        "typed"
    } else {
        "probe"
    }
}

fn per_run(of: &[(Traffic, Costs)], traffic: Traffic, prog: &str) -> Option<Summary> {
    let ns: Vec<f64> = of
        .iter()
        .filter(|(t, _)| *t == traffic)
        .filter_map(|(_, c)| lookup(c, prog))
        .filter(|(_, runs)| *runs > 0)
        .map(|(ns, _)| ns)
        .collect();
    Summary::of(&ns)
}
