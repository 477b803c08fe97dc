//! `cargo xtask test`: setup, build, then every test of the workspace (the
//! unit tests and the end-to-end tests in tests/), against the built binary.

use std::{ffi::OsString, time::Instant};

use anyhow::Result;
use clap::Args;

use crate::{build, cmd::Cmd, ui, workspace};

/// Parallel test threads: the e2e tests each build a lab of namespaces and
/// move real packets; more than this on a 2-core machine only adds timeouts.
const TEST_THREADS: &str = "4";

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
    Cmd::new(workspace::cargo())
        .env("BPFMASQ_BIN", &bin)
        .args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            "dataplane-ebpf",
        ])
        .args(cargo_args)
        .arg("--")
        .args(threads.into_iter().flatten())
        .args(harness_args)
        .current_dir(workspace::root())
        .run()?;
    ui::ok(&format!(
        "all tests passed ({:.0} s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
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
