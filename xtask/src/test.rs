//! `cargo xtask test`: setup, build, then every test of the workspace (the
//! unit tests and the end-to-end tests in tests/), against the built binary.
//! The end-to-end tests run twice: with the fast path on (with everything
//! else), then again with it off, so both datapaths stay correct.

use std::{ffi::OsString, time::Instant};

use anyhow::Result;
use clap::Args;

use crate::{build, cmd::Cmd, ui, workspace};

/// Parallel test threads: the e2e tests each build a lab of namespaces and
/// move real packets; more than this on a 2-core machine only adds timeouts.
const TEST_THREADS: &str = "4";

/// The e2e package, and the variable its helpers read to choose `--fast-path`.
const E2E_PACKAGE: &str = "bpfmasq-e2e";
const FAST_PATH_ENV: &str = "BPFMASQ_E2E_FAST_PATH";
/// Tests the second pass skips: they do not depend on `--fast-path`.
const MODE_INDEPENDENT: &[&str] = &["quick_bench"];

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Passed to `cargo test` (e.g. a test name filter); after a `--`, to the test harness.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    workspace::require_root(
        "`cargo xtask test`",
        "the end-to-end tests create network namespaces and load eBPF programs",
    )?;
    let bin = build::run()?;
    ui::section("test: unit tests and end-to-end tests");
    ui::note(
        "The end-to-end tests build their own labs in network namespaces and remove them \
         again;\nthey never touch this machine's own addresses, routes or firewall.",
    );
    let started = Instant::now();
    let (cargo_args, harness_args) = split_args(&args.args);
    let threads = (!harness_args
        .iter()
        .any(|a| a.to_string_lossy().starts_with("--test-threads")))
    .then_some(["--test-threads", TEST_THREADS]);
    let test = |mode: &str, packages: &[&str], skip: &[&str]| {
        ui::step(&format!("tests with the fast path {mode}"));
        Cmd::new(workspace::cargo())
            .env("BPFMASQ_BIN", &bin)
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

    fn parse(args: &[&str]) -> Vec<OsString> {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            test: TestArgs,
        }
        let argv = ["test"].iter().chain(args);
        <Cli as clap::Parser>::try_parse_from(argv)
            .unwrap()
            .test
            .args
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
