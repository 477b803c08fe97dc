//! The test suite the guests run: one integration test of the end-to-end
//! package, built on the host (the guest runs the same executable from the
//! shared root file system), and what libtest printed when it ran.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::{cmd::Cmd, test::E2E_PACKAGE, ui, workspace};

/// Builds `tests/tests/<name>.rs` without running it; returns its executable.
pub fn build(name: &str) -> Result<PathBuf> {
    ui::step(&format!("build the {name} test suite"));
    let json = Cmd::new(workspace::cargo())
        .args(["test", "--release", "-p", E2E_PACKAGE, "--test", name])
        .args(["--no-run", "--message-format=json"])
        .current_dir(workspace::root())
        .read_echoed()?;
    let executable = test_executable(&json, name).with_context(|| {
        format!("cargo built no `{name}` test executable (is there a tests/tests/{name}.rs?)")
    })?;
    ui::ok(&executable.display().to_string());
    Ok(executable)
}

/// The executable of test target `name` in cargo's `--message-format=json`
/// output (one JSON message a line).
fn test_executable(json_lines: &str, name: &str) -> Option<PathBuf> {
    json_lines
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == name
                && m["profile"]["test"] == true
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// libtest's closing line: `test result: ok. 14 passed; 0 failed; ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub passed: u32,
    pub failed: u32,
}

/// One run of the suite in the guest, read from its output.
#[derive(Debug, Default)]
pub struct SuiteRun {
    /// None when the suite never printed its closing line (it crashed, was
    /// killed by its timeout, or never ran).
    pub summary: Option<Summary>,
    /// The exit status the guest recorded (124: killed by `timeout`).
    pub status: Option<i32>,
    /// Tests that printed `... ok`, counted as they come (for a suite that
    /// never finished).
    pub passed_so_far: u32,
    pub failed_tests: Vec<String>,
    /// The output, or None when the suite left none.
    pub output: Option<String>,
}

impl SuiteRun {
    pub fn from_output(output: Option<String>, status: Option<i32>) -> Self {
        let text = output.as_deref().unwrap_or_default();
        Self {
            summary: summary(text),
            status,
            passed_so_far: text
                .lines()
                .filter(|l| test_outcome(l) == Some("ok"))
                .count() as u32,
            failed_tests: failed_tests(text),
            output,
        }
    }

    /// Every test passed and there was at least one.
    pub fn passed(&self) -> bool {
        self.status == Some(0) && self.summary.is_some_and(|s| s.failed == 0 && s.passed > 0)
    }

    /// `14/14`, `13/14`, or why there is no count.
    pub fn cell(&self) -> String {
        match (self.summary, self.status) {
            (Some(s), _) => format!("{}/{}", s.passed, s.passed + s.failed),
            (None, None) if self.output.is_none() => "-".to_owned(),
            (None, Some(124)) => format!("timeout ({} ok)", self.passed_so_far),
            (None, _) => format!("crashed ({} ok)", self.passed_so_far),
        }
    }

    /// The end of the output around the failures: libtest's `failures:`
    /// section (each failing test's captured output), else the last lines.
    pub fn failure_tail(&self, max_lines: usize) -> String {
        let text = self.output.as_deref().unwrap_or_default();
        let from = text.find("\nfailures:\n").map_or(0, |i| i + 1);
        tail(&text[from..], max_lines)
    }
}

/// The last `max_lines` lines of `text`, trailing blank lines left out, each
/// cut at [`MAX_LINE`] characters (a panic message may quote a whole packet).
pub fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(max_lines)..]
        .iter()
        .map(|line| match line.char_indices().nth(MAX_LINE) {
            Some((cut, _)) => format!("{} [... {} more bytes]", &line[..cut], line.len() - cut),
            None => (*line).to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How much of one line [`tail`] keeps.
const MAX_LINE: usize = 400;

/// The counts of the last `test result:` line.
fn summary(output: &str) -> Option<Summary> {
    let line = output
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("test result: "))?;
    let count = |word: &str| {
        line.split(';').find_map(|part| {
            let mut words = part.split_whitespace().rev();
            (words.next() == Some(word))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
    };
    Some(Summary {
        passed: count("passed")?,
        failed: count("failed")?,
    })
}

/// Whether `line` is a test's result, `test NAME ... ok` (or `FAILED`, `ignored`).
pub fn is_result_line(line: &str) -> bool {
    test_outcome(line).is_some()
}

/// `ok`, `FAILED` or `ignored` from a result line `test NAME ... ok`.
fn test_outcome(line: &str) -> Option<&str> {
    let (_, outcome) = line.strip_prefix("test ")?.rsplit_once(" ... ")?;
    Some(outcome.trim())
}

fn failed_tests(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| test_outcome(l) == Some("FAILED"))
        .filter_map(|l| Some(l.strip_prefix("test ")?.rsplit_once(" ... ")?.0.to_owned()))
        .collect()
}

/// Whether the guest can run `path`: it sees this machine's root file system,
/// except for the folders virtme-ng mounts an empty tmpfs over.
pub fn visible_in_guest(path: &Path) -> bool {
    const HIDDEN: &[&str] = &["/var/tmp", "/var/log", "/var/cache", "/var/lib/apt"];
    !HIDDEN.iter().any(|dir| path.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSED: &str = "\nrunning 2 tests\n\
        test icmp_echo ... ok\n\
        test tcp_transfer ... ok\n\n\
        test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 50.62s\n\n";

    const FAILED: &str = "\nrunning 3 tests\n\
        test icmp_echo ... ok\n\
        test tcp_transfer ... FAILED\n\
        test udp ... ok\n\n\
        failures:\n\n\
        ---- tcp_transfer stdout ----\n\
        thread 'tcp_transfer' panicked at tests/tests/portability.rs:10:5:\n\
        short read\n\n\
        failures:\n    tcp_transfer\n\n\
        test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.10s\n\n";

    #[test]
    fn reads_the_summary() {
        let run = SuiteRun::from_output(Some(PASSED.to_owned()), Some(0));
        assert_eq!(
            run.summary,
            Some(Summary {
                passed: 2,
                failed: 0
            })
        );
        assert!(run.passed());
        assert_eq!(run.cell(), "2/2");
        assert!(run.failed_tests.is_empty());
    }

    #[test]
    fn reads_failures() {
        let run = SuiteRun::from_output(Some(FAILED.to_owned()), Some(101));
        assert_eq!(
            run.summary,
            Some(Summary {
                passed: 2,
                failed: 1
            })
        );
        assert!(!run.passed());
        assert_eq!(run.cell(), "2/3");
        assert_eq!(run.failed_tests, ["tcp_transfer"]);
        let failures = run.failure_tail(100);
        assert!(failures.starts_with("failures:\n"), "{failures}");
        assert!(failures.contains("short read"), "{failures}");
        assert!(run.failure_tail(1).starts_with("test result: FAILED."));
        let long = format!("short\n{}\n", "x".repeat(MAX_LINE + 10));
        assert_eq!(
            tail(&long, 2),
            format!("short\n{} [... 10 more bytes]", "x".repeat(MAX_LINE))
        );
    }

    #[test]
    fn a_suite_that_never_finished_is_no_pass() {
        let partial = "running 3 tests\ntest icmp_echo ... ok\ntest tcp_transfer ... ";
        let run = SuiteRun::from_output(Some(partial.to_owned()), Some(124));
        assert_eq!(run.summary, None);
        assert!(!run.passed());
        assert_eq!(run.cell(), "timeout (1 ok)");
        assert_eq!(
            SuiteRun::from_output(Some(partial.to_owned()), None).cell(),
            "crashed (1 ok)"
        );
        assert_eq!(SuiteRun::from_output(None, None).cell(), "-");
    }

    #[test]
    fn no_test_is_no_pass() {
        let none = "running 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; \
                    0 measured; 3 filtered out; finished in 0.00s\n";
        assert!(!SuiteRun::from_output(Some(none.to_owned()), Some(0)).passed());
    }

    #[test]
    fn finds_the_test_executable() {
        let json = r#"{"reason":"compiler-artifact","target":{"name":"bpfmasq_e2e","kind":["lib"]},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"name":"portability","kind":["test"]},"profile":{"test":true},"executable":"/w/target/release/deps/portability-0123abcd"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executable(json, "portability"),
            Some(PathBuf::from("/w/target/release/deps/portability-0123abcd"))
        );
        assert_eq!(test_executable(json, "masquerade"), None);
    }

    #[test]
    fn knows_what_the_guest_cannot_see() {
        assert!(visible_in_guest(Path::new(
            "/work/main/target/release/bpfmasq"
        )));
        assert!(visible_in_guest(Path::new(
            "/tmp/ci/target/release/bpfmasq"
        )));
        assert!(!visible_in_guest(Path::new(
            "/var/tmp/ci/target/release/bpfmasq"
        )));
    }
}
