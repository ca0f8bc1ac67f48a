//! The ABI's imports a rule calls (`new_value`, `is_known`, `emit_signal`, `log`): the wasm imports
//! themselves on wasm32, functions supplied by the caller elsewhere ([`native`]).

use picket_abi::{LogLevel, SignalRequest};

/// Declares the imports as `picket_abi::for_each_import!` lists them, so that their names and
/// signatures exist once, in the ABI crate.
#[cfg(target_arch = "wasm32")]
macro_rules! extern_block {
    ($( $(#[$doc:meta])* fn $name:ident ( $($param:ident : $pty:ident),* ) $(-> $rty:ident)? ;)*) => {
        // The attribute needs a literal; the test below holds it to picket_abi::IMPORT_MODULE.
        #[link(wasm_import_module = "picket")]
        unsafe extern "C" {
            $( $(#[$doc])* pub fn $name($($param: $pty),*) $(-> $rty)?; )*
        }
    };
}

#[cfg(target_arch = "wasm32")]
mod raw {
    picket_abi::for_each_import!(extern_block);
}

/// What a pointer or length is as an import argument: wasm32 addresses and sizes are 32 bits.
#[cfg(target_arch = "wasm32")]
fn arg(n: usize) -> i32 {
    n as i32
}

/// Calls `import`, `new_value` or `is_known`, which take the same `(state, group, value)`.
#[cfg(target_arch = "wasm32")]
fn ask(
    import: unsafe extern "C" fn(i32, i32, i32, i32, i32, i32) -> i32,
    state: &str,
    group: &str,
    value: &str,
) -> i32 {
    // SAFETY: each pointer and length describes a live &str; the host only reads them.
    unsafe {
        import(
            arg(state.as_ptr() as usize),
            arg(state.len()),
            arg(group.as_ptr() as usize),
            arg(group.len()),
            arg(value.as_ptr() as usize),
            arg(value.len()),
        )
    }
}

#[cfg(target_arch = "wasm32")]
pub fn new_value(state: &str, group: &str, value: &str) -> bool {
    ask(raw::new_value, state, group, value) == picket_abi::NEW_VALUE_NEW
}

#[cfg(target_arch = "wasm32")]
pub fn is_known(state: &str, group: &str, value: &str) -> bool {
    ask(raw::is_known, state, group, value) == picket_abi::IS_KNOWN_KNOWN
}

#[cfg(target_arch = "wasm32")]
pub fn emit_signal(request: &SignalRequest<'_>) {
    use std::cell::RefCell;
    thread_local! {
        static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        picket_abi::encode_into_vec(request, buf).expect("encoding into a Vec cannot fail");
        // SAFETY: the pointer and length describe the live buffer; the host only reads it.
        unsafe { raw::emit_signal(arg(buf.as_ptr() as usize), arg(buf.len())) };
    })
}

#[cfg(target_arch = "wasm32")]
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the pointer and length describe a live &str; the host only reads it.
    unsafe {
        raw::log(
            level as i32,
            arg(message.as_ptr() as usize),
            arg(message.len()),
        )
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub mod native {
    //! Runs a rule's functions natively, with its imports answered by the caller.
    //!
    //! picket's benchmarks use this to compare a rule compiled to native code against the same
    //! rule in the wasm sandbox.

    use picket_abi::{LogLevel, SignalRequest};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// What answers a natively run rule's imports (in wasm, the host's functions do).
    pub trait NativeImports {
        /// Answers [`crate::new_value`].
        fn new_value(&self, state: &str, group: &str, value: &str) -> bool;
        /// Answers [`crate::is_known`].
        fn is_known(&self, state: &str, group: &str, value: &str) -> bool;
        /// Receives [`crate::Signal::emit`].
        fn emit_signal(&self, request: &SignalRequest<'_>);
        /// Receives [`crate::log`].
        fn log(&self, level: LogLevel, message: &str);
    }

    thread_local! {
        static IMPORTS: RefCell<Option<Rc<dyn NativeImports>>> = const { RefCell::new(None) };
    }

    /// Runs `f` with `imports` answering the rule's imports on this thread.
    pub fn with_imports<R>(imports: Rc<dyn NativeImports>, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Rc<dyn NativeImports>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                IMPORTS.with_borrow_mut(|slot| *slot = self.0.take());
            }
        }
        let _restore = Restore(IMPORTS.with_borrow_mut(|slot| slot.replace(imports)));
        f()
    }

    pub(crate) fn with<R>(f: impl FnOnce(&dyn NativeImports) -> R) -> R {
        IMPORTS.with_borrow(|slot| {
            let host = slot
                .as_deref()
                .expect("a natively run rule needs native::with_imports");
            f(host)
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub fn new_value(state: &str, group: &str, value: &str) -> bool {
    native::with(|imports| imports.new_value(state, group, value))
}

#[cfg(not(target_arch = "wasm32"))]
pub fn is_known(state: &str, group: &str, value: &str) -> bool {
    native::with(|imports| imports.is_known(state, group, value))
}

#[cfg(not(target_arch = "wasm32"))]
pub fn emit_signal(request: &SignalRequest<'_>) {
    native::with(|imports| imports.emit_signal(request))
}

#[cfg(not(target_arch = "wasm32"))]
pub fn log(level: LogLevel, message: &str) {
    native::with(|imports| imports.log(level, message))
}

#[cfg(test)]
mod tests {
    /// The `#[link]` attribute of the wasm32 extern block spells the import module out.
    #[test]
    fn the_import_module_is_the_abis() {
        let source = include_str!("imports.rs");
        let attribute = format!("wasm_import_module = \"{}\"", picket_abi::IMPORT_MODULE);
        assert!(source.contains(&attribute), "expected `{attribute}`");
    }
}
