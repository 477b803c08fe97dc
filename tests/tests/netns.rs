//! Named network namespaces live by iproute2's convention, so bpfmasq and
//! other tools that make namespaces (`ip netns`, podman, CNI plugins) can
//! share `/run/netns`.
//!
//! The test runs in a private mount namespace of its own, where
//! `/run/netns` starts out as a plain folder (not a mount point), as on a
//! machine that never ran `ip netns add`: nothing it mounts or unmounts
//! there touches the machine's own mounts.

use std::process::Command;

use bpfmasq_e2e::{
    bin,
    process::{self, describe},
    product::{COMMAND_TIMEOUT, require_root},
};

/// `bpfmasq lab up`, then `ip netns add` (which bind-mounts `/run/netns`
/// over itself when it is not yet a shared mount point), then `bpfmasq lab
/// down`: the lab's namespaces must still be removable, none left behind.
#[test]
fn lab_down_works_after_ip_netns_add_on_a_fresh_run_netns() {
    require_root();
    let lab = format!("e2e-netns-{}", std::process::id());
    let other = format!("e2e-netns-other-{}", std::process::id());
    let bpfmasq = bin();
    let bpfmasq = bpfmasq.display();
    // Inside the private mount namespace: unmount whatever /run/netns is
    // (so it is a plain folder), then the sequence, then list what is left.
    let script = format!(
        "set -e
         while mountpoint -q /run/netns; do umount -l /run/netns; done
         mkdir -p /run/netns
         {bpfmasq} lab up --name {lab} --containers 1
         ip netns add {other}
         status=0
         {bpfmasq} lab down --name {lab} || status=$?
         ip netns del {other}
         echo left: $(ls /run/netns | grep -e '^{lab}-' -e '^{other}$' || true)
         exit $status"
    );
    let out = process::run(
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]),
        COMMAND_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lab down failed after `ip netns add`: {}",
        describe(&out)
    );
    assert!(
        stdout.lines().any(|l| l.trim() == "left:"),
        "namespaces were left behind: {}",
        describe(&out)
    );
}
