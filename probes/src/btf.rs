//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`), parsed by the
//! [`btf_rs`] crate (the BTF library of the retis project).
//!
//! Rust eBPF has no CO-RE relocations, so the programs read kernel structs at offsets computed here
//! at load time and handed to them as read-only globals (which the verifier treats as constants).
//! `btf_rs` parses the format and resolves types and names; what C's `offsetof()` adds on top
//! (looking through typedefs and modifiers, and into anonymous struct and union members) is here.
//! aya-obj parses BTF too, but keeps its type-by-id and string lookups crate-private.

use anyhow::{Context as _, Result, bail, ensure};
use btf_rs::{Backend, Member, Struct, Type};

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Parsed BTF type information.
pub struct Btf {
    btf: btf_rs::Btf,
}

impl Btf {
    /// Reads the running kernel's BTF. It is memory-mapped where the kernel allows it (recent
    /// kernels; this one does): the loader only needs a few dozen lookups, so it should not pay
    /// for parsing and caching every type (the hand-written parser this replaced did, and the
    /// loader's peak RSS was 20 MiB higher). Where `mmap` of the file is refused, it is read
    /// and parsed.
    pub fn from_sys_fs() -> Result<Self> {
        let context =
            || format!("reading {VMLINUX} (the kernel must be built with CONFIG_DEBUG_INFO_BTF=y)");
        let btf = match btf_rs::Btf::from_file_with_backend(VMLINUX, Backend::Mmap) {
            Ok(btf) => btf,
            Err(err) => {
                tracing::debug!("cannot mmap {VMLINUX} ({err}); parsing it instead");
                let data = std::fs::read(VMLINUX).with_context(context)?;
                btf_rs::Btf::from_bytes(&data).with_context(context)?
            }
        };
        Ok(Btf { btf })
    }

    /// Parses raw BTF, as found in `/sys/kernel/btf/vmlinux`.
    #[cfg(test)]
    pub fn parse(data: &[u8]) -> Result<Self> {
        Ok(Btf {
            btf: btf_rs::Btf::from_bytes(data)?,
        })
    }

    /// Follows typedefs and type modifiers (const, volatile, restrict, type tags) to the
    /// underlying type.
    fn resolve(&self, mut ty: Type) -> Result<Type> {
        // Bounded so that a corrupt cycle cannot hang the loader.
        for _ in 0..32 {
            match &ty {
                Type::Typedef(t) => ty = self.btf.resolve_chained_type(t)?,
                Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                    ty = self.btf.resolve_chained_type(t)?
                }
                Type::TypeTag(t) => ty = self.btf.resolve_chained_type(t)?,
                _ => return Ok(ty),
            }
        }
        bail!("kernel BTF: typedef chain too long")
    }

    /// The struct (or union) called `name`; a complete definition is preferred over an empty one.
    fn named_struct(&self, name: &str) -> Result<Struct> {
        let mut found: Option<Struct> = None;
        for ty in self.btf.resolve_types_by_name(name)? {
            if let Type::Struct(s) | Type::Union(s) = ty
                && found.as_ref().is_none_or(|f| f.members.is_empty())
            {
                found = Some(s);
            }
        }
        found.with_context(|| format!("kernel BTF has no struct {name}"))
    }

    /// Finds `name` in a struct or union, looking into anonymous struct and union members the way
    /// C does. Returns the member and its bit offset from the start of `container`.
    fn find_member(&self, container: &Struct, name: &str) -> Result<Option<(Member, u32)>> {
        for member in &container.members {
            let member_name = self.btf.resolve_name(member)?;
            if member_name == name {
                return Ok(Some((member.clone(), member.bit_offset())));
            }
            if member_name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) =
                    self.resolve(self.btf.resolve_chained_type(member)?)?
                && let Some((found, offset)) = self.find_member(&inner, name)?
            {
                return Ok(Some((found, member.bit_offset() + offset)));
            }
        }
        Ok(None)
    }

    /// Walks `path` (members separated by dots) from `struct_name`: the last member's bit offset
    /// from the start of the struct, and its type.
    fn walk(&self, struct_name: &str, path: &str) -> Result<(u32, Type)> {
        let mut container = Some(self.named_struct(struct_name)?);
        let mut container_name = format!("struct {struct_name}");
        let mut bits = 0;
        let mut last = None;
        for part in path.split('.') {
            let found = match &container {
                Some(s) => self.find_member(s, part)?,
                None => None,
            };
            let (member, offset) = found.with_context(|| {
                format!(
                    "kernel BTF: {container_name} has no member {part} \
                     (looking up {struct_name}.{path})"
                )
            })?;
            ensure!(
                member.bitfield_size().unwrap_or(0) == 0,
                "kernel BTF: {struct_name}.{path} is a bitfield"
            );
            bits += offset;
            let ty = self.resolve(self.btf.resolve_chained_type(&member)?)?;
            (container, container_name) = match &ty {
                Type::Struct(s) | Type::Union(s) => {
                    let name = self.btf.resolve_name(s)?;
                    let kind = ty.name();
                    let name = if name.is_empty() {
                        format!("anonymous {kind}")
                    } else {
                        format!("{kind} {name}")
                    };
                    (Some(s.clone()), name)
                }
                other => (None, format!("{part} (a {})", other.name())),
            };
            last = Some((bits, ty));
        }
        last.context("empty member path")
    }

    /// Byte offset of `path` (members separated by dots, e.g. `f_path.dentry`) from the start of
    /// `struct_name`. Fails, naming the missing `struct.member`, when the kernel lacks it, and for
    /// bitfields, whose bytes the programs cannot address.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32> {
        let (bits, _) = self.walk(struct_name, path)?;
        ensure!(
            bits % 8 == 0,
            "kernel BTF: {struct_name}.{path} is not byte aligned"
        );
        Ok(bits / 8)
    }

    /// Size in bytes of the member at `path` (as for [`Btf::member_offset`]), following
    /// typedefs; pointers are 8 bytes and arrays report their element size.
    pub fn member_size(&self, struct_name: &str, path: &str) -> Result<u32> {
        let (_, ty) = self.walk(struct_name, path)?;
        self.type_size(ty)
    }

    fn type_size(&self, ty: Type) -> Result<u32> {
        let size = match &ty {
            Type::Ptr(_) => 8,
            Type::Int(t) => t.size(),
            Type::Struct(t) | Type::Union(t) => t.size(),
            Type::Enum(t) => t.size(),
            Type::Enum64(t) => t.size(),
            Type::Float(t) => t.size(),
            Type::Array(a) => {
                return self.type_size(self.resolve(self.btf.resolve_chained_type(a)?)?);
            }
            other => bail!("kernel BTF: no size for a {} type", other.name()),
        };
        Ok(u32::try_from(size)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // BTF kinds (include/uapi/linux/btf.h).
    const INT: u32 = 1;
    const PTR: u32 = 2;
    const STRUCT: u32 = 4;
    const UNION: u32 = 5;
    const TYPEDEF: u32 = 8;
    const VOLATILE: u32 = 9;
    const CONST: u32 = 10;

    /// Builds a small BTF blob:
    ///
    /// ```c
    /// struct qstr { union { struct { u32 hash; u32 len; }; u64 hash_len; }; const char *name; };
    /// struct inner;                          // an empty duplicate, as split BTF can have
    /// struct inner { u32 a; u32 b; };
    /// typedef struct inner inner_t;
    /// struct outer { u32 x; volatile inner_t in; u32 bf:3; };
    /// ```
    fn sample() -> Vec<u8> {
        let strings = b"\0u32\0u64\0hash\0len\0hash_len\0char\0name\0qstr\0inner\0a\0b\0inner_t\0\
                        outer\0x\0in\0bf\0";
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
        push(&[s("u32"), INT << 24, 4, 32]); // 1
        push(&[s("u64"), INT << 24, 8, 64]); // 2
        push(&[0, STRUCT << 24 | 2, 8, s("hash"), 1, 0, s("len"), 1, 32]); // 3
        push(&[0, UNION << 24 | 2, 8, 0, 3, 0, s("hash_len"), 2, 0]); // 4
        push(&[s("char"), INT << 24, 1, 8]); // 5
        push(&[0, CONST << 24, 5]); // 6
        push(&[0, PTR << 24, 6]); // 7
        push(&[s("qstr"), STRUCT << 24 | 2, 16, 0, 4, 0, s("name"), 7, 64]); // 8
        push(&[s("inner"), STRUCT << 24, 0]); // 9
        push(&[s("inner"), STRUCT << 24 | 2, 8, s("a"), 1, 0, s("b"), 1, 32]); // 10
        push(&[s("inner_t"), TYPEDEF << 24, 10]); // 11
        push(&[0, VOLATILE << 24, 11]); // 12
        // 13, with kind_flag set: member offsets carry bitfield sizes.
        push(&[s("outer"), 1 << 31 | STRUCT << 24 | 3, 24]);
        push(&[s("x"), 1, 0, s("in"), 12, 64, s("bf"), 1, 3 << 24 | 128]);

        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]); // version 1, no flags
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
    fn finds_members_through_anonymous_members_and_typedefs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("qstr", "hash_len").unwrap(), 0);
        assert_eq!(btf.member_offset("qstr", "len").unwrap(), 4);
        assert_eq!(btf.member_offset("qstr", "name").unwrap(), 8);
        assert_eq!(btf.member_size("qstr", "hash_len").unwrap(), 8);
        assert_eq!(btf.member_size("qstr", "name").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "in.b").unwrap(), 12);
        assert_eq!(btf.member_size("outer", "in").unwrap(), 8);
        assert_eq!(btf.member_size("inner", "b").unwrap(), 4);
    }

    #[test]
    fn names_what_is_missing() {
        let btf = Btf::parse(&sample()).unwrap();
        let err = |s: &str, m: &str| format!("{:#}", btf.member_offset(s, m).unwrap_err());
        let e = err("outer", "in.zz");
        assert!(
            e.contains("struct inner has no member zz (looking up outer.in.zz)"),
            "{e}"
        );
        let e = err("qstr", "nope");
        assert!(e.contains("struct qstr has no member nope"), "{e}");
        let e = err("outer", "x.y");
        assert!(e.contains("x (a int) has no member y"), "{e}");
        let e = err("nosuch", "x");
        assert!(e.contains("no struct nosuch"), "{e}");
        let e = err("outer", "bf");
        assert!(e.contains("outer.bf is a bitfield"), "{e}");
    }

    #[test]
    fn reads_the_running_kernel() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("skipping: no {VMLINUX}");
            return;
        }
        let btf = Btf::from_sys_fs().unwrap();
        // Offsets every kernel with BTF has; exact values vary by build.
        assert!(btf.member_offset("task_struct", "tgid").unwrap() > 0);
        assert_eq!(btf.member_offset("path", "mnt").unwrap(), 0);
        assert_eq!(btf.member_size("qstr", "hash_len").unwrap(), 8);
        assert_eq!(btf.member_offset("qstr", "hash_len").unwrap(), 0);
        assert_eq!(btf.member_offset("qstr", "name").unwrap(), 8);
        // mm_struct.exe_file sits in an anonymous struct.
        assert!(btf.member_offset("mm_struct", "exe_file").unwrap() > 0);
        let err = format!("{:#}", btf.member_offset("dentry", "d_nope").unwrap_err());
        assert!(err.contains("struct dentry has no member d_nope"), "{err}");
        // Parsed from bytes (the fallback where the file cannot be mapped), the same answers.
        let parsed = Btf::parse(&std::fs::read(VMLINUX).unwrap()).unwrap();
        for (s, m) in [
            ("mm_struct", "exe_file"),
            ("qstr", "name"),
            ("file", "f_path"),
        ] {
            assert_eq!(
                parsed.member_offset(s, m).unwrap(),
                btf.member_offset(s, m).unwrap()
            );
        }
    }
}
