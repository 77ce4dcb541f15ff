//! Against a peer's drop counter: the packet-path flood, every datagram dropped by an
//! nftables rule in the node's input hook, counted by a real `sgpath agent` (A, its path's
//! `NETFILTER_DROP` drops from `/v1/report`) or by Debian's bpftrace counting
//! `tracepoint:skb:kfree_skb` by reason (B), alternating. nft's own rule counter is the
//! truth both are held to.
//!
//! Side effects: an nftables table `inet sgb_drop` in the node namespace (deleted at the
//! end); bpftrace processes (stopped with SIGINT); tracefs mounted if it was not.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::{
    MAX_PAIRS, PAIRS,
    flood::Flooded,
    packet_path::{FLOOD_PACKETS, udp_flood},
    pod_node::PodNode,
    start_agent,
    stats::{CONFIDENCE, Goal, Interval, Table, alternate_until, kilo, ratios},
};
use crate::observe::{nft, ns_run};

const REASON: &str = "NETFILTER_DROP";
const BPFTRACE: &str = "tracepoint:skb:kfree_skb { @[args->reason] = count(); }";

/// nft's rule counter of the flood's drops.
fn nft_counter(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-j", "list", "counter"])
        .args(["inet", "sgb_drop", "flood"])
        .output()
        .expect("nft");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("nft -j");
    doc["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|o| o["counter"]["packets"].as_u64()))
        .expect("the flood counter")
}

/// `REASON` drops of the node's path in both directions, from `/v1/report`.
fn sgpath_drops(report: &Value) -> u64 {
    report["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| ["to_pod", "from_pod"].map(|d| &p["counters"][d]["drops_by_reason"][REASON]))
        .filter_map(Value::as_u64)
        .sum()
}

/// The running kernel's drop reasons by value (names without `SKB_DROP_REASON_`).
fn reason_names() -> BTreeMap<i64, String> {
    sgpath::collect::btf::Btf::from_kernel()
        .ok()
        .and_then(|b| b.enum_variants("skb_drop_reason"))
        .unwrap_or_default()
        .into_iter()
        .map(|(v, n)| (v, n.trim_start_matches("SKB_DROP_REASON_").to_owned()))
        .collect()
}

/// One run of bpftrace around `f`: the count of `REASON` it printed.
fn with_bpftrace(names: &BTreeMap<i64, String>, f: impl FnOnce()) -> u64 {
    let mut child = Command::new("bpftrace")
        .args(["-e", BPFTRACE])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bpftrace");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).expect("bpftrace's first line");
    assert!(line.starts_with("Attaching"), "bpftrace said {line:?}");
    // It prints that line before attaching; give the attach time to finish.
    std::thread::sleep(Duration::from_millis(1500));
    f();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT bpftrace");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("bpftrace output");
    let _ = child.wait();
    // `@[<reason value or name>]: <count>`
    rest.lines()
        .filter_map(|l| {
            let (key, count) = l.strip_prefix("@[")?.split_once("]: ")?;
            let name = key
                .parse::<i64>()
                .ok()
                .and_then(|v| names.get(&v).cloned())
                .unwrap_or_else(|| key.trim_start_matches("SKB_DROP_REASON_").to_owned());
            (name == REASON).then(|| count.trim().parse::<u64>().ok())?
        })
        .sum()
}

/// One run's figures: sent pps, counted drops, nft's count.
#[derive(Clone, Copy, Debug)]
struct Run {
    pps: f64,
    counted: u64,
    nft: u64,
}

/// The section.
pub fn run(node: &PodNode) -> String {
    let ns = node.node();
    if !std::path::Path::new("/sys/kernel/tracing/events").exists() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
    nft(
        &ns,
        "table inet sgb_drop {\n counter flood {}\n chain input {\n \
         type filter hook input priority 0;\n udp dport 7100-7163 counter name \"flood\" drop\n }\n}\n",
    );
    let names = reason_names();
    let flood = udp_flood(node, 7100, false);
    let reset = || {
        ns_run(
            &ns,
            &["nft", "reset", "counter", "inet", "sgb_drop", "flood"],
        );
    };
    let pps = |v: &[Run]| v.iter().map(|r| r.pps).collect::<Vec<_>>();
    let judge = |a: &[Run], b: &[Run]| {
        Interval::of(&ratios(&pps(b), &pps(a))).map(|i| (i, i.judge(1.0, true)))
    };
    let (a, b) = alternate_until(
        PAIRS,
        MAX_PAIRS,
        |_| {
            let agent = start_agent(node);
            std::thread::sleep(Duration::from_millis(500));
            reset();
            let before = sgpath_drops(&agent.report(&[]));
            let f = flood.run();
            std::thread::sleep(Duration::from_millis(300));
            let counted = sgpath_drops(&agent.report(&[])) - before;
            let _ = agent.terminate();
            Run {
                pps: f.sent_pps(),
                counted,
                nft: nft_counter(&ns),
            }
        },
        |_| {
            let mut f = Flooded::default();
            let counted = with_bpftrace(&names, || {
                reset();
                f = flood.run();
            });
            Run {
                pps: f.sent_pps(),
                counted,
                nft: nft_counter(&ns),
            }
        },
        |a, b| judge(a, b).is_some_and(|(_, g)| g != Goal::Undecided),
    );
    ns_run(&ns, &["nft", "delete", "table", "inet", "sgb_drop"]);
    let exact = |v: &[Run]| v.iter().filter(|r| r.counted == r.nft).count();
    let (ratio, verdict) = judge(&a, &b).expect("enough pairs");
    let mut t = Table::new(&["figure", "sgpath agent (A)", "bpftrace (B)", "A / B"]);
    t.row(
        &[
            "pps sent into the drop".into(),
            kilo(&pps(&a)),
            kilo(&pps(&b)),
            ratio.show(3),
        ],
        "A/B >= 1",
        verdict,
    );
    let (ea, eb) = (exact(&a), exact(&b));
    t.row(
        &[
            format!("runs whose {REASON} count = nft's counter"),
            format!("{ea} of {}", a.len()),
            format!("{eb} of {}", b.len()),
            String::new(),
        ],
        "sgpath exact where bpftrace is",
        Goal::check(ea >= eb),
    );
    let counts = |v: &[Run]| {
        v.iter()
            .map(|r| format!("{}/{}", r.counted, r.nft))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "The packet-path flood ({FLOOD_PACKETS} datagrams of 64-byte frames, pod -> node) with \
         every datagram dropped by `udp dport 7100-7163 counter name flood drop` in the node's \
         nftables input hook. A = `sgpath agent` counting (its path's `{REASON}` drops in \
         `/v1/report`, after minus before); B = `bpftrace -e '{BPFTRACE}'` (machine-wide, the \
         `{REASON}` entry). pps = datagrams sent / send time (veth delivers, and nft drops, in \
         the sender's softirq). Pairs A B A B ..., {PAIRS} at least, more (up to {MAX_PAIRS}) \
         until the ratio's interval clears its goal ({n} here); the ratio is taken pair by pair \
         and shown as its median with the {CONFIDENCE} interval of that median [low, high] \
         (sign test).\n\n{}\n\
         Counted / nft's counter per run: sgpath {}; bpftrace {}.\n",
        t.markdown(),
        counts(&a),
        counts(&b),
        n = a.len(),
    );
    text
}
