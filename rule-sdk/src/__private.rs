//! What `rule!` expands to on wasm32; not a public API.
#![cfg(target_arch = "wasm32")]

use crate::{Event, Manifest};
use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    /// The buffer the host writes events into; see `picket_alloc` in docs/abi.md.
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The encoded manifest, kept alive so the host can read it after the export returns.
    static MANIFEST: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

static PANIC_HOOK: Once = Once::new();

/// Routes panic messages to the host's log before the panic traps, so the operator sees why.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            // One line: std's own rendering puts the message on a line of its own, which the
            // host's log shows escaped, as a literal `\n`.
            let message = info
                .payload_as_str()
                .unwrap_or("(a panic without a message)");
            let text = match info.location() {
                Some(at) => format!(
                    "rule panicked at {}:{}:{}: {message}",
                    at.file(),
                    at.line(),
                    at.column()
                ),
                None => format!("rule panicked: {message}"),
            };
            crate::imports::log(crate::LogLevel::Panic, &text);
        }))
    });
}

pub fn abi_version() -> i32 {
    picket_abi::ABI_VERSION as i32
}

pub fn manifest(build: fn() -> Manifest) -> i64 {
    install_panic_hook();
    MANIFEST.with_borrow_mut(|buf| {
        buf.clear();
        picket_abi::encode_into_vec(&build(), buf).expect("encoding into a Vec cannot fail");
        picket_abi::pack_ptr_len(buf.as_ptr() as u32, buf.len() as u32)
    })
}

pub fn alloc(len: i32) -> i32 {
    install_panic_hook();
    INPUT.with_borrow_mut(|buf| {
        buf.clear();
        buf.resize(len.max(0) as usize, 0);
        buf.as_mut_ptr() as i32
    })
}

pub fn on_event(ptr: i32, len: i32, handler: fn(&Event<'_>)) -> i32 {
    INPUT.with_borrow(|buf| {
        // The host may only hand back the buffer it was given; anything else is refused rather
        // than trusted as a raw pointer.
        if ptr as u32 != buf.as_ptr() as u32 || len < 0 || len as usize > buf.len() {
            return picket_abi::HANDLER_BAD_EVENT;
        }
        // SAFETY: the host wrote this buffer with `EventFields::encode`, which writes only UTF-8
        // strings (an ABI guarantee), and nothing in the module writes to it.
        match unsafe { Event::parse_trusted(&buf[..len as usize]) } {
            Ok(event) => {
                handler(&event);
                picket_abi::HANDLER_OK
            }
            Err(_) => picket_abi::HANDLER_BAD_EVENT,
        }
    })
}
