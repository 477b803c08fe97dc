//! A packet capture on one interface of a lab node: an AF_PACKET raw socket
//! (ETH_P_ALL) that records the IPv4 source address of every frame the
//! interface receives, until stopped.

use std::{
    collections::BTreeMap,
    ffi::CString,
    io, mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{context, lab::Lab};

/// A capture stops after this long, whatever happened.
pub const LIFETIME: Duration = Duration::from_secs(120);

const POLL: Duration = Duration::from_millis(50);
const RECEIVE_BUFFER: libc::c_int = 8 << 20;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;

/// What a capture saw: incoming IPv4 frames counted by source address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured {
    pub ipv4_sources: BTreeMap<Ipv4Addr, u64>,
    /// Every frame received, IPv4 or not.
    pub frames: u64,
}

/// A running capture; see the module documentation.
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<Captured>>>,
}

impl Capture {
    /// Opens and binds the socket on `iface` inside `node` before returning,
    /// so that every frame arriving afterwards is seen.
    pub fn start(lab: &Lab, node: &str, iface: &str) -> Self {
        let socket = lab
            .run_in(node, || open(iface))
            .unwrap_or_else(|e| panic!("capture on {iface} in {}: {e}", lab.ns(node)));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || record(&socket, &stopped));
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the capture and returns what it saw.
    pub fn stop(mut self) -> Captured {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("stopped once");
        match thread.join() {
            Ok(Ok(captured)) => captured,
            Ok(Err(e)) => panic!("capture failed: {e}"),
            Err(_) => panic!("capture thread panicked"),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A packet socket bound to `iface` of the calling thread's namespace.
fn open(iface: &str) -> io::Result<OwnedFd> {
    let what = format!("AF_PACKET socket on {iface}");
    let name = CString::new(iface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: plain libc calls on a fd owned right away by `OwnedFd`, with
    // correctly sized, initialised arguments.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return Err(context(io::Error::last_os_error(), &what));
        }
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol),
        );
        if fd < 0 {
            return Err(context(io::Error::last_os_error(), &what));
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_ll = mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as i32;
        let bound = libc::bind(
            fd,
            (&raw const addr).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        if bound < 0 {
            return Err(context(io::Error::last_os_error(), &what));
        }
        // A bigger queue (best effort) so that a burst is not dropped before it is read.
        setsockopt(fd, libc::SO_RCVBUFFORCE, &RECEIVE_BUFFER);
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: POLL.as_micros() as libc::suseconds_t,
        };
        if setsockopt(fd, libc::SO_RCVTIMEO, &timeout) < 0 {
            return Err(context(io::Error::last_os_error(), &what));
        }
        Ok(socket)
    }
}

/// # Safety
/// `fd` must be an open socket.
unsafe fn setsockopt<T>(fd: libc::c_int, option: libc::c_int, value: &T) -> libc::c_int {
    // SAFETY: `value` is a valid `T` of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    }
}

fn record(socket: &OwnedFd, stop: &AtomicBool) -> io::Result<Captured> {
    let deadline = Instant::now() + LIFETIME;
    let mut captured = Captured::default();
    let mut frame = vec![0u8; 65_536];
    // Frames already queued are read before `stop` is honoured.
    loop {
        // SAFETY: recvfrom writes at most `frame.len()` bytes into `frame`
        // and at most `len` bytes into `from`.
        let (n, from) = unsafe {
            let mut from: libc::sockaddr_ll = mem::zeroed();
            let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            let n = libc::recvfrom(
                socket.as_raw_fd(),
                frame.as_mut_ptr().cast(),
                frame.len(),
                0,
                (&raw mut from).cast(),
                &mut len,
            );
            (n, from)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => {
                    if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        return Ok(captured);
                    }
                    continue;
                }
                _ => return Err(context(e, "capture recvfrom")),
            }
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue; // sent by this node, not received
        }
        captured.frames += 1;
        if let Some(source) = ipv4_source(&frame[..n as usize]) {
            *captured.ipv4_sources.entry(source).or_default() += 1;
        }
    }
}

/// The IPv4 source address of an Ethernet frame (possibly VLAN-tagged), if it carries IPv4.
pub fn ipv4_source(frame: &[u8]) -> Option<Ipv4Addr> {
    let mut ethertype_at = 12;
    let mut ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    if ethertype == ETHERTYPE_VLAN {
        ethertype_at = 16;
        ethertype = u16::from_be_bytes(frame.get(16..18)?.try_into().ok()?);
    }
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ethertype_at + 2..)?;
    if ip.first()? >> 4 != 4 {
        return None;
    }
    let source: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
    Some(Ipv4Addr::from(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: &[u8], ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0; 12];
        f.extend_from_slice(ethertype);
        f.extend_from_slice(ip);
        f
    }

    #[test]
    fn reads_ipv4_sources() {
        let mut ip = vec![
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 85, 0, 2, 192, 168, 61, 12,
        ];
        assert_eq!(
            ipv4_source(&frame(&[8, 0], &ip)),
            Some(Ipv4Addr::new(10, 85, 0, 2))
        );
        let mut tagged = vec![0, 1, 8, 0];
        tagged.extend_from_slice(&ip);
        assert_eq!(
            ipv4_source(&frame(&[0x81, 0], &tagged)),
            Some(Ipv4Addr::new(10, 85, 0, 2))
        );
        assert_eq!(ipv4_source(&frame(&[8, 6], &ip)), None, "ARP is not IPv4");
        ip.truncate(10);
        assert_eq!(ipv4_source(&frame(&[8, 0], &ip)), None, "truncated");
    }
}
