//! A layer-3 interface for tests: a persistent tun device (no Ethernet
//! header, like WireGuard, ipip or ppp), which this machine's kernel has
//! built in when those modules are not available.

use std::{ffi::CString, fs::OpenOptions, os::fd::AsRawFd as _};

use crate::{lab::Lab, netns::run_in};

/// From linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Creates the persistent tun device `name` in `node`'s namespace. It goes
/// with the namespace when the lab is taken down.
pub fn create(lab: &Lab, node: &str, name: &str) {
    run_in(&lab.ns(node), || {
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("opening /dev/net/tun");
        // SAFETY: ifreq is plain data; the name fits (checked below).
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        let cname = CString::new(name).expect("interface name");
        let bytes = cname.as_bytes_with_nul();
        assert!(bytes.len() <= request.ifr_name.len(), "name too long");
        for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
            *slot = *byte as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
        // SAFETY: valid fd and ifreq for these two ioctls.
        unsafe {
            assert_eq!(
                libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request),
                0,
                "TUNSETIFF {name}: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1),
                0,
                "TUNSETPERSIST {name}: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}
