//! Builds the eBPF object with aya-build and leaves it in OUT_DIR for
//! `include_bytes_aligned!`. Without bpf-linker (a `cargo check` or `clippy`
//! on a machine that never ran `cargo xtask setup`) it leaves an empty object
//! instead, and the binary reports that at run time.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

const EBPF_PACKAGE: &str = "dataplane-ebpf";
const EBPF_BIN: &str = "dataplane";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip || which::which("bpf-linker").is_err() {
        println!(
            "cargo:warning=bpf-linker not found (or AYA_BUILD_SKIP set): building bpfmasq without its eBPF object; run `cargo xtask setup`"
        );
        fs::write(out_dir.join(EBPF_BIN), b"").context("writing placeholder eBPF object")?;
        // Build again once `cargo xtask setup` has installed the linker.
        if let Some(home) = env::var_os("CARGO_HOME")
            .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into()))
        {
            println!(
                "cargo:rerun-if-changed={}",
                PathBuf::from(home).join("bin/bpf-linker").display()
            );
        }
        return Ok(());
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join(EBPF_PACKAGE);
    let root_dir = root_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
