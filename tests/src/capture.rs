//! A packet capture on one interface of a lab node: an AF_PACKET raw socket
//! (ETH_P_ALL) that records the IPv4 source address of every frame the
//! interface receives, until stopped; on request also the frames themselves,
//! or each IPv4 packet's size on the wire (GSO packets by their segments).

use std::{
    collections::BTreeMap,
    ffi::CString,
    io, mem,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{context, lab::Lab, topology::in_pod_net};

/// A capture stops after this long, whatever happened.
pub const LIFETIME: Duration = Duration::from_secs(120);

const POLL: Duration = Duration::from_millis(50);
const RECEIVE_BUFFER: libc::c_int = 8 << 20;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// What a capture saw: incoming IPv4 frames counted by source address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured {
    pub ipv4_sources: BTreeMap<Ipv4Addr, u64>,
    /// Every frame received, IPv4 or not.
    pub frames: u64,
    /// Every IPv4 frame received, whole, in order: only with [`Capture::start_keeping`].
    pub kept: Vec<Vec<u8>>,
    /// Every IPv4 packet received, sized as on the wire, in order: only with
    /// [`Capture::start_sizing`].
    pub sized: Vec<WireSize>,
}

impl Captured {
    /// The sources inside the pod network among what was received: a leak,
    /// wherever the capture ran beyond the NAT.
    pub fn pod_sources(&self) -> Vec<Ipv4Addr> {
        self.ipv4_sources
            .keys()
            .copied()
            .filter(|&addr| in_pod_net(addr))
            .collect()
    }
}

/// An IPv4 packet a capture received, sized as it was on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireSize {
    pub source: Ipv4Addr,
    pub protocol: u8,
    /// IPv4 total length of the largest packet on the wire it stands for. A
    /// GSO packet (one buffer for many TCP or UDP segments, which veths pass
    /// on whole) is measured by its segments.
    pub largest: u16,
    pub dont_fragment: bool,
}

/// What a capture records besides counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    Counts,
    Frames,
    Sizes,
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
        Self::spawn(lab, node, iface, Keep::Counts)
    }

    /// Like [`Capture::start`], and keeps every IPv4 frame (see [`Captured::kept`]).
    pub fn start_keeping(lab: &Lab, node: &str, iface: &str) -> Self {
        Self::spawn(lab, node, iface, Keep::Frames)
    }

    /// Like [`Capture::start`], and sizes every IPv4 packet as on the wire
    /// (see [`Captured::sized`]): for path MTU checks.
    pub fn start_sizing(lab: &Lab, node: &str, iface: &str) -> Self {
        Self::spawn(lab, node, iface, Keep::Sizes)
    }

    fn spawn(lab: &Lab, node: &str, iface: &str, keep: Keep) -> Self {
        let socket = lab
            .run_in(node, || open(iface, keep == Keep::Sizes))
            .unwrap_or_else(|e| panic!("capture on {iface} in {}: {e}", lab.ns(node)));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || record(&socket, &stopped, keep));
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

/// A packet socket bound to `iface` of the calling thread's namespace;
/// `gso_sizes`: each frame read is preceded by a `virtio_net_hdr` telling
/// its GSO segment size.
fn open(iface: &str, gso_sizes: bool) -> io::Result<OwnedFd> {
    let what = format!("AF_PACKET socket on {iface}");
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    let socket = bound_packet_socket(iface, protocol, |fd| {
        let on: libc::c_int = 1;
        // SAFETY: `fd` is the open socket; `on` is a valid c_int.
        let failed = gso_sizes
            && unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_PACKET,
                    libc::PACKET_VNET_HDR,
                    (&raw const on).cast(),
                    mem::size_of::<libc::c_int>() as libc::socklen_t,
                ) < 0
            };
        if failed {
            return Err(context(io::Error::last_os_error(), &what));
        }
        Ok(())
    })?;
    let fd = socket.as_raw_fd();
    // SAFETY: `fd` is the open socket; the values are valid for their options.
    unsafe {
        // A bigger queue (best effort) so that a burst is not dropped before it is read.
        setsockopt(fd, libc::SO_RCVBUFFORCE, &RECEIVE_BUFFER);
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: POLL.as_micros() as libc::suseconds_t,
        };
        if setsockopt(fd, libc::SO_RCVTIMEO, &timeout) < 0 {
            return Err(context(io::Error::last_os_error(), &what));
        }
    }
    Ok(socket)
}

/// An AF_PACKET socket of the calling thread's namespace for ethertype
/// `protocol` (network order; 0: receives nothing, for sending only),
/// bound to `iface` after `configure` ran on it.
pub(crate) fn bound_packet_socket(
    iface: &str,
    protocol: u16,
    configure: impl FnOnce(libc::c_int) -> io::Result<()>,
) -> io::Result<OwnedFd> {
    let what = format!("AF_PACKET socket on {iface}");
    let name = CString::new(iface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: plain libc calls on a fd owned right away by `OwnedFd`, with
    // correctly sized, initialised arguments.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return Err(context(io::Error::last_os_error(), &what));
        }
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol),
        );
        if fd < 0 {
            return Err(context(io::Error::last_os_error(), &what));
        }
        let socket = OwnedFd::from_raw_fd(fd);
        configure(fd)?;
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

/// Length of the `virtio_net_hdr` before each frame with PACKET_VNET_HDR.
const VNET_HDR_LEN: usize = 10;
/// Where its `gso_size` (native endian) is.
const VNET_GSO_SIZE_AT: usize = 4;

fn record(socket: &OwnedFd, stop: &AtomicBool, keep: Keep) -> io::Result<Captured> {
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
        let (read, gso_size) = if keep == Keep::Sizes {
            let gso_size = frame
                .get(VNET_GSO_SIZE_AT..VNET_GSO_SIZE_AT + 2)
                .map_or(0, |size| u16::from_ne_bytes([size[0], size[1]]));
            (frame.get(VNET_HDR_LEN..n as usize).unwrap_or(&[]), gso_size)
        } else {
            (&frame[..n as usize], 0)
        };
        if let Some(source) = ipv4_source(read) {
            *captured.ipv4_sources.entry(source).or_default() += 1;
            match keep {
                Keep::Counts => {}
                Keep::Frames => captured.kept.push(read.to_vec()),
                Keep::Sizes => captured.sized.extend(wire_size(read, gso_size)),
            }
        }
    }
}

/// The IPv4 source address of an Ethernet frame (possibly VLAN-tagged), if it carries IPv4.
pub fn ipv4_source(frame: &[u8]) -> Option<Ipv4Addr> {
    let source: [u8; 4] = ipv4_packet(frame)?.get(12..16)?.try_into().ok()?;
    Some(Ipv4Addr::from(source))
}

/// The IPv4 total length and Don't Fragment flag of an Ethernet frame
/// (possibly VLAN-tagged), if it carries IPv4.
fn ipv4_length_and_dont_fragment(frame: &[u8]) -> Option<(u16, bool)> {
    let ip = ipv4_packet(frame)?;
    let total_length = u16::from_be_bytes(ip.get(2..4)?.try_into().ok()?);
    let dont_fragment = ip.get(6)? & 0x40 != 0;
    Some((total_length, dont_fragment))
}

/// An IPv4 frame sized as on the wire: as is, or, for a GSO packet of
/// `gso_size` bytes of payload per segment, as its largest segment.
pub fn wire_size(frame: &[u8], gso_size: u16) -> Option<WireSize> {
    let (total_length, dont_fragment) = ipv4_length_and_dont_fragment(frame)?;
    let ip = ipv4_packet(frame)?;
    let ip_header_len = u16::from(ip[0] & 0x0f) * 4;
    let protocol = *ip.get(9)?;
    let l4 = ip.get(usize::from(ip_header_len)..)?;
    let l4_header_len = match protocol {
        IPPROTO_TCP => u16::from(l4.get(12)? >> 4) * 4,
        IPPROTO_UDP => 8,
        _ => 0,
    };
    let segment = ip_header_len + l4_header_len + gso_size;
    Some(WireSize {
        source: ipv4_source(frame)?,
        protocol,
        largest: if gso_size == 0 {
            total_length
        } else {
            total_length.min(segment)
        },
        dont_fragment,
    })
}

/// The IPv4 packet inside an Ethernet frame (possibly VLAN-tagged).
fn ipv4_packet(frame: &[u8]) -> Option<&[u8]> {
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
    (ip.first()? >> 4 == 4).then_some(ip)
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
        assert_eq!(
            ipv4_length_and_dont_fragment(&frame(&[8, 0], &ip)),
            Some((20, false))
        );
        ip[6] = 0x40;
        assert_eq!(
            ipv4_length_and_dont_fragment(&frame(&[8, 0], &ip)),
            Some((20, true))
        );
        ip.truncate(10);
        assert_eq!(ipv4_source(&frame(&[8, 0], &ip)), None, "truncated");
    }

    #[test]
    fn gso_packets_are_sized_by_their_segments() {
        // 20-byte IPv4 header (DF, TCP, total 5000) + 32-byte TCP header.
        let mut ip = vec![
            0x45, 0, 0x13, 0x88, 0, 0, 0x40, 0, 64, 6, 0, 0, 192, 168, 61, 11, 198, 51, 100, 2,
        ];
        ip.extend_from_slice(&[0; 12]);
        ip.push(8 << 4);
        ip.extend_from_slice(&[0; 19]);
        let gso = wire_size(&frame(&[8, 0], &ip), 1228).unwrap();
        assert_eq!(
            gso,
            WireSize {
                source: Ipv4Addr::new(192, 168, 61, 11),
                protocol: IPPROTO_TCP,
                largest: 1280,
                dont_fragment: true
            }
        );
        assert_eq!(wire_size(&frame(&[8, 0], &ip), 0).unwrap().largest, 5000);
    }
}

/// An ICMP error a capture received, with the packet it quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpErrorSeen {
    pub source: Ipv4Addr,
    pub icmp_type: u8,
    pub quoted_source: SocketAddrV4,
    pub quoted_destination: SocketAddrV4,
}

impl Captured {
    /// The ICMP errors among the kept frames ([`Capture::start_keeping`]).
    pub fn icmp_errors(&self) -> Vec<IcmpErrorSeen> {
        self.kept.iter().filter_map(|f| icmp_error(f)).collect()
    }

    /// Kept frames holding a pod network address anywhere in their IPv4
    /// headers, outer or quoted inside an ICMP error: leaks.
    pub fn frames_naming_pods(&self) -> Vec<String> {
        self.kept
            .iter()
            .filter_map(|frame| {
                let source = ipv4_source(frame)?;
                let error = icmp_error(frame);
                let named = [
                    Some(source),
                    error.map(|e| *e.quoted_source.ip()),
                    error.map(|e| *e.quoted_destination.ip()),
                ];
                named
                    .iter()
                    .flatten()
                    .any(|&addr| in_pod_net(addr))
                    .then(|| format!("from {source}: {error:?}"))
            })
            .collect()
    }
}

/// The ICMP error (destination unreachable, time exceeded, parameter
/// problem) an Ethernet frame carries, if any, with its quoted tuple (the
/// ports read as zero for a quoted ICMP packet).
fn icmp_error(frame: &[u8]) -> Option<IcmpErrorSeen> {
    const IPPROTO_ICMP: u8 = 1;
    let ip = ipv4_packet(frame)?;
    if *ip.get(9)? != IPPROTO_ICMP {
        return None;
    }
    let icmp = ip.get(usize::from(ip.first()? & 0x0f) * 4..)?;
    let icmp_type = *icmp.first()?;
    if !matches!(icmp_type, 3 | 11 | 12) {
        return None;
    }
    let quoted = icmp.get(8..)?;
    let quoted_l4 = quoted.get(usize::from(quoted.first()? & 0x0f) * 4..)?;
    let addr = |at: usize| -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from(
            <[u8; 4]>::try_from(quoted.get(at..at + 4)?).ok()?,
        ))
    };
    let port = |at: usize| -> u16 {
        if matches!(quoted.get(9), Some(&IPPROTO_TCP | &IPPROTO_UDP)) {
            quoted_l4
                .get(at..at + 2)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
        } else {
            0
        }
    };
    Some(IcmpErrorSeen {
        source: ipv4_source(frame)?,
        icmp_type,
        quoted_source: SocketAddrV4::new(addr(12)?, port(0)),
        quoted_destination: SocketAddrV4::new(addr(16)?, port(2)),
    })
}
