//! Injecting hand-built frames ([`crate::frame`]) into a lab interface with
//! an AF_PACKET socket: the kernel sends them exactly as given, so headers
//! may lie about their lengths, be cut short or carry any protocol. Frames
//! from a container enter the host through the bridge (and its IP stack's
//! checks); frames from the outside peer hit the uplink's ingress directly.

use std::{
    ffi::CString,
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::{capture::bound_packet_socket, context, frame::Mac, lab::Lab};

/// A socket that sends raw Ethernet frames out of one interface of a lab node.
#[derive(Debug)]
pub struct Injector {
    socket: OwnedFd,
    /// The interface's own address: the source of the frames sent.
    pub mac: Mac,
    what: String,
}

impl Injector {
    /// Opens the socket on `iface` inside `node`.
    pub fn open(lab: &Lab, node: &str, iface: &str) -> Self {
        let what = format!("injecting on {iface} in {}", lab.ns(node));
        let (socket, mac) = lab
            .run_in(node, || {
                let socket = packet_socket(iface)?;
                Ok::<_, io::Error>((socket, mac_address(iface)?))
            })
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        Self { socket, mac, what }
    }

    /// Sends `frame` as it is.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: sends `frame.len()` initialised bytes from `frame`.
        let sent = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
            )
        };
        if sent < 0 {
            panic!("{}: {}", self.what, io::Error::last_os_error());
        }
        assert_eq!(sent as usize, frame.len(), "{}: short send", self.what);
    }
}

/// The Ethernet address of `iface` in `node`.
pub fn mac_of(lab: &Lab, node: &str, iface: &str) -> Mac {
    lab.run_in(node, || mac_address(iface))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn interface_name(iface: &str) -> io::Result<CString> {
    CString::new(iface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// An AF_PACKET socket of the calling thread's namespace bound to `iface`,
/// for sending only (protocol 0: it receives nothing).
fn packet_socket(iface: &str) -> io::Result<OwnedFd> {
    bound_packet_socket(iface, 0, |_| Ok(()))
}

/// `iface`'s Ethernet address in the calling thread's namespace (SIOCGIFHWADDR).
fn mac_address(iface: &str) -> io::Result<Mac> {
    let what = format!("hardware address of {iface}");
    let name = interface_name(iface)?;
    // SAFETY: a fresh socket owned by `OwnedFd`; `ifreq` is zeroed, its name
    // NUL-terminated within bounds, and read back only after the ioctl filled it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(context(io::Error::last_os_error(), &what));
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let mut request: libc::ifreq = mem::zeroed();
        let bytes = name.as_bytes_with_nul();
        if bytes.len() > request.ifr_name.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        }
        for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
            *slot = *byte as libc::c_char;
        }
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) < 0 {
            return Err(context(io::Error::last_os_error(), &what));
        }
        let data = request.ifr_ifru.ifru_hwaddr.sa_data;
        Ok([0, 1, 2, 3, 4, 5].map(|i| data[i] as u8))
    }
}
