//! Which kernel hook reports file opens, as an operator names it.

use std::fmt;

use anyhow::{Result, bail};

/// Which kernel hook reports file opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Try [`Strategy::Lsm`], then [`Strategy::Fentry`], then [`Strategy::Tracepoint`].
    Auto,
    /// `lsm/file_open`: needs `CONFIG_BPF_LSM` and `bpf` in the kernel's active LSM list. Sees
    /// every open, io_uring's and the kernel's own (exec) included.
    Lsm,
    /// `fentry/security_file_open`: the same hook point without the LSM requirement; needs a
    /// kernel that allows BPF trampolines.
    Fentry,
    /// Tracepoints on the exits of `open`, `openat`, `openat2`, `creat` and `open_by_handle_at`,
    /// plus `io_uring_complete` for io_uring opens. Works wherever tracepoints do.
    Tracepoint,
}

impl Strategy {
    /// Parses `auto`, `lsm`, `fentry` or `tracepoint`.
    pub fn parse(name: &str) -> Result<Strategy> {
        Ok(match name {
            "auto" => Strategy::Auto,
            "lsm" => Strategy::Lsm,
            "fentry" => Strategy::Fentry,
            "tracepoint" => Strategy::Tracepoint,
            other => bail!("unknown strategy {other:?} (expected auto, lsm, fentry or tracepoint)"),
        })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Auto => "auto",
            Strategy::Lsm => "lsm",
            Strategy::Fentry => "fentry",
            Strategy::Tracepoint => "tracepoint",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Strategy;

    #[test]
    fn strategies_round_trip() {
        for s in ["auto", "lsm", "fentry", "tracepoint"] {
            assert_eq!(Strategy::parse(s).unwrap().to_string(), s);
        }
        assert!(Strategy::parse("kprobe").is_err());
    }
}
