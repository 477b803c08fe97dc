//! Preconditions checked before touching the kernel, so that a missing
//! privilege is one clear line instead of an EPERM deep inside a helper.

use anyhow::{Result, bail};

/// Fails unless running as root (effective uid 0).
pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} needs root (CAP_NET_ADMIN and CAP_BPF); run it with sudo");
    }
    Ok(())
}
