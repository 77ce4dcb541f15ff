//! The running kernel's BTF (`/sys/kernel/btf/vmlinux`, as `bpftool btf dump file
//! /sys/kernel/btf/vmlinux` shows it): struct member offsets the drop and path probes need
//! (they differ between kernels), and the names of `enum skb_drop_reason` (its values differ
//! too). Side effects: reads one file.
//!
//! Written here rather than taken from a crate: aya-obj parses BTF but keeps member access
//! crate-private, and the format needed is small (type section, string section; struct,
//! union and enum records).

use std::collections::BTreeMap;

/// Where the kernel publishes its BTF (`CONFIG_DEBUG_INFO_BTF`, 5.2+).
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Why BTF could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path} (the kernel needs CONFIG_DEBUG_INFO_BTF): {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// One member of a struct or union.
#[derive(Clone, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing type.
    bit_offset: u32,
}

/// One BTF type record, reduced to what sgpath reads.
#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    name: u32,
    members: Vec<Member>,
    /// Enum variants (name offset, value).
    variants: Vec<(u32, i64)>,
}

/// A parsed BTF blob.
pub struct Btf {
    /// Index 0 is the void type, as in the kernel.
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    ///
    /// # Errors
    /// [`BtfError::Read`] when the file is absent (no `CONFIG_DEBUG_INFO_BTF`).
    pub fn from_kernel() -> Result<Btf, BtfError> {
        let data = std::fs::read(VMLINUX).map_err(|source| BtfError::Read {
            path: VMLINUX.into(),
            source,
        })?;
        Btf::parse(&data)
    }

    /// Parses a little-endian BTF blob.
    ///
    /// # Errors
    /// [`BtfError::Malformed`] on a bad magic, truncation or an unknown type kind.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = hdr_len + u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = hdr_len + u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let tsec = data
            .get(type_off..type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of range"))?;
        let strings = data
            .get(str_off..str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of range"))?
            .to_vec();
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            members: Vec::new(),
            variants: Vec::new(),
        }];
        let mut at = 0;
        while at < tsec.len() {
            let name = u32_at(tsec, at)?;
            let info = u32_at(tsec, at + 4)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut t = Type {
                kind,
                name,
                members: Vec::new(),
                variants: Vec::new(),
            };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let offset = u32_at(tsec, at + 8)?;
                        t.members.push(Member {
                            name: u32_at(tsec, at)?,
                            type_id: u32_at(tsec, at + 4)?,
                            // With kind_flag the top 8 bits hold a bitfield's size.
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                        at += 12;
                    }
                }
                KIND_ENUM => {
                    for _ in 0..vlen {
                        let value = u32_at(tsec, at + 4)? as i32 as i64;
                        t.variants.push((u32_at(tsec, at)?, value));
                        at += 8;
                    }
                }
                KIND_ENUM64 => {
                    for _ in 0..vlen {
                        let lo = u32_at(tsec, at + 4)? as u64;
                        let hi = u32_at(tsec, at + 8)? as u64;
                        t.variants.push((u32_at(tsec, at)?, (hi << 32 | lo) as i64));
                        at += 12;
                    }
                }
                KIND_FUNC_PROTO => at += 8 * vlen,
                KIND_DATASEC => at += 12 * vlen,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
                2 | 7..=12 | 16 | 18 => {}
                _ => return Err(BtfError::Malformed("unknown type kind")),
            }
            types.push(t);
        }
        Ok(Btf { types, strings })
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    fn named(&self, kind: u32, name: &str) -> Option<&Type> {
        self.types
            .iter()
            .find(|t| t.kind == kind && self.name(t.name) == name)
    }

    /// The type id of `struct name` (its index in the type section, counting from 1).
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        self.id(KIND_STRUCT, name)
    }

    /// The type id of function `name` (a kfunc, say).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.id(KIND_FUNC, name)
    }

    fn id(&self, kind: u32, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == kind && self.name(t.name) == name)
            .map(|i| i as u32)
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous structs and
    /// unions (sk_buff nests `dev` and `network_header` in them).
    ///
    /// # Errors
    /// [`BtfError::NoStruct`] / [`BtfError::NoMember`] naming what the kernel lacks.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let t = self
            .named(KIND_STRUCT, strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        self.find_member(t, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.into(),
                member: member.into(),
            })
    }

    fn find_member(&self, t: &Type, member: &str, base: u32) -> Option<u32> {
        for m in &t.members {
            if m.name != 0 && self.name(m.name) == member {
                return Some(base + m.bit_offset);
            }
        }
        // Anonymous members: descend (through typedef-free struct/union ids only).
        for m in t.members.iter().filter(|m| m.name == 0) {
            let inner = self.types.get(m.type_id as usize)?;
            if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(off) = self.find_member(inner, member, base + m.bit_offset)
            {
                return Some(off);
            }
        }
        None
    }

    /// Values and names of `enum name` (e.g. `skb_drop_reason`), or `None` when the kernel
    /// has no such enum (5.10 has no drop reasons).
    pub fn enum_variants(&self, name: &str) -> Option<BTreeMap<i64, String>> {
        let t = self
            .types
            .iter()
            .find(|t| matches!(t.kind, KIND_ENUM | KIND_ENUM64) && self.name(t.name) == name)?;
        Some(
            t.variants
                .iter()
                .map(|&(n, v)| (v, self.name(n).to_owned()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF blob: `struct outer { int a; union { int b; struct { int c; }; }; }`
    /// with c at byte 8, and `enum skb_drop_reason { SKB_DROP_REASON_NOT_SPECIFIED = 2 }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0int\0skb_drop_reason\0SKB_DROP_REASON_NOT_SPECIFIED\0";
        let off = |s: &str| {
            let needle = format!("\0{s}\0");
            (strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap()
                + 1) as u32
        };
        let mut types: Vec<u32> = Vec::new();
        // 1: int
        types.extend([off("int"), KIND_INT << 24, 4, 32]);
        // 2: struct { int c; } (anonymous)
        types.extend([0, KIND_STRUCT << 24 | 1, 4, off("c"), 1, 0]);
        // 3: union { int b; struct {...}; } (anonymous)
        types.extend([0, KIND_UNION << 24 | 2, 4, off("b"), 1, 0, 0, 2, 0]);
        // 4: struct outer { int a; <anon union> at 64 bits }
        types.extend([
            off("outer"),
            KIND_STRUCT << 24 | 2,
            12,
            off("a"),
            1,
            0,
            0,
            3,
            64,
        ]);
        // 5: enum skb_drop_reason
        types.extend([
            off("skb_drop_reason"),
            KIND_ENUM << 24 | 1,
            4,
            off("SKB_DROP_REASON_NOT_SPECIFIED"),
            2,
        ]);
        let tbytes: Vec<u8> = types.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for v in [
            24u32,
            0,
            tbytes.len() as u32,
            tbytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(v.to_le_bytes());
        }
        out.extend(tbytes);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_structs() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("outer", "d"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("sk_buff", "dev"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn reads_enum_names_and_values() {
        let btf = Btf::parse(&blob()).unwrap();
        let reasons = btf.enum_variants("skb_drop_reason").unwrap();
        assert_eq!(reasons[&2], "SKB_DROP_REASON_NOT_SPECIFIED");
        assert!(btf.enum_variants("no_such_enum").is_none());
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(b"garbage!"),
            Err(BtfError::Malformed(_))
        ));
    }

    /// On a kernel with BTF (every kernel of the matrix), the offsets the probes need exist.
    #[test]
    fn running_kernel_has_the_members_the_probes_read() {
        let Ok(btf) = Btf::from_kernel() else {
            panic!("{VMLINUX} unreadable: every kernel sgpath supports has BTF");
        };
        for (s, m) in [
            ("sk_buff", "dev"),
            ("sk_buff", "head"),
            ("sk_buff", "data"),
            ("sk_buff", "network_header"),
            ("sk_buff", "protocol"),
            ("sk_buff", "sk"),
            ("sk_buff", "end"),
            ("skb_shared_info", "gso_segs"),
            ("sock_common", "skc_net"),
            ("net_device", "ifindex"),
            ("net_device", "nd_net"),
            ("net", "ns"),
            ("ns_common", "inum"),
        ] {
            btf.member_offset(s, m)
                .unwrap_or_else(|e| panic!("{s}.{m}: {e}"));
        }
    }
}
