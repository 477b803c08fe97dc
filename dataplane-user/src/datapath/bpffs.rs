//! Making sure a BPF filesystem is mounted where pins go.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use nix::mount::{MsFlags, mount};

const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// statfs f_type of a BPF filesystem.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    // f_type is an i64 with glibc and a u64 with musl (the image's static build).
    #[allow(clippy::unnecessary_cast, clippy::cast_sign_loss)]
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as u64 == BPF_FS_MAGIC)
}

/// Mounts bpffs at /sys/fs/bpf unless one is there already.
pub fn ensure_mounted() -> Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if is_bpffs(root) {
        return Ok(());
    }
    fs::create_dir_all(root).with_context(|| format!("creating {BPFFS_ROOT}"))?;
    mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting a BPF filesystem on {BPFFS_ROOT}"))
}

/// Fails unless a BPF filesystem is mounted at /sys/fs/bpf. For callers in
/// a mount namespace that may be transient (a CNI plugin under `ip netns
/// exec`, which remounts /sys): pins in a bpffs mounted there would vanish
/// with the namespace, and the datapath with them.
pub fn require_mounted() -> Result<()> {
    if is_bpffs(Path::new(BPFFS_ROOT)) {
        return Ok(());
    }
    anyhow::bail!(
        "no BPF filesystem at {BPFFS_ROOT} in this mount namespace (mount the host's there: mount -t bpf bpf {BPFFS_ROOT})"
    )
}
