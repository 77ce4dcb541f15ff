//! `cargo xtask setup`: installs everything building, testing and the lab need, checking each
//! piece first and printing what it did. Idempotent.
//!
//! Side effects (only for missing pieces; needs root): writes
//! `/etc/apt/sources.list.d/bookworm-backports.sources`, runs `apt-get update` and
//! `apt-get install` (qemu-system-x86 and qemu-system-arm from bookworm-backports, kmod,
//! iproute2, gcc-aarch64-linux-gnu, ...), runs `rustup component add rust-src --toolchain
//! nightly`, `rustup target add` of each architecture's musl target (the image's static
//! binaries, see [`crate::arch`]), Debian's kubernetes-client when
//! no kubectl is on PATH, builds bpf-linker with
//! `cargo +nightly install` against rustc's own libLLVM (symlinked under [`LLVM_PREFIX`]),
//! `pip install virtme-ng` and `moto[server]`, installs the VM kernels (see [`crate::kernel`])
//! and the arm64 guest's root filesystem (see [`crate::guest_root`]).

use crate::{arch::Arch, cmd, kernel};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages installed from the default suites, and what uses them:
/// `ip`/`tc` (iproute2), `nft`, busybox httpd in pods,
/// curl from the bastion, `setpriv` (util-linux) for the missing-capability test,
/// `sysctl` (procps), `sha1sum` (coreutils), modprobe (kmod) in the guests, `mke2fs`
/// (e2fsprogs) for the VMs' fast disk, `promtool` (prometheus) for the metrics and alert
/// rule tests, umoci and skopeo for `cargo xtask image`, and the benchmarks' peers (below).
pub const DEB_PACKAGES: &[&str] = &[
    "kmod",
    "iproute2",
    "nftables",
    "busybox-static",
    "curl",
    "util-linux",
    "procps",
    "coreutils",
    "e2fsprogs",
    "python3",
    "python3-pip",
    // dnsmasq's binary alone: the lab's CoreDNS. The `dnsmasq` package would add a system
    // service that starts on the host and takes port 53.
    "dnsmasq-base",
    // `promtool check metrics` on the agent's /metrics (and later a real Prometheus that
    // scrapes it in the lab VM). On a host with systemd the package also starts a
    // prometheus service on :9090; the tests never use that one.
    "prometheus",
    // `cargo xtask image`: umoci builds the OCI image without a daemon, skopeo packs it
    // into an oci-archive (and pushes it).
    "umoci",
    "skopeo",
    // `cargo xtask bench` (tests/src/bench/): iperf3 for the TCP stream, bpftrace as the
    // peer drop counter, bpftool to read the kernel's run time of each program,
    // prometheus-node-exporter as the reference scrape.
    "iperf3",
    "bpftrace",
    "bpftool",
    "prometheus-node-exporter",
    // The arm64 build (crate::arch): the C compiler of `ring` and the linker driver, and
    // the arm64 libc headers it compiles against.
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
];

/// Installed only when no `kubectl` is on PATH (the machine image's own kubectl, with
/// kustomize v5, comes first): the deploy tests render `deploy/base` with
/// `kubectl kustomize`.
pub const KUBECTL_PACKAGE: &str = "kubernetes-client";

/// Debian packages installed from bookworm-backports (the preinstalled qemu-utils is a
/// backports version; bookworm's own qemu-system-x86 conflicts with it). qemu-system-arm
/// (`qemu-system-aarch64`) boots the arm64 VM stage.
pub const BACKPORTS_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-arm"];

/// deb822 source for bookworm-backports.
pub const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";

/// Directory whose `lib/` holds symlinks to rustc's libLLVM; bpf-linker is linked against it
/// (its RUNPATH points here), so it must outlive the build.
pub const LLVM_PREFIX: &str = "/opt/sgpath-llvm";

/// bpf-linker version known to build against the nightly's LLVM 22.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything missing, as human-readable items; empty when the machine is ready. Cheap: no
/// network, no builds.
pub fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    for pkg in uninstalled_debs(&all_debs()) {
        missing.push(format!("Debian package {pkg}"));
    }
    if cmd::which("kubectl").is_none() {
        missing.push(format!("kubectl (Debian package {KUBECTL_PACKAGE})"));
    }
    if !has_rust_src() {
        missing.push("rust-src for the nightly toolchain".into());
    }
    for arch in Arch::ALL {
        if !has_musl_target(arch) {
            missing.push(format!(
                "the stable toolchain's {} target",
                arch.musl_target()
            ));
        }
    }
    if !has_bpf_linker() {
        missing.push("bpf-linker".into());
    }
    if vng_path().is_none() {
        missing.push("virtme-ng (vng)".into());
    }
    if let Err(e) = moto_importable() {
        missing.push(format!("moto[server] for python3 ({e})"));
    }
    missing.extend(crate::control_plane::missing());
    missing.extend(crate::cni_plugin::missing());
    for short in kernel::KERNELS {
        match kernel::get(short) {
            Err(e) => missing.push(format!("{e:#}")),
            Ok(k) if k.arch() != Arch::NATIVE && !crate::guest_root::is_built(&k) => {
                missing.push(format!(
                    "the {} root filesystem of kernel {short}",
                    k.arch()
                ));
            }
            Ok(_) => {}
        }
    }
    missing
}

/// Runs the full [`run`] only if [`missing`] reports something. Called first by `test` and
/// `lab`.
pub fn ensure() -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: missing:");
    for item in &missing {
        println!("  - {item}");
    }
    run()
}

/// Full setup: every step checks before it installs.
pub fn run() -> Result<()> {
    cmd::step("setup: Debian packages", debs)?;
    cmd::step("setup: kubectl", kubectl)?;
    cmd::step("setup: rust-src (nightly)", rust_src)?;
    // Only `cargo xtask image`, its host test and the arm64 VM stage need them: a toolchain
    // server that refuses a target must not stop the other tests (those fail loudly).
    for arch in Arch::ALL {
        if let Err(e) = cmd::step(&format!("setup: {} target", arch.musl_target()), || {
            musl_target(arch)
        }) {
            eprintln!(
                "\n*** rustup could not add {}: `cargo xtask image` will not build ({e:#}) ***\n",
                arch.musl_target()
            );
        }
    }
    cmd::step("setup: bpf-linker", bpf_linker)?;
    cmd::step("setup: virtme-ng", virtme_ng)?;
    // The host test `ec2_rules_from_moto_judge_the_default_lab` runs against it.
    cmd::step("setup: moto[server]", moto)?;
    // kube-apiserver, etcd and the CRDs the Kubernetes host tests run against.
    cmd::step("setup: control plane", crate::control_plane::install)?;
    // routed-eni-cni-plugin at its pinned releases and the fake ipamd: the lab's pods.
    cmd::step("setup: VPC CNI plugin", crate::cni_plugin::ensure)?;
    for short in kernel::KERNELS {
        let k = cmd::step(&format!("setup: kernel {short}"), || kernel::install(short))?;
        if k.arch() != Arch::NATIVE {
            // The guest cannot share this machine's root: it boots its own.
            cmd::step(&format!("setup: {} root filesystem", k.arch()), || {
                crate::guest_root::ensure(&k)
            })?;
        }
    }
    let missing = missing();
    if !missing.is_empty() {
        bail!("setup finished but still missing: {}", missing.join("; "));
    }
    println!("setup: all done");
    Ok(())
}

fn all_debs() -> Vec<&'static str> {
    DEB_PACKAGES
        .iter()
        .chain(BACKPORTS_PACKAGES)
        .copied()
        .collect()
}

/// The packages of `pkgs` that dpkg does not report as "install ok installed".
fn uninstalled_debs<'a>(pkgs: &[&'a str]) -> Vec<&'a str> {
    pkgs.iter()
        .copied()
        .filter(|pkg| {
            let status = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .output();
            !matches!(status, Ok(o) if o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed")
        })
        .collect()
}

/// Writes the backports source if absent; returns whether it did (apt lists are then stale).
fn backports_source() -> Result<bool> {
    if Path::new(BACKPORTS_SOURCES).exists() {
        println!("apt: {BACKPORTS_SOURCES} present");
        return Ok(false);
    }
    let text = "Types: deb\n\
                URIs: http://deb.debian.org/debian\n\
                Suites: bookworm-backports\n\
                Components: main\n\
                Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
    std::fs::write(BACKPORTS_SOURCES, text)
        .with_context(|| format!("cannot write {BACKPORTS_SOURCES}"))?;
    println!("apt: wrote {BACKPORTS_SOURCES}");
    Ok(true)
}

fn debs() -> Result<()> {
    let mut updated = false;
    if backports_source()? {
        cmd::run(Command::new("apt-get").arg("update"))?;
        updated = true;
    }
    let plain = uninstalled_debs(DEB_PACKAGES);
    let backports = uninstalled_debs(BACKPORTS_PACKAGES);
    if plain.is_empty() && backports.is_empty() {
        println!("apt: all Debian packages installed");
        return Ok(());
    }
    if !updated {
        cmd::run(Command::new("apt-get").arg("update"))?;
    }
    let install = |extra: &[&str], pkgs: &[&str]| {
        cmd::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(extra)
                .args(pkgs),
        )
    };
    if !plain.is_empty() {
        install(&[], &plain)?;
    }
    if !backports.is_empty() {
        install(&["-t", "bookworm-backports"], &backports)?;
    }
    println!("apt: installed {}", [plain, backports].concat().join(" "));
    Ok(())
}

fn kubectl() -> Result<()> {
    if cmd::which("kubectl").is_some() {
        println!("kubectl: present");
        return Ok(());
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends", KUBECTL_PACKAGE]),
    )?;
    println!("apt: installed {KUBECTL_PACKAGE}");
    Ok(())
}

fn has_musl_target(arch: Arch) -> bool {
    cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_ok_and(|out| out.lines().any(|l| l.trim() == arch.musl_target()))
}

fn musl_target(arch: Arch) -> Result<()> {
    let target = arch.musl_target();
    if has_musl_target(arch) {
        println!("rustup: {target} present");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["target", "add", target]))?;
    println!("rustup: installed {target}");
    Ok(())
}

fn has_rust_src() -> bool {
    cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_ok_and(|out| out.lines().any(|l| l.trim() == "rust-src"))
}

fn rust_src() -> Result<()> {
    if has_rust_src() {
        println!("rustup: rust-src (nightly) present");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    println!("rustup: installed rust-src (nightly)");
    Ok(())
}

fn has_bpf_linker() -> bool {
    cmd::succeeds(Command::new("bpf-linker").arg("--version"))
}

fn bpf_linker() -> Result<()> {
    if has_bpf_linker() {
        println!("bpf-linker: present");
        return Ok(());
    }
    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("cannot list {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let prefix_lib = Path::new(LLVM_PREFIX).join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in [
        "libLLVM.so".into(),
        libllvm.file_name().unwrap_or_default().to_owned(),
    ] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    println!(
        "bpf-linker: building {BPF_LINKER_VERSION} against {} (about 70 s on 2 cores)",
        libllvm.display()
    );
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args(["+nightly", "install", "--locked", "--no-default-features"])
            .args(["--features", "llvm-22"])
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}")),
    )?;
    if !has_bpf_linker() {
        bail!("bpf-linker installed but `bpf-linker --version` fails (is ~/.cargo/bin on PATH?)");
    }
    println!("bpf-linker: installed");
    Ok(())
}

/// Path of virtme-ng's `vng`: on PATH, or where `pip install` puts scripts.
pub fn vng_path() -> Option<PathBuf> {
    script_path("vng")
}

/// The Python the moto server and the seeding script run under (`python3 -m moto.server`,
/// `python3 tests/moto/*.py`): the one on PATH, whatever its pip installs to (pyenv, a
/// venv, Debian's `/usr/local`), so no `moto_server` script has to be on PATH.
pub const PYTHON: &str = "python3";

/// `Ok` when [`PYTHON`] imports moto's server (Flask and all: `moto[server]`) and boto3;
/// else why not, in Python's words. Cheap: one interpreter start, no network.
pub fn moto_importable() -> std::result::Result<(), String> {
    match Command::new(PYTHON)
        .args(["-c", "import moto.server, boto3"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            Err(err.lines().last().unwrap_or("no output").trim().to_owned())
        }
        Err(e) => Err(format!("{PYTHON}: {e}")),
    }
}

/// A pip-installed script: on PATH, or where `pip install` puts scripts.
fn script_path(name: &str) -> Option<PathBuf> {
    cmd::which(name).or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        // Where this python's pip puts scripts (a pyenv version dir before `pyenv rehash`).
        let scripts = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join(name));
        [
            home.map(|h| h.join(".local/bin").join(name)),
            Some(PathBuf::from("/usr/local/bin").join(name)),
            scripts,
        ]
        .into_iter()
        .flatten()
        .find(|p| cmd::is_executable(p))
    })
}

/// `pip install <spec>`, system-wide where Debian's pip allows it only when told.
fn pip_install(spec: &str) -> Result<()> {
    let pip = ["pip3", "pip"]
        .into_iter()
        .find(|p| cmd::which(p).is_some())
        .context("neither pip3 nor pip on PATH")?;
    // Debian's own pip refuses system-wide installs (PEP 668) unless told otherwise.
    if cmd::run(Command::new(pip).args(["install", spec])).is_err() {
        cmd::run(Command::new(pip).args(["install", "--break-system-packages", spec]))?;
    }
    if cmd::which("pyenv").is_some() {
        let _ = cmd::run(Command::new("pyenv").arg("rehash"));
    }
    Ok(())
}

/// moto in server mode (PyPI `moto[server]`): the EC2 Query API the security-group reader
/// is tested against. Installed with [`PYTHON`]'s own pip, so that `python3 -m moto.server`
/// finds it; skipped when it already imports.
fn moto() -> Result<()> {
    if moto_importable().is_ok() {
        println!("moto: present");
        return Ok(());
    }
    let pip = |extra: &[&str]| {
        cmd::run(
            Command::new(PYTHON)
                .args(["-m", "pip", "install"])
                .args(extra)
                .arg("moto[server]"),
        )
    };
    // Debian's own pip refuses system-wide installs (PEP 668) unless told otherwise.
    if pip(&[]).is_err() {
        pip(&["--break-system-packages"])?;
    }
    moto_importable().map_err(|e| {
        anyhow::anyhow!("pip installed moto[server] but {PYTHON} cannot import it: {e}")
    })?;
    println!("moto: installed");
    Ok(())
}

fn virtme_ng() -> Result<()> {
    if let Some(vng) = vng_path() {
        println!("virtme-ng: present ({})", vng.display());
        return Ok(());
    }
    pip_install("virtme-ng")?;
    let vng = vng_path().context("pip installed virtme-ng but no `vng` was found")?;
    println!("virtme-ng: installed ({})", vng.display());
    Ok(())
}
