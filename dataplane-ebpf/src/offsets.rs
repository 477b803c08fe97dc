//! Where the fields NAT reads and rewrites sit in their headers, taken from
//! the header structs themselves rather than written down as numbers.

use core::mem::{offset_of, size_of};

use network_types::{icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

pub const IPV4_TTL: usize = offset_of!(Ipv4Hdr, ttl);
pub const IPV4_PROTO: usize = offset_of!(Ipv4Hdr, proto);
pub const IPV4_CHECK: usize = offset_of!(Ipv4Hdr, check);
pub const IPV4_SRC: usize = offset_of!(Ipv4Hdr, src_addr);
pub const IPV4_DST: usize = offset_of!(Ipv4Hdr, dst_addr);
/// An IPv4 header without options.
pub const IPV4_MIN_LEN: usize = size_of::<Ipv4Hdr>();

pub const TCP_SOURCE: usize = offset_of!(TcpHdr, source);
pub const TCP_DEST: usize = offset_of!(TcpHdr, dest);
pub const TCP_SEQ: usize = offset_of!(TcpHdr, seq);
pub const TCP_ACK_SEQ: usize = offset_of!(TcpHdr, ack_seq);
pub const TCP_WINDOW: usize = offset_of!(TcpHdr, window);
/// The data-offset nibble and the flags share the two bytes before the
/// window (a bitfield the struct cannot name): data offset first, flags next.
pub const TCP_DATA_OFFSET: usize = offset_of!(TcpHdr, window) - 2;
pub const TCP_FLAGS: usize = offset_of!(TcpHdr, window) - 1;
pub const TCP_CHECK: usize = offset_of!(TcpHdr, check);
/// A TCP header without options.
pub const TCP_MIN_LEN: usize = size_of::<TcpHdr>();

pub const UDP_SOURCE: usize = offset_of!(UdpHdr, src);
pub const UDP_DEST: usize = offset_of!(UdpHdr, dst);
pub const UDP_CHECK: usize = offset_of!(UdpHdr, check);
pub const UDP_LEN: usize = size_of::<UdpHdr>();

pub const ICMP_TYPE: usize = offset_of!(Icmpv4Hdr, type_);
pub const ICMP_CHECK: usize = offset_of!(Icmpv4Hdr, check);
/// An echo's identifier: the first half of the "rest of header" word.
pub const ICMP_ECHO_ID: usize = offset_of!(Icmpv4Hdr, data);
/// Type, code, checksum and the four bytes of "rest of header"; an error's
/// quoted packet follows.
pub const ICMP_LEN: usize = size_of::<Icmpv4Hdr>();

// The layouts the rewrites depend on, checked when the crate builds.
const _: () = assert!(IPV4_CHECK == 10 && IPV4_SRC == 12 && IPV4_DST == 16);
const _: () = assert!(IPV4_MIN_LEN == 20 && IPV4_TTL == 8 && IPV4_PROTO == 9);
const _: () = assert!(TCP_FLAGS == 13 && TCP_CHECK == 16 && TCP_MIN_LEN == 20);
const _: () = assert!(TCP_SOURCE == 0 && TCP_DEST == 2 && TCP_DATA_OFFSET == 12);
const _: () = assert!(UDP_SOURCE == 0 && UDP_DEST == 2 && UDP_CHECK == 6 && UDP_LEN == 8);
const _: () = assert!(ICMP_TYPE == 0 && ICMP_CHECK == 2 && ICMP_ECHO_ID == 4 && ICMP_LEN == 8);
