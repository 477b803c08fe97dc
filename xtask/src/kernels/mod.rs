//! The kernel matrix: the portability suite on the kernels container hosts
//! actually run, Debian's own 5.10, 6.1 and 6.12, each booted with virtme-ng.
//!
//! For each series: [`debian`] resolves the newest generic image and unpacks
//! it into the cache (reused while it is the newest), [`vm`] boots it (KVM if
//! it works here, else TCG), the script from [`guest`] loads the modules,
//! runs `bpfmasq probe --json` and the [`suite`] twice (fast path on, then
//! off) and leaves everything in a shared folder, and [`report`] turns that
//! into a verdict line and, at the end, a table. A failed kernel's logs are
//! kept in `target/kernels-logs/<kernel>/`; the matrix fails if any kernel did.

mod debian;
mod guest;
mod report;
mod suite;
mod vm;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};

use self::{
    debian::Archive,
    guest::{Plan, Progress, Results, SharedDir},
    report::KernelRun,
    vm::{Exit, Virtme},
};
use crate::{setup, ui, workspace};

/// A kernel series and the Debian release whose own kernel it is.
#[derive(Debug)]
pub struct Series {
    /// `5.10`: the package is the newest `linux-image-5.10.*-amd64-unsigned`.
    pub name: &'static str,
    pub suite: &'static str,
}

/// Every series the matrix knows, oldest first.
pub const SERIES: &[Series] = &[
    // Debian 11
    Series {
        name: "5.10",
        suite: "bullseye",
    },
    // Debian 12
    Series {
        name: "6.1",
        suite: "bookworm",
    },
    // Debian 13
    Series {
        name: "6.12",
        suite: "trixie",
    },
];

/// The test file (tests/tests/NAME.rs of the end-to-end package) the guests run.
pub const DEFAULT_SUITE: &str = "portability";

/// How long one run of the suite (one fast-path mode) may take in a guest:
/// 2 to 4 minutes under TCG on 2 cores. Three guests that all hang must
/// still end within CI's time (.ci/run).
const SUITE_TIMEOUT: Duration = Duration::from_secs(8 * 60);
/// Boots a kernel gets, at most, when it dies before the guest script starts.
const BOOT_ATTEMPTS: u32 = 3;
/// On top of the suites: booting, loading modules, the probe.
const BOOT_TIMEOUT: Duration = Duration::from_secs(3 * 60);

/// Lines of a failed suite's output printed (the rest is in the kept logs).
const TAIL_LINES: usize = 60;

/// Runs the matrix on `series` with the built `bin` and the end-to-end test
/// file `suite_name`; fails if any kernel failed.
pub fn run(bin: &Path, series: &[&'static Series], suite_name: &str) -> Result<()> {
    let vng_dir = setup::ensure_vm_tools()?;
    let names: Vec<&str> = series.iter().map(|s| s.name).collect();
    ui::section(&format!(
        "kernel matrix: the {suite_name} suite on Debian's Linux {} (virtme-ng guests)",
        names.join(", ")
    ));
    vm::stop_on_interrupt()?;
    let suite = suite::build(suite_name)?;
    let cache = workspace::cache_dir()?;
    for path in [bin, &suite, &cache] {
        ensure!(
            suite::visible_in_guest(path),
            "{} is in a folder the guests see as empty; move it elsewhere",
            path.display()
        );
    }
    let mut matrix = Matrix {
        virtme: Virtme::new(vng_dir),
        bin: bin.to_owned(),
        suite,
        cache,
        logs: workspace::target_dir().join("kernels-logs"),
    };
    let mut runs = Vec::new();
    for series in series {
        vm::check_interrupted()?;
        ui::section(&format!(
            "kernel matrix: Linux {} from Debian {}",
            series.name, series.suite
        ));
        let run = matrix.run_kernel(series)?;
        if run.passed() {
            ui::ok(&run.verdict());
        } else {
            ui::failed(&run.verdict());
            if let Some(logs) = &run.logs {
                ui::note(&format!("the guest's logs are kept in {}", logs.display()));
            }
        }
        runs.push(run);
    }
    ui::section("kernel matrix: results");
    print!("{}", report::table(&runs));
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| !r.passed())
        .map(KernelRun::name)
        .collect();
    if !failed.is_empty() {
        bail!(
            "the kernel matrix failed on {} (logs in {})",
            failed.join(", "),
            matrix.logs.display()
        );
    }
    ui::ok(&format!("the kernel matrix passed on {}", names.join(", ")));
    Ok(())
}

/// What every kernel's run shares.
struct Matrix {
    virtme: Virtme,
    bin: PathBuf,
    suite: PathBuf,
    cache: PathBuf,
    /// `target/kernels-logs`: a failed kernel's logs go to `<kernel>/` below.
    logs: PathBuf,
}

impl Matrix {
    /// Fetches, boots and reads one kernel's run. A failure of the kernel
    /// (fetching, booting, tests) is in the returned run; only an interrupt
    /// or a failure of this machine is an error.
    fn run_kernel(&mut self, series: &'static Series) -> Result<KernelRun> {
        let mut run = KernelRun::new(series);
        let kernel = match Archive::new(series.suite, &self.cache)
            .kernel(series, &self.cache.join("kernels"))
        {
            Ok(kernel) => kernel,
            Err(e) => {
                vm::check_interrupted()?;
                run.problem = Some(format!("{e:#}"));
                return Ok(run);
            }
        };
        run.kernel = Some(kernel.version.clone());
        let logs = self.logs.join(&kernel.version);
        if logs.exists() {
            std::fs::remove_dir_all(&logs)?;
        }
        self.virtme.accelerator(&kernel)?;

        let timeout = SUITE_TIMEOUT * guest::MODES.len() as u32 + BOOT_TIMEOUT;
        ui::step(&format!(
            "boot {} and run the suite (at most {} min)",
            kernel.version,
            timeout.as_secs() / 60
        ));
        let (shared, console, exit) = loop {
            let shared = SharedDir::create()?;
            let script = guest::write_script(
                shared.path(),
                &Plan {
                    bin: &self.bin,
                    suite: &self.suite,
                    package_dir: &workspace::root().join("tests"),
                    suite_timeout_secs: SUITE_TIMEOUT.as_secs(),
                },
            )?;
            let console = shared.path().join("console.log");
            let started = Instant::now();
            let mut progress = Progress::new(shared.path());
            let exit = self
                .virtme
                .boot(&kernel, &shared, &script, &console, timeout, &mut || {
                    progress.poll()
                });
            run.duration = Some(started.elapsed());
            // Under emulation a guest kernel now and then dies while booting
            // (an oops patching its own code on several CPUs), before our
            // script ran at all: that says nothing of bpfmasq, so boot again.
            let never_started =
                matches!(exit, Ok(Exit::Finished)) && !guest::script_started(shared.path());
            if never_started && run.boots + 1 < BOOT_ATTEMPTS {
                run.boots += 1;
                ui::warn(&format!(
                    "{} died before the script started (boot {} of {BOOT_ATTEMPTS}); booting it again",
                    kernel.version, run.boots
                ));
                continue;
            }
            break (shared, console, exit);
        };
        run.results = Results::read(shared.path());
        match exit {
            Ok(Exit::Finished) if !run.results.finished => {
                run.problem = Some("the guest stopped before its script ended".to_owned());
            }
            Ok(Exit::TimedOut) => {
                run.problem = Some(format!(
                    "the guest did not finish within {} min and was killed",
                    timeout.as_secs() / 60
                ));
            }
            Ok(Exit::Finished) => {}
            Err(e) => {
                vm::check_interrupted()?;
                run.problem = Some(format!("{e:#}"));
            }
        }
        if let Some(error) = &run.results.probe_error {
            ui::warn(&format!("bpfmasq probe --json in the guest: {error}"));
        }
        if !run.passed() {
            show_failure(&run, &console);
            shared.keep(&logs)?;
            run.logs = Some(logs);
        }
        Ok(run)
    }
}

/// Prints (on stdout, for CI logs) the end of each failed suite's output, or
/// of the console when the guest never got that far.
fn show_failure(run: &KernelRun, console: &Path) {
    let name = run.name();
    let mut shown = false;
    for (suite, mode) in run.results.suites.iter().zip(guest::MODES) {
        if let Some(output) = &suite.output
            && !suite.passed()
        {
            println!("\n---- {name}, fast path {mode}: the end of the suite's output ----");
            println!("{}", suite.failure_tail(TAIL_LINES));
            shown |= !output.is_empty();
        }
    }
    if !shown && let Ok(text) = std::fs::read_to_string(console) {
        println!("\n---- {name}: the end of the guest's console ----");
        println!("{}", suite::tail(&text, TAIL_LINES));
    }
}
