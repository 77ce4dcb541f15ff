//! `cargo xtask bench`: runs every benchmark of [`sgpath_tests::bench`] on this machine's
//! own kernel and prints BENCHMARKS.md on stdout (xtask writes the file). Progress goes to
//! stderr. The sgpath binary is `$SGPATH_BIN` (xtask passes its release build).
//!
//! Side effects: see [`sgpath_tests::bench`]: namespaces `sgb-*`, the kernel's BPF run-time
//! statistics on during the cost section (only there: timing every run slows every
//! program, and the throughput sections measure what a node runs), tracefs mounted.

use std::time::Instant;

use sgpath_tests::bench::{
    attach, costs, drops, footprint, maps, packet_path, pod_node::PodNode, profile, scrape,
    section, snapshot,
};

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Whether section `key` runs: all of them, or those `$SGB_ONLY` names (comma-separated:
/// path, drops, costs, profile, maps, snapshot, scrape, footprint, attach), to work on one at a
/// time.
fn wanted(key: &str) -> bool {
    std::env::var("SGB_ONLY").map_or(true, |only| only.split(',').any(|k| k == key))
}

/// Prints a finished section at once, so an interrupted run keeps what it measured.
fn emit(text: &str) {
    use std::io::Write;
    print!("{text}");
    let _ = std::io::stdout().flush();
}

fn main() {
    let start = Instant::now();
    let bin = sgpath_tests::sgpath_bin();
    let date = utc_now();
    let header = format!(
        "# sgpath benchmarks\n\n\
         Measured by `cargo xtask bench` on {date}: kernel {} ({} CPUs, shared with other work), \
         `{}` (release build).\n\n\
         Method: every figure is the median of at least 5 runs, with the min and max in \
         parentheses. A ratio is measured in one run alternating A and B (A B A B ...) and \
         taken pair by pair, because the machine is shared and noisy, and shown as the median \
         of the pairs' ratios with its 95% confidence interval [low, high]: the sign test's \
         distribution-free interval for a median (order statistics k and n+1-k of the n \
         ratios, k the largest rank with P(Binomial(n, 1/2) < k) <= 2.5%). Pairs are added \
         until the interval lies wholly on one side of the goal: the goal column says met or \
         missed only then, and undecided when the most pairs allowed still straddle it. All traffic stays between the bench's \
         own namespaces (`sgb-*`, 10.98.0.0/16); no VLANs (this kernel has no 802.1Q).\n\n",
        sgpath::collect::kernel_release(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bin.display(),
    );
    // `SGB_BARE`: sections only (xtask appends the 8-vCPU VM's to the host's report).
    let bare = std::env::var_os("SGB_BARE").is_some();
    if !bare {
        emit(&header);
    }
    if ["path", "drops", "costs", "profile", "maps"]
        .iter()
        .any(|k| wanted(k))
    {
        let node = PodNode::new("sgb-pp", 1);
        if wanted("path") {
            emit(&section("Packet-path overhead", || packet_path::run(&node)));
        }
        if wanted("drops") {
            emit(&section("Against a peer's drop counter", || {
                drops::run(&node)
            }));
        }
        if wanted("costs") {
            let mut typed = false;
            emit(&section("Cost per packet", || {
                let m = costs::measure(&node);
                typed = costs::header_read(&m.agent) == "typed";
                costs::section(&m)
            }));
            // 5.10 and 6.1 run the helper-read programs: what they cost, natively, here.
            if typed && std::env::var_os("SGB_TCG").is_none() {
                emit(&section(
                    "Cost per packet, helper reads (`--header-read probe`)",
                    || costs::section(&costs::measure_with(&node, &["--header-read", "probe"])),
                ));
            }
        }
        if wanted("profile") {
            emit(&section("Where the time goes", || profile::run(&node)));
            emit(&section("Where a TCP stream's time goes", || {
                profile::tcp(&node)
            }));
        }
        if wanted("maps") {
            let title = format!("BPF map memory, {} possible CPUs", maps::possible_cpus());
            emit(&section(&title, || maps::run(&node)));
        }
    }
    if wanted("snapshot") {
        emit(&section("Topology snapshot", snapshot::run));
    }
    if wanted("scrape") || wanted("footprint") || wanted("attach") {
        eprintln!("bench: laying out 250 pods ...");
        let mut node = PodNode::new("sgb-n", 250);
        if wanted("scrape") {
            emit(&section("Metrics scrape", || scrape::run(&node)));
        }
        if wanted("footprint") {
            emit(&section("Agent footprint", || footprint::run(&node)));
        }
        if wanted("attach") {
            emit(&section("Attach speed", || attach::run(&mut node)));
        }
    }
    if bare {
        return;
    }
    emit(&format!(
        "The benchmarks themselves took {:.0} s.\n",
        start.elapsed().as_secs_f64()
    ));
}
