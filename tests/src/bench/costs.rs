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
    RUNS,
    flood::Flood,
    ns_per_run,
    packet_path::{Costs, FLOWS},
    pod_node::{NODE_IP, PodNode},
    prog_stats, start_agent,
    stats::{Goal, Summary, Table},
};

/// Datagrams per flood: enough runs for a stable mean, short enough for 30 floods.
const PACKETS: u64 = 300_000;
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
    const FLOODED: [Traffic; 3] = [Traffic::PodToNode, Traffic::NodeToPod, Traffic::NodeToVpc];

    fn flood(self, node: &PodNode) -> Flood {
        let (pod, node_ns) = (&node.pods[0], node.node());
        let (from_ns, from, to_ns, to) = match self {
            Traffic::PodToNode | Traffic::PodToNodeDropped => {
                (pod.ns.clone(), pod.ip, node_ns, NODE_IP)
            }
            Traffic::NodeToPod => (node_ns, NODE_IP, pod.ns.clone(), pod.ip),
            Traffic::NodeToVpc => (node_ns, NODE_IP, format!("{}-vpc", node.prefix), VPC_IP),
        };
        Flood {
            from_ns,
            from,
            to_ns,
            to,
            port: 7200,
            flows: FLOWS,
            packets: PACKETS,
            rate: None,
            receive: true,
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

/// `RUNS` rounds, each the three floods with the agent attached, then with the floor.
pub fn measure(node: &PodNode) -> Measured {
    let mut m = Measured::default();
    for _ in 0..RUNS {
        let agent = start_agent(node);
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
    }
    m
}

/// What a program does with a traffic's packets, and the goal that holds it.
#[derive(Clone, Copy)]
enum Work {
    /// The whole path: at most twice the floor.
    Full,
    /// Not pod traffic: at most the floor plus 10 ns.
    EarlyExit,
}

/// The section: one row per (program, traffic) the goals name.
pub fn section(m: &Measured) -> String {
    let rows: [(&str, &str, Traffic, Work, &str); 7] = [
        (
            "path_rx",
            "floor_rx",
            Traffic::PodToNode,
            Work::Full,
            "a pod's packet on its host veth",
        ),
        (
            "path_tx",
            "floor_tx",
            Traffic::NodeToPod,
            Work::Full,
            "a pod's packet on its host veth",
        ),
        (
            "path_tx",
            "floor_tx",
            Traffic::NodeToVpc,
            Work::EarlyExit,
            "the node's own, on its uplink",
        ),
        (
            "path_rx",
            "floor_rx",
            Traffic::NodeToVpc,
            Work::EarlyExit,
            "another namespace's (the VPC's)",
        ),
        (
            "path_tx",
            "floor_tx",
            Traffic::PodToNode,
            Work::EarlyExit,
            "another namespace's (the pod's eth0)",
        ),
        (
            "path_rx",
            "floor_rx",
            Traffic::NodeToPod,
            Work::EarlyExit,
            "another namespace's (the pod's eth0)",
        ),
        (
            "kfree_skb_reason",
            "floor_kfree_skb",
            Traffic::PodToNodeDropped,
            Work::Full,
            "a pod's packet dropped in the node",
        ),
    ];
    let mut t = Table::new(&[
        "program",
        "traffic",
        "packet",
        "runs per flood",
        "sgpath, ns per run",
        "empty program (floor), ns per run",
        "sgpath / floor",
    ]);
    for (prog, floor, traffic, work, what) in rows {
        let (Some(ns), Some(fl)) = (
            per_run(&m.agent, traffic, prog),
            per_run(&m.floor, traffic, floor),
        ) else {
            continue;
        };
        let runs = Summary::of(
            &m.agent
                .iter()
                .filter(|(t, _)| *t == traffic)
                .filter_map(|(_, c)| lookup(c, prog).map(|v| v.1 as f64))
                .collect::<Vec<_>>(),
        )
        .map_or(0.0, |s| s.median);
        let (goal, met) = match work {
            Work::Full => ("<= 2x floor", ns.median <= 2.0 * fl.median),
            Work::EarlyExit => ("<= floor + 10 ns", ns.median <= fl.median + 10.0),
        };
        t.row(
            &[
                format!("`{prog}`"),
                traffic.label().into(),
                what.into(),
                format!("{runs:.0}"),
                ns.show(0),
                fl.show(0),
                format!("{:.2}", ns.median / fl.median),
            ],
            goal,
            Goal::check(met),
        );
    }
    format!(
        "The kernel's own accounting (BPF_ENABLE_STATS held by the bench): run time over run \
         count of each program, read with `bpftool prog show -j` before and after each flood. \
         The floor is an empty program on the same hook (`agent-ebpf/src/floor.rs`, never \
         loaded by the agent), measured on the same traffic in the same run: {RUNS} rounds, \
         each the three floods ({PACKETS} datagrams of 64-byte frames in {FLOWS} flows) with \
         `sgpath agent` attached, then with the floor programs alone. The drop row comes from \
         the drop benchmark's floods (the agent's) and as many floods with the floor programs \
         in the same run. Median (min–max) over the floods. Each tracepoint fires for every \
         packet of the machine, so a flood's runs include the other namespaces' packets; the \
         traffic column says which packet a row's runs are.\n\n{}",
        t.markdown()
    )
}

/// A program's (ns per run, runs) in one flood's costs. The kernel truncates program names
/// to 15 characters; bpftool may show either.
fn lookup(c: &Costs, name: &str) -> Option<(f64, u64)> {
    c.iter()
        .find(|(n, _)| name.starts_with(n.as_str()) && n.len() >= 15.min(name.len()))
        .map(|(_, v)| *v)
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
