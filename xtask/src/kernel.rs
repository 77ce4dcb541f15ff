//! Debian kernels for the VMs: resolves the newest `-<arch>-unsigned` package of each short
//! name ("5.10", "6.1", "6.12", "arm64-6.12"), downloads it with `apt-get download`, unpacks
//! it with `dpkg -x`, runs `depmod` on the unpacked tree and records it in a manifest.
//!
//! 6.1 and 6.12 come from the machine's own apt sources (bookworm, bookworm-backports). 5.10
//! (Amazon Linux 2's series) comes from bullseye through a separate apt configuration under
//! [`BULLSEYE_APT_DIR`] (its own sources list, lists, cache and an empty dpkg status), so
//! bullseye never becomes a source of the machine's own packages. arm64-6.12 (Graviton's
//! AL2023 series) comes the same way from bookworm for arm64 ([`ARM64_APT_DIR`], with
//! `APT::Architecture "arm64"`): arm64 never becomes a foreign architecture of the machine's
//! dpkg. The same configuration downloads the arm64 root filesystem's packages
//! ([`crate::guest_root`]).
//!
//! Side effects (install only): writes under `/opt/sgpath/kernels/` (the .deb, the
//! unpacked tree `<release>/root/`, and `<short>.json`), under [`BULLSEYE_APT_DIR`] (apt
//! lists for bullseye), and creates the symlink
//! `/lib/modules/<release>` -> the unpacked `lib/modules/<release>` (virtme-ng's guest loads
//! modules from there). The cache is under /opt because virtme-ng's guest sees /opt as an
//! overlay of the host's, but hides /tmp, /var/tmp and /var/cache behind empty tmpfs mounts.

use crate::{arch::Arch, cmd};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The short names of the kernels every VM test runs on: the x86_64 ones oldest first, then
/// the arm64 one (booted by [`crate::vm_arm64`], not virtme-ng).
pub const KERNELS: &[&str] = &["5.10", "6.1", "6.12", "arm64-6.12"];

/// Where downloaded and unpacked kernels and their manifests live.
pub const CACHE_DIR: &str = "/opt/sgpath/kernels";

/// One unpacked kernel, as recorded in `/opt/sgpath/kernels/<short>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// Short name used on the command line, e.g. "6.1".
    pub short: String,
    /// Debian package it came from, e.g. "linux-image-6.1.0-56-amd64-unsigned".
    pub package: String,
    /// Kernel release (`uname -r` in the guest), e.g. "6.1.0-56-amd64".
    pub release: String,
    /// The bootable image, inside the unpacked tree.
    pub vmlinuz: PathBuf,
    /// The unpacked package root (holds `boot/` and `lib/modules/<release>/`).
    pub root: PathBuf,
}

impl Kernel {
    /// Reads the manifest of `short` (no validation; see [`Kernel::check`]).
    pub fn load(short: &str) -> Result<Kernel> {
        spec(short)?;
        let path = manifest_path(short);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "kernel {short} is not installed ({} missing): run `cargo xtask setup`",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("bad manifest {}", path.display()))
    }

    /// The architecture it runs on.
    pub fn arch(&self) -> Arch {
        spec(&self.short).map_or(Arch::Amd64, |s| s.arch)
    }

    /// Its series as `uname -r` starts ("6.12" for "arm64-6.12"): what the VM tests compare
    /// the kernel's release and features against (`SGPATH_KERNEL`).
    pub fn series(&self) -> &str {
        self.short
            .rsplit_once('-')
            .map_or(self.short.as_str(), |(_, s)| s)
    }

    /// Its modules: `/lib/modules/<release>` (a link to the unpacked tree, where virtme-ng's
    /// guest looks) for the host's architecture, the unpacked tree itself for another one
    /// (its guest gets a root of its own).
    pub fn modules_dir(&self) -> PathBuf {
        if self.arch() == Arch::NATIVE {
            modules_link(&self.release)
        } else {
            self.root.join("lib/modules").join(&self.release)
        }
    }

    /// Cheap check that the image and the modules are usable.
    pub fn check(&self) -> Result<()> {
        if !self.vmlinuz.is_file() {
            bail!("kernel {}: {} missing", self.short, self.vmlinuz.display());
        }
        let dep = self.modules_dir().join("modules.dep");
        if !dep.is_file() {
            bail!(
                "kernel {}: {} missing (modules not linked or depmod not run)",
                self.short,
                dep.display()
            );
        }
        Ok(())
    }
}

/// Loads and checks the kernel named `short`.
pub fn get(short: &str) -> Result<Kernel> {
    let kernel = Kernel::load(short)?;
    kernel.check()?;
    Ok(kernel)
}

/// Where apt resolves and downloads a kernel package from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AptSource {
    /// The machine's own apt configuration.
    Machine,
    /// Debian 11 through its own apt configuration ([`BULLSEYE_APT_DIR`]).
    Bullseye,
    /// Debian 12 for arm64 through its own apt configuration ([`ARM64_APT_DIR`]).
    BookwormArm64,
}

/// Private apt state for bullseye: `sources.list`, `sources.list.d/` (empty), `lists/`,
/// `cache/` and an empty `status`.
pub const BULLSEYE_APT_DIR: &str = "/opt/sgpath/apt-bullseye";

const BULLSEYE_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
";

/// Private apt state for bookworm's arm64 packages, laid out as [`BULLSEYE_APT_DIR`].
pub const ARM64_APT_DIR: &str = "/opt/sgpath/apt-arm64";

const ARM64_SOURCES: &str = "\
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
";

impl AptSource {
    /// Its private directory and sources list; `None` for the machine's own.
    fn private(self) -> Option<(&'static str, &'static str)> {
        match self {
            AptSource::Machine => None,
            AptSource::Bullseye => Some((BULLSEYE_APT_DIR, BULLSEYE_SOURCES)),
            AptSource::BookwormArm64 => Some((ARM64_APT_DIR, ARM64_SOURCES)),
        }
    }

    /// The directory of downloaded packages (`apt-get install --download-only`'s).
    pub fn archives(self) -> PathBuf {
        match self.private() {
            Some((dir, _)) => Path::new(dir).join("cache/archives"),
            None => PathBuf::from("/var/cache/apt/archives"),
        }
    }

    /// `program` (apt-get or apt-cache) configured for this source.
    pub fn command(self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        if self == AptSource::BookwormArm64 {
            // Resolve and download arm64 packages only; the machine's dpkg never hears of it.
            cmd.args([
                "-o",
                "APT::Architecture=arm64",
                "-o",
                "APT::Architectures=arm64",
            ]);
        }
        if let Some((dir, _)) = self.private() {
            let dir = Path::new(dir);
            for (key, path) in [
                ("Dir::Etc::sourcelist", dir.join("sources.list")),
                ("Dir::Etc::sourceparts", dir.join("sources.list.d")),
                ("Dir::State::Lists", dir.join("lists")),
                ("Dir::Cache", dir.join("cache")),
                ("Dir::State::status", dir.join("status")),
            ] {
                cmd.arg("-o").arg(format!("{key}={}", path.display()));
            }
        }
        cmd
    }

    /// Makes the private apt tree exist; returns whether its lists must be fetched first.
    pub fn prepare(self) -> Result<bool> {
        let Some((dir, sources_text)) = self.private() else {
            return Ok(false);
        };
        let dir = Path::new(dir);
        for sub in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            std::fs::write(&status, "")?;
        }
        let sources = dir.join("sources.list");
        if std::fs::read_to_string(&sources).ok().as_deref() != Some(sources_text) {
            std::fs::write(&sources, sources_text)
                .with_context(|| format!("cannot write {}", sources.display()))?;
            return Ok(true);
        }
        let has_lists = std::fs::read_dir(dir.join("lists"))?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"));
        Ok(!has_lists)
    }

    /// `apt-get update` of this source.
    ///
    /// # Errors
    /// apt-get fails.
    pub fn update(self) -> Result<()> {
        cmd::run(self.command("apt-get").arg("update"))
    }
}

/// How to find the newest package of one short name.
struct Spec {
    short: &'static str,
    /// The architecture it runs on.
    arch: Arch,
    /// Which apt configuration knows the package.
    apt: AptSource,
    /// Meta package whose `Depends:` names the current image package (without -unsigned).
    meta: &'static str,
    /// Prefix the resolved image package must have.
    prefix: &'static str,
    /// Fallback: `apt-cache search --names-only` regex of all candidate packages.
    search: &'static str,
}

const SPECS: &[Spec] = &[
    Spec {
        short: "5.10",
        arch: Arch::Amd64,
        apt: AptSource::Bullseye,
        meta: "linux-image-amd64",
        prefix: "linux-image-5.10.0-",
        search: r"^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$",
    },
    Spec {
        short: "6.1",
        arch: Arch::Amd64,
        apt: AptSource::Machine,
        meta: "linux-image-amd64",
        prefix: "linux-image-6.1.0-",
        search: r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
    },
    Spec {
        short: "6.12",
        arch: Arch::Amd64,
        apt: AptSource::Machine,
        meta: "linux-image-6.12-amd64",
        prefix: "linux-image-6.12.",
        search: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
    },
    Spec {
        short: "arm64-6.12",
        arch: Arch::Arm64,
        apt: AptSource::BookwormArm64,
        meta: "linux-image-6.12-arm64",
        prefix: "linux-image-6.12.",
        search: r"^linux-image-6\.12\.[0-9]+\+deb12-arm64-unsigned$",
    },
];

fn spec(short: &str) -> Result<&'static Spec> {
    SPECS
        .iter()
        .find(|s| s.short == short)
        .with_context(|| format!("unknown kernel {short:?}: known are {KERNELS:?}"))
}

fn manifest_path(short: &str) -> PathBuf {
    Path::new(CACHE_DIR).join(format!("{short}.json"))
}

fn modules_link(release: &str) -> PathBuf {
    Path::new("/lib/modules").join(release)
}

/// Newest `-<arch>-unsigned` image package for `spec`, from the local apt lists.
fn resolve(spec: &Spec) -> Result<String> {
    if let Ok(deps) = cmd::output(spec.apt.command("apt-cache").args(["depends", spec.meta])) {
        let found = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(str::trim)
            .find(|p| p.starts_with(spec.prefix) && p.ends_with(&format!("-{}", spec.arch)));
        if let Some(image) = found {
            let unsigned = format!("{image}-unsigned");
            if cmd::succeeds(spec.apt.command("apt-cache").args(["show", &unsigned])) {
                return Ok(unsigned);
            }
        }
    }
    let found =
        cmd::output(
            spec.apt
                .command("apt-cache")
                .args(["search", "--names-only", spec.search]),
        )?;
    found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|p| version_key(p))
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "no package matches {} in the apt lists of {:?} (run `cargo xtask setup`)",
                spec.search, spec.apt
            )
        })
}

/// Numeric components of a package name, for ordering: "linux-image-6.12.117+deb12-amd64" ->
/// [6, 12, 117, 12, 64].
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Makes sure the newest kernel of `short` is downloaded, unpacked, depmod-ed, linked under
/// /lib/modules and recorded; skips every step already done. Prints what it does.
pub fn install(short: &str) -> Result<Kernel> {
    let spec = spec(short)?;
    let existing = Kernel::load(short).ok();
    if spec.apt.prepare()? {
        spec.apt.update()?;
    }
    let package = match resolve(spec) {
        Ok(p) => p,
        Err(e) => match existing {
            Some(k) if k.check().is_ok() => {
                println!(
                    "kernel {short}: cannot resolve the newest package ({e:#}); keeping {}",
                    k.release
                );
                return Ok(k);
            }
            _ => return Err(e.context(format!("kernel {short}: cannot resolve a package"))),
        },
    };
    if let Some(k) = existing.filter(|k| k.package == package) {
        link_modules(&k)?;
        if k.check().is_ok() {
            println!("kernel {short}: {} already installed", k.release);
            return Ok(k);
        }
    }
    let release = package
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix("-unsigned"))
        .with_context(|| format!("unexpected package name {package}"))?
        .to_owned();
    println!("kernel {short}: installing {package}");
    let dir = Path::new(CACHE_DIR).join(&release);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let deb = match find_deb(&dir, &package)? {
        Some(deb) => deb,
        None => {
            let download = || {
                cmd::run(
                    spec.apt
                        .command("apt-get")
                        .args(["download", &package])
                        .current_dir(&dir),
                )
            };
            if download().is_err() {
                spec.apt.update()?;
                download()?;
            }
            find_deb(&dir, &package)?.with_context(|| {
                format!(
                    "apt-get download left no {package}_*.deb in {}",
                    dir.display()
                )
            })?
        }
    };

    let root = dir.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot remove stale {}", root.display()))?;
    }
    cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} is not in {package}", vmlinuz.display());
    }
    if !root.join("lib/modules").join(&release).is_dir() {
        bail!("{package} has no lib/modules/{release}");
    }
    cmd::run(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;

    let kernel = Kernel {
        short: short.to_owned(),
        package,
        release,
        vmlinuz,
        root,
    };
    link_modules(&kernel)?;
    kernel.check()?;
    let manifest = manifest_path(short);
    std::fs::write(&manifest, serde_json::to_string_pretty(&kernel)? + "\n")
        .with_context(|| format!("cannot write {}", manifest.display()))?;
    println!(
        "kernel {short}: {} ready ({})",
        kernel.release,
        manifest.display()
    );
    Ok(kernel)
}

/// The downloaded `.deb` of `package` in `dir`, if any.
fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Points `/lib/modules/<release>` at the unpacked modules, unless it already does or holds a
/// real (installed) module tree.
fn link_modules(kernel: &Kernel) -> Result<()> {
    if kernel.arch() != Arch::NATIVE {
        return Ok(());
    }
    let target = kernel.root.join("lib/modules").join(&kernel.release);
    let link = modules_link(&kernel.release);
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if std::fs::read_link(&link)? == target {
                return Ok(());
            }
            std::fs::remove_file(&link)?;
        }
        Ok(_) => {
            println!(
                "kernel {}: {} is a real directory; leaving it alone",
                kernel.short,
                link.display()
            );
            return Ok(());
        }
        Err(_) => std::fs::create_dir_all("/lib/modules")?,
    }
    std::os::unix::fs::symlink(&target, &link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))?;
    println!(
        "kernel {}: linked {} -> {}",
        kernel.short,
        link.display(),
        target.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_has_a_spec_oldest_first() {
        let shorts: Vec<&str> = SPECS.iter().map(|s| s.short).collect();
        assert_eq!(shorts, KERNELS);
        let amd64: Vec<&str> = SPECS
            .iter()
            .filter(|s| s.arch == Arch::Amd64)
            .map(|s| s.short)
            .collect();
        let mut sorted = amd64.clone();
        sorted.sort_by_key(|k| version_key(k));
        assert_eq!(sorted, amd64);
        for s in SPECS {
            assert!(
                s.search.ends_with(&format!("-{}-unsigned$", s.arch)),
                "{}",
                s.short
            );
            assert_eq!(s.arch == Arch::Arm64, s.apt == AptSource::BookwormArm64);
        }
    }

    #[test]
    fn arm64_apt_resolves_arm64_only_in_its_own_tree() {
        let args: Vec<String> = AptSource::BookwormArm64
            .command("apt-get")
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for key in [
            "APT::Architecture=arm64",
            "APT::Architectures=arm64",
            "Dir::State::status=/opt/sgpath/apt-arm64/status",
            "Dir::Etc::sourcelist=/opt/sgpath/apt-arm64/sources.list",
        ] {
            assert!(args.iter().any(|a| a == key), "{key} missing from {args:?}");
        }
        assert!(ARM64_SOURCES.lines().all(|l| l.contains("[arch=arm64 ")));
    }

    #[test]
    fn bullseye_apt_never_reads_the_machines_sources() {
        let spec = spec("5.10").unwrap();
        assert_eq!(spec.apt, AptSource::Bullseye);
        let cmd = spec.apt.command("apt-get");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for key in [
            "Dir::Etc::sourcelist=/opt/sgpath/apt-bullseye/sources.list",
            "Dir::Etc::sourceparts=/opt/sgpath/apt-bullseye/sources.list.d",
            "Dir::State::Lists=/opt/sgpath/apt-bullseye/lists",
            "Dir::Cache=/opt/sgpath/apt-bullseye/cache",
            "Dir::State::status=/opt/sgpath/apt-bullseye/status",
        ] {
            assert!(args.iter().any(|a| a == key), "{key} missing from {args:?}");
        }
        assert!(BULLSEYE_SOURCES.lines().all(|l| l.contains(" bullseye")));
        assert_eq!(AptSource::Machine.command("apt-get").get_args().count(), 0);
    }

    #[test]
    fn newest_package_by_version_key() {
        let newest = [
            "linux-image-5.10.0-35-amd64-unsigned",
            "linux-image-5.10.0-46-amd64-unsigned",
            "linux-image-5.10.0-9-amd64-unsigned",
        ]
        .into_iter()
        .max_by_key(|p| version_key(p));
        assert_eq!(newest, Some("linux-image-5.10.0-46-amd64-unsigned"));
    }
}
