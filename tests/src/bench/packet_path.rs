//! Packet-path overhead: a pod-shaped veth pair, a small-packet UDP flood (several flows,
//! `sendmmsg`/`recvmmsg`) and an iperf3 TCP stream from the pod to the node, with no probe
//! (A) and with a real `sgpath agent` attached in the node (B), alternating. While B's
//! flood runs, the kernel's own accounting gives each program's cost per run.
//!
//! Side effects: iperf3 in the node namespace; `sgpath agent` started and stopped per run.

use std::{collections::BTreeMap, process::Command, time::Duration};

use serde_json::Value;

use super::{
    Killed, PAIRS,
    flood::{Flood, Flooded},
    pod_node::{NODE_IP, PodNode},
    start_agent,
    stats::{CONFIDENCE, Goal, Interval, Summary, Table, alternate_until, kilo, ratios},
};

/// Datagrams per flood: a few seconds at this machine's rate.
pub const FLOOD_PACKETS: u64 = 1_000_000;
/// Flows (one sender and one receiver each).
pub const FLOWS: usize = 4;
/// Seconds of each iperf3 stream.
const TCP_SECONDS: u32 = 5;
const IPERF_PORT: u16 = 5201;

/// Most pairs: more than the other sections' (24), since a 64-byte flood's and a stream's
/// rates vary by several percent from run to run on a shared 2-core machine.
const MAX_PAIRS: usize = 40;

/// The goals: pps and TCP throughput with the agent over without.
const UDP_GOAL: f64 = 0.92;
const TCP_GOAL: f64 = 0.99;

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

/// The iperf3 server in the node, for [`tcp_stream`]; killed when dropped.
pub fn tcp_server(node: &PodNode) -> Killed {
    Killed::spawn_in(
        &node.node(),
        &[
            "iperf3",
            "-s",
            "-B",
            &NODE_IP.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ],
    )
}

/// One iperf3 stream from the pod to the node; bits a second received. The client runs on
/// CPU 0 and the server on CPU 1 (`-A 0,1`) where there are two: left to the scheduler,
/// the two shared a core in some runs and not in others, and the stream's rate swung 3x
/// from run to run, far more than the agent's effect.
pub fn tcp_stream(node: &PodNode) -> f64 {
    let pinned = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
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
            .args(if pinned { &["-A", "0,1"][..] } else { &[] })
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

/// The section.
pub fn run(node: &PodNode) -> String {
    let _server = tcp_server(node);
    let flood = udp_flood(node, 7000, true);
    // Warm-up: ARP-free already (permanent neighbours), but caches and sockets are cold.
    flood.run();
    let pps = |v: &[Run]| v.iter().map(|(f, _)| f.received_pps()).collect::<Vec<_>>();
    let bps = |v: &[Run]| v.iter().map(|(_, t)| *t / 1e9).collect::<Vec<_>>();
    let judge = |a: &[Run], b: &[Run]| {
        let udp = Interval::of(&ratios(&pps(a), &pps(b)));
        let tcp = Interval::of(&ratios(&bps(a), &bps(b)));
        (
            udp.map_or(Goal::Undecided, |i| i.judge(UDP_GOAL, true)),
            tcp.map_or(Goal::Undecided, |i| i.judge(TCP_GOAL, true)),
        )
    };
    let (a, b): (Vec<Run>, Vec<Run>) = alternate_until(
        PAIRS,
        MAX_PAIRS,
        |_| (flood.run(), tcp_stream(node)),
        |_| {
            let agent = start_agent(node);
            // Let the start-up snapshot settle before measuring.
            std::thread::sleep(Duration::from_millis(500));
            let f = flood.run();
            let t = tcp_stream(node);
            let _ = agent.terminate();
            (f, t)
        },
        |a, b| {
            let (udp, tcp) = judge(a, b);
            udp != Goal::Undecided && tcp != Goal::Undecided
        },
    );
    let lost = |v: &[Run]| {
        v.iter()
            .map(|(f, _)| f.sent - f.received)
            .max()
            .unwrap_or(0)
    };
    let (pa, pb, ta, tb) = (pps(&a), pps(&b), bps(&a), bps(&b));
    let udp_ratio = Interval::of(&ratios(&pa, &pb)).expect("enough pairs");
    let tcp_ratio = Interval::of(&ratios(&ta, &tb)).expect("enough pairs");
    let (udp_goal, tcp_goal) = judge(&a, &b);
    let tcp_a = Summary::of(&ta).expect("enough pairs");
    let mut t = Table::new(&["figure", "no probes (A)", "sgpath agent (B)", "B / A"]);
    t.row(
        &[
            "UDP 64 B frames, pps delivered".into(),
            kilo(&pa),
            kilo(&pb),
            udp_ratio.show(3),
        ],
        &format!("B/A >= {UDP_GOAL}"),
        udp_goal,
    );
    t.row(
        &[
            "TCP stream, Gbit/s".into(),
            tcp_a.show(2),
            Summary::of(&tb).unwrap().show(2),
            tcp_ratio.show(3),
        ],
        &format!("B/A >= {TCP_GOAL}"),
        tcp_goal,
    );
    // One stream's rate swings by more than the agent's share of it: say where the TCP goal
    // is decided instead of leaving "undecided" unexplained.
    let tcp_note = if tcp_goal == Goal::Undecided {
        format!(
            "\n\nOne TCP stream's rate varies by more from run to run ({:.2} to {:.2} Gbit/s with no \
             probes) than the agent's effect on it, so after {n} pairs the ratio's interval is \
             still {:.3} wide. The agent's cost to the stream is decided instead by its share \
             of the stream's CPU samples, in \"Where a TCP stream's time goes\".",
            tcp_a.min,
            tcp_a.max,
            tcp_ratio.high - tcp_ratio.low,
            n = a.len(),
        )
    } else {
        String::new()
    };
    let text = format!(
        "A pod-shaped veth pair (host veth `{veth}` in the node, `eth0` with a /32 in the pod, \
         the /32 route and the `512` rule as the CNI lays them out). UDP: {FLOOD_PACKETS} \
         datagrams of 18 bytes (64-byte frames) in {FLOWS} flows from the pod to the node, \
         `sendmmsg`/`recvmmsg` in batches of 64, pps = datagrams received / time to the last \
         one (most lost in one run: A {la}, B {lb}). TCP: one iperf3 stream pod -> node, \
         {TCP_SECONDS} s, client on CPU 0 and server on CPU 1 (`-A 0,1`). BPF run-time \
         statistics are off (as on a node). A = no probes, B = `sgpath agent` running in the node with its probes \
         attached (`/readyz` 200, the path in `/v1/report`); pairs run A B A B ..., median \
         (min–max) of each side; the ratio is taken pair by pair and shown as its median with \
         the {CONFIDENCE} interval of that median [low, high] (sign test). Pairs are added, \
         {PAIRS} at least and {MAX_PAIRS} at most, until each ratio's interval lies wholly on \
         one side of its goal ({n} here).\n\n{}{tcp_note}",
        t.markdown(),
        n = a.len(),
        veth = node.pods[0].veth,
        la = lost(&a),
        lb = lost(&b),
    );
    text
}
