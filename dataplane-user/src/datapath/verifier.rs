//! What the kernel's verifier said about a program: a rejection turned into
//! one line (the reason and the instruction, with the full log kept in a
//! file), and the budget an accepted program used.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::programs::ProgramError;

use super::instance::RUN_ROOT;

/// The kernel refused to load a program. Displays as one line; the log
/// file has the verifier's whole output (`--verbose` prints it).
#[derive(Debug)]
pub struct Rejection {
    pub program: String,
    pub kernel: String,
    /// The verifier's last complaint, e.g. `R1 invalid mem access 'scalar'`.
    pub reason: String,
    /// The instruction it complained about, when the log names one.
    pub insn: Option<u32>,
    /// The full log, or `None` when it could not be written (then the
    /// message says so).
    pub log_file: Option<PathBuf>,
    pub log: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the kernel ({}) rejected program {}: {}",
            self.kernel, self.program, self.reason
        )?;
        if let Some(insn) = self.insn {
            write!(f, " at insn {insn}")?;
        }
        match &self.log_file {
            Some(path) => write!(f, "; full verifier log in {}", path.display()),
            None => write!(f, "; the verifier log could not be saved (use --verbose)"),
        }
    }
}

impl std::error::Error for Rejection {}

impl Rejection {
    /// Turns aya's load error for `program` into a rejection (keeping its
    /// log in `RUN_ROOT`), or returns it as it is when it is not the
    /// verifier's (a missing program type, say).
    pub fn from_load_error(program: &str, kernel: &str, error: ProgramError) -> anyhow::Error {
        let ProgramError::LoadError {
            io_error,
            verifier_log,
        } = error
        else {
            return anyhow::Error::new(error)
                .context(format!("loading program {program} into the kernel"));
        };
        let log = format!("{verifier_log:?}");
        let (reason, insn) = summarize(&log);
        let reason = reason.unwrap_or_else(|| io_error.to_string());
        let log_file = save_log(Path::new(RUN_ROOT), program, &log).ok();
        Self {
            program: program.to_owned(),
            kernel: kernel.to_owned(),
            reason,
            insn,
            log_file,
            log,
        }
        .into()
    }
}

/// The verifier's complaint and the instruction it was at: the last line
/// that is neither an instruction, a register state nor the statistics, and
/// the number of the last instruction printed before it.
pub fn summarize(log: &str) -> (Option<String>, Option<u32>) {
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    let is_stats = |l: &str| {
        l.starts_with("processed ")
            || l.starts_with("verification time")
            || l.starts_with("stack depth")
            || l.starts_with("-- END PROG LOAD LOG --")
    };
    let insn_number = |l: &str| -> Option<u32> {
        let (number, rest) = l.split_once(':')?;
        rest.starts_with(" (").then_some(())?;
        number.parse().ok()
    };
    let Some(at) = lines.iter().rposition(|l| {
        !l.is_empty() && !is_stats(l) && insn_number(l).is_none() && !l.starts_with(';')
    }) else {
        return (None, None);
    };
    let insn = lines[..at].iter().rev().find_map(|l| insn_number(l));
    (Some(lines[at].to_owned()), insn)
}

fn save_log(dir: &Path, program: &str, log: &str) -> std::io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let path = dir.join(format!("verifier-{program}.log"));
    fs::write(&path, log)?;
    Ok(path)
}

/// What verifying an accepted program cost.
#[derive(Clone, Debug)]
pub struct Budget {
    /// Instructions the verifier processed (the "processed N insns" of its
    /// log; the limit is 1,000,000). `None` on kernels before 5.16, which do
    /// not report it.
    pub instructions_processed: Option<u32>,
    /// Wall time of the load: verification, plus the JIT.
    pub load_time: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG_6_1: &str = "\
; Ok(entry) => entry,
686: (79) r1 = *(u64 *)(r10 -32)      ; R1_w=scalar() R10=fp0
699: (79) r1 = *(u64 *)(r10 -88)      ; R1_w=scalar() R10=fp0
700: (71) r1 = *(u8 *)(r1 +7)
R1 invalid mem access 'scalar'
verification time 116850 usec
stack depth 144+0+208
processed 3068 insns (limit 1000000) max_states_per_insn 4 total_states 105 peak_states 105 mark_read 67
";

    #[test]
    fn a_rejection_names_the_complaint_and_its_instruction() {
        assert_eq!(
            summarize(LOG_6_1),
            (Some("R1 invalid mem access 'scalar'".to_owned()), Some(700))
        );
    }

    #[test]
    fn a_log_without_a_complaint_gives_nothing() {
        assert_eq!(summarize(""), (None, None));
        assert_eq!(
            summarize("processed 3 insns (limit 1000000)\n"),
            (None, None)
        );
    }

    #[test]
    fn a_rejection_displays_as_one_line() {
        let rejection = Rejection {
            program: "uplink_egress".into(),
            kernel: "6.1.0-50-amd64".into(),
            reason: "R1 invalid mem access 'scalar'".into(),
            insn: Some(700),
            log_file: Some("/run/bpfmasq/verifier-uplink_egress.log".into()),
            log: LOG_6_1.into(),
        };
        assert_eq!(
            rejection.to_string(),
            "the kernel (6.1.0-50-amd64) rejected program uplink_egress: R1 invalid mem access \
             'scalar' at insn 700; full verifier log in /run/bpfmasq/verifier-uplink_egress.log"
        );
    }
}
