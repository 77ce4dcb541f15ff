//! Where a flood's CPU time goes: `perf record -a -g -e cpu-clock` (a software clock: these
//! machines have no hardware PMU) over one pod -> node flood with no probes and one with
//! `sgpath agent` attached, and the symbols with the most samples of their own. JIT'ed BPF
//! programs show as `bpf_prog_<tag>_<name>` (net.core.bpf_jit_kallsyms, switched on here).
//!
//! Side effects: perf record writes /tmp/sgb-perf-*.data (deleted after); bpf_jit_kallsyms
//! set to 1.

use std::{process::Command, time::Duration};

use super::{
    Killed,
    flood::Flood,
    packet_path::{FLOOD_PACKETS, tcp_server, tcp_stream, udp_flood},
    pod_node::PodNode,
    start_agent,
    stats::{CONFIDENCE, Goal, Table},
};

/// Symbols shown per profile.
const TOP: usize = 14;

/// The flood's samples: each its callchain's symbols, leaf first. Only the flood's own
/// threads (the bench process; veth delivers in the sender's softirq) and ksoftirqd count:
/// other work on this shared machine and the idle loop are left out.
struct Samples(Vec<Vec<String>>);

fn record(flood: &Flood, tag: &str) -> Samples {
    let me = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let me = me.trim().to_owned();
    let all = record_during(
        || {
            flood.run();
        },
        tag,
    );
    Samples(
        all.into_iter()
            .filter(|(comm, _)| *comm == me || comm.starts_with("ksoftirqd"))
            .map(|(_, chain)| chain)
            .collect(),
    )
}

/// Every non-idle sample of the machine while `f` runs: (command, callchain leaf first).
fn record_during(f: impl FnOnce(), tag: &str) -> Vec<(String, Vec<String>)> {
    let data = format!("/tmp/sgb-perf-{tag}.data");
    let mut perf = Killed(
        Command::new("perf")
            .args(["record", "-a", "-g", "-e", "cpu-clock", "-q", "-o", &data])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf record"),
    );
    // perf needs a moment to open its events on every CPU.
    std::thread::sleep(Duration::from_millis(700));
    f();
    // SIGINT: perf writes its file and exits.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(perf.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = perf.0.wait();
    let out = Command::new("perf")
        .args(["script", "-i", &data, "-F", "comm,ip,sym"])
        .output()
        .expect("perf script");
    let _ = std::fs::remove_file(&data);
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// `perf script -F comm,ip,sym`: a `comm` line, then one `<ip> <symbol>` line per frame, a
/// blank line between samples. The idle loop (`swapper`) is left out.
fn parse(text: &str) -> Vec<(String, Vec<String>)> {
    let mut samples = Vec::new();
    for block in text.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let Some(comm) = lines.next() else { continue };
        let comm = comm.trim();
        if comm.starts_with("swapper") {
            continue;
        }
        let chain: Vec<String> = lines
            .filter_map(|l| l.trim().split_once(' ').map(|(_, sym)| sym.to_owned()))
            .collect();
        if !chain.is_empty() {
            samples.push((comm.to_owned(), chain));
        }
    }
    samples
}

impl Samples {
    fn share(&self, n: usize) -> f64 {
        100.0 * n as f64 / self.0.len().max(1) as f64
    }

    /// Leaf symbols with the most samples, and their share.
    fn top_leaves(&self, top: usize) -> Vec<(String, f64)> {
        count(self.0.iter().map(|c| c[0].clone()), top)
            .into_iter()
            .map(|(s, n)| (s, self.share(n)))
            .collect()
    }

    /// Samples under JIT'ed program `prog` (`bpf_prog_<tag>_<prog>`, or its typed-read
    /// twin `<prog>_typed`, maybe with `+<offset>`): its share of all, and the leaves under
    /// it (its own code and the helpers it calls).
    fn under(&self, prog: &str, top: usize) -> (f64, Vec<(String, f64)>) {
        let is_prog = |sym: &String| {
            sym.split('+')
                .next()
                .and_then(|s| s.strip_prefix("bpf_prog_"))
                .and_then(|s| s.split_once('_'))
                .is_some_and(|(_, name)| name.strip_suffix("_typed").unwrap_or(name) == prog)
        };
        let inside: Vec<&Vec<String>> = self.0.iter().filter(|c| c.iter().any(is_prog)).collect();
        let leaves = count(inside.iter().map(|c| c[0].clone()), top)
            .into_iter()
            .map(|(s, n)| (s, 100.0 * n as f64 / inside.len().max(1) as f64))
            .collect();
        (self.share(inside.len()), leaves)
    }
}

fn count(items: impl Iterator<Item = String>, top: usize) -> Vec<(String, usize)> {
    let mut by: std::collections::HashMap<String, usize> = Default::default();
    for s in items {
        *by.entry(s).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(top);
    v
}

/// Short names for JIT'ed programs: `bpf_prog_<tag>_path_rx` -> `bpf_prog_…_path_rx`.
fn show(sym: &str) -> String {
    let sym = sym.split('+').next().unwrap_or(sym);
    match sym
        .strip_prefix("bpf_prog_")
        .and_then(|s| s.split_once('_'))
    {
        Some((_, name)) => format!("`bpf_prog_…_{name}` (BPF)"),
        None => format!("`{sym}`"),
    }
}

/// Most of a TCP stream's CPU the agent may take, in percent: the throughput goal's 0.99.
const TCP_SHARE_GOAL: f64 = 1.0;

/// A proportion `k` of `n`, in percent, with its 95% Wilson score interval.
struct Share {
    pct: f64,
    low: f64,
    high: f64,
}

impl Share {
    fn of(k: usize, n: usize) -> Share {
        let (k, n, z) = (k as f64, n.max(1) as f64, 1.96f64);
        let p = k / n;
        let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
        let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
        Share {
            pct: 100.0 * p,
            low: 100.0 * (centre - half).max(0.0),
            high: 100.0 * (centre + half).min(1.0),
        }
    }

    fn show(&self) -> String {
        format!("{:.2}% [{:.2}%, {:.2}%]", self.pct, self.low, self.high)
    }

    /// Met when the whole interval is at most `goal` percent, missed when it is all above.
    fn judge(&self, goal: f64) -> Goal {
        if self.high <= goal {
            Goal::Met
        } else if self.low > goal {
            Goal::Missed
        } else {
            Goal::Undecided
        }
    }
}

/// Where a TCP stream's CPU goes with and without the agent: every busy sample of the
/// machine while one iperf3 stream (pod -> node) runs, by command, and the share under the
/// agent's programs. Large GSO skbs make few program runs per byte, so a throughput loss
/// with the agent is looked for in the agent's own CPU (the machine has 2 cores).
pub fn tcp(node: &PodNode) -> String {
    let _ = std::fs::write("/proc/sys/net/core/bpf_jit_kallsyms", "1");
    let _server = tcp_server(node);
    let mut gbps = [0.0; 2];
    let without = record_during(|| gbps[0] = tcp_stream(node) / 1e9, "tcp-a");
    let agent = start_agent(node);
    std::thread::sleep(Duration::from_millis(500));
    let with = record_during(|| gbps[1] = tcp_stream(node) / 1e9, "tcp-b");
    let _ = agent.terminate();
    let by_comm = |v: &[(String, Vec<String>)]| {
        // Threads named after their program: `sgpath` for the agent's tokio workers too.
        let comm = |c: &str| {
            if c.starts_with("ksoftirqd") {
                "ksoftirqd".to_owned()
            } else if c.starts_with("kworker") {
                "kworker".to_owned()
            } else {
                c.to_owned()
            }
        };
        count(v.iter().map(|(c, _)| comm(c)), 6)
    };
    let under_bpf = |v: &[(String, Vec<String>)]| {
        v.iter()
            .filter(|(_, chain)| chain.iter().any(|s| s.starts_with("bpf_prog_")))
            .count()
    };
    let mut t = Table::new(&[
        "rank",
        "no probes: command",
        "busy samples",
        "sgpath agent: command",
        "busy samples",
    ]);
    let (ca, cb) = (by_comm(&without), by_comm(&with));
    for i in 0..6 {
        let cell = |c: &[(String, usize)], all: usize| {
            c.get(i).map_or((String::new(), String::new()), |(s, n)| {
                (
                    format!("`{s}`"),
                    format!("{n} ({:.1}%)", 100.0 * *n as f64 / all.max(1) as f64),
                )
            })
        };
        let ((sa, na), (sb, nb)) = (cell(&ca, without.len()), cell(&cb, with.len()));
        t.row(&[format!("{}", i + 1), sa, na, sb, nb], "", Goal::None);
    }
    // What the agent costs the stream: its programs' samples and its own process's, as a
    // share of the busy ones. The stream keeps both cores busy, so its rate falls by about
    // this share.
    let agent_samples = under_bpf(&with) + with.iter().filter(|(c, _)| c == "sgpath").count();
    let share = Share::of(agent_samples, with.len());
    let mut cost = Table::new(&["figure", "samples", "share of the busy samples"]);
    cost.row(
        &[
            "the agent: its BPF programs and its process".into(),
            format!("{agent_samples} of {}", with.len()),
            share.show(),
        ],
        &format!("<= {TCP_SHARE_GOAL}%"),
        share.judge(TCP_SHARE_GOAL),
    );
    format!(
        "`perf record -a -g -e cpu-clock` over one iperf3 stream pod -> node (5 s) with no \
         probes ({:.2} Gbit/s, {} busy samples), then one with `sgpath agent` attached \
         ({:.2} Gbit/s, {} busy samples); idle samples left out. Samples with one of the \
         agent's BPF programs in their call chain: {} ({:.2}% of the busy samples). Busy \
         samples by command:\n\n{}\n\
         The stream keeps both cores busy, so what the agent takes of their samples is what \
         it costs the stream's rate: the share below, with its {CONFIDENCE} Wilson interval \
         (the samples as draws of a proportion). The pairs' throughput ratio above cannot \
         resolve a cost this small: one stream's rate varies by more from run to run.\n\n{}",
        gbps[0],
        without.len(),
        gbps[1],
        with.len(),
        under_bpf(&with),
        100.0 * under_bpf(&with) as f64 / with.len().max(1) as f64,
        t.markdown(),
        cost.markdown(),
    )
}

pub fn run(node: &PodNode) -> String {
    let _ = std::fs::write("/proc/sys/net/core/bpf_jit_kallsyms", "1");
    let flood = udp_flood(node, 7300, true);
    flood.run();
    let without = record(&flood, "a");
    let agent = start_agent(node);
    std::thread::sleep(Duration::from_millis(500));
    let with = record(&flood, "b");
    let _ = agent.terminate();
    let mut t = Table::new(&[
        "rank",
        "no probes: symbol",
        "share",
        "sgpath agent: symbol",
        "share",
    ]);
    let (ta, tb) = (without.top_leaves(TOP), with.top_leaves(TOP));
    for i in 0..TOP {
        let cell = |p: &[(String, f64)]| {
            p.get(i).map_or((String::new(), String::new()), |(s, v)| {
                (show(s), format!("{v:.1}%"))
            })
        };
        let ((sa, va), (sb, vb)) = (cell(&ta), cell(&tb));
        t.row(&[format!("{}", i + 1), sa, va, sb, vb], "", Goal::None);
    }
    let mut inside = Table::new(&[
        "program",
        "its share of the flood's samples",
        "where its samples are (leaf symbol: share of the program's)",
    ]);
    for prog in ["path_rx", "path_tx"] {
        let (share, leaves) = with.under(prog, 8);
        let leaves: Vec<String> = leaves
            .iter()
            .map(|(s, v)| format!("{} {v:.0}%", show(s)))
            .collect();
        inside.row(
            &[
                format!("`{prog}`"),
                format!("{share:.1}%"),
                leaves.join(", "),
            ],
            "",
            Goal::None,
        );
    }
    format!(
        "`perf record -a -g -e cpu-clock` over one pod -> node flood ({FLOOD_PACKETS} datagrams \
         of 64-byte frames, the packet-path flood) with no probes, then one with `sgpath agent` \
         attached. Only the flood's samples count: its own threads (veth delivers in the \
         sender's softirq) and ksoftirqd ({na} and {nb} samples). Self time by leaf symbol, the \
         top {TOP}:\n\n{}\n\
         Under each program (every sample with the JIT'ed program in its call chain: its own \
         code and the helpers it calls):\n\n{}",
        t.markdown(),
        inside.markdown(),
        na = without.0.len(),
        nb = with.0.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 of 100: the Wilson interval is [5.52%, 17.44%] (Wilson 1927; Newcombe 1998, table I).
    #[test]
    fn wilson_interval_of_a_known_proportion() {
        let s = Share::of(10, 100);
        assert_eq!(s.show(), "10.00% [5.52%, 17.44%]");
        assert_eq!(s.judge(20.0), Goal::Met);
        assert_eq!(s.judge(10.0), Goal::Undecided);
        assert_eq!(s.judge(5.0), Goal::Missed);
    }
}
