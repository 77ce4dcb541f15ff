//! `cargo xtask image`: the container image of the DaemonSet (`deploy/agent/daemonset.yaml`
//! runs `sgpath:<version>`). A static `sgpath` (musl, the eBPF object embedded by
//! `agent/build.rs`) is the image's only file, at `/usr/bin/sgpath`; the image is built
//! without a daemon by `umoci` as an OCI layout, and `skopeo` packs the layout into an
//! `oci-archive` tarball for `ctr images import` or a registry push.
//!
//! No base image: the agent needs no libc, no shell, no CA certificates (it talks to the
//! API server with the in-cluster service account and to the kernel) and no `/etc/passwd`
//! (it runs as UID 0; see the DaemonSet's securityContext for why not another user).
//!
//! Side effects: builds `sgpath` for x86_64-unknown-linux-musl in release; replaces
//! `target/image/` (the OCI layout `oci/`, the unpacked bundle, the archive).

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
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "--target",
        MUSL_TARGET,
        "-p",
        "sgpath",
    ]))?;
    let binary = binary_path();
    let elf =
        std::fs::read(&binary).with_context(|| format!("cannot read {}", binary.display()))?;
    if has_interpreter(&elf)? {
        bail!(
            "{} asks for a dynamic loader (PT_INTERP): not static",
            binary.display()
        );
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
    install_binary(&binary, &bundle.join("rootfs"))?;
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
    Ok(Built {
        layout,
        manifest_digest,
        size,
        archive,
    })
}

fn umoci(args: &[&str]) -> Result<()> {
    cmd::run(Command::new("umoci").args(args))
}

/// Copies the binary to `<rootfs>/usr/bin/sgpath`, root-owned, 0755.
fn install_binary(binary: &Path, rootfs: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let target = rootfs.join(ENTRYPOINT.trim_start_matches('/'));
    let parent = target.parent().expect("ENTRYPOINT has a directory");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    std::fs::copy(binary, &target)
        .with_context(|| format!("cannot copy {} to {}", binary.display(), target.display()))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
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
