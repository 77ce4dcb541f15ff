//! `cargo xtask`: command-line front end for the developer tasks in the `xtask` library
//! (setup, test matrix, VM runner, lab). Side effects are those of the chosen subcommand.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::time::Duration;
use xtask::{image, kernel, setup, test, vm};

/// Developer tasks for sgpath.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install everything needed (apt packages, rust-src, bpf-linker, virtme-ng, kernels).
    Setup,
    /// Run unit tests, host integration tests and VM tests on every kernel.
    Test(test::Options),
    /// Boot a kernel in a VM and run one command inside (for debugging).
    Vm {
        /// Kernel short name ("5.10", "6.1", "6.12" or "arm64-6.12").
        #[arg(long, default_value = "6.1")]
        kernel: String,
        /// Kill the VM after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Guest memory (qemu syntax).
        #[arg(long, default_value = "1G")]
        memory: String,
        /// Pass --verbose to vng (kernel log in target/vm/<kernel>/*/console.log).
        #[arg(long)]
        verbose: bool,
        /// A host binary the command runs (repeatable): on the x86_64 VMs' fast disk, in the
        /// arm64 VM's root at its host path (that guest does not see the host's files).
        #[arg(long = "binary")]
        binaries: Vec<std::path::PathBuf>,
        /// Environment variable NAME=VALUE for the command (repeatable).
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Command and arguments to run in the guest (as root, cwd = workspace root).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Boot a VM, build the EKS node lab in it (default: the seed scenario) and run
    /// `sgpath inspect` (or the given sgpath arguments, or --shell) in the node.
    Lab(xtask::lab::command::Args),
    /// Run the benchmarks (packet path, drops, cost per packet here and in a VM per kernel,
    /// profiles, map memory, snapshot, scrape, footprint, attach); writes BENCHMARKS.md.
    Bench {
        /// Only these sections (comma-separated: the bench's `path`, `drops`, `costs`,
        /// `profile`, `maps`, `snapshot`, `scrape`, `footprint`, `attach`, and `kernels` for
        /// the per-kernel cost VMs), printed on stdout; BENCHMARKS.md is left alone.
        #[arg(long, value_name = "SECTIONS")]
        only: Option<String>,
    },
    /// Build the static `sgpath` and `kubectl-sgpath` (musl) and the OCI image holding both
    /// (umoci, no daemon) under target/image/, the one deploy/agent/daemonset.yaml runs;
    /// prints its digest and size. Writes the plugin's release files (binary, krew tarball,
    /// their sha256, the filled krew manifest) to target/release-artifacts/.
    Image,
    /// Inside the lab VM: build the lab and run the command (used by `lab`).
    #[command(hide = true)]
    LabGuest(xtask::lab::command::GuestArgs),
    /// For qemu's `guestfwd`: pipe stdin and stdout to a TCP connection to ADDR (the
    /// host's moto, for a VM guest).
    #[command(hide = true)]
    RelayStdio { addr: String },
}

fn main() {
    // Print the error chain ourselves: anyhow's Debug form adds a backtrace under
    // RUST_BACKTRACE=1, which buries the message.
    if let Err(e) = run(Cli::parse().command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Cmd) -> Result<()> {
    match command {
        Cmd::Setup => setup::run(),
        Cmd::Test(opts) => test::run(&opts),
        Cmd::Vm {
            kernel,
            timeout,
            memory,
            verbose,
            binaries,
            env,
            command,
        } => {
            setup::ensure()?;
            let script: Vec<String> = command.iter().map(|a| vm::shell_quote(a)).collect();
            let opts = vm::VmOptions {
                timeout: Duration::from_secs(timeout),
                memory,
                verbose,
                binaries,
                env,
                ..Default::default()
            };
            run_vm(&kernel, &script.join(" "), &opts)
        }
        Cmd::Lab(args) => xtask::lab::command::run(args),
        Cmd::Bench { only } => bench(only.as_deref()),
        Cmd::Image => {
            setup::ensure()?;
            image::run()
        }
        Cmd::LabGuest(args) => xtask::lab::command::guest(args),
        Cmd::RelayStdio { addr } => xtask::lab::aws::relay_stdio(&addr),
    }
}

/// `NAME=VALUE`, NAME a shell identifier.
fn parse_env(s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("{s:?} is not NAME=VALUE"))?;
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("{k:?} is not a variable name");
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Runs `script` in a VM on `short`, prints its output and timings, fails if it failed.
fn run_vm(short: &str, script: &str, opts: &vm::VmOptions) -> Result<()> {
    let kernel = kernel::get(short)?;
    let out = if kernel.arch() == xtask::arch::Arch::NATIVE {
        vm::run_with(&kernel, script, opts)?
    } else {
        xtask::vm_arm64::run_with(&kernel, script, opts)?
    };
    print!("{}", out.output);
    eprintln!(
        "vm {short}: release {}, exit {}, boot {:.1} s, script {:.1} s, wall {:.1} s ({})",
        out.release,
        out.status,
        out.boot.unwrap_or_default().as_secs_f64(),
        out.script.unwrap_or_default().as_secs_f64(),
        out.wall.as_secs_f64(),
        out.rwdir.display()
    );
    if !out.success() {
        bail!("kernel {short}: command exited {}", out.status);
    }
    Ok(())
}

/// The map-memory VM: a second kernel's own accounting (6.12, Amazon Linux 2023's newest
/// series) for the same formula. It has the VM's 2 possible CPUs: neither qemu's
/// `maxcpus` nor the kernel's `possible_cpus=` gives this VM more, and qemu's TCG aborts
/// (`iotlb_to_section` assertion) with 8 online vCPUs on this 2-core machine. `memlock` is
/// the kernel's exact `map_mem_usage` from 6.4.
const MAPS_VM_KERNEL: &str = "6.12";

/// Floods in the per-kernel cost VMs, as a share of the host's (`SGB_SCALE`): TCG runs a
/// guest's packets tens of times slower, and ns per run needs thousands of runs, not
/// hundreds of thousands.
const VM_COST_SCALE: &str = "0.1";

/// The cost-per-packet section on each kernel users run ([`kernel::KERNELS`]: 5.10, 6.1,
/// 6.12), each in its own VM against its own floor. TCG inflates every ns; the ratio to the
/// same kernel's empty program is what carries over to a real node.
fn bench_costs_in_vms(release: &std::path::Path) -> String {
    let mut text = String::from(
        "## Cost per packet on the kernels users run\n\n\
         The cost section again in a VM per kernel: 5.10 (Amazon Linux 2's series: helper \
         reads, drops by location), 6.1 (helper reads) and 6.12 (typed reads), Debian's \
         builds under TCG (this machine has no KVM), floods at a tenth. TCG does not keep \
         the ratio to the empty program: it emulates the JIT's code instruction by \
         instruction and sends every load through its software MMU, so a program that \
         loads more than the empty one gains more time than it would on a CPU (the same \
         typed programs' ratio is 2 to 3 times the host's on 6.12). No goal is judged here. \
         What carries over is the comparison between kernels under the same emulation; the \
         native figure of the helper-read programs that 5.10 and 6.1 run is the host's \
         section with `--header-read probe` above.\n\n",
    );
    // x86_64 kernels only: the bench binary is the host's build.
    for short in kernel::KERNELS.iter().filter(|k| !k.starts_with("arm64")) {
        eprintln!("bench: cost per packet in a VM on {short} ...");
        let section = bench_costs_in_vm(release, short)
            .unwrap_or_else(|e| format!("**Not measured**: {e:#}\n\n"));
        text.push_str(&format!(
            "## Cost per packet, kernel {short} (a VM under TCG)\n\n{section}"
        ));
    }
    text
}

/// The bench's cost section (`SGB_ONLY=costs`, floods scaled by [`VM_COST_SCALE`]) in a VM
/// on `short`; its text without the heading.
fn bench_costs_in_vm(release: &std::path::Path, short: &str) -> Result<String> {
    let kernel = kernel::get(short)?;
    let (bench, sgpath) = (release.join("bench"), release.join("sgpath"));
    let script = format!(
        "SGB_ONLY=costs SGB_BARE=1 SGB_TCG=1 SGB_SCALE={VM_COST_SCALE} SGPATH_BIN={} {} > \"$SGPATH_VM_DIR/costs.md\"",
        vm::shell_quote(&sgpath.to_string_lossy()),
        vm::shell_quote(&bench.to_string_lossy()),
    );
    let opts = vm::VmOptions {
        memory: "2G".into(),
        timeout: Duration::from_secs(1800),
        binaries: vec![bench, sgpath],
        ..Default::default()
    };
    let out = vm::run_with(&kernel, &script, &opts)?;
    let text = std::fs::read_to_string(out.rwdir.join("costs.md")).unwrap_or_default();
    if !out.success() || text.is_empty() {
        bail!("the VM's script exited {}: {}", out.status, out.output);
    }
    // The section's own heading is the host's; say which kernel instead.
    let body = text
        .split_once('\n')
        .map_or(text.as_str(), |(_, rest)| rest)
        .trim_start();
    Ok(format!(
        "Release {}, floods at {VM_COST_SCALE} of the host's.\n\n{body}\n",
        out.release
    ))
}

/// The bench's map-memory section run in a VM on [`MAPS_VM_KERNEL`].
fn bench_maps_in_vm(release: &std::path::Path) -> Result<String> {
    let kernel = kernel::get(MAPS_VM_KERNEL)?;
    let (bench, sgpath) = (release.join("bench"), release.join("sgpath"));
    let script = format!(
        "SGB_ONLY=maps SGB_BARE=1 SGPATH_BIN={} {} > \"$SGPATH_VM_DIR/maps.md\"",
        vm::shell_quote(&sgpath.to_string_lossy()),
        vm::shell_quote(&bench.to_string_lossy()),
    );
    let opts = vm::VmOptions {
        memory: "2G".into(),
        timeout: Duration::from_secs(900),
        binaries: vec![bench, sgpath],
        ..Default::default()
    };
    eprintln!("bench: map memory in a VM on {MAPS_VM_KERNEL} ...");
    let failed = |why: String| {
        format!("## BPF map memory (a VM on {MAPS_VM_KERNEL})\n\n**Not measured**: {why}\n\n")
    };
    let out = match vm::run_with(&kernel, &script, &opts) {
        Ok(out) => out,
        Err(e) => return Ok(failed(format!("{e:#}"))),
    };
    let text = std::fs::read_to_string(out.rwdir.join("maps.md")).unwrap_or_default();
    if !out.success() || text.is_empty() {
        return Ok(failed(format!("the VM's script exited {}", out.status)));
    }
    Ok(text.replacen(
        "possible CPUs",
        &format!("possible CPUs (a VM on kernel {})", out.release),
        1,
    ))
}

/// What `cargo xtask bench --only` takes: the bench binary's sections (`$SGB_ONLY`) and
/// `kernels`, the per-kernel cost VMs.
const BENCH_SECTIONS: &[&str] = &[
    "path",
    "drops",
    "costs",
    "profile",
    "maps",
    "snapshot",
    "scrape",
    "footprint",
    "attach",
    "kernels",
];

/// The fleet simulation's section of BENCHMARKS.md (from its heading to the end), which
/// `cargo test -p sgpath --lib simulated_fleet` writes and checks, not the bench: kept as is.
fn fleet_section(benchmarks: &str) -> &str {
    benchmarks
        .find("## Fleet simulation")
        .map_or("", |at| &benchmarks[at..])
}

/// `cargo xtask bench`: build sgpath and the bench binary in release, run the bench
/// against that sgpath (`SGPATH_BIN`), keep its report with the whole run's wall time.
fn bench(only: Option<&str>) -> Result<()> {
    // A misspelt section would otherwise run nothing, silently, after the release build.
    if let Some(bad) = only.and_then(|o| o.split(',').find(|s| !BENCH_SECTIONS.contains(s))) {
        bail!("bench --only: unknown section {bad:?}; known are {BENCH_SECTIONS:?}");
    }
    let start = std::time::Instant::now();
    setup::ensure()?;
    // Two builds, not one: built together, cargo would unify the two packages' features
    // and rebuild both from scratch whenever either is built alone.
    xtask::cmd::run(xtask::cmd::cargo().args(["build", "--release", "-p", "sgpath"]))?;
    xtask::cmd::run(xtask::cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "sgpath-tests",
        "--bin",
        "bench",
    ]))?;
    let built = start.elapsed();
    let release = xtask::target_dir().join("release");
    let exe = release.join("bench");
    if let Some(only) = only {
        let kernels = only.split(',').any(|s| s == "kernels");
        let host: Vec<&str> = only.split(',').filter(|s| *s != "kernels").collect();
        if !host.is_empty() {
            let status = std::process::Command::new(&exe)
                .env("SGPATH_BIN", release.join("sgpath"))
                .env("SGB_ONLY", host.join(","))
                .env("SGB_BARE", "1")
                .stdin(std::process::Stdio::null())
                .status()
                .with_context(|| format!("cannot start {}", exe.display()))?;
            if !status.success() {
                bail!("{} failed ({status})", exe.display());
            }
        }
        if kernels {
            print!("{}", bench_costs_in_vms(&release));
        }
        return Ok(());
    }
    // Progress on stderr as it goes; the report on stdout.
    let out = std::process::Command::new(&exe)
        .env("SGPATH_BIN", release.join("sgpath"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", exe.display(), out.status);
    }
    let mut report = String::from_utf8_lossy(&out.stdout).into_owned();
    report.push_str(&bench_maps_in_vm(&release)?);
    report.push_str(&bench_costs_in_vms(&release));
    let report = format!(
        "{report}\nThe whole `cargo xtask bench` took {:.0} s of wall time ({:.0} s of it setup \
         and the release build).\n",
        start.elapsed().as_secs_f64(),
        built.as_secs_f64()
    );
    print!("{report}");
    let path = xtask::workspace_root().join("BENCHMARKS.md");
    let kept = std::fs::read_to_string(&path)
        .map(|old| fleet_section(&old).to_owned())
        .unwrap_or_default();
    std::fs::write(&path, format!("{report}\n{kept}"))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
