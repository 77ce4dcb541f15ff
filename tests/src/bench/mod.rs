//! `cargo xtask bench`: the benchmarks of issue 13, each a module returning its section of
//! BENCHMARKS.md, and what they share: the statistics ([`stats`]), a CNI-shaped node
//! ([`pod_node`]), a small-packet flood ([`flood`]) and the running agent.
//!
//! Every figure is the median of at least five runs with their min and max; a ratio is
//! measured in one run alternating A and B, because the machine is shared and noisy.
//! Nothing here asserts a time: a missed goal is written next to its figure.
//!
//! Side effects: namespaces `sgb-*` (deleted on drop, also on a panic), `sgpath agent`,
//! iperf3, bpftrace and prometheus-node-exporter processes in them (killed on drop), the
//! kernel's BPF run-time statistics switched on during the cost section, tracefs mounted.

pub mod attach;
pub mod costs;
pub mod drops;
pub mod flood;
pub mod footprint;
pub mod maps;
pub mod packet_path;
pub mod pod_node;
pub mod profile;
pub mod scrape;
pub mod snapshot;
pub mod stats;

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::agent::Agent;
use pod_node::PodNode;

/// How many A/B pairs (or runs) each figure takes.
pub const RUNS: usize = 5;
/// A/B pairs of the ratios, at least: enough for a 95% interval of the median ratio
/// (`stats::Interval`, 6 pairs at least) that is not the whole range.
pub const PAIRS: usize = 9;
/// At most: pairs are added until each ratio's interval clears its goal.
pub const MAX_PAIRS: usize = 24;

/// Starts `sgpath agent` in `node`'s node namespace (no cluster, no IPAMD) and waits until
/// it is ready and reports every pod's path.
pub fn start_agent(node: &PodNode) -> Agent {
    start_agent_with(node, &[])
}

/// [`start_agent`] with `extra` arguments (`--header-read probe`).
pub fn start_agent_with(node: &PodNode, extra: &[&str]) -> Agent {
    let mut agent = spawn_agent_with(node, extra);
    agent.wait_for("/readyz", 200);
    wait_paths(&agent, node.pods.len(), Duration::from_secs(30));
    agent
}

/// Spawns `sgpath agent` in `node`'s node namespace without waiting.
pub fn spawn_agent(node: &PodNode) -> Agent {
    spawn_agent_with(node, &[])
}

fn spawn_agent_with(node: &PodNode, extra: &[&str]) -> Agent {
    let mut args = vec![
        "--cni-config",
        node.cni.to_str().unwrap(),
        "--ipamd-url",
        "",
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    Agent::spawn(&node.node(), &[], &args)
}

/// The number of paths in the agent's `/v1/report`.
pub fn paths_reported(agent: &Agent) -> usize {
    match agent.try_request("GET", "/v1/report", &[]) {
        Ok((200, body)) => serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|d| d["paths"].as_array().map(Vec::len))
            .unwrap_or(0),
        _ => 0,
    }
}

/// Waits until `/v1/report` holds `n` paths; panics after `within`.
pub fn wait_paths(agent: &Agent, n: usize, within: Duration) {
    let start = Instant::now();
    loop {
        let got = paths_reported(agent);
        if got >= n {
            return;
        }
        assert!(
            start.elapsed() < within,
            "the agent reports {got} paths, not {n}, after {within:?}:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ids of the BPF objects of one kind `pid` holds a descriptor of: `key` is `prog_id:`
/// or `map_id:` in /proc/<pid>/fdinfo (Debian's bpftool is built without the `pids`
/// skeleton).
pub fn fdinfo_ids(pid: u32, key: &str) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    fds.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// Run time (ns) and run count of each BPF program `pid` holds, by name, as the kernel
/// accounts them while statistics are on (`bpftool prog show -j`).
pub fn prog_stats(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let ids = fdinfo_ids(pid, "prog_id:");
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .expect("bpftool");
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                (
                    p["run_time_ns"].as_u64().unwrap_or(0),
                    p["run_cnt"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect()
}

/// Nanoseconds per run of each program between two [`prog_stats`], with the runs.
pub fn ns_per_run(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) -> BTreeMap<String, (f64, u64)> {
    after
        .iter()
        .map(|(name, (t, n))| {
            let (t0, n0) = before.get(name).copied().unwrap_or_default();
            let runs = n - n0;
            (name.clone(), ((t - t0) as f64 / runs.max(1) as f64, runs))
        })
        .collect()
}

/// A child process killed (and reaped) on drop.
pub struct Killed(pub Child);

impl Killed {
    /// `ip netns exec <ns> <argv...>`, output discarded.
    pub fn spawn_in(ns: &str, argv: &[&str]) -> Killed {
        Killed(
            Command::new("ip")
                .args(["netns", "exec", ns])
                .args(argv)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{argv:?}: {e}")),
        )
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs each section, turning a panic into a note in its place so one broken benchmark
/// does not lose the others.
pub fn section(title: &str, f: impl FnOnce() -> String) -> String {
    let start = Instant::now();
    eprintln!("bench: {title} ...");
    // The caller's state is only read after a panic to write what was measured.
    let body = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(body) => body,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("**Not measured**: the benchmark failed:\n\n```\n{msg}\n```\n")
        }
    };
    eprintln!("bench: {title} took {:.0} s", start.elapsed().as_secs_f64());
    format!("## {title}\n\n{body}\n")
}

/// `/proc/<pid>/status`'s VmRSS and VmHWM, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// utime + stime of `pid` in clock ticks (`/proc/<pid>/stat`, fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The command may hold spaces: the fields start after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Clock ticks a second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}
