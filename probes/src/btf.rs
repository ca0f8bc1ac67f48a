//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`), enough to find the byte offset
//! of a struct member.
//!
//! Rust eBPF has no CO-RE relocations, so the programs read kernel structs at offsets computed here
//! at load time and handed to them as read-only globals (which the verifier treats as constants).
//! aya-obj parses BTF too, but keeps its type lookup crate-private.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail, ensure};

const BTF_MAGIC: u16 = 0xeb9f;

// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing struct.
    bit_offset: u32,
    /// Non-zero for bitfields.
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// Size for structs, unions, ints; referenced type for pointers, typedefs and modifiers.
    size_or_type: u32,
    members: Vec<Member>,
    /// Element type of an array.
    array_elem: u32,
}

/// Parsed BTF type information.
pub struct Btf {
    /// Index 0 is the implicit `void` type.
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Struct and union names to type ids; a name may map to several ids in split or odd BTF.
    by_name: HashMap<String, Vec<u32>>,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16> {
    let bytes = data.get(at..at + 2).context("BTF truncated")?;
    Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    let bytes = data.get(at..at + 4).context("BTF truncated")?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| {
            format!("reading {path} (the kernel must be built with CONFIG_DEBUG_INFO_BTF=y)")
        })?;
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    /// Parses raw little-endian BTF (as found in `/sys/kernel/btf/vmlinux`).
    pub fn parse(data: &[u8]) -> Result<Self> {
        ensure!(
            u16_at(data, 0)? == BTF_MAGIC,
            "bad BTF magic (not little-endian BTF?)"
        );
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .context("BTF type section out of bounds")?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("BTF string section out of bounds")?
            .to_vec();

        let mut types = vec![Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            members: Vec::new(),
            array_elem: 0,
        }];
        let mut at = 0;
        while at < types_data.len() {
            let name = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let size_or_type = u32_at(types_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let mut array_elem = 0;
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => {
                    array_elem = u32_at(types_data, at)?;
                    at += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let m_name = u32_at(types_data, at)?;
                        let m_type = u32_at(types_data, at + 4)?;
                        let m_off = u32_at(types_data, at + 8)?;
                        at += 12;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (m_off & 0x00ff_ffff, m_off >> 24)
                        } else {
                            (m_off, 0)
                        };
                        members.push(Member {
                            name: m_name,
                            type_id: m_type,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                }
                KIND_ENUM | KIND_FUNC_PROTO => at += 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => at += 12 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                other => bail!("unknown BTF kind {other} at type {}", types.len()),
            }
            types.push(Type {
                name,
                kind,
                size_or_type,
                members,
                array_elem,
            });
        }

        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if matches!(ty.kind, KIND_STRUCT | KIND_UNION) && ty.name != 0 {
                let name = btf.string(ty.name).to_owned();
                btf.by_name.entry(name).or_default().push(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and type modifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        // Bounded so that a corrupt cycle cannot hang the loader.
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(ty)
                    if matches!(
                        ty.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = ty.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    fn struct_id(&self, name: &str) -> Result<u32> {
        let ids = self
            .by_name
            .get(name)
            .with_context(|| format!("kernel BTF has no struct {name}"))?;
        // Prefer a complete definition over an empty one.
        Ok(*ids
            .iter()
            .find(|&&id| !self.types[id as usize].members.is_empty())
            .unwrap_or(&ids[0]))
    }

    /// Finds `name` in a struct or union, looking into anonymous struct and union members the way
    /// C does. Returns the member and its bit offset from the start of `type_id`.
    fn find_member(&self, type_id: u32, name: &str) -> Option<(Member, u32)> {
        let ty = self.types.get(self.resolve(type_id) as usize)?;
        if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for member in &ty.members {
            if member.name != 0 {
                if self.string(member.name) == name {
                    return Some((member.clone(), member.bit_offset));
                }
            } else if let Some((found, inner)) = self.find_member(member.type_id, name) {
                return Some((found, member.bit_offset + inner));
            }
        }
        None
    }

    /// Byte offset of `path` (members separated by dots, e.g. `f_path.dentry`) from the start of
    /// `struct_name`. Fails, naming the missing `struct.member`, when the kernel lacks it, and for
    /// bitfields, whose bytes the programs cannot address.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32> {
        let mut type_id = self.struct_id(struct_name)?;
        let mut bits = 0;
        let mut container = struct_name.to_owned();
        for part in path.split('.') {
            let (member, offset) = self.find_member(type_id, part).with_context(|| {
                format!("kernel BTF: struct {container} has no member {part} (looking up {struct_name}.{path})")
            })?;
            ensure!(
                member.bitfield_size == 0,
                "kernel BTF: {struct_name}.{path} is a bitfield"
            );
            bits += offset;
            type_id = member.type_id;
            container = self.type_name(type_id);
        }
        ensure!(
            bits % 8 == 0,
            "kernel BTF: {struct_name}.{path} is not byte aligned"
        );
        Ok(bits / 8)
    }

    /// Size in bytes of the member at `path` (as for [`Btf::member_offset`]), following typedefs;
    /// pointers are 8 bytes. Arrays are their element size times their count is not needed here,
    /// so arrays report the element size.
    pub fn member_size(&self, struct_name: &str, path: &str) -> Result<u32> {
        let mut type_id = self.struct_id(struct_name)?;
        for part in path.split('.') {
            let (member, _) = self
                .find_member(type_id, part)
                .with_context(|| format!("kernel BTF: no member {struct_name}.{path}"))?;
            type_id = member.type_id;
        }
        self.type_size(type_id)
    }

    fn type_size(&self, id: u32) -> Result<u32> {
        let ty = &self.types[self.resolve(id) as usize];
        Ok(match ty.kind {
            KIND_PTR => 8,
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                ty.size_or_type
            }
            KIND_ARRAY => self.type_size(ty.array_elem)?,
            other => bail!("kernel BTF: no size for type kind {other}"),
        })
    }

    fn type_name(&self, id: u32) -> String {
        let ty = &self.types[self.resolve(id) as usize];
        if ty.name == 0 {
            "<anonymous>".to_owned()
        } else {
            self.string(ty.name).to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct inner { int a; int b; }` and
    /// `struct outer { int x; union { struct inner in; long y; }; int bf:3; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0in\0y\0bf\0long\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 }
        push(&[s("inner"), KIND_STRUCT << 24 | 2, 8]);
        push(&[s("a"), 1, 0, s("b"), 1, 32]);
        // 3: long
        push(&[s("long"), KIND_INT << 24, 8, 64]);
        // 4: anonymous union { in: inner @0, y: long @0 }
        push(&[0, KIND_UNION << 24 | 2, 8]);
        push(&[s("in"), 2, 0, s("y"), 3, 0]);
        // 5: struct outer (kind_flag set: member offsets carry bitfield sizes)
        push(&[s("outer"), 1 << 31 | KIND_STRUCT << 24 | 3, 24]);
        push(&[s("x"), 1, 0, 0, 4, 64, s("bf"), 1, 3 << 24 | 128]);

        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "in.b").unwrap(), 12);
        assert_eq!(btf.member_size("outer", "y").unwrap(), 8);
    }

    #[test]
    fn names_what_is_missing() {
        let btf = Btf::parse(&sample()).unwrap();
        let err = btf.member_offset("outer", "in.zz").unwrap_err().to_string();
        assert!(err.contains("struct inner has no member zz"), "{err}");
        let err = btf.member_offset("nosuch", "x").unwrap_err().to_string();
        assert!(err.contains("no struct nosuch"), "{err}");
        let err = btf.member_offset("outer", "bf").unwrap_err().to_string();
        assert!(err.contains("bitfield"), "{err}");
    }

    #[test]
    fn reads_the_running_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipping: no /sys/kernel/btf/vmlinux");
            return;
        };
        // Offsets every kernel with BTF has; exact values vary by build.
        assert!(btf.member_offset("task_struct", "tgid").unwrap() > 0);
        assert_eq!(btf.member_offset("path", "mnt").unwrap(), 0);
        assert_eq!(btf.member_size("qstr", "hash_len").unwrap(), 8);
    }
}
