//! Library half of `cargo xtask`: machine setup, Debian kernels for VMs, the virtme-ng VM
//! runner, the test matrix, the lab and the container image. `main.rs` only parses the command line.
//!
//! Side effects live in the modules (installing packages, writing under /var/cache/sgpath,
//! /lib/modules and `target/`); this file only computes paths.

pub mod arch;
pub mod cache;
pub mod cmd;
pub mod cni_plugin;
pub mod control_plane;
pub mod cpio;
pub mod guest_root;
pub mod image;
pub mod kernel;
pub mod lab;
pub mod setup;
pub mod test;
pub mod vm;
pub mod vm_arm64;

use std::path::PathBuf;

/// The workspace root (the directory holding the top-level `Cargo.toml`), computed at
/// compile time from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask
        .parent()
        .expect("xtask sits one level below the workspace root")
        .to_path_buf()
}

/// The workspace's cargo target directory: `$CARGO_TARGET_DIR` at run time if set, else as
/// it was when this crate was built (`.cargo/config.toml` sets it for every build: the shared
/// `/opt/sgpath/target`), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(Into::into));
    match dir {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Path of the debug `sgpath` agent binary (built by `cargo build --workspace --bins`).
pub fn sgpath_bin() -> PathBuf {
    target_dir().join("debug").join("sgpath")
}
