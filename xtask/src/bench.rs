//! `cargo xtask bench`: setup and build, then `bpfmasq-bench` (built next to
//! `bpfmasq`) with the given arguments (from the workspace root, so the
//! chart lands in bench-results/).

use std::ffi::OsString;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{build, cmd::Cmd, ui, workspace};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Passed to `bpfmasq-bench`, e.g. `--quick` or `--json bench-results/run.json`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    workspace::require_root(
        "`cargo xtask bench`",
        "the benchmark builds a lab of network namespaces and attaches eBPF programs",
    )?;
    let bin = build::run()?;
    ui::section("bench: bpfmasq against iptables and nftables masquerade, side by side");
    // Ctrl-C reaches bpfmasq too, which stops and removes its lab: wait for
    // it instead of dying first.
    ctrlc::set_handler(|| {}).context("installing the Ctrl-C handler")?;
    Cmd::new(bin.with_file_name("bpfmasq-bench"))
        .env("BPFMASQ_BIN", &bin)
        .args(&args.args)
        .current_dir(workspace::root())
        .run()
}
