//! Packet-path overhead: a pod-shaped veth pair, a small-packet UDP flood (several flows,
//! `sendmmsg`/`recvmmsg`) and an iperf3 TCP stream from the pod to the node, with no probe
//! (A) and with a real `sgpath agent` attached in the node (B), alternating. While B's
//! flood runs, the kernel's own accounting gives each program's cost per run.
//!
//! Side effects: iperf3 in the node namespace; `sgpath agent` started and stopped per run.

use std::{collections::BTreeMap, process::Command, time::Duration};

use serde_json::Value;

use super::{
    Killed,
    flood::{Flood, Flooded},
    ns_per_run,
    pod_node::{NODE_IP, PodNode},
    prog_stats, start_agent,
    stats::{Goal, Summary, Table, alternate, kilo, ratios},
};

/// Datagrams per flood: a few seconds at this machine's rate.
pub const FLOOD_PACKETS: u64 = 1_000_000;
/// Flows (one sender and one receiver each).
pub const FLOWS: usize = 4;
/// Seconds of each iperf3 stream.
const TCP_SECONDS: u32 = 5;
const IPERF_PORT: u16 = 5201;

/// A/B pairs: more than the usual five, TCP on this shared machine is noisy.
const PAIRS: usize = 7;

/// One run: the UDP flood, and the TCP stream's bits a second.
type Run = (Flooded, f64);

/// Each program's (ns per run, runs) of one run.
pub type Costs = BTreeMap<String, (f64, u64)>;

/// The pod's flood to the node, received there.
pub fn udp_flood(node: &PodNode, port: u16, receive: bool) -> Flood {
    let pod = &node.pods[0];
    Flood {
        from_ns: pod.ns.clone(),
        from: pod.ip,
        to_ns: node.node(),
        to: NODE_IP,
        port,
        flows: FLOWS,
        packets: FLOOD_PACKETS,
        rate: None,
        receive,
    }
}

/// One iperf3 stream from the pod to the node; bits a second received.
fn tcp_stream(node: &PodNode) -> f64 {
    for _ in 0..20 {
        let out = Command::new("ip")
            .args(["netns", "exec", &node.pods[0].ns, "iperf3", "-J", "-c"])
            .arg(NODE_IP.to_string())
            .args([
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                &TCP_SECONDS.to_string(),
            ])
            .output()
            .expect("iperf3");
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = doc["end"]["sum_received"]["bits_per_second"].as_f64() {
            return bps;
        }
        // The server is still starting (or busy with the previous client).
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("iperf3 never ran a stream to {NODE_IP}:{IPERF_PORT}");
}

/// The section, and the costs of `path_rx` and `path_tx` per run of each B flood.
pub fn run(node: &PodNode) -> (String, Vec<Costs>) {
    let _server = Killed::spawn_in(
        &node.node(),
        &[
            "iperf3",
            "-s",
            "-B",
            &NODE_IP.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ],
    );
    let flood = udp_flood(node, 7000, true);
    // Warm-up: ARP-free already (permanent neighbours), but caches and sockets are cold.
    flood.run();
    let mut costs = Vec::new();
    let (a, b): (Vec<Run>, Vec<Run>) = alternate(
        PAIRS,
        |_| (flood.run(), tcp_stream(node)),
        |_| {
            let agent = start_agent(node);
            // Let the start-up snapshot settle before measuring.
            std::thread::sleep(Duration::from_millis(500));
            let before = prog_stats(agent.pid());
            let f = flood.run();
            costs.push(ns_per_run(&before, &prog_stats(agent.pid())));
            let t = tcp_stream(node);
            let _ = agent.terminate();
            (f, t)
        },
    );
    let pps = |v: &[Run]| v.iter().map(|(f, _)| f.received_pps()).collect::<Vec<_>>();
    let bps = |v: &[Run]| v.iter().map(|(_, t)| *t / 1e9).collect::<Vec<_>>();
    let lost = |v: &[Run]| {
        v.iter()
            .map(|(f, _)| f.sent - f.received)
            .max()
            .unwrap_or(0)
    };
    let (pa, pb, ta, tb) = (pps(&a), pps(&b), bps(&a), bps(&b));
    let udp_ratio = Summary::of(&ratios(&pa, &pb)).unwrap();
    let tcp_ratio = Summary::of(&ratios(&ta, &tb)).unwrap();
    let mut t = Table::new(&["figure", "no probes (A)", "sgpath agent (B)", "B / A"]);
    t.row(
        &[
            "UDP 64 B frames, pps delivered".into(),
            kilo(&pa),
            kilo(&pb),
            udp_ratio.show(3),
        ],
        "B/A >= 0.95",
        Goal::check(udp_ratio.median >= 0.95),
    );
    t.row(
        &[
            "TCP stream, Gbit/s".into(),
            Summary::of(&ta).unwrap().show(2),
            Summary::of(&tb).unwrap().show(2),
            tcp_ratio.show(3),
        ],
        "B/A >= 0.97",
        Goal::check(tcp_ratio.median >= 0.97),
    );
    let text = format!(
        "A pod-shaped veth pair (host veth `{veth}` in the node, `eth0` with a /32 in the pod, \
         the /32 route and the `512` rule as the CNI lays them out). UDP: {FLOOD_PACKETS} \
         datagrams of 18 bytes (64-byte frames) in {FLOWS} flows from the pod to the node, \
         `sendmmsg`/`recvmmsg` in batches of 64, pps = datagrams received / time to the last \
         one (most lost in one run: A {la}, B {lb}). TCP: one iperf3 stream pod -> node, \
         {TCP_SECONDS} s. A = no probes, B = `sgpath agent` running in the node with its probes \
         attached (`/readyz` 200, the path in `/v1/report`); {PAIRS} pairs run A B A B ..., \
         median (min–max), the ratio taken pair by pair.\n\n{}",
        t.markdown(),
        veth = node.pods[0].veth,
        la = lost(&a),
        lb = lost(&b),
    );
    (text, costs)
}

/// The cost-per-packet section: `path_rx` and `path_tx` from the packet-path floods, the
/// drop handler from the drop floods.
pub fn costs_section(path: &[Costs], drops: &[Costs], packets: u64) -> String {
    let mut t = Table::new(&["program", "hook", "runs per flood", "ns per run"]);
    let rows: [(&str, &str, &[Costs], f64); 4] = [
        ("path_rx", "tp_btf/netif_receive_skb", path, 50.0),
        ("path_tx", "tp_btf/net_dev_start_xmit", path, 50.0),
        ("kfree_skb_reason", "tp_btf/kfree_skb", drops, 100.0),
        ("kfree_skb_location", "tp_btf/kfree_skb", drops, 100.0),
    ];
    for (name, hook, runs, goal) in rows {
        // The kernel truncates program names to 15 characters; bpftool may show either.
        let of = |c: &Costs| {
            c.iter()
                .find(|(n, _)| name.starts_with(n.as_str()) && n.len() >= 15.min(name.len()))
                .map(|(_, v)| *v)
        };
        let found: Vec<(f64, u64)> = runs.iter().filter_map(of).collect();
        if found.iter().all(|(_, n)| *n == 0) {
            continue;
        }
        let ns = Summary::of(&found.iter().map(|x| x.0).collect::<Vec<_>>()).unwrap();
        let n = Summary::of(&found.iter().map(|x| x.1 as f64).collect::<Vec<_>>()).unwrap();
        t.row(
            &[
                format!("`{name}`"),
                hook.into(),
                format!("{:.0}", n.median),
                ns.show(0),
            ],
            &format!("<= {goal:.0} ns"),
            Goal::check(ns.median <= goal),
        );
    }
    format!(
        "The kernel's own accounting (BPF_ENABLE_STATS held by the bench): run time over run \
         count of each of the agent's programs, read with `bpftool prog show -j` before and \
         after each flood of the packet-path benchmark (path programs) and of the drop \
         benchmark (drop handler); {packets} datagrams a flood, median (min–max) over the \
         floods. The tracepoints fire for every packet of the machine, so a run includes the \
         early exits for packets of other namespaces.\n\n{}",
        t.markdown()
    )
}
