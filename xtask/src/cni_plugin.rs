//! The real VPC CNI plugin (`routed-eni-cni-plugin` of `github.com/aws/amazon-vpc-cni-k8s`)
//! at pinned releases, and the fake ipamd that answers its gRPC, built with Go and cached on
//! the machine like the Rust target directory.
//!
//! Both come from one small Go module of ours, `xtask/go/fake-ipamd/`: its `go.mod` requires
//! the current release and names the plugin as a `tool`, and `go.<release>.mod` does the same
//! for each older release (built with `-modfile`), so `go.sum` pins every byte and the fake
//! ipamd is compiled against the same release's generated `rpc` package the plugin speaks.
//! Binaries are static (`CGO_ENABLED=0`): the VMs run them from the host's root filesystem.
//! The current release is also built for arm64 (`GOARCH=arm64`, [`ARM64_RELEASES`]): the arm64
//! VM stage's labs run it.
//!
//! Side effects: [`ensure`] runs `go build` with its caches under the machine's Go directory
//! ([`crate::control_plane::go_dir`], `/opt/sgpath/go`, shared with the control plane's
//! builds: `build-cache/`, `mod/` for the module proxy's downloads) and writes the binaries to
//! `bin/vpc-cni-<release>/` there; a `stamp` file beside them holds a hash of the Go sources
//! and toolchain they were built from, so an edit rebuilds them.

use crate::arch::Arch;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// The upstream module the plugin is built from.
pub const MODULE: &str = "github.com/aws/amazon-vpc-cni-k8s";

/// One pinned release of the VPC CNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// The module version, e.g. "v1.23.2".
    pub version: &'static str,
    /// The go.mod of `xtask/go/fake-ipamd/` that pins it (`-modfile`).
    pub modfile: &'static str,
    /// Build tags of the fake ipamd for this release's `rpc` messages.
    pub tags: &'static str,
    /// Whether the plugin knows `podSGEnforcingMode` (standard mode came in v1.11).
    pub standard_mode: bool,
}

/// The current release line.
pub const CURRENT: Release = Release {
    version: "v1.23.2",
    modfile: "go.mod",
    tags: "",
    standard_mode: true,
};

/// The seed's era: security groups for pods shipped in v1.7 (strict mode only, ipamd on TCP
/// 127.0.0.1:50051; later releases dial /var/run/aws-node/ipamd.sock).
pub const SEED_ERA: Release = Release {
    version: "v1.7.10",
    modfile: "go.v1.7.10.mod",
    tags: "cni_v1_7",
    standard_mode: false,
};

/// Every pinned release, the current one first.
pub const RELEASES: &[Release] = &[CURRENT, SEED_ERA];

/// The releases built for arm64 too: the arm64 VM stage plumbs its labs with the current one
/// (the seed era's v1.7 predates Graviton's trunk ENIs).
pub const ARM64_RELEASES: &[Release] = &[CURRENT];

/// Every (release, architecture) built: each of [`RELEASES`] for x86_64, each of
/// [`ARM64_RELEASES`] for arm64.
pub fn builds() -> impl Iterator<Item = (Release, Arch)> {
    RELEASES
        .iter()
        .map(|r| (*r, Arch::Amd64))
        .chain(ARM64_RELEASES.iter().map(|r| (*r, Arch::Arm64)))
}

/// The plugin's binary name, as the kubelet finds it in CNI_PATH via the conflist's `type`
/// (aws-node installs routed-eni-cni-plugin as `aws-cni`).
pub const PLUGIN_BIN: &str = "aws-cni";
/// The fake ipamd's binary name.
pub const IPAMD_BIN: &str = "fake-ipamd";

impl Release {
    /// A release by version (`v1.23.2`, or `1.23.2`).
    ///
    /// # Errors
    /// When the version is not pinned here.
    pub fn by_version(v: &str) -> Result<Release> {
        let v = v.strip_prefix('v').unwrap_or(v);
        RELEASES
            .iter()
            .copied()
            .find(|r| &r.version[1..] == v)
            .ok_or_else(|| {
                let known: Vec<_> = RELEASES.iter().map(|r| r.version).collect();
                anyhow::anyhow!("VPC CNI {v} is not pinned; known: {}", known.join(", "))
            })
    }

    /// Directory of this release's binaries for the architecture this code runs on (CNI_PATH
    /// for the plugin): inside the arm64 VM, the arm64 ones.
    pub fn bin_dir(&self) -> PathBuf {
        self.bin_dir_for(Arch::NATIVE)
    }

    /// Directory of this release's binaries for `arch`: `bin/vpc-cni-<release>` for x86_64
    /// (as before arm64 existed, so the machine's cache stays valid), `bin/<arch>/...` else.
    pub fn bin_dir_for(&self, arch: Arch) -> PathBuf {
        let bin = crate::control_plane::go_dir().join("bin");
        let name = format!("vpc-cni-{}", self.version);
        match arch {
            Arch::Amd64 => bin.join(name),
            Arch::Arm64 => bin.join(arch.name()).join(name),
        }
    }

    /// The plugin binary.
    pub fn plugin(&self) -> PathBuf {
        self.plugin_for(Arch::NATIVE)
    }

    /// The plugin binary for `arch`.
    pub fn plugin_for(&self, arch: Arch) -> PathBuf {
        self.bin_dir_for(arch).join(PLUGIN_BIN)
    }

    /// The fake ipamd built against this release's `rpc` package.
    pub fn fake_ipamd(&self) -> PathBuf {
        self.fake_ipamd_for(Arch::NATIVE)
    }

    /// The fake ipamd for `arch`.
    pub fn fake_ipamd_for(&self, arch: Arch) -> PathBuf {
        self.bin_dir_for(arch).join(IPAMD_BIN)
    }

    fn stamp(&self, arch: Arch) -> PathBuf {
        self.bin_dir_for(arch).join("stamp")
    }

    /// Both binaries exist (what the lab needs; inside a VM, where Go may not run).
    pub fn is_built(&self) -> bool {
        self.plugin().is_file() && self.fake_ipamd().is_file()
    }

    /// Both binaries for `arch` exist and were built from the current sources and toolchain.
    pub fn is_fresh(&self, arch: Arch) -> bool {
        self.plugin_for(arch).is_file()
            && self.fake_ipamd_for(arch).is_file()
            && std::fs::read_to_string(self.stamp(arch)).ok() == Some(sources_hash(self))
    }

    /// Build the plugin and the fake ipamd of this release for `arch` into
    /// [`Release::bin_dir_for`].
    ///
    /// # Errors
    /// When Go is missing or a build fails (its output is in the error).
    pub fn build(&self, arch: Arch) -> Result<()> {
        let dir = self.bin_dir_for(arch);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let start = Instant::now();
        let plugin_pkg = format!("{MODULE}/cmd/routed-eni-cni-plugin");
        let version_flag = format!("-s -w -X main.version={}", self.version);
        go(
            arch,
            &[
                "build",
                &format!("-modfile={}", self.modfile),
                "-trimpath",
                "-ldflags",
                &version_flag,
                "-o",
                &self.plugin_for(arch).to_string_lossy(),
                &plugin_pkg,
            ],
        )?;
        let mut args = vec![
            "build".to_string(),
            format!("-modfile={}", self.modfile),
            "-trimpath".into(),
            "-ldflags".into(),
            "-s -w".into(),
        ];
        if !self.tags.is_empty() {
            args.push(format!("-tags={}", self.tags));
        }
        args.extend([
            "-o".into(),
            self.fake_ipamd_for(arch).to_string_lossy().into_owned(),
            ".".into(),
        ]);
        go(arch, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        std::fs::write(self.stamp(arch), sources_hash(self))?;
        println!(
            "built routed-eni-cni-plugin {} and its fake ipamd for {arch} in {:.0} s ({})",
            self.version,
            start.elapsed().as_secs_f64(),
            dir.display()
        );
        Ok(())
    }
}

/// The Go module of the fake ipamd (and of the plugin's pins).
pub fn go_dir() -> PathBuf {
    crate::workspace_root().join("xtask/go/fake-ipamd")
}

/// Hash of the files a release's binaries are built from (its modfile and sum, the Go sources).
fn sources_hash(r: &Release) -> String {
    let dir = go_dir();
    let sum = r.modfile.replace(".mod", ".sum");
    let mut names: Vec<String> = vec![r.modfile.to_string(), sum];
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut go: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".go"))
            .collect();
        go.sort();
        names.extend(go);
    }
    let mut h = sha1_smol::Sha1::new();
    h.update(go_version().as_bytes());
    for n in names {
        h.update(n.as_bytes());
        h.update(&std::fs::read(dir.join(&n)).unwrap_or_default());
    }
    h.digest().to_string()
}

fn go_version() -> String {
    Command::new("go")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Run `go` in [`go_dir`] for `arch` (`GOARCH`) with the machine's caches, static linking
/// and no toolchain switch.
fn go(arch: Arch, args: &[&str]) -> Result<()> {
    let root = crate::control_plane::go_dir();
    let out = Command::new("go")
        .args(args)
        .current_dir(go_dir())
        .env("GOPATH", &root)
        .env("GOCACHE", root.join("build-cache"))
        .env("GOMODCACHE", root.join("mod"))
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOOS", "linux")
        .env("GOARCH", arch.name())
        .env("GOFLAGS", "-buildvcs=false -mod=readonly -modcacherw")
        .output()
        .context("running go (is Go installed?)")?;
    if !out.status.success() {
        bail!(
            "go {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What `cargo xtask setup` still has to build, as human-readable items.
pub fn missing() -> Vec<String> {
    builds()
        .filter(|(r, arch)| !r.is_fresh(*arch))
        .map(|(r, arch)| {
            format!(
                "VPC CNI plugin {} and fake ipamd for {arch} (Go build)",
                r.version
            )
        })
        .collect()
}

/// Build every pinned release that is missing or stale.
///
/// # Errors
/// As [`Release::build`].
pub fn ensure() -> Result<()> {
    for (r, arch) in builds() {
        if r.is_fresh(arch) {
            println!(
                "ok: VPC CNI plugin {} for {arch} ({})",
                r.version,
                r.bin_dir_for(arch).display()
            );
        } else {
            r.build(arch)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_resolve_by_version_with_or_without_v() {
        assert_eq!(Release::by_version("v1.7.10").unwrap(), SEED_ERA);
        assert_eq!(Release::by_version("1.23.2").unwrap(), CURRENT);
        let e = Release::by_version("1.9.0").unwrap_err().to_string();
        assert!(e.contains("v1.23.2, v1.7.10"), "{e}");
    }

    #[test]
    fn each_release_has_its_modfile_pinning_the_plugin() {
        for r in RELEASES {
            let m = std::fs::read_to_string(go_dir().join(r.modfile)).unwrap();
            assert!(
                m.contains(&format!("{MODULE} {}", r.version)),
                "{} lacks {MODULE} {}",
                r.modfile,
                r.version
            );
            assert!(
                m.contains(&format!("tool {MODULE}/cmd/routed-eni-cni-plugin")),
                "{}",
                r.modfile
            );
            assert!(go_dir().join(r.modfile.replace(".mod", ".sum")).is_file());
        }
    }
}
