//! Opening the state file at start, and setting a damaged one aside rather than failing.

use super::{StateStore, StoreError, db::STATE_FILE, db::STATE_FORMAT};
use crate::state::RuleState;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A state file opened and read back by [`open_and_load`].
pub struct Restored {
    /// The store, for the persister.
    pub store: StateStore,
    /// Every rule's state, by rule id.
    pub states: HashMap<String, RuleState>,
    /// Values read.
    pub values: usize,
    /// Where a damaged file was moved, if one was.
    pub set_aside: Option<PathBuf>,
}

/// Opens `dir/state.redb` and reads it back. A damaged file (redb refuses it as corrupt, or
/// panics on it) or an emptied one (present but 0 bytes: it was truncated, since redb never
/// leaves one) is never fatal and never silent: it is moved aside as
/// `state.redb.damaged-<unix seconds>` for whoever investigates, an error names both paths, and
/// a fresh file is started, so the agent keeps detecting rather than crash-looping. Other
/// failures (the file locked by another process, a foreign file, no permission) are returned:
/// those are for the operator to decide, and moving the file would hide them.
///
/// A file written in a newer state format (an upgrade rolled back) is left untouched, for the
/// newer picket to find as it left it; this one keeps its state in the side file
/// `state.v<its format>.redb` beside it (where a newer picket leaves a copy of the file it
/// migrated, so that a rollback finds what was learned before the upgrade), and says so.
pub fn open_and_load(dir: &Path, capacity: usize) -> Result<Restored, StoreError> {
    match open_and_load_file(dir, STATE_FILE, capacity) {
        Err(err) if err.newer_format().is_some() => {
            let side = side_file();
            let restored = open_and_load_file(dir, &side, capacity)?;
            tracing::warn!(
                file = %dir.join(STATE_FILE).display(),
                kept_in = %restored.store.path().display(),
                values = restored.values,
                "{err}: it is left untouched for that picket, and this one keeps what it learns \
                 in the side file (docs/new-value.md, Upgrades and rollbacks)"
            );
            Ok(restored)
        }
        other => other,
    }
}

/// The state file of this format, used beside a newer one.
pub fn side_file() -> String {
    format!("state.v{STATE_FORMAT}.redb")
}

fn open_and_load_file(dir: &Path, name: &str, capacity: usize) -> Result<Restored, StoreError> {
    let path = dir.join(name);
    let mut set_aside = None;
    if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        set_aside = Some(move_aside(
            &path,
            "it is empty (0 bytes): it was truncated",
        )?);
    }
    match guarded(|| open_loaded(dir, name, capacity)) {
        Ok(mut restored) => {
            restored.set_aside = set_aside;
            return Ok(restored);
        }
        Err(err) if !err.is_damage() => return Err(err),
        Err(err) => set_aside = Some(move_aside(&path, &err.to_string())?),
    }
    let mut restored = guarded(|| open_loaded(dir, name, capacity))?;
    restored.set_aside = set_aside;
    Ok(restored)
}

fn open_loaded(dir: &Path, name: &str, capacity: usize) -> Result<Restored, StoreError> {
    let store = StateStore::open_file(dir, name)?;
    let (states, values) = store.load(capacity)?;
    Ok(Restored {
        store,
        states,
        values,
        set_aside: None,
    })
}

/// Runs `f`, turning a panic inside it (redb's, on a file it cannot make sense of) into an
/// error about a damaged file. The panic is not printed (no message and backtrace on stderr
/// beside the error that says what happened): see [`quiet_panics`].
pub(super) fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let outcome = quiet_panics(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    outcome.unwrap_or_else(|(panic, location)| {
        Err(StoreError::damage(format!(
            "the state database panicked reading it{}: {}",
            location.map(|at| format!(" (at {at})")).unwrap_or_default(),
            panic_message(&*panic)
        )))
    })
}

thread_local! {
    /// Set while this thread runs a guarded call: its panics are caught and reported by the
    /// caller, so the panic hook stays silent. Holds where the last one happened.
    static QUIET: std::cell::RefCell<Option<Option<String>>> =
        const { std::cell::RefCell::new(None) };
}

type Caught = (Box<dyn std::any::Any + Send>, Option<String>);

/// Runs `f` with the panic hook silent on this thread only (other threads' panics are printed
/// as ever): the process-wide hook is wrapped once, and asks a thread-local flag.
fn quiet_panics<T>(f: impl FnOnce() -> std::thread::Result<T>) -> Result<T, Caught> {
    static WRAP_HOOK: std::sync::Once = std::sync::Once::new();
    WRAP_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let quiet = QUIET.with(|quiet| {
                let mut quiet = quiet.borrow_mut();
                quiet
                    .as_mut()
                    .map(|location| *location = info.location().map(|at| at.to_string()))
                    .is_some()
            });
            if !quiet {
                previous(info);
            }
        }));
    });
    let outer = QUIET.with(|quiet| quiet.borrow_mut().replace(None));
    let result = f();
    let location = QUIET.with(|quiet| std::mem::replace(&mut *quiet.borrow_mut(), outer));
    result.map_err(|panic| (panic, location.flatten()))
}

/// The text of a panic payload.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Renames a damaged state file to `<name>.damaged-<unix seconds>` and says so.
fn move_aside(path: &Path, why: &str) -> Result<PathBuf, StoreError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = PathBuf::from(format!("{}.damaged-{stamp}", path.display()));
    for n in 1.. {
        if !aside.exists() {
            break;
        }
        aside = PathBuf::from(format!("{}.damaged-{stamp}.{n}", path.display()));
    }
    std::fs::rename(path, &aside).map_err(|err| {
        StoreError::new(format!(
            "state file {} is damaged ({why}) and cannot be moved aside to {}: {err}",
            path.display(),
            aside.display()
        ))
    })?;
    crate::metrics::global().state_file_set_aside();
    tracing::error!(
        file = %path.display(),
        moved_to = %aside.display(),
        "state file damaged: moved aside and starting with an empty state; what it held is \
         learned again (values are silent while their group learns, new ones raise signals). \
         Cause: {why}"
    );
    Ok(aside)
}
