//! Builds `agent-ebpf` for bpfel-unknown-none with the nightly toolchain and bpf-linker
//! (both installed by `cargo xtask setup`), so the agent embeds the object from
//! `$OUT_DIR/sgpath-ebpf`.
fn main() -> aya_build::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    let ebpf = aya_build::Package {
        name: "sgpath-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}
