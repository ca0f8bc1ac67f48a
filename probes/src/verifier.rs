//! Errors for programs the kernel refuses: the verifier's log is long (every instruction it
//! walked, then its verdict, then statistics), and the one line that says why is the last thing
//! it printed before the statistics. The error quotes that line and the instruction it was at;
//! the whole log goes to the debug log.

use aya::programs::ProgramError;

/// Turns a program load failure into an error that says `what` failed and why, quoting the
/// verifier's decisive line when there is a log.
pub(crate) fn load_error(err: ProgramError, what: &str) -> anyhow::Error {
    let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &err
    else {
        return anyhow::Error::new(err).context(what.to_owned());
    };
    let log = verifier_log.to_string();
    if !log.trim().is_empty() {
        tracing::debug!("{what}: verifier log:\n{log}");
    }
    match decisive_line(&log) {
        Some((line, Some(insn))) => anyhow::anyhow!(
            "{what}: the kernel refused the program ({io_error}); verifier: {line} (at {insn})"
        ),
        Some((line, None)) => {
            anyhow::anyhow!("{what}: the kernel refused the program ({io_error}); verifier: {line}")
        }
        None => anyhow::anyhow!(
            "{what}: the kernel refused the program ({io_error}) without a verifier log"
        ),
    }
}

/// Lines the verifier prints after its verdict.
fn is_trailer(line: &str) -> bool {
    line.is_empty()
        || (line.starts_with("processed ") && line.contains(" insns"))
        || line.starts_with("verification time")
        || line.starts_with("stack depth")
        || line.starts_with("max_states_per_insn")
        || line.starts_with("peak_states")
        || line.starts_with("mark_read")
        || line.starts_with("-- END PROG LOAD LOG --")
}

/// An instruction dump line: `123: (85) call bpf_ringbuf_output#130`.
fn is_instruction(line: &str) -> bool {
    line.split_once(": (")
        .is_some_and(|(index, _)| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
}

/// The verifier's verdict and, when it names one, the instruction it was at. The verdict is the
/// last line before the statistics that is not register state or an instruction.
pub(crate) fn decisive_line(log: &str) -> Option<(&str, Option<&str>)> {
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    let end = lines.iter().rposition(|line| !is_trailer(line))?;
    let verdict = lines[end];
    let insn = lines[..end]
        .iter()
        .rev()
        .take(8)
        .find(|line| is_instruction(line))
        .copied();
    Some((verdict, insn))
}

#[cfg(test)]
mod tests {
    use super::decisive_line;

    #[test]
    fn the_verdict_is_the_last_line_before_the_statistics() {
        // The tail of Linux 6.1's log for a size argument the verifier cannot bound.
        let log = "reg type unsupported for arg#0 function sched_process_exec#5\n\
                   0: R1=ctx(off=0,imm=0) R10=fp0\n\
                   ; fn output\n\
                   412: (bf) r3 = r8                     ; R3_w=scalar()\n\
                   413: (85) call bpf_ringbuf_output#130\n\
                   R3 min value is negative, either use unsigned or 'var &= const'\n\
                   processed 3702 insns (limit 1000000) max_states_per_insn 4 total_states 211 peak_states 211 mark_read 23\n";
        assert_eq!(
            decisive_line(log),
            Some((
                "R3 min value is negative, either use unsigned or 'var &= const'",
                Some("413: (85) call bpf_ringbuf_output#130")
            ))
        );
    }

    #[test]
    fn an_early_refusal_has_no_instruction() {
        let log = "arg#0 type is not a struct\nUnrecognized arg#0 type PTR\n\
                   ; int x\nunknown func bpf_get_current_task_btf#158\n";
        assert_eq!(
            decisive_line(log),
            Some(("unknown func bpf_get_current_task_btf#158", None))
        );
        assert_eq!(decisive_line("\n\n"), None);
    }
}
