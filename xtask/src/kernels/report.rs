//! What the matrix reports: one verdict line per kernel as it finishes, and a
//! table of all kernels at the end (tests per fast-path mode, time, and what
//! verifying each program cost).

use std::{path::PathBuf, time::Duration};

use super::{
    Series,
    guest::{MODES, Program, Results},
};

/// One kernel's run, from resolving its package to reading its results.
#[derive(Debug)]
pub struct KernelRun {
    pub series: &'static Series,
    /// `uname -r` of the resolved package; None when resolving failed.
    pub kernel: Option<String>,
    pub results: Results,
    /// What went wrong besides failing tests (fetching, booting, a timeout).
    pub problem: Option<String>,
    /// From boot to power-off.
    pub duration: Option<Duration>,
    /// Where a failed run's logs are kept.
    pub logs: Option<PathBuf>,
    /// Boots that died before the guest script started (retried).
    pub boots: u32,
}

impl KernelRun {
    pub fn new(series: &'static Series) -> Self {
        Self {
            series,
            kernel: None,
            results: Results::default(),
            problem: None,
            duration: None,
            boots: 0,
            logs: None,
        }
    }

    pub fn name(&self) -> String {
        self.kernel
            .clone()
            .unwrap_or_else(|| format!("{} (Debian {})", self.series.name, self.series.suite))
    }

    pub fn passed(&self) -> bool {
        self.problem.is_none()
            && self.results.finished
            && self.results.suites.len() == MODES.len()
            && self.results.suites.iter().all(|s| s.passed())
    }

    fn attach_mode(&self) -> Option<&str> {
        self.results.probe.as_ref()?.attach_mode.as_deref()
    }

    fn minutes(&self) -> String {
        self.duration.map_or_else(
            || "-".to_owned(),
            |d| format!("{:.1}", d.as_secs_f64() / 60.0),
        )
    }

    /// `6.1.0-57-amd64 (clsact): 14/14 passed with the fast path on, 14/14 off, 4.1 min`,
    /// then what failed, if anything.
    pub fn verdict(&self) -> String {
        let mut head = self.name();
        if let Some(mode) = self.attach_mode() {
            head += &format!(" ({mode})");
        }
        let mut facts = Vec::new();
        if let [first, rest @ ..] = self.results.suites.as_slice() {
            let passed = if first.summary.is_some() {
                " passed"
            } else {
                ""
            };
            facts.push(format!(
                "{}{passed} with the fast path {}",
                first.cell(),
                MODES[0]
            ));
            facts.extend(
                rest.iter()
                    .zip(&MODES[1..])
                    .map(|(s, mode)| format!("{} {mode}", s.cell())),
            );
        }
        if self.duration.is_some() {
            facts.push(format!("{} min", self.minutes()));
        }
        let mut clauses = vec![facts.join(", ")];
        clauses.extend(self.problem.clone());
        clauses.extend(
            self.results
                .suites
                .iter()
                .zip(MODES)
                .filter(|(s, _)| !s.failed_tests.is_empty())
                .map(|(s, mode)| {
                    format!(
                        "failed with the fast path {mode}: {}",
                        s.failed_tests.join(", ")
                    )
                }),
        );
        clauses.retain(|c| !c.is_empty());
        format!("{head}: {}", clauses.join("; "))
    }
}

/// The table of every kernel's run, and a line explaining the program columns.
pub fn table(runs: &[KernelRun]) -> String {
    let mut programs: Vec<&str> = Vec::new();
    for run in runs {
        for program in run.results.probe.iter().flat_map(|p| &p.programs) {
            if !programs.contains(&program.name.as_str()) {
                programs.push(&program.name);
            }
        }
    }
    let mut header = vec!["kernel".to_owned(), "attach".to_owned()];
    header.extend(MODES.iter().map(|mode| format!("fast path {mode}")));
    header.push("min".to_owned());
    header.extend(programs.iter().map(|p| p.to_string()));
    let mut rows = vec![header];
    for run in runs {
        let mut row = vec![run.name(), run.attach_mode().unwrap_or("-").to_owned()];
        row.extend((0..MODES.len()).map(|i| {
            run.results
                .suites
                .get(i)
                .map_or("-".to_owned(), |s| s.cell())
        }));
        row.push(run.minutes());
        row.extend(programs.iter().map(|name| {
            run.results
                .probe
                .iter()
                .flat_map(|p| &p.programs)
                .find(|p| p.name == *name)
                .map_or("-".to_owned(), program_cell)
        }));
        rows.push(row);
    }
    let mut text = align(&rows);
    if !programs.is_empty() {
        text += "\nprograms: instructions the verifier processed / time to load and verify \
                 (-: not reported by this kernel)\n";
    }
    text
}

/// `20923 / 300.1 ms`, `rejected`, or `-` where the probe gave no number.
fn program_cell(program: &Program) -> String {
    if program.loaded == Some(false) {
        return "rejected".to_owned();
    }
    let instructions = program
        .instructions
        .map_or("-".to_owned(), |n| n.to_string());
    let time = program
        .time_us
        .map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0));
    format!("{instructions} / {time}")
}

/// Rows as columns two spaces apart, each as wide as its widest cell.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        text += line.join("  ").trim_end();
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{SERIES, guest::Probe, suite::SuiteRun};

    fn suite(passed: u32, failed: u32, failing: &str) -> SuiteRun {
        let mut out = String::from("running\n");
        if !failing.is_empty() {
            out += &format!("test {failing} ... FAILED\n");
        }
        out += &format!(
            "test result: ok. {passed} passed; {failed} failed; 0 ignored; 0 measured; \
             0 filtered out; finished in 1.00s\n"
        );
        SuiteRun::from_output(Some(out), Some(if failed == 0 { 0 } else { 101 }))
    }

    fn run(kernel: &str, attach: &str, suites: Vec<SuiteRun>) -> KernelRun {
        KernelRun {
            kernel: Some(kernel.to_owned()),
            results: Results {
                finished: true,
                probe: Some(Probe {
                    attach_mode: Some(attach.to_owned()),
                    programs: vec![
                        Program {
                            name: "uplink_egress".into(),
                            loaded: Some(true),
                            instructions: Some(20923),
                            time_us: Some(300050),
                        },
                        Program {
                            name: "bridge_ingress".into(),
                            loaded: Some(true),
                            instructions: None,
                            time_us: Some(20948),
                        },
                    ],
                }),
                probe_error: None,
                suites,
            },
            duration: Some(Duration::from_secs(246)),
            ..KernelRun::new(&SERIES[1])
        }
    }

    #[test]
    fn a_passing_kernel_is_one_line() {
        let run = run(
            "6.1.0-57-amd64",
            "clsact",
            vec![suite(14, 0, ""), suite(14, 0, "")],
        );
        assert!(run.passed());
        assert_eq!(
            run.verdict(),
            "6.1.0-57-amd64 (clsact): 14/14 passed with the fast path on, 14/14 off, 4.1 min"
        );
    }

    #[test]
    fn a_failing_kernel_names_its_failures() {
        let run = run(
            "6.1.0-57-amd64",
            "clsact",
            vec![suite(13, 1, "tcp_transfer"), suite(14, 0, "")],
        );
        assert!(!run.passed());
        assert_eq!(
            run.verdict(),
            "6.1.0-57-amd64 (clsact): 13/14 passed with the fast path on, 14/14 off, 4.1 min; \
             failed with the fast path on: tcp_transfer"
        );
        let mut unresolved = KernelRun::new(&SERIES[0]);
        unresolved.problem = Some("cannot fetch Debian bullseye's package lists".into());
        assert!(!unresolved.passed());
        assert_eq!(
            unresolved.verdict(),
            "5.10 (Debian bullseye): cannot fetch Debian bullseye's package lists"
        );
    }

    #[test]
    fn the_table_lines_up() {
        let runs = [
            run(
                "6.1.0-57-amd64",
                "clsact",
                vec![suite(14, 0, ""), suite(13, 1, "x")],
            ),
            run(
                "6.12.118+deb13-amd64",
                "tcx",
                vec![suite(14, 0, ""), suite(14, 0, "")],
            ),
        ];
        let table = table(&runs);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "kernel                attach  fast path on  fast path off  min  uplink_egress     bridge_ingress"
        );
        assert_eq!(
            lines[1],
            "6.1.0-57-amd64        clsact  14/14         13/14          4.1  20923 / 300.1 ms  - / 20.9 ms"
        );
        assert!(lines[2].starts_with("6.12.118+deb13-amd64  tcx     14/14         14/14"));
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with("programs: "));
    }
}
