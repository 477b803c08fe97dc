//! `cargo xtask test`: setup, build, then every test of the workspace (the
//! unit tests and the end-to-end tests in tests/), against the built binary.
//! The end-to-end tests run twice: with the fast path on (with everything
//! else), then again with it off, so both datapaths stay correct. Then the
//! kernel matrix ([`kernels`]) runs the portability suite on Debian's own
//! kernels in VMs. The host's tests also get the OCI image ([`image`]),
//! built once before them.

use std::{ffi::OsString, path::Path, time::Instant};

use anyhow::Result;
use clap::Args;

use crate::{
    build,
    cmd::Cmd,
    image,
    kernels::{self, SERIES, Series},
    ui, workspace,
};

/// Parallel test threads: the e2e tests each build a lab of namespaces and
/// move real packets; more than this on a 2-core machine only adds timeouts.
const TEST_THREADS: &str = "4";

/// The e2e package, and the variable its helpers read to choose `--fast-path`.
pub const E2E_PACKAGE: &str = "bpfmasq-e2e";
pub const FAST_PATH_ENV: &str = "BPFMASQ_E2E_FAST_PATH";
/// Tests the second pass skips: they do not depend on `--fast-path`
/// (`test_run::`: the programs run alone, tests/tests/prog_test_run.rs).
const MODE_INDEPENDENT: &[&str] = &[
    "quick_bench",
    "the_image_",
    "manifests_",
    "systemd_unit_",
    "test_run::",
];
/// The variable naming the OCI archive tests/tests/image.rs runs.
const IMAGE_ENV: &str = "BPFMASQ_IMAGE";

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Run only the kernel matrix, on every series or on those listed (e.g. `--kernels 5.10,6.1`).
    #[arg(
        long,
        value_name = "SERIES",
        num_args = 0..=1,
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(SERIES.iter().map(|s| s.name)),
        conflicts_with_all = ["host_only", "args"]
    )]
    kernels: Option<Vec<String>>,
    /// Run only the tests on this machine's kernel, not the kernel matrix.
    #[arg(long)]
    host_only: bool,
    /// The end-to-end test file (tests/tests/NAME.rs) the kernel matrix runs in each guest.
    #[arg(long, value_name = "NAME", default_value = kernels::DEFAULT_SUITE)]
    kernel_suite: String,
    /// Passed to `cargo test` (e.g. a test name filter); after a `--`, to the test harness.
    /// Implies --host-only.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

/// What one `cargo xtask test` runs.
#[derive(Debug)]
struct Plan {
    host: bool,
    /// The kernel series of the matrix; empty: no matrix.
    kernels: Vec<&'static Series>,
}

impl TestArgs {
    fn plan(&self) -> Plan {
        match &self.kernels {
            // `--kernels` alone: every series.
            Some(names) if names.is_empty() => Plan {
                host: false,
                kernels: SERIES.iter().collect(),
            },
            Some(names) => Plan {
                host: false,
                kernels: SERIES
                    .iter()
                    .filter(|s| names.iter().any(|n| n == s.name))
                    .collect(),
            },
            // A selection of tests is for a quick look on this machine.
            None if self.host_only || !self.args.is_empty() => Plan {
                host: true,
                kernels: Vec::new(),
            },
            None => Plan {
                host: true,
                kernels: SERIES.iter().collect(),
            },
        }
    }
}

pub fn run(args: &TestArgs) -> Result<()> {
    workspace::require_root(
        "`cargo xtask test`",
        "the end-to-end tests create network namespaces and load eBPF programs",
    )?;
    let plan = args.plan();
    let bin = build::run()?;
    if plan.host {
        let image = image::run()?;
        host_tests(&bin, &image, &args.args)?;
        if plan.kernels.is_empty() && !args.host_only {
            ui::note("a selection of tests runs on this machine only: no kernel matrix");
        }
    }
    if !plan.kernels.is_empty() {
        kernels::run(&bin, &plan.kernels, &args.kernel_suite)?;
    }
    Ok(())
}

/// Every test of the workspace on this machine's kernel, the end-to-end ones
/// in both fast-path modes; `args` as `cargo test` takes them.
fn host_tests(bin: &Path, image: &Path, args: &[OsString]) -> Result<()> {
    ui::section("test: unit tests and end-to-end tests");
    ui::note(
        "The end-to-end tests build their own labs in network namespaces and remove them \
         again;\nthey never touch this machine's own addresses, routes or firewall.",
    );
    let started = Instant::now();
    let (cargo_args, harness_args) = split_args(args);
    let threads = (!harness_args
        .iter()
        .any(|a| a.to_string_lossy().starts_with("--test-threads")))
    .then_some(["--test-threads", TEST_THREADS]);
    let test = |mode: &str, packages: &[&str], skip: &[&str]| {
        ui::step(&format!("tests with the fast path {mode}"));
        Cmd::new(workspace::cargo())
            .env("BPFMASQ_BIN", bin)
            .env(IMAGE_ENV, image)
            .env(FAST_PATH_ENV, mode)
            .args(["test", "--release"])
            .args(packages)
            .args(cargo_args)
            .arg("--")
            .args(threads.into_iter().flatten())
            .args(skip.iter().flat_map(|name| ["--skip", name]))
            .args(harness_args)
            .current_dir(workspace::root())
            .run()
    };
    test("on", &["--workspace", "--exclude", "dataplane-ebpf"], &[])?;
    // A selection of the caller's own is repeated as it is; by default only
    // the end-to-end package runs again (unit tests do not depend on it).
    let second_pass: &[&str] = if selects_packages(cargo_args) {
        &[]
    } else {
        &["-p", E2E_PACKAGE]
    };
    test("off", second_pass, MODE_INDEPENDENT)?;
    ui::ok(&format!(
        "all tests passed ({:.0} s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Whether cargo arguments choose the packages themselves.
fn selects_packages(cargo_args: &[OsString]) -> bool {
    cargo_args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == "-p" || a.starts_with("--package") || a == "--workspace" || a.starts_with("--exclude")
    })
}

/// Splits `filter -- --nocapture` into cargo's part and the harness's part.
fn split_args(args: &[OsString]) -> (&[OsString], &[OsString]) {
    match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn try_parse(args: &[&str]) -> Result<TestArgs, clap::Error> {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            test: TestArgs,
        }
        let argv = ["test"].iter().chain(args);
        <Cli as clap::Parser>::try_parse_from(argv).map(|cli| cli.test)
    }

    fn parse(args: &[&str]) -> Vec<OsString> {
        try_parse(args).unwrap().args
    }

    fn plan(args: &[&str]) -> (bool, Vec<&'static str>) {
        let plan = try_parse(args).unwrap().plan();
        (plan.host, plan.kernels.iter().map(|s| s.name).collect())
    }

    #[test]
    fn plans_host_tests_and_the_matrix() {
        let all = vec!["5.10", "6.1", "6.12"];
        assert_eq!(plan(&[]), (true, all.clone()));
        assert_eq!(plan(&["--host-only"]), (true, vec![]));
        assert_eq!(plan(&["--kernels"]), (false, all.clone()));
        assert_eq!(
            plan(&["--kernels", "6.12,5.10"]),
            (false, vec!["5.10", "6.12"])
        );
        assert_eq!(plan(&["--kernels=6.1"]), (false, vec!["6.1"]));
        assert_eq!(
            plan(&["--kernels", "--kernel-suite", "masquerade"]),
            (false, all)
        );
        // A selection of tests is a quick look: no matrix.
        assert_eq!(plan(&["--", "nat_"]), (true, vec![]));
        assert_eq!(plan(&["-p", "xtask"]), (true, vec![]));
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert!(try_parse(&["--kernels", "4.19"]).is_err());
        assert!(try_parse(&["--kernels", "--host-only"]).is_err());
        assert!(try_parse(&["--kernels", "6.1", "--", "nat_"]).is_err());
    }

    #[test]
    fn passes_everything_through() {
        assert_eq!(
            parse(&["--", "nat_", "--", "--nocapture"]),
            os(&["nat_", "--", "--nocapture"])
        );
        assert_eq!(
            parse(&["nat_", "--", "--nocapture"]),
            os(&["nat_", "--", "--nocapture"])
        );
        assert_eq!(parse(&["-p", "xtask"]), os(&["-p", "xtask"]));
        assert_eq!(parse(&[]), os(&[]));
    }

    #[test]
    fn knows_when_the_caller_selects_packages() {
        assert!(selects_packages(&os(&["-p", "xtask"])));
        assert!(selects_packages(&os(&["--package=xtask"])));
        assert!(!selects_packages(&os(&["--test", "fast_path"])));
        assert!(!selects_packages(&os(&[])));
    }

    #[test]
    fn splits_cargo_and_harness_args() {
        let args = os(&["nat_", "--", "--nocapture"]);
        assert_eq!(
            split_args(&args),
            (&os(&["nat_"])[..], &os(&["--nocapture"])[..])
        );
        let args = os(&["-p", "dataplane-common"]);
        assert_eq!(split_args(&args), (&args[..], &[][..]));
    }
}
