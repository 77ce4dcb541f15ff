//! The CPU architectures sgpath is built and tested for: x86_64 (most EKS nodes) and arm64
//! (Graviton). One enum carries every per-architecture name (Rust target, OCI and krew
//! platform, ELF machine, Debian and Go architecture, cross tools), so no string like
//! "aarch64" is compared anywhere else. No side effects.
//!
//! Built on this x86_64 machine: arm64 with Debian's `gcc-aarch64-linux-gnu` as the C
//! compiler of `ring` and as the linker (rustc links its self-contained musl into a static
//! binary; the gcc only drives `ld`).

use anyhow::{Result, bail};

/// A CPU architecture of the release binaries and the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// x86_64 (`amd64` in OCI, krew, Debian and Go).
    Amd64,
    /// aarch64 (`arm64` in OCI, krew, Debian and Go): Graviton.
    Arm64,
}

impl Arch {
    /// Every architecture the image and the release files hold, in platform order.
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// The architecture this code was compiled for (the test binaries inside an arm64 VM
    /// are aarch64 and find their arm64 tools by it).
    pub const NATIVE: Arch = if cfg!(target_arch = "aarch64") {
        Arch::Arm64
    } else {
        Arch::Amd64
    };

    /// The static Rust target of the release binaries.
    pub fn musl_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The name OCI, krew, Debian and Go give it (`GOARCH`, `dpkg --print-architecture`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The ELF header's `e_machine` of its binaries (EM_X86_64, EM_AARCH64).
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 62,
            Arch::Arm64 => 183,
        }
    }

    /// The variable naming the C compiler cc-rs uses for [`Arch::musl_target`].
    pub fn cc_variable(self) -> String {
        format!("CC_{}", self.musl_target().replace('-', "_"))
    }

    /// The variable naming cargo's linker for [`Arch::musl_target`].
    pub fn linker_variable(self) -> String {
        format!(
            "CARGO_TARGET_{}_LINKER",
            self.musl_target().replace('-', "_").to_uppercase()
        )
    }

    /// The cross C compiler (and linker driver) from Debian, when the host cannot build for
    /// it natively: `None` for the host's own architecture.
    pub fn cross_gcc(self) -> Option<&'static str> {
        match self {
            _ if self == Arch::NATIVE => None,
            Arch::Amd64 => Some("x86_64-linux-gnu-gcc"),
            Arch::Arm64 => Some("aarch64-linux-gnu-gcc"),
        }
    }

    /// Its architecture from a name: the OCI/Debian one or the Rust one.
    ///
    /// # Errors
    /// A name that is neither.
    pub fn parse(name: &str) -> Result<Arch> {
        match name {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => bail!("unknown architecture {name:?}: known are amd64 (x86_64), arm64 (aarch64)"),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The `e_machine` of an ELF64 little-endian file.
///
/// # Errors
/// Not an ELF64 little-endian file.
pub fn elf_machine(elf: &[u8]) -> Result<u16> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not an ELF64 little-endian file");
    }
    Ok(u16::from_le_bytes([elf[0x12], elf[0x13]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_targets_differ() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.name()).unwrap(), a);
            let rust = a.musl_target().split('-').next().unwrap();
            assert_eq!(Arch::parse(rust).unwrap(), a);
        }
        assert!(Arch::parse("riscv64").is_err());
        assert_eq!(Arch::Arm64.cc_variable(), "CC_aarch64_unknown_linux_musl");
        assert_eq!(
            Arch::Arm64.linker_variable(),
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER"
        );
        assert_eq!(Arch::NATIVE.cross_gcc(), None);
    }

    #[test]
    fn reads_the_elf_machine() {
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x12..0x14].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(elf_machine(&f).unwrap(), Arch::Arm64.elf_machine());
        assert!(elf_machine(b"#!/bin/sh\n").is_err());
    }
}
