//! Loading a rule module: compile, check its imports, exports and ABI version, read and validate
//! its manifest. Each refusal names the module and says what is wrong.

use super::Sandbox;
use super::host_functions::matches;
use super::instance::{RuleCtx, RuleError, RuleInstance};
use crate::module_cache::Origin;
use crate::state::{RuleState, Settings};
use picket_abi::{
    ABI_VERSION, EXPORT_ABI_VERSION, EXPORT_MANIFEST, EXPORT_MEMORY, EXPORTS, IMPORT_MODULE,
    IMPORTS, MAX_BASENAME_BYTES, MAX_BASENAMES, MAX_MANIFEST_BYTES, MAX_PATH_PREFIX_BYTES,
    MAX_PATH_PREFIXES, MAX_RULE_ID_BYTES, Manifest,
};
use std::fmt;
use std::sync::Arc;
use wasmtime::{ExternType, FuncType, InstancePre, Module};

/// A module that compiled, links against picket's imports and has a valid manifest.
#[derive(Clone)]
pub struct LoadedModule {
    /// Where it came from (a file name), for messages.
    pub source: Arc<str>,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// The compiled code.
    pub module: Module,
    /// blake3 of the module file.
    pub hash: blake3::Hash,
    /// Whether the code was compiled now or read from the module cache.
    pub origin: Origin,
    /// The module with its imports resolved against picket's, once: every instance (the
    /// first, and each one rebuilt after a trap) starts from it without linking again.
    pre: InstancePre<RuleCtx>,
}

/// Why a module was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// Where it came from.
    pub source: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

impl std::error::Error for LoadError {}

// The kernel prefilter must hold every basename a manifest may subscribe to.
const _: () = assert!(MAX_BASENAME_BYTES <= picket_probes_common::MAX_BASENAME);

impl Sandbox {
    /// Compiles and checks a module, and reads its manifest.
    pub fn load(&self, source: &str, bytes: &[u8]) -> Result<LoadedModule, LoadError> {
        let refuse = |message: String| LoadError {
            source: source.to_string(),
            message,
        };
        check_header(bytes, self.limits.max_module_bytes).map_err(refuse)?;
        let hash = blake3::hash(bytes);
        let compiled = match &self.cache {
            Some(cache) => cache.get_or_compile(&self.engine, bytes, &hash),
            None => Module::new(&self.engine, bytes).map(|module| (module, Origin::Compiled)),
        };
        let (module, origin) = compiled
            .map_err(|err| refuse(format!("is not a valid WebAssembly module: {err:#}")))?;
        check_imports(&module).map_err(refuse)?;
        check_exports(&module).map_err(refuse)?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|err| refuse(format!("cannot be linked against picket's imports: {err}")))?;
        let manifest = self.read_manifest(&pre).map_err(refuse)?;
        validate_manifest(&manifest).map_err(|err| refuse(format!("manifest: {err}")))?;
        Ok(LoadedModule {
            source: source.into(),
            manifest: Arc::new(manifest),
            module,
            hash,
            origin,
            pre,
        })
    }

    /// Instantiates a loaded module. Its new-value state is lent to each call
    /// ([`RuleInstance::handle`]), so an instance holds none.
    pub fn instantiate(&self, module: &LoadedModule) -> Result<RuleInstance, RuleError> {
        RuleInstance::new(self, &module.pre, module.manifest.id.as_str().into())
    }

    fn read_manifest(&self, pre: &InstancePre<RuleCtx>) -> Result<Manifest, String> {
        // A module may ask about new values while building its manifest; what it learns there
        // goes to a scratch state that is dropped.
        let mut scratch = RuleState::new(
            Settings {
                learning_period_ns: 0,
                forget_after_ns: 0,
            },
            2,
        );
        let mut instance = RuleInstance::new(self, pre, "(loading)".into())
            .map_err(|err| format!("could not be instantiated: {err}"))?;
        let version: i32 = instance
            .call_nullary(EXPORT_ABI_VERSION, &mut scratch)
            .map_err(|err| format!("`{EXPORT_ABI_VERSION}` failed: {err}"))?;
        if version as u32 != ABI_VERSION {
            return Err(format!(
                "was built for picket ABI version {version}, but this host speaks version \
                 {ABI_VERSION}; rebuild it against a matching picket-rule-sdk"
            ));
        }
        let packed: i64 = instance
            .call_nullary(EXPORT_MANIFEST, &mut scratch)
            .map_err(|err| format!("`{EXPORT_MANIFEST}` failed: {err}"))?;
        let (ptr, len) = picket_abi::unpack_ptr_len(packed);
        let (ptr, len) = (ptr as usize, len as usize);
        if len > MAX_MANIFEST_BYTES {
            return Err(format!(
                "`{EXPORT_MANIFEST}` returned {len} bytes, more than the {MAX_MANIFEST_BYTES} allowed"
            ));
        }
        let memory = instance.memory_bytes();
        let bytes = ptr
            .checked_add(len)
            .and_then(|end| memory.get(ptr..end))
            .ok_or_else(|| {
                format!(
                    "`{EXPORT_MANIFEST}` returned {ptr:#x} (+{len} bytes), outside the module's \
                     {}-byte memory",
                    memory.len()
                )
            })?;
        picket_abi::decode_manifest(bytes).map_err(|failure| {
            format!(
                "`{EXPORT_MANIFEST}` returned an invalid manifest ({len} bytes at {ptr:#x}): \
                 {failure} (the encoding: docs/abi.md#manifest)"
            )
        })
    }
}

fn check_header(bytes: &[u8], max_bytes: usize) -> Result<(), String> {
    if bytes.len() > max_bytes {
        return Err(format!(
            "is {} bytes, more than the {max_bytes} a rule module may be",
            bytes.len()
        ));
    }
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Err(
            "is a WebAssembly component; picket rules are core modules (wasm32-unknown-unknown)"
                .into(),
        ),
        _ => Err(format!(
            "is not a WebAssembly module (it starts with {:02x?})",
            &bytes[..bytes.len().min(8)]
        )),
    }
}

fn signature(ty: &FuncType) -> String {
    let list = |types: Vec<String>| types.join(", ");
    format!(
        "({}) -> ({})",
        list(ty.params().map(|t| t.to_string()).collect()),
        list(ty.results().map(|t| t.to_string()).collect())
    )
}

fn check_imports(module: &Module) -> Result<(), String> {
    for import in module.imports() {
        let name = format!("{}.{}", import.module(), import.name());
        let expected = (import.module() == IMPORT_MODULE)
            .then(|| IMPORTS.iter().find(|sig| sig.name == import.name()))
            .flatten();
        let Some(expected) = expected else {
            return Err(format!(
                "imports `{name}`, which picket does not provide; a rule may import only {}",
                IMPORTS
                    .iter()
                    .map(|sig| format!("{IMPORT_MODULE}.{}", sig.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        match import.ty() {
            ExternType::Func(ty) if matches(&ty, expected) => {}
            ExternType::Func(ty) => {
                return Err(format!(
                    "imports `{name}` as {}, but picket provides {expected}",
                    signature(&ty)
                ));
            }
            _ => {
                return Err(format!(
                    "imports `{name}` as something other than a function"
                ));
            }
        }
    }
    Ok(())
}

fn check_exports(module: &Module) -> Result<(), String> {
    match module.get_export(EXPORT_MEMORY) {
        Some(ExternType::Memory(memory)) if !memory.is_64() && !memory.is_shared() => {}
        Some(ExternType::Memory(_)) => {
            return Err(format!(
                "export `{EXPORT_MEMORY}` must be a plain 32-bit memory (not memory64 or shared)"
            ));
        }
        _ => {
            return Err(format!(
                "is missing the export `{EXPORT_MEMORY}` (a memory)"
            ));
        }
    }
    for expected in EXPORTS {
        let name = expected.name;
        match module.get_export(name) {
            Some(ExternType::Func(ty)) if matches(&ty, expected) => {}
            Some(ExternType::Func(ty)) => {
                return Err(format!(
                    "export `{name}` has the signature {}, but picket calls it as {expected}",
                    signature(&ty)
                ));
            }
            _ => {
                return Err(format!(
                    "is missing the export `{name}` (a function {expected}); was it built with \
                     picket_rule_sdk::rule!?"
                ));
            }
        }
    }
    Ok(())
}

/// Checks the fields a host relies on.
pub fn validate_manifest(manifest: &Manifest) -> Result<(), String> {
    let id = &manifest.id;
    let id_ok = !id.is_empty()
        && id.len() <= MAX_RULE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if !id_ok {
        return Err(format!(
            "id `{}` must be 1 to {MAX_RULE_ID_BYTES} characters of a-z, 0-9 and '-', not \
             starting with '-'",
            crate::text::escape_controls(id)
        ));
    }
    if manifest.title.trim().is_empty() {
        return Err("title is empty".into());
    }
    for (field, text, limit) in [
        ("title", &manifest.title, 256),
        ("description", &manifest.description, 4096),
        ("tactic", &manifest.tactic, 128),
        ("technique", &manifest.technique, 128),
    ] {
        if text.len() > limit {
            return Err(format!("{field} is longer than {limit} bytes"));
        }
    }
    if manifest.states.len() > picket_abi::MAX_STATES_PER_RULE {
        return Err(format!(
            "gives settings to more than {} states",
            picket_abi::MAX_STATES_PER_RULE
        ));
    }
    for (i, state) in manifest.states.iter().enumerate() {
        let name = &state.name;
        if name.is_empty() || name.len() > picket_abi::MAX_STATE_NAME_BYTES {
            return Err(format!(
                "states[{i}]: a state name is 1 to {} bytes",
                picket_abi::MAX_STATE_NAME_BYTES
            ));
        }
        if manifest.states[..i]
            .iter()
            .any(|earlier| &earlier.name == name)
        {
            return Err(format!(
                "states[{i}]: state `{}` is given settings twice",
                name.escape_debug()
            ));
        }
    }
    let subscription = &manifest.subscription;
    if subscription.kinds.is_empty() {
        return Err("subscribes to no event kind".into());
    }
    if subscription.basenames.len() > MAX_BASENAMES {
        return Err(format!("subscribes to more than {MAX_BASENAMES} basenames"));
    }
    for name in &subscription.basenames {
        if name.is_empty()
            || name.len() > MAX_BASENAME_BYTES
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(format!(
                "basename `{}` must be 1 to {MAX_BASENAME_BYTES} bytes without '/' or NUL",
                name.escape_debug()
            ));
        }
        if name.contains('*') {
            // Refused rather than matched literally: the kernel prefilter approves a basename
            // by its exact length and bytes, so it cannot pass every name a pattern stands for.
            return Err(format!(
                "basename `{}` is a pattern, which the kernel prefilter cannot check (it matches \
                 basenames exactly): list the names it stands for (`id_rsa`, `id_ed25519`, ...)",
                name.escape_debug()
            ));
        }
    }
    if subscription.path_prefixes.len() > MAX_PATH_PREFIXES {
        return Err(format!(
            "subscribes to more than {MAX_PATH_PREFIXES} path prefixes"
        ));
    }
    for prefix in &subscription.path_prefixes {
        if !prefix.starts_with('/') || prefix.len() > MAX_PATH_PREFIX_BYTES || prefix.contains('\0')
        {
            return Err(format!(
                "path prefix `{}` must be an absolute path of at most {MAX_PATH_PREFIX_BYTES} \
                 bytes without NUL",
                prefix.escape_debug()
            ));
        }
        if let Some(error) = crate::pipeline::prefix_pattern_error(prefix) {
            return Err(error);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Limits, test_module};
    use picket_abi::{FuncSig, ValType};

    /// A module whose only import is `sig`, as loading reports it.
    fn refusal(sig: FuncSig) -> String {
        let sandbox = Sandbox::new(Limits::default()).unwrap();
        let wat = test_module::wat_importing(&[sig]);
        let bytes = wat::parse_str(&wat).unwrap();
        sandbox.load("bad.wasm", &bytes).err().unwrap().to_string()
    }

    #[test]
    fn a_bad_import_is_named_before_anything_runs() {
        let unknown = FuncSig {
            name: "exec",
            params: &[],
            results: &[],
        };
        assert_eq!(
            refusal(unknown),
            "bad.wasm: imports `picket.exec`, which picket does not provide; a rule may import \
             only picket.new_value, picket.emit_signal, picket.log, picket.is_known"
        );
        let mut wrong = picket_abi::IMPORTS[2];
        wrong.params = &[ValType::I32];
        assert_eq!(
            refusal(wrong),
            "bad.wasm: imports `picket.log` as (i32) -> (), but picket provides \
             (i32, i32, i32) -> ()"
        );
    }

    #[test]
    fn a_module_built_like_the_sdks_loads() {
        let sandbox = Sandbox::new(Limits::default()).unwrap();
        let manifest = test_module::manifest("fine");
        let module = sandbox
            .load("fine.wasm", &test_module::rule(&manifest, &[]))
            .unwrap();
        assert_eq!(*module.manifest, manifest);
    }

    #[test]
    fn headers() {
        assert!(check_header(b"\0asm\x01\0\0\0", 100).is_ok());
        assert!(
            check_header(b"\0asm\x0d\0\x01\0", 100)
                .unwrap_err()
                .contains("component")
        );
        assert!(
            check_header(b"MZ\x90\0", 100)
                .unwrap_err()
                .contains("not a WebAssembly")
        );
        assert!(
            check_header(&[0; 200], 100)
                .unwrap_err()
                .contains("more than")
        );
    }
}
