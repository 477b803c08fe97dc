//! The kernel the tests run on: its release, and the attach mode bpfmasq
//! gets there (tcx links from 6.6 on, a clsact qdisc before).

use std::process::Command;

use crate::{process, product::COMMAND_TIMEOUT};

/// The first kernel version with tcx links.
pub const TCX_SINCE: (u32, u32) = (6, 6);

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    let out = process::run(Command::new("uname").arg("-r"), COMMAND_TIMEOUT);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Major and minor version of a release such as `6.12.118+deb13-amd64`.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit());
    let major = numbers.next()?.parse().ok()?;
    let minor = numbers.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether the running kernel has tcx links (by its version: the tests
/// check bpfmasq's probing against it, so they must not probe the same way).
pub fn has_tcx() -> bool {
    let release = release();
    let version =
        version(&release).unwrap_or_else(|| panic!("no version in kernel release {release:?}"));
    version >= TCX_SINCE
}

/// The link type `status --json` reports on the running kernel: `tcx` or `clsact`.
pub fn expected_link_type() -> &'static str {
    if has_tcx() { "tcx" } else { "clsact" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_debian_and_other_releases() {
        assert_eq!(version("5.10.0-46-amd64"), Some((5, 10)));
        assert_eq!(version("6.1.0-57-amd64"), Some((6, 1)));
        assert_eq!(version("6.12.118+deb13-amd64"), Some((6, 12)));
        assert_eq!(version("6.18.44-fc-v857"), Some((6, 18)));
        assert_eq!(version("6.6"), Some((6, 6)));
        assert_eq!(version("linux"), None);
        assert!((6, 1) < TCX_SINCE && (6, 12) >= TCX_SINCE && (5, 10) < TCX_SINCE);
    }
}
