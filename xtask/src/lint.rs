//! `cargo xtask lint`: rustfmt and clippy (warnings are errors) for every
//! crate, the eBPF crate included (with the nightly, for the BPF target).
//! Runs every check and reports all that failed.

use anyhow::{Result, bail};

use crate::{cmd::Cmd, setup, ui, workspace};

pub fn run() -> Result<()> {
    setup::run()?;
    let root = workspace::root();
    let checks = [
        (
            "rustfmt",
            Cmd::new(workspace::cargo())
                .args(["fmt", "--all", "--check"])
                .current_dir(root),
        ),
        (
            "clippy (user-side crates, tests, xtask)",
            Cmd::new(workspace::cargo())
                .args([
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "dataplane-ebpf",
                    "--all-targets",
                ])
                .args(["--", "-D", "warnings"])
                .current_dir(root),
        ),
        (
            "clippy (eBPF crate, nightly, bpfel-unknown-none)",
            Cmd::new("rustup")
                .args(["run", "nightly", "cargo", "clippy"])
                .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                .args(["--", "-D", "warnings"])
                .current_dir(&root.join("dataplane-ebpf")),
        ),
    ];
    let mut failed = Vec::new();
    for (name, cmd) in checks {
        ui::section(&format!("lint: {name}"));
        match cmd.run() {
            Ok(()) => ui::ok(name),
            Err(e) => {
                ui::warn(&format!("{e:#}"));
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join("; "));
    }
    Ok(())
}
