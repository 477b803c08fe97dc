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

/// Capabilities loading and attaching the datapath needs, with their bit
/// numbers; CAP_SYS_ADMIN stands in for each.
const DATAPATH_CAPABILITIES: [(&str, u32); 3] =
    [("CAP_BPF", 39), ("CAP_NET_ADMIN", 12), ("CAP_PERFMON", 38)];
const CAP_SYS_ADMIN: u32 = 21;

/// Fails, naming them, when capabilities the datapath needs are missing
/// (a container or a service given too few): otherwise the kernel's EPERM
/// would read as a missing kernel feature.
pub fn require_datapath_capabilities(what: &str) -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let Some(effective) = effective_capabilities(&status) else {
        return Ok(()); // no CapEff line: nothing to tell
    };
    let missing = missing_capabilities(effective);
    if !missing.is_empty() {
        bail!(
            "{what} needs {} (or CAP_SYS_ADMIN), which this process lacks (effective \
             capabilities {effective:#x}); give it them (README, Capabilities)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn effective_capabilities(proc_status: &str) -> Option<u64> {
    let hex = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |bit: u32| effective & (1 << bit) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    DATAPATH_CAPABILITIES
        .iter()
        .filter(|(_, bit)| !has(*bit))
        .map(|(name, _)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_datapath_capabilities() {
        let status = "Name:\tbpfmasq\nCapEff:\t000000c000001000\n";
        let effective = effective_capabilities(status).unwrap();
        assert!(missing_capabilities(effective).is_empty());
        // CAP_NET_ADMIN and CAP_BPF only: CAP_PERFMON is missing.
        assert_eq!(missing_capabilities(0x80_0000_1000), ["CAP_PERFMON"]);
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
        assert_eq!(missing_capabilities(0).len(), 3);
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }
}
