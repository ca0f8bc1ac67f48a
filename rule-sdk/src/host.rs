//! The host functions a rule calls: wasm imports on wasm32, a pluggable host elsewhere.

use picket_abi::{LogLevel, SignalRequest};

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "picket")]
    unsafe extern "C" {
        pub fn new_value(
            state: *const u8,
            state_len: usize,
            group: *const u8,
            group_len: usize,
            value: *const u8,
            value_len: usize,
        ) -> i32;
        pub fn emit_signal(ptr: *const u8, len: usize) -> i32;
        pub fn log(level: i32, ptr: *const u8, len: usize);
    }
}

#[cfg(target_arch = "wasm32")]
pub fn new_value(state: &str, group: &str, value: &str) -> bool {
    // SAFETY: each pointer and length describes a live &str; the host only reads them.
    let answer = unsafe {
        imports::new_value(
            state.as_ptr(),
            state.len(),
            group.as_ptr(),
            group.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    answer == picket_abi::NEW_VALUE_NEW
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
        unsafe { imports::emit_signal(buf.as_ptr(), buf.len()) };
    })
}

#[cfg(target_arch = "wasm32")]
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the pointer and length describe a live &str; the host only reads it.
    unsafe { imports::log(level as i32, message.as_ptr(), message.len()) }
}

#[cfg(not(target_arch = "wasm32"))]
pub mod native {
    //! Runs a rule's functions natively, with the host functions supplied by the caller.
    //!
    //! picket's benchmarks use this to compare a rule compiled to native code against the same
    //! rule in the wasm sandbox.

    use picket_abi::{LogLevel, SignalRequest};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// The host side of a natively run rule.
    pub trait NativeHost {
        /// Answers [`crate::new_value`].
        fn new_value(&self, state: &str, group: &str, value: &str) -> bool;
        /// Receives [`crate::Signal::emit`].
        fn emit_signal(&self, request: &SignalRequest<'_>);
        /// Receives [`crate::log`].
        fn log(&self, level: LogLevel, message: &str);
    }

    thread_local! {
        static HOST: RefCell<Option<Rc<dyn NativeHost>>> = const { RefCell::new(None) };
    }

    /// Runs `f` with `host` answering the rule's host calls on this thread.
    pub fn with_host<R>(host: Rc<dyn NativeHost>, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Rc<dyn NativeHost>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                HOST.with_borrow_mut(|slot| *slot = self.0.take());
            }
        }
        let _restore = Restore(HOST.with_borrow_mut(|slot| slot.replace(host)));
        f()
    }

    pub(crate) fn with<R>(f: impl FnOnce(&dyn NativeHost) -> R) -> R {
        HOST.with_borrow(|slot| {
            let host = slot
                .as_deref()
                .expect("a natively run rule needs native::with_host");
            f(host)
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub fn new_value(state: &str, group: &str, value: &str) -> bool {
    native::with(|host| host.new_value(state, group, value))
}

#[cfg(not(target_arch = "wasm32"))]
pub fn emit_signal(request: &SignalRequest<'_>) {
    native::with(|host| host.emit_signal(request))
}

#[cfg(not(target_arch = "wasm32"))]
pub fn log(level: LogLevel, message: &str) {
    native::with(|host| host.log(level, message))
}
