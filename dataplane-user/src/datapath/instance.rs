//! Where an attached datapath lives: one folder per (network namespace,
//! uplink) under bpfmasq's own bpffs folder, holding its maps and links.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// bpfmasq's folder on the BPF filesystem.
pub const PIN_ROOT: &str = "/sys/fs/bpf/bpfmasq";
/// bpfmasq's runtime folder (tmpfs: gone after a reboot, like the pins):
/// the daemon's locks, rejected programs' verifier logs.
pub const RUN_ROOT: &str = "/run/bpfmasq";

/// Pin names of the links (tcx) or programs (clsact), per hook.
pub const PIN_EGRESS: &str = "link_uplink_egress";
pub const PIN_INGRESS: &str = "link_uplink_ingress";
pub const PIN_BRIDGE_INGRESS: &str = "link_bridge_ingress";
pub const PIN_PROG_EGRESS: &str = "prog_uplink_egress";
pub const PIN_PROG_INGRESS: &str = "prog_uplink_ingress";
pub const PIN_PROG_BRIDGE_INGRESS: &str = "prog_bridge_ingress";

/// One attached datapath: `PIN_ROOT/<netns>/<uplink>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub netns: String,
    pub uplink: String,
}

impl Instance {
    pub fn new(netns: &str, uplink: &str) -> Self {
        Self {
            netns: netns.to_owned(),
            uplink: uplink.to_owned(),
        }
    }

    /// The instance for the given uplink, or the only one attached in `netns`.
    pub fn find(netns: &str, uplink: Option<&str>) -> Result<Self> {
        if let Some(uplink) = uplink {
            let instance = Self::new(netns, uplink);
            if !instance.dir().exists() {
                bail!("nothing is attached to `{uplink}` in network namespace `{netns}`");
            }
            return Ok(instance);
        }
        let uplinks = Self::uplinks_in(netns)?;
        match uplinks.as_slice() {
            [] => bail!(
                "nothing is attached in network namespace `{netns}` (run `bpfmasq attach` first)"
            ),
            [only] => Ok(Self::new(netns, only)),
            several => bail!(
                "several datapaths are attached in network namespace `{netns}` ({}); choose one with --uplink",
                several.join(", ")
            ),
        }
    }

    /// Uplinks with a datapath in `netns`.
    pub fn uplinks_in(netns: &str) -> Result<Vec<String>> {
        let dir = Path::new(PIN_ROOT).join(netns);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let mut uplinks: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        uplinks.sort();
        Ok(uplinks)
    }

    pub fn dir(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(&self.netns).join(&self.uplink)
    }

    pub fn pin(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Removes this instance's folder and every pin in it (unpinning maps
    /// frees them once no program uses them), then the namespace's folder if
    /// it became empty.
    pub fn remove_pins(&self) -> Result<()> {
        let dir = self.dir();
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
        if let Some(parent) = dir.parent() {
            // Fails while other uplinks of this namespace still have pins: fine.
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }
}

/// The label of the calling thread's network namespace: the `--netns` name
/// when one was given, else its name under `/run/netns` (so `ip netns exec
/// NAME bpfmasq ...`, and a CNI plugin a runtime runs there, find what
/// `bpfmasq --netns NAME` attached), else `default` for the init namespace
/// and `netns-<inode>` for an unnamed one.
pub fn netns_label(named: Option<&str>) -> Result<String> {
    if let Some(name) = named {
        return Ok(name.to_owned());
    }
    let own =
        fs::metadata("/proc/thread-self/ns/net").context("reading /proc/thread-self/ns/net")?;
    if let Some(name) = crate::netns::name_of(own.dev(), own.ino()) {
        return Ok(name);
    }
    // Inside another namespace /proc/1/ns/net may not be readable: then
    // this is not the init namespace anyway.
    let init = fs::metadata("/proc/1/ns/net").ok();
    Ok(if init.is_some_and(|init| init.ino() == own.ino()) {
        "default".to_owned()
    } else {
        format!("netns-{}", own.ino())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let i = Instance::new("lab-host", "eth0");
        assert_eq!(i.dir(), Path::new("/sys/fs/bpf/bpfmasq/lab-host/eth0"));
        assert_eq!(
            i.pin("CONFIG"),
            Path::new("/sys/fs/bpf/bpfmasq/lab-host/eth0/CONFIG")
        );
    }

    #[test]
    fn named_namespace_label() {
        assert_eq!(netns_label(Some("x")).unwrap(), "x");
    }
}
