//! `bpfmasq bench` (being written).
use std::path::PathBuf;

use anyhow::{Result, bail};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A short smoke run (under 2 minutes): fewer workloads, scales and repetitions.
    #[arg(long)]
    pub quick: bool,
    /// Write every raw sample as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

pub async fn run(_args: &BenchArgs) -> Result<()> {
    bail!("bpfmasq bench is not implemented yet")
}
