//! `cargo xtask build`: setup, then the release build of the whole workspace,
//! which gives `target/release/bpfmasq` with the eBPF object embedded
//! (dataplane-user's build script builds it with aya-build and bpf-linker).

use std::path::PathBuf;

use anyhow::{Result, ensure};

use crate::{cmd::Cmd, setup, ui, workspace};

/// Runs setup and the build; returns the path of the `bpfmasq` binary.
pub fn run() -> Result<PathBuf> {
    setup::run()?;
    ui::section("build: cargo build --release (the eBPF object and the bpfmasq binary)");
    Cmd::new(workspace::cargo())
        .args(["build", "--release"])
        .current_dir(workspace::root())
        .run()?;
    let bin = workspace::bpfmasq_bin();
    ensure!(
        bin.is_file(),
        "the build finished but {} is missing",
        bin.display()
    );
    ui::ok(&format!("built {}", bin.display()));
    Ok(bin)
}
