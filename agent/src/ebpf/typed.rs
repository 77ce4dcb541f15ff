//! Typed header reads (6.2+): the programs `path_rx_typed`, `path_tx_typed` and
//! `kfree_skb_reason_typed` read packet headers (and a GSO skb's `skb_shared_info`) through
//! pointers cast with the kfunc `bpf_rdonly_cast` to the header's struct (`iphdr`,
//! `tcphdr`, ...), instead of copying them with a helper. aya 0.14 cannot emit a kfunc call, so the programs carry placeholders
//! (`sgpath_ebpf::KFUNC_CALL_PLACEHOLDER`): `r2 = BTF_TYPE_PLACEHOLDER + hdr` then a helper
//! call numbered `KFUNC_CALL_PLACEHOLDER`. [`patch`] rewrites each pair in a copy of the
//! object, before aya reads it: the `r2` move gets the struct's id in the running kernel's
//! BTF, the call becomes a kfunc call (`src_reg` 2, BPF_PSEUDO_KFUNC_CALL) to
//! `bpf_rdonly_cast`'s id. The verifier checks every load against the struct and turns the
//! call into a register move.
//!
//! 5.10 and 6.1 have no `bpf_rdonly_cast`: the helper-read programs (`path_rx`, ...) run
//! there, unpatched. No side effects.

use sgpath_ebpf::{BTF_TYPE_PLACEHOLDER, KFUNC_CALL_PLACEHOLDER, packet::Hdr};

use crate::collect::btf::Btf;

/// How the attached programs read packet headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderRead {
    /// BTF-typed loads (`*_typed` programs, 6.2+).
    Typed,
    /// One `bpf_probe_read_kernel` per packet (5.10, 6.1, or when the kernel refused the
    /// typed programs).
    Probe,
}

impl HeaderRead {
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderRead::Typed => "typed",
            HeaderRead::Probe => "probe",
        }
    }

    /// The program for `base` (`path_rx`, `path_tx`, `kfree_skb_reason`) read this way;
    /// `kfree_skb_location` (5.10's) has only the helper read.
    pub fn program(self, base: &'static str) -> &'static str {
        match (self, base) {
            (HeaderRead::Typed, "path_rx") => "path_rx_typed",
            (HeaderRead::Typed, "path_tx") => "path_tx_typed",
            (HeaderRead::Typed, "kfree_skb_reason") => "kfree_skb_reason_typed",
            _ => base,
        }
    }
}

/// The ids the typed programs need from the running kernel's BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypedIds {
    /// The `FUNC` `bpf_rdonly_cast`.
    pub rdonly_cast: u32,
    /// The `STRUCT` of each [`Hdr`], by discriminant.
    pub structs: [u32; Hdr::ALL.len()],
}

impl TypedIds {
    /// The ids, or the name of the first one the kernel lacks (every kernel before 6.2
    /// lacks `bpf_rdonly_cast`).
    pub fn of(btf: &Btf) -> Result<TypedIds, &'static str> {
        const KFUNC: &str = "bpf_rdonly_cast";
        let rdonly_cast = btf.func_id(KFUNC).ok_or(KFUNC)?;
        let mut structs = [0; Hdr::ALL.len()];
        for hdr in Hdr::ALL {
            structs[hdr as usize] = btf.struct_id(hdr.struct_name()).ok_or(hdr.struct_name())?;
        }
        Ok(TypedIds {
            rdonly_cast,
            structs,
        })
    }
}

/// An eBPF object in 8-aligned memory, as aya's ELF parser wants it.
pub struct Object {
    words: Vec<u64>,
    len: usize,
}

impl Object {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` <= 8 * words.len(); u64 memory is valid as bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }
}

/// Why the object could not be patched.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("the eBPF object has no typed-read placeholders")]
    NoPlaceholders,
    #[error("placeholder at byte {at} names struct {index}, which sgpath does not know")]
    UnknownStruct { at: usize, index: u32 },
}

const BPF_CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
const BPF_MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const R2: u8 = 2;
const PSEUDO_KFUNC_CALL: u8 = 2;

/// A copy of `object` with every placeholder pair rewritten for `ids`; the count of pairs
/// rewritten. Instructions sit 8-aligned in the file (code sections are 8-aligned), and a
/// pair is 16 bytes no data carries by chance: `r2 = <placeholder>` directly followed by
/// `call <placeholder>`, both with zero offsets.
///
/// # Errors
/// [`PatchError`] when the object has no pair, or a pair names an unknown struct.
pub fn patch(object: &[u8], ids: &TypedIds) -> Result<(Object, usize), PatchError> {
    let mut words = vec![0u64; object.len().div_ceil(8)];
    // SAFETY: the buffer holds at least `object.len()` bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, object.len()) };
    bytes.copy_from_slice(object);
    let mut patched = 0;
    let mut at = 0;
    while at + 16 <= bytes.len() {
        let (mov, call) = (&bytes[at..at + 8], &bytes[at + 8..at + 16]);
        let mov_imm = i32::from_le_bytes([mov[4], mov[5], mov[6], mov[7]]);
        let call_imm = i32::from_le_bytes([call[4], call[5], call[6], call[7]]);
        let is_pair = mov[..4] == [BPF_MOV64_IMM, R2, 0, 0]
            && call[..4] == [BPF_CALL, 0, 0, 0]
            && call_imm == KFUNC_CALL_PLACEHOLDER
            && (BTF_TYPE_PLACEHOLDER..BTF_TYPE_PLACEHOLDER + 0x100).contains(&mov_imm);
        if !is_pair {
            at += 8;
            continue;
        }
        let index = (mov_imm - BTF_TYPE_PLACEHOLDER) as u32;
        let type_id = *ids
            .structs
            .get(index as usize)
            .ok_or(PatchError::UnknownStruct { at, index })?;
        bytes[at + 4..at + 8].copy_from_slice(&type_id.to_le_bytes());
        bytes[at + 9] = PSEUDO_KFUNC_CALL << 4;
        bytes[at + 12..at + 16].copy_from_slice(&ids.rdonly_cast.to_le_bytes());
        patched += 1;
        at += 16;
    }
    if patched == 0 {
        return Err(PatchError::NoPlaceholders);
    }
    let len = object.len();
    Ok((Object { words, len }, patched))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, regs: u8, imm: i32) -> [u8; 8] {
        let mut i = [code, regs, 0, 0, 0, 0, 0, 0];
        i[4..].copy_from_slice(&imm.to_le_bytes());
        i
    }

    const IDS: TypedIds = TypedIds {
        rdonly_cast: 70_001,
        structs: [11, 12, 13, 14, 15, 16],
    };

    #[test]
    fn rewrites_each_pair_and_nothing_else() {
        let mut obj = Vec::new();
        // A lone placeholder move, a helper call 1, then a pair for tcphdr.
        obj.extend(insn(
            BPF_MOV64_IMM,
            R2,
            BTF_TYPE_PLACEHOLDER + Hdr::Ip as i32,
        ));
        obj.extend(insn(BPF_CALL, 0, 1));
        obj.extend(insn(
            BPF_MOV64_IMM,
            R2,
            BTF_TYPE_PLACEHOLDER + Hdr::Tcp as i32,
        ));
        obj.extend(insn(BPF_CALL, 0, KFUNC_CALL_PLACEHOLDER));
        let (out, n) = patch(&obj, &IDS).unwrap();
        assert_eq!(n, 1);
        let out = out.bytes();
        assert_eq!(out[..16], obj[..16]);
        assert_eq!(out[16..24], insn(BPF_MOV64_IMM, R2, 13));
        assert_eq!(out[24..32], insn(BPF_CALL, 0x20, 70_001));
    }

    #[test]
    fn an_object_without_pairs_or_with_an_unknown_struct_is_an_error() {
        let obj = insn(BPF_CALL, 0, KFUNC_CALL_PLACEHOLDER);
        assert_eq!(patch(&obj, &IDS).err(), Some(PatchError::NoPlaceholders));
        let mut obj = insn(BPF_MOV64_IMM, R2, BTF_TYPE_PLACEHOLDER + 9).to_vec();
        obj.extend(insn(BPF_CALL, 0, KFUNC_CALL_PLACEHOLDER));
        assert_eq!(
            patch(&obj, &IDS).err(),
            Some(PatchError::UnknownStruct { at: 0, index: 9 })
        );
    }

    /// The object the agent embeds: its typed programs hold pairs, and every placeholder
    /// call is in one (a call left unpatched would be refused as an unknown helper).
    #[test]
    fn the_embedded_object_has_only_whole_pairs() {
        let (out, n) = patch(super::super::object(), &IDS).unwrap();
        assert!(n >= 3, "{n} pairs");
        let calls = |b: &[u8]| {
            b.chunks_exact(8)
                .filter(|i| {
                    i[..4] == [BPF_CALL, 0, 0, 0] && i[4..] == KFUNC_CALL_PLACEHOLDER.to_le_bytes()
                })
                .count()
        };
        assert_eq!(calls(super::super::object()), n);
        assert_eq!(calls(out.bytes()), 0);
    }
}
