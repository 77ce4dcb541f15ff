//! `cargo xtask image`: the container image of the DaemonSet (`deploy/agent/daemonset.yaml`
//! runs `sgpath:<version>`) and the release artifacts of the kubectl plugin. A static
//! `sgpath` (musl, the eBPF object embedded by `agent/build.rs`) at `/usr/bin/sgpath` and the
//! static plugin `kubectl-sgpath` at `/usr/local/bin/kubectl-sgpath` (for `docker cp`) are
//! the image's only files; the image is built without a daemon by `umoci` as an OCI layout,
//! and `skopeo` packs the layout into an `oci-archive` tarball for `ctr images import` or a
//! registry push. The plugin also goes to `target/release-artifacts/`: the binary, a krew
//! tarball, their `.sha256`, and `deploy/krew/sgpath.yaml` with the tarball's sha256 filled in.
//!
//! No base image: the agent needs no libc, no shell, no CA bundle (the API server's CA
//! comes with the in-cluster service account; AWS's endpoints are checked against
//! Mozilla's roots compiled into the binary, `webpki-roots`, and a private CA is added
//! with `SSL_CERT_FILE` pointing at a mounted PEM bundle) and no `/etc/passwd` (it runs as
//! UID 0; see the DaemonSet's securityContext for why not another user).
//!
//! Side effects: builds `sgpath` and `kubectl-sgpath` for x86_64-unknown-linux-musl in
//! release; replaces `target/image/` (the OCI layout `oci/`, the unpacked bundle, the
//! archive) and `target/release-artifacts/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The image's name; the DaemonSet names `<IMAGE_NAME>:<version>`.
pub const IMAGE_NAME: &str = "sgpath";

/// Rust target of the static binary.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Where the binary sits in the image.
pub const ENTRYPOINT: &str = "/usr/bin/sgpath";

/// The kubectl plugin's binary (`kubectl sgpath`: kubectl runs any `kubectl-<name>` on PATH).
pub const PLUGIN: &str = "kubectl-sgpath";

/// Where the plugin sits in the image (`docker create` + `docker cp` take it out; not
/// `kubectl cp`, which needs a `tar` the image does not have).
pub const PLUGIN_IN_IMAGE: &str = "/usr/local/bin/kubectl-sgpath";

/// The krew manifest (deploy/krew/sgpath.yaml) holds this where the release tarball's
/// sha256 goes; [`krew_manifest`] fills it in.
pub const KREW_SHA256_PLACEHOLDER: &str =
    "SHA256_OF_THE_RELEASE_TARBALL_FILLED_IN_BY_CARGO_XTASK_IMAGE";

/// The image's tag: the workspace version (`sgpath --version`'s too).
pub fn tag() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `sgpath:<version>`, as the DaemonSet names it.
pub fn reference() -> String {
    format!("{IMAGE_NAME}:{}", tag())
}

/// `target/image/`: everything `image` writes.
pub fn image_dir() -> PathBuf {
    crate::target_dir().join("image")
}

/// The OCI layout (`target/image/oci`), holding the image under the ref name [`tag`].
pub fn layout_dir() -> PathBuf {
    image_dir().join("oci")
}

/// The `oci-archive` tarball of the layout.
pub fn archive_path() -> PathBuf {
    image_dir().join(format!("{IMAGE_NAME}-{}.oci.tar", tag()))
}

/// The static release binary.
pub fn binary_path() -> PathBuf {
    crate::target_dir()
        .join(MUSL_TARGET)
        .join("release")
        .join("sgpath")
}

/// The static release plugin.
pub fn plugin_binary_path() -> PathBuf {
    binary_path().with_file_name(PLUGIN)
}

/// `target/release-artifacts/`: the plugin's release files.
pub fn release_dir() -> PathBuf {
    crate::target_dir().join("release-artifacts")
}

/// The krew tarball's name: `kubectl-sgpath-v<version>-linux-amd64.tar.gz`, holding
/// `kubectl-sgpath` at its root (the manifest's `uri` ends with it).
pub fn plugin_archive_name() -> String {
    format!("{PLUGIN}-v{}-linux-amd64.tar.gz", tag())
}

/// The krew manifest `text` (deploy/krew/sgpath.yaml) with the release tarball's sha256
/// in place of [`KREW_SHA256_PLACEHOLDER`].
///
/// # Errors
/// `sha256` is not 64 lowercase hex digits, or `text` holds no placeholder.
pub fn krew_manifest(text: &str, sha256: &str) -> Result<String> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("{sha256:?} is not a sha256 (64 lowercase hex digits)");
    }
    if !text.contains(KREW_SHA256_PLACEHOLDER) {
        bail!("the krew manifest has no {KREW_SHA256_PLACEHOLDER}");
    }
    Ok(text.replace(KREW_SHA256_PLACEHOLDER, sha256))
}

/// What [`build`] made.
#[derive(Debug)]
pub struct Built {
    /// The OCI layout and the ref name in it (`oci:<layout>:<tag>` for skopeo).
    pub layout: PathBuf,
    /// `sha256:...` of the image manifest.
    pub manifest_digest: String,
    /// Bytes of the manifest, config and layers as stored (compressed).
    pub size: u64,
    /// The `oci-archive` tarball, when skopeo is installed.
    pub archive: Option<PathBuf>,
    /// The plugin's release files under [`release_dir`].
    pub release: Release,
}

/// The plugin's release files (each `.sha256` beside it, in `sha256sum` format).
#[derive(Debug)]
pub struct Release {
    /// The static `kubectl-sgpath`.
    pub binary: PathBuf,
    /// The krew tarball ([`plugin_archive_name`]).
    pub archive: PathBuf,
    /// The tarball's sha256 (hex).
    pub archive_sha256: String,
    /// deploy/krew/sgpath.yaml with [`Release::archive_sha256`] filled in.
    pub krew_manifest: PathBuf,
}

/// Builds the static binary and the image; prints where it is, its digest and size.
///
/// # Errors
/// A failed cargo build, a binary that is not static, or a failing umoci/skopeo step.
pub fn run() -> Result<()> {
    let built = build()?;
    println!("image {} in {}", reference(), built.layout.display());
    println!("digest {}", built.manifest_digest);
    println!(
        "size {} bytes (manifest, config and layer, compressed)",
        built.size
    );
    if let Some(archive) = &built.archive {
        let bytes = std::fs::metadata(archive).map(|m| m.len()).unwrap_or(0);
        println!("archive {} ({bytes} bytes)", archive.display());
        println!(
            "load on a node: ctr -n k8s.io images import --base-name {IMAGE_NAME} {}",
            archive.display()
        );
    }
    let r = &built.release;
    println!(
        "plugin {} (also {PLUGIN_IN_IMAGE} in the image)",
        r.binary.display()
    );
    println!(
        "plugin tarball {} sha256 {}",
        r.archive.display(),
        r.archive_sha256
    );
    println!(
        "krew manifest {} (kubectl krew install --manifest={} --archive={})",
        r.krew_manifest.display(),
        r.krew_manifest.display(),
        r.archive.display()
    );
    println!(
        "push: skopeo copy oci:{}:{} docker://<registry>/{}; then point the DaemonSet at it \
         (cd deploy/agent && kustomize edit set image {IMAGE_NAME}=<registry>/{})",
        built.layout.display(),
        tag(),
        reference(),
        reference()
    );
    Ok(())
}

/// Builds the static binary and the image; see [`run`].
///
/// # Errors
/// As [`run`].
pub fn build() -> Result<Built> {
    let mut cargo = cmd::cargo();
    cargo.args([
        "build",
        "--release",
        "--target",
        MUSL_TARGET,
        "-p",
        "sgpath",
    ]);
    if let Some(cc) = musl_c_compiler() {
        cargo.env("CC_x86_64_unknown_linux_musl", cc);
    }
    for (name, _) in std::env::vars_os() {
        if inherited_package_variable(&name.to_string_lossy()) {
            cargo.env_remove(&name);
        }
    }
    cmd::run(&mut cargo)?;
    let binary = binary_path();
    let plugin = plugin_binary_path();
    for b in [&binary, &plugin] {
        let elf = std::fs::read(b).with_context(|| format!("cannot read {}", b.display()))?;
        if has_interpreter(&elf)? {
            bail!(
                "{} asks for a dynamic loader (PT_INTERP): not static",
                b.display()
            );
        }
    }
    let dir = image_dir();
    let layout = layout_dir();
    let bundle = dir.join("bundle");
    for stale in [&layout, &bundle] {
        if stale.exists() {
            std::fs::remove_dir_all(stale)
                .with_context(|| format!("cannot remove {}", stale.display()))?;
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let image = format!("{}:{}", layout.display(), tag());
    umoci(&["init", "--layout", &layout.to_string_lossy()])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["unpack", "--image", &image, &bundle.to_string_lossy()])?;
    install_binary(&binary, &bundle.join("rootfs"), ENTRYPOINT)?;
    install_binary(&plugin, &bundle.join("rootfs"), PLUGIN_IN_IMAGE)?;
    umoci(&[
        "repack",
        "--image",
        &image,
        "--history.created_by",
        "cargo xtask image",
        &bundle.to_string_lossy(),
    ])?;
    let version_label = format!("org.opencontainers.image.version={}", tag());
    umoci(&[
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        "amd64",
        "--config.entrypoint",
        ENTRYPOINT,
        "--config.cmd",
        "--help",
        "--config.user",
        "0:0",
        "--config.workingdir",
        "/",
        "--config.label",
        "org.opencontainers.image.title=sgpath",
        "--config.label",
        &version_label,
        "--config.label",
        "org.opencontainers.image.description=Node-level eBPF + netlink diagnostics for EKS security groups for pods",
        "--config.label",
        "org.opencontainers.image.licenses=Apache-2.0",
        "--history.created_by",
        "cargo xtask image",
    ])?;
    umoci(&["gc", "--layout", &layout.to_string_lossy()])?;
    std::fs::remove_dir_all(&bundle).ok();
    let (manifest_digest, size) = manifest(&layout, tag())?;
    let archive = if cmd::which("skopeo").is_some() {
        let path = archive_path();
        std::fs::remove_file(&path).ok();
        cmd::run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            &format!("oci:{image}"),
            &format!("oci-archive:{}:{}", path.display(), reference()),
        ]))?;
        Some(path)
    } else {
        eprintln!("skopeo not installed: no oci-archive (cargo xtask setup installs it)");
        None
    };
    let release = release(&plugin)?;
    Ok(Built {
        layout,
        manifest_digest,
        size,
        archive,
        release,
    })
}

/// Replaces [`release_dir`] with the plugin, its krew tarball (reproducible: sorted, owner
/// 0:0, mtime 0, gzip without name or time), their sha256 and the filled krew manifest.
fn release(plugin: &Path) -> Result<Release> {
    let dir = release_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let binary = install_binary(plugin, &dir, PLUGIN)?;
    let archive = dir.join(plugin_archive_name());
    let tar = archive.with_extension("");
    cmd::run(
        Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-cf",
            ])
            .arg(&tar)
            .arg("-C")
            .arg(&dir)
            .arg(PLUGIN),
    )?;
    cmd::run(Command::new("gzip").args(["-n", "-9", "-f"]).arg(&tar))?;
    let sha256 = |file: &Path| -> Result<String> {
        let name = file.file_name().expect("a file name");
        let line = cmd::output(Command::new("sha256sum").arg(name).current_dir(&dir))?;
        std::fs::write(
            file.with_file_name(format!("{}.sha256", name.to_string_lossy())),
            &line,
        )?;
        Ok(line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned())
    };
    sha256(&binary)?;
    let archive_sha256 = sha256(&archive)?;
    let source = crate::workspace_root().join("deploy/krew/sgpath.yaml");
    let text = std::fs::read_to_string(&source)
        .with_context(|| format!("cannot read {}", source.display()))?;
    let manifest = dir.join("sgpath.yaml");
    std::fs::write(&manifest, krew_manifest(&text, &archive_sha256)?)?;
    Ok(Release {
        binary,
        archive,
        archive_sha256,
        krew_manifest: manifest,
    })
}

/// Whether `name` is one of the variables cargo sets for the package whose process this
/// is (`cargo run -p xtask`, a test binary of sgpath-tests): `CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_NAME`, `OUT_DIR`... `ring`'s build script declares
/// `rerun-if-env-changed` on several of them, and cargo compares those with its own
/// environment, so a build started from `cargo xtask image`, from the image test or from
/// another clone's path rebuilt ring and everything above it (rustls, kube: minutes) each
/// time. Removed, every start sees the same environment and a warm build stays warm.
fn inherited_package_variable(name: &str) -> bool {
    [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_CFG_",
        "OUT_DIR",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// The C compiler for `ring`'s C and assembly (kube's rustls) on the musl target, when
/// neither the environment names one nor `x86_64-linux-musl-gcc` (what cc-rs looks for) is
/// on PATH: Debian's `musl-gcc` (musl-tools) if installed, else the host `gcc`, whose
/// objects rustc links with its self-contained musl (the result is checked static).
fn musl_c_compiler() -> Option<&'static str> {
    let named = [
        "CC_x86_64_unknown_linux_musl",
        "CC_x86_64-unknown-linux-musl",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    if named || cmd::which("x86_64-linux-musl-gcc").is_some() {
        None
    } else if cmd::which("musl-gcc").is_some() {
        Some("musl-gcc")
    } else {
        Some("gcc")
    }
}

fn umoci(args: &[&str]) -> Result<()> {
    cmd::run(Command::new("umoci").args(args))
}

/// Copies the binary to `<root>/<path>`, 0755; returns where it went.
fn install_binary(binary: &Path, root: &Path, path: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let target = root.join(path.trim_start_matches('/'));
    let parent = target.parent().expect("a path under root");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    std::fs::copy(binary, &target)
        .with_context(|| format!("cannot copy {} to {}", binary.display(), target.display()))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
    Ok(target)
}

/// Whether an ELF64 little-endian file has a PT_INTERP program header (a dynamic loader):
/// a static or static-pie binary has none.
///
/// # Errors
/// Not an ELF64 little-endian file, or truncated program headers.
pub fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not an ELF64 little-endian file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .map(|o| {
            elf.get(o..o + 4)
                .map(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")))
                .context("program header beyond the end of the file")
        })
        .try_fold(false, |found, ty| Ok(found || ty? == PT_INTERP))
}

/// The digest and stored size (manifest + config + layers) of the image `tag` in `layout`.
///
/// # Errors
/// An unreadable or malformed `index.json` or manifest, or no manifest for `tag`.
pub fn manifest(layout: &Path, tag: &str) -> Result<(String, u64)> {
    let read = |p: PathBuf| -> Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
    };
    let index = read(layout.join("index.json"))?;
    let desc = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("no manifest named {tag} in {}", layout.display()))?;
    let digest = desc["digest"]
        .as_str()
        .context("manifest without digest")?
        .to_owned();
    let blob = |d: &str| layout.join("blobs").join(d.replace(':', "/"));
    let manifest = read(blob(&digest))?;
    let size = desc["size"].as_u64().unwrap_or(0)
        + manifest["config"]["size"].as_u64().unwrap_or(0)
        + manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["size"].as_u64())
            .sum::<u64>();
    Ok((digest, size))
}

/// The image config of `tag` in `layout` (entrypoint, user, labels...).
///
/// # Errors
/// As [`manifest`].
pub fn config(layout: &Path, tag: &str) -> Result<serde_json::Value> {
    let (digest, _) = manifest(layout, tag)?;
    let blob = |d: &str| layout.join("blobs").join(d.replace(':', "/"));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(blob(&digest))?)?;
    let config = manifest["config"]["digest"]
        .as_str()
        .context("manifest without config")?;
    Ok(serde_json::from_str(&std::fs::read_to_string(blob(
        config,
    ))?)?)
}

/// The paths (without a leading `/` or `./`, directories ending in `/`, not the root `.`,
/// e.g. `usr/bin/sgpath`) in the layers of `tag` in
/// `layout`, read by `tar` from the gzip'd layer blobs.
///
/// # Errors
/// As [`manifest`], or a layer `tar` cannot list.
pub fn layer_files(layout: &Path, tag: &str) -> Result<Vec<String>> {
    let (digest, _) = manifest(layout, tag)?;
    let blob = |d: &str| layout.join("blobs").join(d.replace(':', "/"));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(blob(&digest))?)?;
    let mut files = Vec::new();
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let d = layer["digest"].as_str().context("layer without digest")?;
        let list = cmd::output(Command::new("tar").arg("-tzf").arg(blob(d)))?;
        files.extend(
            list.lines()
                .map(|l| l.trim_start_matches("./"))
                .filter(|l| !l.is_empty() && *l != ".")
                .map(str::to_owned),
        );
    }
    Ok(files)
}

/// Copies the file `path` (e.g. `usr/bin/sgpath`) out of the layers of `tag` in `layout`
/// to `dest`, as a runtime would unpack it: the image's own copy, not the build's.
///
/// # Errors
/// As [`manifest`], or no layer holds `path`.
pub fn extract(layout: &Path, tag: &str, path: &str, dest: &Path) -> Result<()> {
    let (digest, _) = manifest(layout, tag)?;
    let blob = |d: &str| layout.join("blobs").join(d.replace(':', "/"));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(blob(&digest))?)?;
    let path = path.trim_start_matches('/');
    let dir = dest.parent().context("a destination with a directory")?;
    let unpacked = dir.join(format!(".extract-{}", std::process::id()));
    std::fs::create_dir_all(&unpacked)?;
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let d = layer["digest"].as_str().context("layer without digest")?;
        // umoci writes members as `usr/bin/sgpath` or `./usr/bin/sgpath`: ask for both.
        for member in [path.to_owned(), format!("./{path}")] {
            let ok = Command::new("tar")
                .arg("-xzf")
                .arg(blob(d))
                .arg("-C")
                .arg(&unpacked)
                .arg(&member)
                .stderr(std::process::Stdio::null())
                .status()?
                .success();
            if ok {
                std::fs::rename(unpacked.join(path), dest)
                    .with_context(|| format!("moving {path} to {}", dest.display()))?;
                std::fs::remove_dir_all(&unpacked).ok();
                return Ok(());
            }
        }
    }
    std::fs::remove_dir_all(&unpacked).ok();
    bail!("no layer of {tag} in {} holds {path}", layout.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(types: &[u32]) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56 * types.len()];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            f[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        f
    }

    #[test]
    fn a_dynamic_loader_makes_a_binary_dynamic() {
        // PT_PHDR, PT_INTERP, PT_LOAD: a glibc binary.
        assert!(has_interpreter(&elf(&[6, 3, 1])).unwrap());
        // PT_LOAD, PT_DYNAMIC, PT_GNU_STACK: static-pie (musl) has PT_DYNAMIC, no PT_INTERP.
        assert!(!has_interpreter(&elf(&[1, 2, 0x6474_e551])).unwrap());
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        let mut truncated = elf(&[1, 3]);
        truncated.truncate(100);
        assert!(has_interpreter(&truncated).is_err());
    }

    #[test]
    fn package_variables_are_not_passed_to_the_release_build() {
        for v in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_PRE",
            "OUT_DIR",
        ] {
            assert!(inherited_package_variable(v), "{v}");
        }
        // What the build needs stays: which cargo, where the target directory is.
        for v in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CC_x86_64_unknown_linux_musl",
            "PATH",
        ] {
            assert!(!inherited_package_variable(v), "{v}");
        }
    }

    #[test]
    fn the_krew_manifest_takes_only_a_sha256() {
        let text = format!("sha256: {KREW_SHA256_PLACEHOLDER}\n");
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            krew_manifest(&text, &hex).unwrap(),
            format!("sha256: {hex}\n")
        );
        assert!(krew_manifest(&text, &hex[1..]).is_err());
        assert!(krew_manifest(&text, &hex.to_uppercase()).is_err());
        assert!(krew_manifest("sha256: \n", &hex).is_err());
    }

    #[test]
    fn the_daemonset_runs_this_image() {
        let ds =
            std::fs::read_to_string(crate::workspace_root().join("deploy/agent/daemonset.yaml"))
                .unwrap();
        assert!(
            ds.lines()
                .any(|l| l.trim() == format!("image: {}", reference())),
            "deploy/agent/daemonset.yaml does not run {}",
            reference()
        );
    }
}
