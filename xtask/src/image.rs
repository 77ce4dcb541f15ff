//! `cargo xtask image`: the container image of the DaemonSet (`deploy/agent/daemonset.yaml`
//! runs `sgpath:<version>`) and the release artifacts of the kubectl plugin, for every
//! [`Arch`]: one OCI image index with a `linux/amd64` and a `linux/arm64` manifest, so one
//! DaemonSet runs on x86_64 and Graviton nodes alike. In each image a static `sgpath`
//! (musl, the eBPF object embedded by `agent/build.rs`) at `/usr/bin/sgpath` and the static
//! plugin `kubectl-sgpath` at `/usr/local/bin/kubectl-sgpath` (for `docker cp`) are the only
//! files; each is built without a daemon by `umoci` into one OCI layout, the index that
//! names both is written here, and `skopeo` packs the layout into an `oci-archive` tarball
//! for `ctr images import` or a registry push. Every binary is checked: static (no
//! `PT_INTERP`) and of its platform's ELF machine. The plugin also goes to
//! `target/release-artifacts/`: per platform the binary, a krew tarball, their `.sha256`,
//! and `deploy/krew/sgpath.yaml` with every tarball's sha256 filled in.
//!
//! No base image: the agent needs no libc, no shell, no CA bundle (the API server's CA
//! comes with the in-cluster service account; AWS's endpoints are checked against
//! Mozilla's roots compiled into the binary, `webpki-roots`, and a private CA is added
//! with `SSL_CERT_FILE` pointing at a mounted PEM bundle) and no `/etc/passwd` (it runs as
//! UID 0; see the DaemonSet's securityContext for why not another user).
//!
//! Side effects: builds `sgpath` and `kubectl-sgpath` for every [`Arch::musl_target`] in
//! release (arm64 cross-compiled with Debian's gcc-aarch64-linux-gnu); replaces
//! `target/image/` (the OCI layout `oci/`, the unpacked bundle, the archive) and
//! `target/release-artifacts/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::arch::Arch;
use crate::cmd;

/// The image's name; the DaemonSet names `<IMAGE_NAME>:<version>`.
pub const IMAGE_NAME: &str = "sgpath";

/// Where the binary sits in the image.
pub const ENTRYPOINT: &str = "/usr/bin/sgpath";

/// The kubectl plugin's binary (`kubectl sgpath`: kubectl runs any `kubectl-<name>` on PATH).
pub const PLUGIN: &str = "kubectl-sgpath";

/// Where the plugin sits in the image (`docker create` + `docker cp` take it out; not
/// `kubectl cp`, which needs a `tar` the image does not have).
pub const PLUGIN_IN_IMAGE: &str = "/usr/local/bin/kubectl-sgpath";

/// OCI media types of the index and of each platform's manifest.
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// What the krew manifest (deploy/krew/sgpath.yaml) holds where the `linux/<arch>` release
/// tarball's sha256 goes; [`krew_manifest`] fills each in.
pub fn krew_sha256_placeholder(arch: Arch) -> String {
    format!(
        "SHA256_OF_THE_LINUX_{}_TARBALL_FILLED_IN_BY_CARGO_XTASK_IMAGE",
        arch.name().to_uppercase()
    )
}

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

/// The OCI layout (`target/image/oci`), holding the image index under the ref name [`tag`].
pub fn layout_dir() -> PathBuf {
    image_dir().join("oci")
}

/// The `oci-archive` tarball of the layout.
pub fn archive_path() -> PathBuf {
    image_dir().join(format!("{IMAGE_NAME}-{}.oci.tar", tag()))
}

/// The static release binary of `arch`.
pub fn binary_path(arch: Arch) -> PathBuf {
    crate::target_dir()
        .join(arch.musl_target())
        .join("release")
        .join("sgpath")
}

/// The static release plugin of `arch`.
pub fn plugin_binary_path(arch: Arch) -> PathBuf {
    binary_path(arch).with_file_name(PLUGIN)
}

/// `target/release-artifacts/`: the plugin's release files.
pub fn release_dir() -> PathBuf {
    crate::target_dir().join("release-artifacts")
}

/// The krew tarball's name: `kubectl-sgpath-v<version>-linux-<arch>.tar.gz`, holding
/// `kubectl-sgpath` at its root (the manifest's `uri` ends with it).
pub fn plugin_archive_name(arch: Arch) -> String {
    format!("{PLUGIN}-v{}-linux-{arch}.tar.gz", tag())
}

/// The krew manifest `text` (deploy/krew/sgpath.yaml) with each platform's release tarball
/// sha256 in place of its [`krew_sha256_placeholder`].
///
/// # Errors
/// A sha256 that is not 64 lowercase hex digits, a platform of [`Arch::ALL`] without its
/// sha256, or `text` without a platform's placeholder.
pub fn krew_manifest(text: &str, sha256: &[(Arch, &str)]) -> Result<String> {
    let mut out = text.to_owned();
    for arch in Arch::ALL {
        let Some((_, sum)) = sha256.iter().find(|(a, _)| *a == arch) else {
            bail!("no sha256 for the linux/{arch} tarball");
        };
        if sum.len() != 64
            || !sum
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            bail!("{sum:?} is not a sha256 (64 lowercase hex digits)");
        }
        let placeholder = krew_sha256_placeholder(arch);
        if !out.contains(&placeholder) {
            bail!("the krew manifest has no {placeholder}");
        }
        out = out.replace(&placeholder, sum);
    }
    Ok(out)
}

/// What [`build`] made.
#[derive(Debug)]
pub struct Built {
    /// The OCI layout; its ref name [`tag`] is the image index (`oci:<layout>:<tag>`).
    pub layout: PathBuf,
    /// `sha256:...` of the image index.
    pub index_digest: String,
    /// Each platform's image manifest digest, in [`Arch::ALL`] order.
    pub manifests: Vec<(Arch, String)>,
    /// Bytes of the index, manifests, configs and layers as stored (compressed).
    pub size: u64,
    /// The `oci-archive` tarball, when skopeo is installed.
    pub archive: Option<PathBuf>,
    /// The plugin's release files under [`release_dir`].
    pub release: Release,
}

/// The plugin's release files of one platform (each `.sha256` beside it, `sha256sum` format).
#[derive(Debug)]
pub struct PluginRelease {
    /// Its architecture (the platform is `linux/<arch>`).
    pub arch: Arch,
    /// The static `kubectl-sgpath`, under `linux-<arch>/`.
    pub binary: PathBuf,
    /// The krew tarball ([`plugin_archive_name`]).
    pub archive: PathBuf,
    /// The tarball's sha256 (hex).
    pub archive_sha256: String,
}

/// The plugin's release files.
#[derive(Debug)]
pub struct Release {
    /// One per platform, in [`Arch::ALL`] order.
    pub platforms: Vec<PluginRelease>,
    /// deploy/krew/sgpath.yaml with every tarball's sha256 filled in.
    pub krew_manifest: PathBuf,
}

/// Builds the static binaries and the image; prints where it is, its digests and size.
///
/// # Errors
/// A failed cargo build, a binary that is not static or not of its platform, or a failing
/// umoci/skopeo step.
pub fn run() -> Result<()> {
    let built = build()?;
    println!("image {} in {}", reference(), built.layout.display());
    println!("index digest {}", built.index_digest);
    for (arch, digest) in &built.manifests {
        println!("  linux/{arch} manifest {digest}");
    }
    println!(
        "size {} bytes (index, manifests, configs and layers, compressed)",
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
    for p in &r.platforms {
        println!(
            "plugin linux/{} {} (also {PLUGIN_IN_IMAGE} in the image)",
            p.arch,
            p.binary.display()
        );
        println!(
            "plugin tarball {} sha256 {}",
            p.archive.display(),
            p.archive_sha256
        );
    }
    println!(
        "krew manifest {} (kubectl krew install --manifest={} --archive=<this platform's tarball>)",
        r.krew_manifest.display(),
        r.krew_manifest.display(),
    );
    println!(
        "push: skopeo copy --all oci:{}:{} docker://<registry>/{}; then point the DaemonSet at it \
         (cd deploy/agent && kustomize edit set image {IMAGE_NAME}=<registry>/{})",
        built.layout.display(),
        tag(),
        reference(),
        reference()
    );
    Ok(())
}

/// Builds `sgpath` and `kubectl-sgpath` for `arch` in release and checks both: static (no
/// program interpreter) and of `arch`'s ELF machine. Cheap when nothing changed; the arm64
/// VM stage runs the `sgpath` this builds, the very file the image's arm64 layer holds.
///
/// # Errors
/// A failed cargo build, or a binary that is not static or not of `arch`.
pub fn build_binaries(arch: Arch) -> Result<()> {
    let mut cargo = cmd::cargo();
    cargo.args([
        "build",
        "--release",
        "--target",
        arch.musl_target(),
        "-p",
        "sgpath",
    ]);
    musl_build(&mut cargo, arch);
    cmd::run(&mut cargo)?;
    for b in [binary_path(arch), plugin_binary_path(arch)] {
        check_binary(&b, arch)?;
    }
    Ok(())
}

/// Prepares a cargo command building for `arch`'s musl target: [`musl_build_env`], and none
/// of the package variables of the process that starts it ([`inherited_package_variable`]).
pub fn musl_build(cargo: &mut Command, arch: Arch) {
    for (name, value) in musl_build_env(arch) {
        cargo.env(name, value);
    }
    for (name, _) in std::env::vars_os() {
        if inherited_package_variable(&name.to_string_lossy()) {
            cargo.env_remove(&name);
        }
    }
    // Cargo's fingerprints hold it. The test runner sets it for libtest's `--report-time`
    // (`run_bins`), so a build started from the image test had it and one from the arm64
    // VM stage or `cargo xtask image` did not: every dependency of the release build was
    // compiled again (13 min for aarch64 on a loaded machine). Always set, as the image
    // test (and the cache it left) always had it; nothing is built with unstable features.
    cargo.env("RUSTC_BOOTSTRAP", "1");
}

/// Fails unless `path` is a static ELF binary for `arch`.
///
/// # Errors
/// Unreadable, not ELF64 little-endian, a program interpreter, or another machine.
pub fn check_binary(path: &Path, arch: Arch) -> Result<()> {
    let elf = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let machine = crate::arch::elf_machine(&elf).with_context(|| path.display().to_string())?;
    if machine != arch.elf_machine() {
        bail!(
            "{} has ELF machine {machine}, not {} ({arch})",
            path.display(),
            arch.elf_machine()
        );
    }
    if has_interpreter(&elf)? {
        bail!(
            "{} asks for a dynamic loader (PT_INTERP): not static",
            path.display()
        );
    }
    Ok(())
}

/// Builds the static binaries of every [`Arch`] and the image index; see [`run`].
///
/// # Errors
/// As [`run`].
pub fn build() -> Result<Built> {
    for arch in Arch::ALL {
        build_binaries(arch)?;
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
    umoci(&["init", "--layout", &layout.to_string_lossy()])?;
    for arch in Arch::ALL {
        platform_image(&layout, &bundle, arch)?;
    }
    umoci(&["gc", "--layout", &layout.to_string_lossy()])?;
    let (index_digest, manifests) = write_index(&layout)?;
    let size = Arch::ALL
        .iter()
        .map(|a| manifest(&layout, tag(), *a).map(|(_, s)| s))
        .sum::<Result<u64>>()?
        + blob_size(&layout, &index_digest)?;
    let archive = if cmd::which("skopeo").is_some() {
        let path = archive_path();
        std::fs::remove_file(&path).ok();
        cmd::run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--all",
            &format!("oci:{}:{}", layout.display(), tag()),
            &format!("oci-archive:{}:{}", path.display(), reference()),
        ]))?;
        Some(path)
    } else {
        eprintln!("skopeo not installed: no oci-archive (cargo xtask setup installs it)");
        None
    };
    let release = release()?;
    Ok(Built {
        layout,
        index_digest,
        manifests,
        size,
        archive,
        release,
    })
}

/// The ref name of `arch`'s image while [`build`] makes it; [`write_index`] replaces these
/// refs with the index's.
fn platform_ref(arch: Arch) -> String {
    format!("{}-{arch}", tag())
}

/// One platform's image in `layout` under [`platform_ref`]: one layer with the two
/// binaries, the config for `linux/<arch>`.
fn platform_image(layout: &Path, bundle: &Path, arch: Arch) -> Result<()> {
    let image = format!("{}:{}", layout.display(), platform_ref(arch));
    umoci(&["new", "--image", &image])?;
    umoci(&["unpack", "--image", &image, &bundle.to_string_lossy()])?;
    install_binary(&binary_path(arch), &bundle.join("rootfs"), ENTRYPOINT)?;
    install_binary(
        &plugin_binary_path(arch),
        &bundle.join("rootfs"),
        PLUGIN_IN_IMAGE,
    )?;
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
        arch.name(),
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
    std::fs::remove_dir_all(bundle).ok();
    Ok(())
}

/// Writes the image index naming each platform's manifest and makes it the layout's only
/// ref ([`tag`]); returns its digest and the manifests'.
fn write_index(layout: &Path) -> Result<(String, Vec<(Arch, String)>)> {
    let path = layout.join("index.json");
    let top = read_json(&path)?;
    let mut manifests = Vec::new();
    let mut entries = Vec::new();
    for arch in Arch::ALL {
        let desc = ref_descriptor(&top, &platform_ref(arch))
            .with_context(|| format!("umoci made no image for linux/{arch}"))?;
        let digest = desc["digest"].as_str().context("manifest without digest")?;
        entries.push(serde_json::json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": digest,
            "size": desc["size"],
            "platform": {"architecture": arch.name(), "os": "linux"},
        }));
        manifests.push((arch, digest.to_owned()));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": entries,
    });
    let bytes = serde_json::to_vec(&index)?;
    let tmp = layout.join("blobs/sha256/.index.tmp");
    std::fs::write(&tmp, &bytes)?;
    let hex = cmd::output(Command::new("sha256sum").arg(&tmp))?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex))?;
    let digest = format!("sha256:{hex}");
    let top = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": INDEX_MEDIA_TYPE,
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag()},
        }],
    });
    std::fs::write(&path, serde_json::to_vec(&top)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((digest, manifests))
}

/// Replaces [`release_dir`] with, per platform, the plugin, its krew tarball (reproducible:
/// sorted, owner 0:0, mtime 0, gzip without name or time), their sha256; and the filled krew
/// manifest.
fn release() -> Result<Release> {
    let dir = release_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let sha256 = |file: &Path| -> Result<String> {
        let name = file.file_name().expect("a file name");
        let parent = file.parent().expect("a directory");
        let line = cmd::output(Command::new("sha256sum").arg(name).current_dir(parent))?;
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
    let mut platforms = Vec::new();
    for arch in Arch::ALL {
        // Each tarball holds `kubectl-sgpath` at its root: one directory per platform.
        let platform_dir = dir.join(format!("linux-{arch}"));
        let binary = install_binary(&plugin_binary_path(arch), &platform_dir, PLUGIN)?;
        let archive = dir.join(plugin_archive_name(arch));
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
                .arg(&platform_dir)
                .arg(PLUGIN),
        )?;
        cmd::run(Command::new("gzip").args(["-n", "-9", "-f"]).arg(&tar))?;
        sha256(&binary)?;
        let archive_sha256 = sha256(&archive)?;
        platforms.push(PluginRelease {
            arch,
            binary,
            archive,
            archive_sha256,
        });
    }
    let source = crate::workspace_root().join("deploy/krew/sgpath.yaml");
    let text = std::fs::read_to_string(&source)
        .with_context(|| format!("cannot read {}", source.display()))?;
    let sums: Vec<(Arch, &str)> = platforms
        .iter()
        .map(|p| (p.arch, p.archive_sha256.as_str()))
        .collect();
    let manifest = dir.join("sgpath.yaml");
    std::fs::write(&manifest, krew_manifest(&text, &sums)?)?;
    Ok(Release {
        platforms,
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

/// The environment of the release build for `arch`: a C compiler for `ring`'s C and
/// assembly (kube's rustls) and, cross-building, the linker, each only where the environment
/// names none.
///
/// Native (x86_64): when `x86_64-linux-musl-gcc` (what cc-rs looks for) is not on PATH,
/// Debian's `musl-gcc` (musl-tools) if installed, else the host `gcc`, whose objects rustc
/// links with its self-contained musl. Cross (arm64): Debian's `aarch64-linux-gnu-gcc` for
/// both; rustc still links its own self-contained musl (crt objects and libc.a), so the
/// glibc cross toolchain only compiles ring and drives `ld`. Either result is checked
/// static and of its machine by [`check_binary`].
fn musl_build_env(arch: Arch) -> Vec<(String, String)> {
    let named = |v: &str| std::env::var_os(v).is_some();
    let cc = arch.cc_variable();
    let mut env = Vec::new();
    match arch.cross_gcc() {
        None => {
            let target_cc = format!("{}-gcc", arch.musl_target().replace("-unknown", ""));
            let found = named(&cc)
                || named(&format!("CC_{}", arch.musl_target()))
                || cmd::which(&target_cc).is_some();
            if !found {
                let gcc = if cmd::which("musl-gcc").is_some() {
                    "musl-gcc"
                } else {
                    "gcc"
                };
                env.push((cc, gcc.to_owned()));
            }
        }
        Some(gcc) => {
            if !named(&cc) {
                env.push((cc, gcc.to_owned()));
            }
            let linker = arch.linker_variable();
            if !named(&linker) {
                env.push((linker, gcc.to_owned()));
            }
        }
    }
    env
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

fn read_json(p: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs").join(digest.replace(':', "/"))
}

fn blob_size(layout: &Path, digest: &str) -> Result<u64> {
    let p = blob_path(layout, digest);
    Ok(std::fs::metadata(&p)
        .with_context(|| format!("cannot read {}", p.display()))?
        .len())
}

/// The descriptor named `tag` in a layout's `index.json`.
fn ref_descriptor<'a>(top: &'a serde_json::Value, tag: &str) -> Option<&'a serde_json::Value> {
    top["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
}

/// The platforms of the image index `tag` in `layout`, with their manifest digests, in the
/// index's order.
///
/// # Errors
/// An unreadable or malformed `index.json` or index blob, no ref `tag`, or a ref that is
/// not an image index, or an entry of an unknown platform.
pub fn platforms(layout: &Path, tag: &str) -> Result<Vec<(Arch, String)>> {
    let top = read_json(&layout.join("index.json"))?;
    let desc = ref_descriptor(&top, tag)
        .with_context(|| format!("no ref named {tag} in {}", layout.display()))?;
    if desc["mediaType"] != INDEX_MEDIA_TYPE {
        bail!(
            "{tag} in {} is a {}, not an image index",
            layout.display(),
            desc["mediaType"]
        );
    }
    let digest = desc["digest"].as_str().context("index without digest")?;
    let index = read_json(&blob_path(layout, digest))?;
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            if m["platform"]["os"] != "linux" {
                bail!("an index entry for os {}, not linux", m["platform"]["os"]);
            }
            let arch = Arch::parse(m["platform"]["architecture"].as_str().unwrap_or_default())?;
            let digest = m["digest"].as_str().context("manifest without digest")?;
            Ok((arch, digest.to_owned()))
        })
        .collect()
}

/// The digest and stored size (manifest + config + layers) of the `linux/<arch>` image of
/// the index `tag` in `layout`.
///
/// # Errors
/// As [`platforms`], or no manifest for `arch`.
pub fn manifest(layout: &Path, tag: &str, arch: Arch) -> Result<(String, u64)> {
    let (_, digest) = platforms(layout, tag)?
        .into_iter()
        .find(|(a, _)| *a == arch)
        .with_context(|| {
            format!(
                "the index {tag} in {} has no linux/{arch}",
                layout.display()
            )
        })?;
    let manifest = read_json(&blob_path(layout, &digest))?;
    let size = blob_size(layout, &digest)?
        + manifest["config"]["size"].as_u64().unwrap_or(0)
        + manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["size"].as_u64())
            .sum::<u64>();
    Ok((digest, size))
}

/// The image manifest of `linux/<arch>` in the index `tag`.
fn platform_manifest(layout: &Path, tag: &str, arch: Arch) -> Result<serde_json::Value> {
    let (digest, _) = manifest(layout, tag, arch)?;
    read_json(&blob_path(layout, &digest))
}

/// The image config of `linux/<arch>` in the index `tag` in `layout` (entrypoint, user,
/// labels, architecture...).
///
/// # Errors
/// As [`manifest`].
pub fn config(layout: &Path, tag: &str, arch: Arch) -> Result<serde_json::Value> {
    let manifest = platform_manifest(layout, tag, arch)?;
    let config = manifest["config"]["digest"]
        .as_str()
        .context("manifest without config")?;
    read_json(&blob_path(layout, config))
}

/// The paths (without a leading `/` or `./`, directories ending in `/`, not the root `.`,
/// e.g. `usr/bin/sgpath`) in the layers of `linux/<arch>` of the index `tag` in `layout`,
/// read by `tar` from the gzip'd layer blobs.
///
/// # Errors
/// As [`manifest`], or a layer `tar` cannot list.
pub fn layer_files(layout: &Path, tag: &str, arch: Arch) -> Result<Vec<String>> {
    let manifest = platform_manifest(layout, tag, arch)?;
    let mut files = Vec::new();
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let d = layer["digest"].as_str().context("layer without digest")?;
        let list = cmd::output(Command::new("tar").arg("-tzf").arg(blob_path(layout, d)))?;
        files.extend(
            list.lines()
                .map(|l| l.trim_start_matches("./"))
                .filter(|l| !l.is_empty() && *l != ".")
                .map(str::to_owned),
        );
    }
    Ok(files)
}

/// Copies the file `path` (e.g. `usr/bin/sgpath`) out of the layers of `linux/<arch>` of the
/// index `tag` in `layout` to `dest`, as a runtime would unpack it: the image's own copy,
/// not the build's.
///
/// # Errors
/// As [`manifest`], or no layer holds `path`.
pub fn extract(layout: &Path, tag: &str, arch: Arch, path: &str, dest: &Path) -> Result<()> {
    let manifest = platform_manifest(layout, tag, arch)?;
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
                .arg(blob_path(layout, d))
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
    bail!(
        "no layer of linux/{arch} of {tag} in {} holds {path}",
        layout.display()
    )
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
            "CC_aarch64_unknown_linux_musl",
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER",
            "PATH",
        ] {
            assert!(!inherited_package_variable(v), "{v}");
        }
    }

    #[test]
    fn the_krew_manifest_takes_only_a_sha256() {
        let text = format!(
            "amd64: {}\narm64: {}\n",
            krew_sha256_placeholder(Arch::Amd64),
            krew_sha256_placeholder(Arch::Arm64)
        );
        let (a, b) = ("0123456789abcdef".repeat(4), "fedcba9876543210".repeat(4));
        let both = [(Arch::Amd64, a.as_str()), (Arch::Arm64, b.as_str())];
        assert_eq!(
            krew_manifest(&text, &both).unwrap(),
            format!("amd64: {a}\narm64: {b}\n")
        );
        assert!(krew_manifest(&text, &both[..1]).is_err(), "arm64 missing");
        assert!(krew_manifest(&text, &[(Arch::Amd64, &a[1..]), both[1]]).is_err());
        let upper = a.to_uppercase();
        assert!(krew_manifest(&text, &[(Arch::Amd64, &upper), both[1]]).is_err());
        assert!(krew_manifest("sha256: \n", &both).is_err());
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
