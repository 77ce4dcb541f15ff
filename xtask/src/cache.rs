//! The shared target directory (`.cargo/config.toml`: `/opt/sgpath/target`): one for every
//! clone on the machine, so that a CI run in a fresh clone rebuilds only the workspace's own
//! crates. Cargo names a workspace crate's artifacts by its path relative to the workspace,
//! so every clone reuses the same files (a fresh clone's newer mtimes make cargo rebuild
//! them); what accumulates is old versions of dependencies after `Cargo.lock` changes.
//! [`prune`] empties the directory when it passes [`LIMIT_BYTES`].
//!
//! Side effects: [`prune`] may remove the whole target directory.

use anyhow::{Context, Result};
use std::path::Path;

/// Size beyond which `cargo xtask test` empties the target directory before it builds (the
/// run is then a cold one). A complete build of the workspace, clippy's and the VM runs'
/// files included, takes about 4 GiB (README, "Build cache").
pub const LIMIT_BYTES: u64 = 40 << 30;

/// Empties the target directory if it holds more than [`LIMIT_BYTES`].
pub fn prune() -> Result<()> {
    let dir = crate::target_dir();
    let size = du(&dir);
    if size <= LIMIT_BYTES {
        println!(
            "target directory: {:.1} GiB (emptied beyond {} GiB)",
            size as f64 / f64::from(1 << 30),
            LIMIT_BYTES >> 30
        );
        return Ok(());
    }
    println!(
        "!!!!!!!! target directory {} holds {:.1} GiB, over {} GiB: emptying it (this run \
         builds everything from nothing) !!!!!!!!",
        dir.display(),
        size as f64 / f64::from(1 << 30),
        LIMIT_BYTES >> 30
    );
    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// Bytes of the regular files under `path` (symlinks not followed; unreadable parts skipped).
fn du(path: &Path) -> u64 {
    let Ok(meta) = path.symlink_metadata() else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}
