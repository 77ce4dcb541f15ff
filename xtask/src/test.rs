//! `cargo xtask test`: the whole test matrix. Unit tests, host integration tests (network
//! namespaces, as root), then every VM test binary inside one virtme-ng VM per kernel.
//! Prints per-stage outcomes and wall times and a per-kernel table; any failure, any kernel
//! that did not boot, or a kernel on which no test ran makes it fail.
//!
//! Side effects: runs `setup::ensure()` (may install things), cargo builds into `target/`,
//! the host tests create network namespaces, and VMs write under `target/vm/`.

use crate::{arch::Arch, cmd, kernel, setup, vm};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Tests run at once inside a VM: one per vCPU. TCG runs each vCPU on its own host thread,
/// and a lab test spends most of its time in one process at a time, so two in parallel
/// nearly halve a kernel's wall time. Safe: every test's lab has its own namespace prefix,
/// and the datapath probes only count in their own lab's namespaces.
pub const VM_TEST_THREADS: u32 = 2;

/// Integration-test targets of `sgpath-tests` that run inside the VMs.
pub const VM_TEST_TARGETS: &[&str] = &["vm", "vm_checks", "vm_plugin"];

/// Options of `cargo xtask test`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Kernels to run the VM tests on (repeatable); default: all of them.
    #[arg(long = "kernel")]
    pub kernels: Vec<String>,
    /// Skip the unit tests of sgpath and sgpath-ebpf.
    #[arg(long)]
    pub skip_unit: bool,
    /// Skip the host integration tests.
    #[arg(long)]
    pub skip_host: bool,
    /// Skip the VM tests.
    #[arg(long)]
    pub skip_vm: bool,
    /// Pass `--verbose` to vng (kernel log in target/vm/<kernel>/*/console.log).
    #[arg(long)]
    pub verbose_vm: bool,
    /// Run only tests whose name contains this (repeatable; libtest's filter), in every
    /// stage that runs tests.
    #[arg(long)]
    pub filter: Vec<String>,
}

/// Outcome of one libtest test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `... ok`
    Ok,
    /// `... FAILED`
    Failed,
    /// `... ignored`
    Ignored,
}

/// One `test NAME ... RESULT` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Test path, e.g. `kernel_boots_with_vlan_support`.
    pub name: String,
    /// What happened to it.
    pub outcome: Outcome,
    /// Its wall time, where libtest reported it (`--report-time`: `ok <1.234s>`).
    pub secs: Option<f64>,
}

/// Totals from libtest's `test result:` lines (summed over all binaries in the text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Tests passed.
    pub passed: u32,
    /// Tests failed.
    pub failed: u32,
    /// Tests ignored.
    pub ignored: u32,
    /// How many `test result:` lines were seen (one per test binary that ran).
    pub binaries: u32,
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} ignored",
            self.passed, self.failed, self.ignored
        )
    }
}

/// Parses libtest's human output (`--test-threads=1` keeps lines whole).
pub fn parse_libtest(text: &str) -> (Vec<Case>, Totals) {
    let mut cases = Vec::new();
    let mut totals = Totals::default();
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("test result: ") {
            totals.binaries += 1;
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u32 = n.parse().unwrap_or(0);
                match kind {
                    "passed" => totals.passed += n,
                    "failed" => totals.failed += n,
                    "ignored" => totals.ignored += n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, result)) = rest.split_once(" ... ")
        {
            let outcome = match result.split([',', ' ']).next() {
                Some("ok") => Outcome::Ok,
                Some("FAILED") => Outcome::Failed,
                Some("ignored") => Outcome::Ignored,
                _ => continue,
            };
            let secs = result
                .split_once('<')
                .and_then(|(_, t)| t.strip_suffix("s>"))
                .and_then(|t| t.parse().ok());
            cases.push(Case {
                name: name.to_owned(),
                outcome,
                secs,
            });
        }
    }
    (cases, totals)
}

/// One line of the final summary.
struct Stage {
    /// Its key in README's budget table ("lint", "vm 5.10", ...).
    key: String,
    name: String,
    ok: bool,
    detail: String,
    time: Duration,
    /// Share of the machine's CPU time that was busy during the stage, in percent.
    cpu: Option<f64>,
}

/// The first line of /proc/stat: all CPUs' jiffies by state (see [`vm::busy_share`]).
fn cpu_line() -> String {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(String::from))
        .unwrap_or_default()
}

/// Times one stage: prints its banner, runs `f`, and returns its summary line.
fn timed(key: &str, name: &str, f: impl FnOnce() -> (bool, String)) -> Stage {
    println!("\n==================== {name} ====================");
    let (t, cpu0) = (Instant::now(), cpu_line());
    let (ok, detail) = f();
    let time = t.elapsed();
    let cpu = vm::busy_share(&cpu0, &cpu_line());
    println!(
        "<== {name}: {} in {:.1} s",
        if ok { "ok" } else { "FAILED" },
        time.as_secs_f64()
    );
    Stage {
        key: key.into(),
        name: name.into(),
        ok,
        detail,
        time,
        cpu,
    }
}

/// Runs the matrix; errors if anything failed.
pub fn run(opts: &Options) -> Result<()> {
    let all = Instant::now();
    crate::cache::prune()?;
    let marker = crate::target_dir().join(BUILT_MARKER);
    // Warm: this machine's shared target directory holds a complete build of the workspace
    // (written after a build succeeded); cold: a new machine, or the directory was removed.
    let warm = marker.exists();
    println!(
        "target directory {} ({}; README \"Build cache\")",
        crate::target_dir().display(),
        if warm {
            "warm: built before"
        } else {
            "cold: nothing built yet"
        }
    );
    let mut stages = Vec::new();

    let setup = timed("setup", "setup", || outcome(setup::ensure()));
    let setup_ok = setup.ok;
    stages.push(setup);
    if !setup_ok {
        return summary(&stages, &[], all, warm);
    }

    if !opts.skip_unit {
        // House rules first: formatting and clippy with warnings as errors.
        stages.push(timed(
            "lint",
            "lint (fmt --check, clippy -D warnings)",
            || {
                let lint =
                    cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"])).and_then(|_| {
                        cmd::run(cmd::cargo().args([
                            "clippy",
                            "--workspace",
                            "--all-targets",
                            "--",
                            "-D",
                            "warnings",
                        ]))
                    });
                outcome(lint)
            },
        ));
    }

    let mut built = None;
    stages.push(timed(
        "build",
        "build (agent, every test target, once)",
        || match build_all() {
            Ok(b) => {
                let detail = format!(
                    "{} unit, {} host, {} VM test binaries",
                    b.unit.len(),
                    b.host.len(),
                    b.vm.len()
                );
                let _ = std::fs::write(&marker, "");
                built = Some(b);
                (true, detail)
            }
            Err(e) => (false, format!("{e:#}")),
        },
    ));
    let Some(built) = built else {
        return summary(&stages, &[], all, warm);
    };

    if !opts.skip_unit {
        stages.push(timed(
            "unit",
            "unit tests (lib and bin targets of the workspace)",
            || libtest_outcome(run_bins(&built.unit, &filters(opts, &[]))),
        ));
    }
    if !opts.skip_host {
        stages.push(timed("host", "host tests (netns) and fuzzing", || {
            libtest_outcome(run_bins(
                &built.host,
                &filters(
                    opts,
                    &[
                        "-Z",
                        "unstable-options",
                        "--report-time",
                        "--test-threads=1",
                    ],
                ),
            ))
        }));
    }
    let mut tables = Vec::new();
    if !opts.skip_vm {
        let kernels: Vec<String> = if opts.kernels.is_empty() {
            kernel::KERNELS.iter().map(|s| s.to_string()).collect()
        } else {
            opts.kernels.clone()
        };
        for short in &kernels {
            let mut table = String::new();
            stages.push(timed(
                &format!("vm {short}"),
                &format!("VM tests, kernel {short}"),
                || {
                    let (ok, detail, t) = vm_kernel(short, &built.vm, opts);
                    table = t;
                    (ok, detail)
                },
            ));
            tables.push(table);
        }
    }
    summary(&stages, &tables, all, warm)
}

/// File in the target directory that marks a completed build (see [`run`]).
const BUILT_MARKER: &str = ".sgpath-built";

/// Budget of a whole `cargo xtask test` on a machine that has run it before (a fresh clone,
/// the shared target directory warm).
pub const BUDGET_WARM: Duration = Duration::from_secs(40 * 60);
/// Budget of a whole `cargo xtask test` on a new machine (the target directory empty).
pub const BUDGET_COLD: Duration = Duration::from_secs(75 * 60);
/// A stage that takes this much more than its figure in README is reported loudly.
pub const GROWTH_WARNING: f64 = 1.20;

/// Prints the per-kernel tables, the stages against README's figures and the budget;
/// errors if a stage failed.
fn summary(stages: &[Stage], tables: &[String], all: Instant, warm: bool) -> Result<()> {
    println!("\n==================== test summary ====================");
    for table in tables {
        println!("{table}");
    }
    let figures = budget::figures(&crate::workspace_root().join("README.md"));
    if let Err(e) = &figures {
        println!("!!!!!!!! cannot read the stage figures from README: {e:#}");
    }
    let figures = figures.unwrap_or_default();
    let case = if warm { "warm" } else { "cold" };
    let figure = |key: &str| {
        figures
            .iter()
            .find(|f| f.key == key)
            .map(|f| if warm { f.warm } else { f.cold })
    };
    println!(
        "{:<46} {:<6} {:>8} {:>9} {:>5}  detail",
        "stage",
        "result",
        "time",
        format!("README {case}"),
        "cpu"
    );
    let mut grown = Vec::new();
    let total = all.elapsed();
    let rows = stages
        .iter()
        .map(|s| (s.key.as_str(), s.name.as_str(), Some(s), s.time))
        .chain(std::iter::once(("total", "total", None, total)));
    for (key, name, stage, time) in rows {
        let fig = figure(key);
        let over =
            fig.is_some_and(|f| time.as_secs_f64() > f * GROWTH_WARNING && time.as_secs() > 30);
        if over {
            grown.push(format!(
                "{name}: {:.0} s against {:.0} s in README",
                time.as_secs_f64(),
                fig.unwrap_or_default()
            ));
        }
        println!(
            "{:<46} {:<6} {:>7.1}s {:>9} {:>5}  {}{}",
            name,
            stage.map_or("", |s| if s.ok { "ok" } else { "FAILED" }),
            time.as_secs_f64(),
            fig.map(|f| format!("{f:.0}s")).unwrap_or_default(),
            stage
                .and_then(|s| s.cpu)
                .map(|c| format!("{c:.0}%"))
                .unwrap_or_default(),
            stage.map_or("", |s| s.detail.as_str()),
            if over { "  <-- GREW >20%" } else { "" }
        );
    }
    let budget = if warm { BUDGET_WARM } else { BUDGET_COLD };
    println!(
        "\nbudget ({case} target directory): {:.0} s of {:.0} s ({:.0}%)",
        total.as_secs_f64(),
        budget.as_secs_f64(),
        100.0 * total.as_secs_f64() / budget.as_secs_f64()
    );
    if total > budget {
        println!(
            "\n!!!!!!!! OVER BUDGET: {:.0} s, budget {:.0} s ({case}) !!!!!!!!",
            total.as_secs_f64(),
            budget.as_secs_f64()
        );
    }
    if !grown.is_empty() {
        println!("\n!!!!!!!! STAGES GREW MORE THAN 20% OVER README's FIGURES !!!!!!!!");
        for g in &grown {
            println!("!!!!!!!!   {g}");
        }
    }
    let failed: Vec<&str> = stages
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.name.as_str())
        .collect();
    if !failed.is_empty() {
        println!("\n!!!!!!!! TESTS FAILED: {} !!!!!!!!", failed.join(", "));
        bail!("test stages failed: {}", failed.join(", "));
    }
    println!("\nall test stages passed");
    Ok(())
}

fn outcome<T>(res: Result<T>) -> (bool, String) {
    match res {
        Ok(_) => (true, String::new()),
        Err(e) => (false, format!("{e:#}")),
    }
}

fn libtest_outcome(res: Result<(Vec<Case>, Totals)>) -> (bool, String) {
    match res {
        Ok((cases, totals)) => {
            let failed: Vec<&str> = cases
                .iter()
                .filter(|c| c.outcome == Outcome::Failed)
                .map(|c| c.name.as_str())
                .collect();
            let mut detail = totals.to_string();
            if !failed.is_empty() {
                detail.push_str(&format!(" — FAILED: {}", failed.join(", ")));
            }
            if totals.passed + totals.failed == 0 {
                detail.push_str(" (warning: no tests ran)");
            }
            // Where the stage's time goes.
            let mut timed: Vec<&Case> = cases.iter().filter(|c| c.secs.is_some()).collect();
            timed.sort_by(|a, b| {
                b.secs
                    .partial_cmp(&a.secs)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            if !timed.is_empty() {
                let top: Vec<String> = timed
                    .iter()
                    .take(3)
                    .map(|c| format!("{} {:.0} s", c.name, c.secs.unwrap_or_default()))
                    .collect();
                detail.push_str(&format!("; slowest: {}", top.join(", ")));
            }
            (totals.failed == 0, detail)
        }
        Err(e) => (false, format!("{e:#}")),
    }
}

/// `args`, then the `--filter`s.
fn filters<'a>(opts: &'a Options, args: &[&'a str]) -> Vec<&'a str> {
    args.iter()
        .copied()
        .chain(opts.filter.iter().map(String::as_str))
        .collect()
}

/// Runs test executables one after the other (cwd: their package, as `cargo test` does),
/// echoing their stdout live, and parses it. An executable that exits nonzero without a
/// failed test (a panic outside a test, a crash) is an error.
fn run_bins(bins: &[TestBin], args: &[&str]) -> Result<(Vec<Case>, Totals)> {
    let mut all_cases = Vec::new();
    let mut sum = Totals::default();
    let mut errors = Vec::new();
    for bin in bins {
        let mut cmd = Command::new(&bin.exe);
        // Per-test wall times (`ok <12.3s>`) are an unstable libtest option; RUSTC_BOOTSTRAP
        // at run time unlocks it in the stable toolchain's libtest (nothing is built with it).
        cmd.args(args)
            .current_dir(&bin.dir)
            .env("RUSTC_BOOTSTRAP", "1");
        eprintln!("+ {} ({})", cmd::display(&cmd), bin.name);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.exe.display()))?;
        let mut text = String::new();
        let stdout = child.stdout.take().context("no stdout")?;
        let mut out = std::io::stdout();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let _ = writeln!(out, "{line}");
            text.push_str(&line);
            text.push('\n');
        }
        let status = child.wait()?;
        let (cases, totals) = parse_libtest(&text);
        if !status.success() && totals.failed == 0 {
            errors.push(format!(
                "{} exited {status} before any test failed",
                bin.name
            ));
        }
        all_cases.extend(cases);
        sum.passed += totals.passed;
        sum.failed += totals.failed;
        sum.ignored += totals.ignored;
        sum.binaries += totals.binaries;
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok((all_cases, sum))
}

/// A test executable: its target, its package directory (the cwd it runs in) and its path.
#[derive(Debug, Clone)]
struct TestBin {
    /// Its target's name, e.g. `host` (`sgpath` for both the agent's lib and bin).
    name: String,
    dir: PathBuf,
    exe: PathBuf,
}

/// The test executables in cargo's JSON messages (`--message-format=json`), each with
/// whether it is an integration test (`tests/*.rs`) rather than a crate's unit tests.
fn test_executables(stdout: &[u8]) -> Vec<(TestBin, bool)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["profile"]["test"] == true)
        .filter_map(|msg| {
            let exe = msg["executable"].as_str()?;
            let dir = PathBuf::from(msg["manifest_path"].as_str()?)
                .parent()?
                .to_path_buf();
            let integration = msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
            let bin = TestBin {
                name: msg["target"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                dir,
                exe: exe.into(),
            };
            Some((bin, integration))
        })
        .collect()
}

/// Test executables by the stage that runs them.
struct Built {
    unit: Vec<TestBin>,
    host: Vec<TestBin>,
    vm: Vec<TestBin>,
}

/// Integration-test targets of `sgpath-tests` run on the host (network namespaces, root).
pub const HOST_TEST_TARGETS: &[&str] = &["host", "fuzz"];

/// One build for everything the stages run: the agent binary, and every lib, bin and
/// integration test target of the workspace, in one cargo invocation. One invocation is one
/// feature set and one profile, so no stage compiles what another compiled.
fn build_all() -> Result<Built> {
    let mut build = cmd::cargo();
    build.args([
        "build",
        "--workspace",
        "--lib",
        "--bins",
        "--tests",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("+ {}", cmd::display(&build));
    // Cargo's progress and diagnostics go to stderr (live); the JSON messages to stdout.
    let out = build.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("the build failed ({})", out.status);
    }
    let mut built = Built {
        unit: Vec::new(),
        host: Vec::new(),
        vm: Vec::new(),
    };
    let mut stray = Vec::new();
    for (bin, integration) in test_executables(&out.stdout) {
        let target = bin.name.as_str();
        if integration {
            if HOST_TEST_TARGETS.contains(&target) {
                built.host.push(bin);
            } else if VM_TEST_TARGETS.contains(&target) {
                built.vm.push(bin);
            } else {
                stray.push(bin.name);
            }
        } else {
            built.unit.push(bin);
        }
    }
    if !stray.is_empty() {
        bail!(
            "integration tests that no stage runs (add them to HOST_TEST_TARGETS or \
             VM_TEST_TARGETS): {}",
            stray.join(", ")
        );
    }
    for t in HOST_TEST_TARGETS.iter().chain(VM_TEST_TARGETS) {
        if !built.host.iter().chain(&built.vm).any(|b| b.name == *t) {
            bail!("cargo reported no executable for test target {t}");
        }
    }
    Ok(built)
}

/// The VPC CNI release that plumbs the labs of the VM tests on kernel `short`: on 5.10
/// (Amazon Linux 2's series, the era of v1.7) v1.7.10, where `Lab::build` falls back to the
/// current release for standard-mode labs (v1.7 has no standard mode); the current release
/// on 6.1 and 6.12 (Amazon Linux 2023's). `vm_plugin` runs both releases on every kernel.
pub fn cni_release_for_kernel(short: &str) -> crate::cni_plugin::Release {
    if short == "5.10" {
        crate::cni_plugin::SEED_ERA
    } else {
        crate::cni_plugin::CURRENT
    }
}

/// The VM tests the arm64 stage runs, by test target, each name exact. Under TCG an arm64
/// guest runs 3-4x slower than an x86_64 one, so the stage runs the tests that prove the
/// agent works on arm64 rather than the whole matrix (whose logic is architecture-neutral
/// and runs on three x86_64 kernels): the probes load and count a branch pod's and an
/// ordinary pod's traffic exactly, forwarded and dropped with reasons
/// (`observe_counts_exact_packets_per_path`); `inspect` finds every path kind on a VLAN
/// node (`inspect_mixed_node_gives_exactly_its_paths`) and raises nothing on the healthy
/// default lab (`healthy_default_lab_has_no_warning_or_error`); every drop reason of the arm64
/// kernel has a class (`drop_reasons_are_all_classified`); the agent serves `/readyz`,
/// `/v1/report` and `/metrics` with exact counts (`agent_serves_metrics_and_readyz`).
pub const ARM64_TESTS: &[(&str, &[&str])] = &[
    (
        "vm",
        &[
            "inspect_mixed_node_gives_exactly_its_paths",
            "observe_counts_exact_packets_per_path",
            "drop_reasons_are_all_classified",
            "agent_serves_metrics_and_readyz",
        ],
    ),
    (
        "vm_checks",
        &["healthy_default_lab_has_no_warning_or_error"],
    ),
];

/// Runs every VM test binary in one VM on `short`; returns the stage line and a table.
fn vm_kernel(short: &str, bins: &[TestBin], opts: &Options) -> (bool, String, String) {
    let kernel = match kernel::get(short) {
        Ok(k) => k,
        Err(e) => return vm_failed(short, format!("{e:#}")),
    };
    if kernel.arch() != Arch::NATIVE {
        return vm_kernel_foreign(&kernel, opts);
    }
    let filters: Vec<String> = opts.filter.clone();
    let script = vm_script(bins, &filters);
    let vm_opts = vm::VmOptions {
        env: vec![
            (
                "SGPATH_BIN".into(),
                crate::sgpath_bin().to_string_lossy().into(),
            ),
            ("RUST_BACKTRACE".into(), "1".into()),
            // Who plumbs the labs' pods (see cni_release_for_kernel).
            (
                crate::lab::CNI_ENV.into(),
                cni_release_for_kernel(short).version.into(),
            ),
        ],
        verbose: opts.verbose_vm,
        // Every VM test of one kernel in one boot; TCG on 2 shared cores. 5.10 takes about
        // 670 s alone (35 tests) and passed all of them in over 1200 s on a busy machine.
        timeout: Duration::from_secs(1800),
        binaries: std::iter::once(crate::sgpath_bin())
            .chain(bins.iter().map(|b| b.exe.clone()))
            // The VPC CNI plugin and fake ipamd of every pinned release (vm_plugin's labs).
            .chain(
                crate::cni_plugin::RELEASES
                    .iter()
                    .flat_map(|r| [r.plugin(), r.fake_ipamd()]),
            )
            .collect(),
        // The security-group verdict test reads the lab's groups from moto.
        moto: true,
        ..Default::default()
    };
    let out = match vm::run_with(&kernel, &script, &vm_opts) {
        Ok(out) => out,
        Err(e) => {
            return vm_failed(
                short,
                format!("KERNEL {short} DID NOT RUN THE TESTS: {e:#}"),
            );
        }
    };
    let head = format!(
        "kernel {short} (release {}, pods plumbed by VPC CNI {})",
        out.release,
        cni_release_for_kernel(short).version
    );
    vm_table(short, &head, &out, bins, Vec::new())
}

fn vm_failed(short: &str, detail: String) -> (bool, String, String) {
    let table = format!("kernel {short}: !!!!!!!! {detail}\n");
    println!("{table}");
    (false, detail, table)
}

/// The guest script running each of `bins` with libtest `args`, each binary's output and
/// status into the shared directory.
fn vm_script(bins: &[TestBin], args: &[String]) -> String {
    let mut script = String::from("status=0\n");
    for b in bins {
        // Per-test wall times (`ok <12.3s>`) are an unstable libtest option; RUSTC_BOOTSTRAP
        // at run time unlocks it in the stable toolchain's libtest (nothing is built with it).
        script.push_str(&format!(
            "echo '### {name}'\n\
             RUSTC_BOOTSTRAP=1 {exe} -Z unstable-options --report-time --test-threads={VM_TEST_THREADS}{args} > \"$SGPATH_VM_DIR/{name}.out\" 2>&1\n\
             s=$?; echo $s > \"$SGPATH_VM_DIR/{name}.status\"; [ $s -eq 0 ] || status=1\n",
            name = b.name,
            exe = vm::shell_quote(&b.exe.to_string_lossy()),
            args = args
                .iter()
                .map(|f| format!(" {}", vm::shell_quote(f)))
                .collect::<String>(),
        ));
    }
    script.push_str("exit $status\n");
    script
}

/// The arm64 stage: cross-builds the release `sgpath` (the image's linux/arm64 binary, the
/// very file) and the VM test binaries for the kernel's architecture, boots the kernel under
/// qemu ([`crate::vm_arm64`]) and runs [`ARM64_TESTS`] (narrowed by `--filter`).
fn vm_kernel_foreign(kernel: &kernel::Kernel, opts: &Options) -> (bool, String, String) {
    let short = kernel.short.as_str();
    let arch = kernel.arch();
    let t = Instant::now();
    let built = crate::image::build_binaries(arch).and_then(|_| cross_test_bins(arch));
    let bins = match built {
        Ok(b) => b,
        Err(e) => return vm_failed(short, format!("{arch} build failed: {e:#}")),
    };
    let build_secs = t.elapsed().as_secs_f64();
    let sgpath = crate::image::binary_path(arch);
    let mut args = vec!["--exact".to_owned()];
    let mut wanted = 0;
    for (target, names) in ARM64_TESTS {
        for name in names.iter() {
            let filtered =
                opts.filter.is_empty() || opts.filter.iter().any(|f| name.contains(f.as_str()));
            if filtered && bins.iter().any(|b| b.name == *target) {
                args.push((*name).to_owned());
                wanted += 1;
            }
        }
    }
    if wanted == 0 {
        return vm_failed(
            short,
            format!(
                "no test of {ARM64_TESTS:?} matches --filter {:?}",
                opts.filter
            ),
        );
    }
    let script = vm_script(&bins, &args);
    let release = cni_release_for_kernel(kernel.series());
    let vm_opts = vm::VmOptions {
        env: vec![
            ("SGPATH_BIN".into(), sgpath.to_string_lossy().into()),
            ("RUST_BACKTRACE".into(), "1".into()),
            (crate::lab::CNI_ENV.into(), release.version.into()),
        ],
        memory: "2G".into(),
        timeout: Duration::from_secs(1200),
        binaries: std::iter::once(sgpath.clone())
            .chain(bins.iter().map(|b| b.exe.clone()))
            .chain([release.plugin_for(arch), release.fake_ipamd_for(arch)])
            .collect(),
        ..Default::default()
    };
    let out = match crate::vm_arm64::run_with(kernel, &script, &vm_opts) {
        Ok(out) => out,
        Err(e) => {
            return vm_failed(
                short,
                format!("KERNEL {short} ({arch}) DID NOT RUN THE TESTS: {e:#}"),
            );
        }
    };
    let mut problems = Vec::new();
    let sum = match sha256(&sgpath) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("{e:#}"));
            String::new()
        }
    };
    // "Done when: the image's arm64 binary is the one the arm64 VM stage ran."
    let image = crate::image::layout_dir();
    let image_note = if image.join("index.json").is_file() {
        let extracted =
            crate::vm::vm_dir(short).join(format!("image-sgpath-{}", std::process::id()));
        let same = crate::image::extract(
            &image,
            crate::image::tag(),
            arch,
            crate::image::ENTRYPOINT,
            &extracted,
        )
        .and_then(|_| sha256(&extracted));
        let _ = std::fs::remove_file(&extracted);
        match same {
            Ok(s) if s == sum => format!(
                "the image's linux/{arch} {} is this binary",
                crate::image::ENTRYPOINT
            ),
            Ok(s) => {
                let note = format!(
                    "the image's linux/{arch} {} (sha256 {s}) is NOT this binary: `cargo xtask image` is stale",
                    crate::image::ENTRYPOINT
                );
                println!("!!!!!!!! {note}");
                problems.push(note.clone());
                note
            }
            Err(e) => format!("the image's linux/{arch} binary unreadable: {e:#}"),
        }
    } else {
        "no image under target/image to compare with (cargo xtask image)".to_owned()
    };
    let head = format!(
        "kernel {short} ({arch}, release {}, qemu TCG {}, pods plumbed by VPC CNI {}): {arch} build \
         {build_secs:.1} s; sgpath sha256 {sum} ({image_note})",
        out.release,
        crate::vm_arm64::QEMU,
        release.version
    );
    vm_table(short, &head, &out, &bins, problems)
}

/// sha256 (hex) of a file.
fn sha256(path: &std::path::Path) -> Result<String> {
    Ok(cmd::output(Command::new("sha256sum").arg(path))?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// Builds the VM test targets of [`ARM64_TESTS`] for `arch` (cross, musl: static, they run in
/// the guest's own root); returns their executables.
fn cross_test_bins(arch: Arch) -> Result<Vec<TestBin>> {
    let mut build = cmd::cargo();
    build.args([
        "build",
        "--target",
        arch.musl_target(),
        "-p",
        "sgpath-tests",
        "--message-format=json-render-diagnostics",
    ]);
    for (target, _) in ARM64_TESTS {
        build.args(["--test", target]);
    }
    crate::image::musl_build(&mut build, arch);
    eprintln!("+ {}", cmd::display(&build));
    let out = build.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("the {arch} build of the VM tests failed ({})", out.status);
    }
    let bins: Vec<TestBin> = test_executables(&out.stdout)
        .into_iter()
        .filter(|(b, _)| ARM64_TESTS.iter().any(|(t, _)| *t == b.name))
        .map(|(b, _)| b)
        .collect();
    for (t, _) in ARM64_TESTS {
        if !bins.iter().any(|b| b.name == *t) {
            bail!("cargo reported no {arch} executable for test target {t}");
        }
    }
    Ok(bins)
}

/// The per-kernel table of one VM run: its head line, timings, each test's result; the stage
/// line. `problems` so far are added to what the run shows.
fn vm_table(
    short: &str,
    head: &str,
    out: &vm::VmOutput,
    bins: &[TestBin],
    mut problems: Vec<String>,
) -> (bool, String, String) {
    let mut table = format!(
        "{head}: boot {:.1} s, prepare {:.1} s, \
         tests {:.1} s (guest CPUs {} busy), VM wall {:.1} s\n",
        out.boot.unwrap_or_default().as_secs_f64(),
        out.prepare.unwrap_or_default().as_secs_f64(),
        out.script.unwrap_or_default().as_secs_f64(),
        out.guest_cpu
            .map(|c| format!("{c:.0}%"))
            .unwrap_or_else(|| "?".into()),
        out.wall.as_secs_f64()
    );
    table.push_str(&format!("  {:<10} {:<50} result\n", "binary", "test"));
    let mut sum = Totals::default();
    for b in bins {
        let text =
            std::fs::read_to_string(out.rwdir.join(format!("{}.out", b.name))).unwrap_or_default();
        let status = std::fs::read_to_string(out.rwdir.join(format!("{}.status", b.name)));
        let (cases, totals) = parse_libtest(&text);
        for c in &cases {
            let result = match c.outcome {
                Outcome::Ok => "ok",
                Outcome::Failed => "FAILED",
                Outcome::Ignored => "ignored",
            };
            let secs = c.secs.map(|t| format!("{t:7.1} s")).unwrap_or_default();
            table.push_str(&format!(
                "  {:<10} {:<50} {result:<7} {secs}\n",
                b.name, c.name
            ));
        }
        let exited_0 = matches!(status.as_deref().map(str::trim), Ok("0"));
        match status.as_deref().map(str::trim) {
            Ok("0") => {}
            Ok(s) => problems.push(format!("{} exited {s}", b.name)),
            Err(_) => problems.push(format!("{} never finished", b.name)),
        }
        if totals.failed > 0 || !exited_0 {
            println!("--- {} output on kernel {short} ---\n{text}", b.name);
        }
        sum.passed += totals.passed;
        sum.failed += totals.failed;
        sum.ignored += totals.ignored;
        sum.binaries += totals.binaries;
    }
    table.push_str(&format!("  total: {sum}\n"));
    if sum.passed + sum.failed == 0 {
        problems.push("NO TESTS RAN".into());
    }
    if !out.success() && problems.is_empty() {
        problems.push(format!(
            "script exited {}: {}",
            out.status,
            out.output.trim()
        ));
    }
    let ok = problems.is_empty() && sum.failed == 0;
    if !ok {
        table.push_str(&format!(
            "  !!!!!!!! kernel {short}: {}\n",
            problems.join("; ")
        ));
    }
    println!("{table}");
    let mut detail = format!("{}: {sum}", out.release);
    if !problems.is_empty() {
        detail.push_str(&format!(" — {}", problems.join("; ")));
    }
    (ok, detail, table)
}

/// The committed stage figures: README's table between `<!-- ci-figures -->` and
/// `<!-- /ci-figures -->`, one row per stage key with its warm and cold seconds.
mod budget {
    use anyhow::{Context, Result, bail};
    use std::path::Path;

    /// One row: `| vm 5.10 | 420 | 450 |`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Figure {
        pub key: String,
        pub warm: f64,
        pub cold: f64,
    }

    pub fn figures(readme: &Path) -> Result<Vec<Figure>> {
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("cannot read {}", readme.display()))?;
        parse(&text)
    }

    pub fn parse(text: &str) -> Result<Vec<Figure>> {
        let (_, rest) = text
            .split_once("<!-- ci-figures -->")
            .context("no <!-- ci-figures --> marker")?;
        let (table, _) = rest
            .split_once("<!-- /ci-figures -->")
            .context("no <!-- /ci-figures --> marker")?;
        let mut figures = Vec::new();
        for line in table.lines().filter(|l| l.trim_start().starts_with('|')) {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let [key, warm, cold, ..] = cells[..] else {
                continue;
            };
            let (Ok(warm), Ok(cold)) = (warm.parse(), cold.parse()) else {
                continue; // the header and the separator
            };
            figures.push(Figure {
                key: key.to_owned(),
                warm,
                cold,
            });
        }
        if figures.is_empty() {
            bail!("the ci-figures table has no rows");
        }
        Ok(figures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_output() {
        let text = "\nrunning 3 tests\ntest a::b ... ok <12.345s>\ntest c ... FAILED\n\
                    test d ... ignored, needs root\n\nfailures:\n\n\
                    test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n";
        let (cases, totals) = parse_libtest(text);
        assert_eq!(
            cases.iter().map(|c| c.outcome).collect::<Vec<_>>(),
            [Outcome::Ok, Outcome::Failed, Outcome::Ignored]
        );
        assert_eq!(cases[0].name, "a::b");
        assert_eq!(
            cases.iter().map(|c| c.secs).collect::<Vec<_>>(),
            [Some(12.345), None, None]
        );
        assert_eq!(
            totals,
            Totals {
                passed: 1,
                failed: 1,
                ignored: 1,
                binaries: 1
            }
        );
    }

    #[test]
    fn parses_readme_figures() {
        let text = "x\n<!-- ci-figures -->\n| stage | warm, s | cold, s |\n|---|---|---|\n\
                    | lint | 60 | 400 |\n| vm 5.10 | 420.5 | 450 |\n<!-- /ci-figures -->\n| no | 1 | 2 |\n";
        let f = budget::parse(text).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[1].key.as_str(), f[1].warm, f[1].cold),
            ("vm 5.10", 420.5, 450.0)
        );
        assert!(budget::parse("no markers").is_err());
    }
}
