//! Boots the arm64 kernel under `qemu-system-aarch64` with software emulation (TCG, `-M virt`,
//! a Neoverse N1 CPU: Graviton2's core) and runs a bash script inside, as [`crate::vm`] does
//! for x86_64 with virtme-ng, which cannot share the host's x86_64 root with an arm64 guest.
//!
//! The guest boots from two concatenated initramfs archives: the cached arm64 root
//! ([`crate::guest_root`]) and this run's own, holding the script, the caller's binaries and
//! the workspace, each at its host path (the test binaries find them where they were built).
//! The shared directory `target/vm/<kernel>/<pid>-<n>/` is mounted over 9p at the same path:
//! the guest writes the script's output, exit status and timings there, as under virtme-ng,
//! so whatever a hung guest wrote before it was killed survives. The console goes to
//! `console.log` beside them. A run without a status file is an error naming the kernel.
//!
//! Side effects: creates that directory and the run's archive in it (deleted after the run),
//! runs qemu in its own process group and kills that group on timeout.

use crate::{
    cmd,
    kernel::Kernel,
    vm::{self, VmOptions, VmOutput},
};
use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The qemu binary (Debian's qemu-system-arm).
pub const QEMU: &str = "qemu-system-aarch64";

/// The 9p mount tag of the shared directory.
const SHARE_TAG: &str = "sgpath";

/// Boots `kernel` (an arm64 one) and runs `script` (bash, cwd = workspace root, as root).
/// `opts.binaries` are placed in the guest at their host paths; `opts.moto` is not supported
/// (the arm64 guest has no network to the host).
///
/// Returns `Ok` whenever the script ran to completion, whatever its exit status; errors if
/// qemu could not start, timed out, or the guest never wrote the script's status.
pub fn run_with(kernel: &Kernel, script: &str, opts: &VmOptions) -> Result<VmOutput> {
    kernel.check()?;
    if opts.moto {
        bail!(
            "kernel {}: the arm64 VM has no moto (no network to the host)",
            kernel.short
        );
    }
    cmd::which(QEMU).with_context(|| {
        format!("{QEMU} not found (Debian qemu-system-arm): run `cargo xtask setup`")
    })?;
    let root = crate::guest_root::ensure(kernel)?;
    let dir = vm::fresh_dir(&kernel.short)?;
    std::fs::write(dir.join("script.sh"), script)?;
    let initrd = dir.join("initrd.cpio");
    run_archive(&root, &initrd, kernel, &dir, opts)?;
    let console_path = dir.join("console.log");

    let mut append = vec![
        "console=ttyAMA0".to_owned(),
        "rdinit=/init".to_owned(),
        "panic=-1".to_owned(),
        "quiet".to_owned(),
    ];
    append.extend(opts.append.iter().cloned());
    let mut qemu = Command::new(QEMU);
    qemu.args([
        "-M",
        "virt",
        "-cpu",
        "neoverse-n1",
        "-accel",
        "tcg,thread=multi",
    ])
    .args(["-smp", &opts.cpus.to_string(), "-m", &opts.memory])
    .args(["-nographic", "-no-reboot", "-nodefaults"])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", &append.join(" ")])
    .arg("-serial")
    .arg(format!("file:{}", console_path.display()))
    .arg("-virtfs")
    .arg(format!(
        "local,path={},mount_tag={SHARE_TAG},security_model=none,id={SHARE_TAG}",
        dir.display()
    ))
    .current_dir(crate::workspace_root())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .process_group(0);
    let line = cmd::display(&qemu);
    eprintln!("vm {}: + {line}", kernel.short);
    let start = Instant::now();
    let mut child = qemu
        .spawn()
        .with_context(|| format!("kernel {}: cannot start `{line}`", kernel.short))?;
    let Some(exit) = vm::wait_or_kill(&mut child, opts.timeout)? else {
        bail!(
            "kernel {} ({}, arm64): VM TIMED OUT after {} s\n{}",
            kernel.short,
            kernel.release,
            opts.timeout.as_secs(),
            vm::console_tail(&console_path)
        );
    };
    let wall = start.elapsed();
    let _ = std::fs::remove_file(&initrd);
    let mut qemu_err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut qemu_err);
    }
    if !dir.join("status").is_file() {
        bail!(
            "kernel {} ({}, arm64): VM DID NOT RUN THE SCRIPT: no status file in {} (qemu exited \
             {exit} after {:.1} s{}; did the kernel boot?)\n{}",
            kernel.short,
            kernel.release,
            dir.display(),
            wall.as_secs_f64(),
            if qemu_err.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", qemu_err.trim())
            },
            vm::console_tail(&console_path)
        );
    }
    vm::collect(kernel, &dir, wall)
}

/// This run's archive appended to the root's: `/sgpath/run.sh` (the guest side of the run),
/// the workspace (without `.git` and `target`), and `opts.binaries`, each at its host path.
fn run_archive(
    root: &Path,
    initrd: &Path,
    kernel: &Kernel,
    dir: &Path,
    opts: &VmOptions,
) -> Result<()> {
    std::fs::copy(root, initrd)
        .with_context(|| format!("cannot copy {} to {}", root.display(), initrd.display()))?;
    let file = std::fs::OpenOptions::new().append(true).open(initrd)?;
    let mut out = std::io::BufWriter::new(file);
    let mut w = crate::cpio::Writer::new(&mut out);
    w.file(
        "sgpath/run.sh",
        0o755,
        run_script(kernel, dir, opts).as_bytes(),
    )?;
    let ws = crate::workspace_root();
    let ws_name = ws.to_string_lossy().into_owned();
    w.parents(&format!("{ws_name}/x"))?;
    workspace(&mut w, &ws, &ws_name)?;
    w.parents(&format!("{}/x", dir.display()))?;
    for b in &opts.binaries {
        if !b.is_file() {
            bail!("{} is not built", b.display());
        }
        let name = b.to_string_lossy();
        w.parents(&name)?;
        w.copy(b, &name)?;
    }
    w.finish()?;
    drop(out);
    Ok(())
}

/// The workspace's files (what the tests read: lab specs, deploy manifests), without the
/// version control and build directories.
fn workspace<W: std::io::Write>(
    w: &mut crate::cpio::Writer<W>,
    dir: &Path,
    name: &str,
) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let file = e.file_name().to_string_lossy().into_owned();
        if file == ".git" || file == "target" {
            continue;
        }
        let path = e.path();
        let ft = e.file_type()?;
        let child = format!("{name}/{file}");
        if ft.is_dir() {
            w.dir(&child)?;
            workspace(w, &path, &child)?;
        } else if ft.is_file() {
            w.copy(&path, &child)?;
        }
    }
    Ok(())
}

/// The guest side of one run, run by the root's init: mounts the shared directory, loads the
/// modules, records the kernel release and timings, runs `script.sh`, writes its status.
fn run_script(kernel: &Kernel, dir: &Path, opts: &VmOptions) -> String {
    let d = vm::shell_quote(&dir.to_string_lossy());
    let root = vm::shell_quote(&crate::workspace_root().to_string_lossy());
    // The tests compare `uname -r` and the kernel's features with the series ("6.12").
    let mut env = format!(
        "export SGPATH_VM_DIR={d} SGPATH_KERNEL={}\n",
        vm::shell_quote(kernel.series())
    );
    for (k, v) in &opts.env {
        env.push_str(&format!("export {k}={}\n", vm::shell_quote(v)));
    }
    let modules = vm::GUEST_MODULES.join(" ");
    format!(
        r#"#!/bin/bash
# Generated by xtask vm_arm64: guest side of one run.
D={d}
mkdir -p "$D"
if ! modprobe -a 9pnet_virtio 9p || ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 {SHARE_TAG} "$D"; then
  echo "SGPATH-VM: cannot mount the shared directory $D over 9p"
  exit 1
fi
cat /proc/uptime > "$D/uptime-start"
uname -r > "$D/release"
{{
  modprobe -a {modules} ||
    for m in {modules}; do modprobe "$m" || echo "modprobe $m failed (builtin or absent)"; done
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
  mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
  mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug
  echo "prepared in $(cut -d' ' -f1 /proc/uptime) s of uptime"
}} > "$D/prepare.log" 2>&1
cat /proc/uptime > "$D/uptime-prepared"
{env}cd {root}
head -1 /proc/stat > "$D/stat-start"
bash "$D/script.sh" > "$D/output" 2>&1 < /dev/null
echo $? > "$D/status.tmp"
head -1 /proc/stat > "$D/stat-end"
cat /proc/uptime > "$D/uptime-end"
mv "$D/status.tmp" "$D/status"
sync
"#
    )
}
