//! The `bpfmasq` binary under test, and the preconditions for running it.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use crate::process;

/// Environment variable naming the binary to test.
pub const BIN_ENV: &str = "BPFMASQ_BIN";

/// How long one `bpfmasq` invocation may take before the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The binary under test: `$BPFMASQ_BIN`, else `<workspace>/target/release/bpfmasq`.
/// Panics with instructions when it does not exist.
pub fn bin() -> PathBuf {
    let path = bin_path();
    assert!(
        path.is_file(),
        "the bpfmasq binary is missing at {}: build it with `cargo xtask build` \
         (or point {BIN_ENV} at a built binary)",
        path.display()
    );
    path
}

fn bin_path() -> PathBuf {
    match std::env::var_os(BIN_ENV) {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/bpfmasq"),
    }
}

/// Panics with a clear message unless running as root: the tests create
/// network namespaces and attach eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the bpfmasq end-to-end tests need root (they create network namespaces and load \
         eBPF programs; effective uid is {euid}): run them with `cargo xtask test` as root"
    );
}

/// Runs `bpfmasq ARGS...` with [`COMMAND_TIMEOUT`]; the exit status is left to the caller.
pub fn bpfmasq<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    bpfmasq_within(args, COMMAND_TIMEOUT)
}

/// Like [`bpfmasq`], with `timeout` instead of [`COMMAND_TIMEOUT`].
pub fn bpfmasq_within<I, S>(args: I, timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    process::run(Command::new(bin()).args(args), timeout)
}

/// Like [`bpfmasq`], but for drop guards: never panics, returns a description of any failure.
pub fn try_bpfmasq<I, S>(args: I) -> Result<Output, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    process::try_run(Command::new(bin_path()).args(args), COMMAND_TIMEOUT)
        .map_err(|e| e.to_string())
}
