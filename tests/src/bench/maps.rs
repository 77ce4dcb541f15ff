//! BPF map memory: the maps a running `sgpath agent` holds, as the kernel accounts them
//! (`bytes_memlock` of `bpftool map show -j`), against the formula of
//! `sgpath::ebpf::memory` on this machine's possible CPUs, and that formula at 192 CPUs.
//! `cargo xtask bench` also runs this section in a VM on kernel 6.12.
//!
//! Side effects: the agent started and stopped.

use std::{collections::BTreeMap, process::Command, time::Duration};

use serde_json::Value;

use super::{
    fdinfo_ids,
    pod_node::PodNode,
    start_agent,
    stats::{Goal, Table},
};

/// The possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-1`).
pub fn possible_cpus() -> u64 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    text.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap_or(0) - a.parse::<u64>().unwrap_or(0) + 1,
            None => 1,
        })
        .sum()
}

/// The agent's maps as the kernel accounts them: name -> (memlock bytes, max entries).
fn agent_maps(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let ids = fdinfo_ids(pid, "map_id:");
    let out = Command::new("bpftool")
        .args(["map", "show", "-j"])
        .output()
        .expect("bpftool");
    let maps: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    maps.iter()
        .filter(|m| m["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|m| {
            Some((
                m["name"].as_str()?.to_owned(),
                (
                    m["bytes_memlock"].as_u64().unwrap_or(0),
                    m["max_entries"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect()
}

/// The map-memory table: the agent's maps by `bpftool map show`, against
/// `sgpath::ebpf::memory`'s formula on this machine's CPUs, and the formula at 192.
fn map_memory(pid: u32) -> String {
    use sgpath::ebpf::{memory, paths::MapSizes};
    let measured = agent_maps(pid);
    let cpus = possible_cpus();
    let sizes = MapSizes::default();
    // The agent sized IFACES to the node's ifindexes; the formula takes its entries.
    let slots = measured.get("IFACES").map_or(4096, |m| m.1) as u32;
    let specs = memory::maps(&sizes, slots);
    let mut t = Table::new(&[
        "map",
        "entries",
        "bpftool memlock, bytes",
        "formula, bytes",
        "formula at 192 CPUs",
    ]);
    let (mut sum_m, mut sum_f) = (0, 0);
    for spec in &specs {
        // The kernel keeps 15 characters of a map's name.
        let key: String = spec.name.chars().take(15).collect();
        let m = measured.get(&key).map_or(0, |m| m.0);
        let f = spec.bytes(cpus);
        sum_m += m;
        sum_f += f;
        t.row(
            &[
                format!("`{}`", spec.name),
                spec.entries.to_string(),
                m.to_string(),
                f.to_string(),
                spec.bytes(192).to_string(),
            ],
            "",
            Goal::None,
        );
    }
    let others: u64 = measured
        .iter()
        .filter(|(n, _)| !specs.iter().any(|s| s.name.starts_with(n.as_str())))
        .map(|(_, m)| m.0)
        .sum();
    let ratio = sum_m as f64 / sum_f as f64;
    t.row(
        &[
            "all (and the object's data sections)".into(),
            String::new(),
            format!(
                "{} ({:.2} MiB)",
                sum_m + others,
                (sum_m + others) as f64 / 1048576.0
            ),
            format!("{sum_f} ({:.2} MiB)", sum_f as f64 / 1048576.0),
            format!(
                "{:.1} MiB",
                memory::total(&sizes, slots, 192) as f64 / 1048576.0
            ),
        ],
        "formula within 10% of memlock",
        Goal::check((0.9..=1.1).contains(&ratio)),
    );
    format!(
        "BPF maps of the same agent, default sizes (`--max-paths {}`, `--max-conns {}`, \
         `--max-drop-keys {}`), {cpus} possible CPUs: `bytes_memlock` of each map the agent \
         holds (`bpftool map show -j`), against the formula of `agent/src/ebpf/memory.rs` \
         (per map type, after the kernel's `map_mem_usage`). The data sections (`.rodata`, \
         {others} bytes) are outside the formula.\n\n{}",
        sizes.paths,
        sizes.conns,
        sizes.drop_keys,
        t.markdown()
    )
}

pub fn run(node: &PodNode) -> String {
    let agent = start_agent(node);
    std::thread::sleep(Duration::from_millis(500));
    let text = map_memory(agent.pid());
    let _ = agent.terminate();
    text
}
