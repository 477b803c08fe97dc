//! Where things are: the workspace root, cargo, the cargo bin folder, the built
//! binary, and the PATH every child process gets.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Result, bail};

/// The workspace root (the folder above xtask/).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
}

/// The cargo that runs us (`CARGO`, set by `cargo run`), else `cargo` from PATH.
pub fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, by default `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home).join("bin"));
    }
    Ok(home()?.join(".cargo").join("bin"))
}

/// The user's home folder.
pub fn home() -> Result<PathBuf> {
    match env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home)),
        _ => bail!("HOME is not set"),
    }
}

/// bpfmasq's own cache, `~/.cache/bpfmasq`: what the kernel matrix downloads
/// and virtme-ng's venv. Never under /var/tmp, /var/cache or /var/log, which
/// virtme-ng guests see as empty tmpfs.
pub fn cache_dir() -> Result<PathBuf> {
    Ok(home()?.join(".cache").join("bpfmasq"))
}

/// The cargo target folder: `CARGO_TARGET_DIR` when set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// The release binary `cargo xtask build` produces.
pub fn bpfmasq_bin() -> PathBuf {
    target_dir().join("release").join("bpfmasq")
}

/// PATH for child processes: the caller's PATH with the cargo bin folder in
/// front when it is missing, so a freshly installed bpf-linker is found (by
/// us and by the eBPF build) even in a shell whose PATH lacks it.
pub fn child_path() -> &'static OsString {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let current = env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
        if let Ok(bin) = cargo_bin_dir()
            && !dirs.contains(&bin)
        {
            dirs.insert(0, bin);
        }
        env::join_paths(dirs).unwrap_or(current)
    })
}

/// Finds `program` in [`child_path`], like a shell would.
pub fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(child_path())
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether we run as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails unless we run as root, saying why `what` needs it.
pub fn require_root(what: &str, why: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{what} must run as root: {why}. Run it from a root shell, or keep your toolchain \
             with `sudo -E env \"PATH=$PATH\" cargo xtask ...`"
        );
    }
    Ok(())
}
