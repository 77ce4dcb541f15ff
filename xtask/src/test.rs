//! `cargo xtask test`: the whole test matrix. Unit tests, host integration tests (network
//! namespaces, as root), then every VM test binary inside one virtme-ng VM per kernel.
//! Prints per-stage outcomes and wall times and a per-kernel table; any failure, any kernel
//! that did not boot, or a kernel on which no test ran makes it fail.
//!
//! Side effects: runs `setup::ensure()` (may install things), cargo builds into `target/`,
//! the host tests create network namespaces, and VMs write under `target/vm/`.

use crate::{cmd, kernel, setup, vm};
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
pub const VM_TEST_TARGETS: &[&str] = &["vm", "vm_checks"];

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
    name: String,
    ok: bool,
    detail: String,
    time: Duration,
}

/// Runs the matrix; errors if anything failed.
pub fn run(opts: &Options) -> Result<()> {
    let all = Instant::now();
    let mut stages = Vec::new();

    let t = Instant::now();
    let setup_res = setup::ensure();
    stages.push(stage("setup", &setup_res, "", t));
    setup_res?;

    if !opts.skip_unit {
        // House rules first: formatting and clippy with warnings as errors.
        let t = Instant::now();
        println!("\n==================== lint ====================");
        let lint = cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"])).and_then(|_| {
            cmd::run(cmd::cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        });
        stages.push(stage(
            "lint (fmt --check, clippy -D warnings)",
            &lint,
            "",
            t,
        ));
        let t = Instant::now();
        let res = cargo_tests(
            "unit tests",
            // `--workspace`, as every build of this command: cargo resolves features per
            // set of packages, and `-p sgpath` alone would build every dependency (the
            // kube crates too) a second time with other features.
            cmd::cargo().args(["test", "--workspace", "--lib", "--bins"]),
        );
        stages.push(libtest_stage(
            "unit tests (lib and bin targets of the workspace)",
            res,
            t,
        ));
    }
    if !opts.skip_host {
        let t = Instant::now();
        // Host tests run the `sgpath` binary (tests/src/lib.rs::sgpath_bin): build it first.
        let res = cmd::run(cmd::cargo().args(["build", "--workspace", "--bins"])).and_then(|_| {
            cargo_tests(
                "host tests",
                cmd::cargo().args([
                    "test",
                    "-p",
                    "sgpath-tests",
                    "--test",
                    "host",
                    // Fuzz targets (tests/tests/fuzz.rs): seconds each, the HTTP one needs
                    // root and a namespace like the host tests.
                    "--test",
                    "fuzz",
                    "--",
                    "--test-threads=1",
                ]),
            )
        });
        stages.push(libtest_stage("host tests (netns)", res, t));
    }
    let mut tables = Vec::new();
    if !opts.skip_vm {
        let t = Instant::now();
        let built = build_vm_tests();
        let detail = match &built {
            Ok(bins) => format!("{} VM test binaries", bins.len()),
            Err(_) => String::new(),
        };
        stages.push(stage("build agent + VM tests", &built, &detail, t));
        if let Ok(bins) = built {
            let kernels: Vec<String> = if opts.kernels.is_empty() {
                kernel::KERNELS.iter().map(|s| s.to_string()).collect()
            } else {
                opts.kernels.clone()
            };
            for short in &kernels {
                let t = Instant::now();
                let (stage, table) = vm_kernel(short, &bins, opts);
                stages.push(Stage {
                    time: t.elapsed(),
                    ..stage
                });
                tables.push(table);
            }
        }
    }

    println!("\n==================== test summary ====================");
    for table in &tables {
        println!("{table}");
    }
    println!("{:<34} {:<6} {:>8}  detail", "stage", "result", "time");
    for s in &stages {
        println!(
            "{:<34} {:<6} {:>7.1}s  {}",
            s.name,
            if s.ok { "ok" } else { "FAILED" },
            s.time.as_secs_f64(),
            s.detail
        );
    }
    println!(
        "{:<34} {:<6} {:>7.1}s",
        "total",
        "",
        all.elapsed().as_secs_f64()
    );
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

fn stage<T>(name: &str, res: &Result<T>, detail: &str, t: Instant) -> Stage {
    Stage {
        name: name.into(),
        ok: res.is_ok(),
        detail: match res {
            Ok(_) => detail.into(),
            Err(e) => format!("{e:#}"),
        },
        time: t.elapsed(),
    }
}

fn libtest_stage(name: &str, res: Result<(Vec<Case>, Totals)>, t: Instant) -> Stage {
    let time = t.elapsed();
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
            Stage {
                name: name.into(),
                ok: totals.failed == 0,
                detail,
                time,
            }
        }
        Err(e) => Stage {
            name: name.into(),
            ok: false,
            detail: format!("{e:#}"),
            time,
        },
    }
}

/// Runs a `cargo test` command, echoing its stdout live, and parses that stdout. A nonzero
/// exit without any failed test (e.g. a compile error) is an error.
fn cargo_tests(what: &str, cmd: &mut Command) -> Result<(Vec<Case>, Totals)> {
    println!("\n==================== {what} ====================");
    eprintln!("+ {}", cmd::display(cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::display(cmd)))?;
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
        bail!(
            "`{}` failed ({status}) before any test failed",
            cmd::display(cmd)
        );
    }
    Ok((cases, totals))
}

/// A VM test binary: target name and host path.
#[derive(Debug, Clone)]
struct TestBin {
    name: String,
    exe: PathBuf,
}

/// Builds the agent and the VM test binaries (without running them).
fn build_vm_tests() -> Result<Vec<TestBin>> {
    println!("\n==================== build agent + VM tests ====================");
    cmd::run(cmd::cargo().args(["build", "--workspace", "--bins"]))?;
    let mut build = cmd::cargo();
    build.args([
        "test",
        "-p",
        "sgpath-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for t in VM_TEST_TARGETS {
        build.args(["--test", t]);
    }
    eprintln!("+ {}", cmd::display(&build));
    let out = build.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("building the VM tests failed ({})", out.status);
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        if let (true, Some(exe)) = (VM_TEST_TARGETS.contains(&name), msg["executable"].as_str()) {
            bins.push(TestBin {
                name: name.to_owned(),
                exe: exe.into(),
            });
        }
    }
    for t in VM_TEST_TARGETS {
        if !bins.iter().any(|b| b.name == *t) {
            bail!("cargo reported no executable for VM test target {t}");
        }
    }
    Ok(bins)
}

/// Runs every VM test binary in one VM on `short`; returns the stage line and a table.
fn vm_kernel(short: &str, bins: &[TestBin], opts: &Options) -> (Stage, String) {
    println!("\n==================== VM tests on kernel {short} ====================");
    let fail = |detail: String| {
        let table = format!("kernel {short}: !!!!!!!! {detail}\n");
        println!("{table}");
        (
            Stage {
                name: format!("VM tests, kernel {short}"),
                ok: false,
                detail,
                time: Duration::ZERO,
            },
            table,
        )
    };
    let kernel = match kernel::get(short) {
        Ok(k) => k,
        Err(e) => return fail(format!("{e:#}")),
    };
    let mut script = String::from("status=0\n");
    for b in bins {
        // Per-test wall times (`ok <12.3s>`) are an unstable libtest option; RUSTC_BOOTSTRAP
        // at run time unlocks it in the stable toolchain's libtest (nothing is built with it).
        script.push_str(&format!(
            "echo '### {name}'\n\
             RUSTC_BOOTSTRAP=1 {exe} -Z unstable-options --report-time --test-threads={VM_TEST_THREADS} > \"$SGPATH_VM_DIR/{name}.out\" 2>&1\n\
             s=$?; echo $s > \"$SGPATH_VM_DIR/{name}.status\"; [ $s -eq 0 ] || status=1\n",
            name = b.name,
            exe = vm::shell_quote(&b.exe.to_string_lossy()),
        ));
    }
    script.push_str("exit $status\n");
    let vm_opts = vm::VmOptions {
        env: vec![
            (
                "SGPATH_BIN".into(),
                crate::sgpath_bin().to_string_lossy().into(),
            ),
            ("RUST_BACKTRACE".into(), "1".into()),
        ],
        verbose: opts.verbose_vm,
        // Every VM test of one kernel in one boot; TCG on 2 shared cores. 5.10 takes about
        // 670 s alone (35 tests) and passed all of them in over 1200 s on a busy machine.
        timeout: Duration::from_secs(1800),
        binaries: std::iter::once(crate::sgpath_bin())
            .chain(bins.iter().map(|b| b.exe.clone()))
            .collect(),
        ..Default::default()
    };
    let out = match vm::run_with(&kernel, &script, &vm_opts) {
        Ok(out) => out,
        Err(e) => return fail(format!("KERNEL {short} DID NOT RUN THE TESTS: {e:#}")),
    };

    let mut table = format!(
        "kernel {short} (release {}): boot {:.1} s, tests {:.1} s, VM wall {:.1} s\n",
        out.release,
        out.boot.unwrap_or_default().as_secs_f64(),
        out.script.unwrap_or_default().as_secs_f64(),
        out.wall.as_secs_f64()
    );
    table.push_str(&format!("  {:<10} {:<50} result\n", "binary", "test"));
    let mut sum = Totals::default();
    let mut problems = Vec::new();
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
    (
        Stage {
            name: format!("VM tests, kernel {short}"),
            ok,
            detail,
            time: Duration::ZERO,
        },
        table,
    )
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
}
