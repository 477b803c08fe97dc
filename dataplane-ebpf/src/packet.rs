//! Parsing an Ethernet + IPv4 + TCP/UDP/ICMP packet into what NAT needs:
//! addresses, ports (or ICMP echo identifier) and the offsets to rewrite.

use aya_ebpf::programs::TcContext;
use dataplane_common::flow::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::offsets::{
    ICMP_ECHO_ID, ICMP_LEN, ICMP_TYPE, TCP_DEST, TCP_FLAGS, TCP_MIN_LEN, TCP_SOURCE, UDP_DEST,
    UDP_LEN, UDP_SOURCE,
};

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// Why a packet could not be parsed.
#[derive(Clone, Copy)]
pub enum ParseError {
    /// Not IPv4 at all: not ours.
    NotIpv4,
    /// Truncated or inconsistent header.
    Malformed,
}

/// An IPv4 packet's network layer.
pub struct Ipv4 {
    /// Offset of the IPv4 header in the frame.
    pub l3_off: usize,
    /// Offset of the transport header.
    pub l4_off: usize,
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    /// Identification field, network byte order: names the datagram a
    /// fragment belongs to.
    pub id: u16,
    /// IPv4 total length (header and payload).
    pub total_len: u16,
    /// Any fragment (first or later): ports are not in every one of them.
    pub is_fragment: bool,
    /// Fragment offset 0: whole packets and first fragments, which carry
    /// the transport header.
    pub has_transport_header: bool,
}

/// The transport fields NAT looks at, in network byte order.
pub struct Transport {
    /// Source port, or the identifier of an ICMP echo request.
    pub src_port: u16,
    /// Destination port, or the identifier of an ICMP echo reply.
    pub dst_port: u16,
    /// ICMP type (0 for TCP/UDP).
    pub icmp_type: u8,
    /// TCP flags (0 for UDP/ICMP).
    pub tcp_flags: u8,
}

const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// Returns a pointer to a `T` at `offset`, pulling non-linear data into the
/// linear area once if needed (GRO'd skbs may carry headers in frags).
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, ParseError> {
    let len = core::mem::size_of::<T>();
    if ctx.data() + offset + len > ctx.data_end() {
        ctx.pull_data((offset + len) as u32)
            .map_err(|_| ParseError::Malformed)?;
        if ctx.data() + offset + len > ctx.data_end() {
            return Err(ParseError::Malformed);
        }
    }
    Ok((ctx.data() + offset) as *const T)
}

/// Copies a `T` from a variable offset (after IP options). The verifier
/// cannot follow a bounds check across a variable packet offset, so this
/// goes through bpf_skb_load_bytes, which also reads non-linear data.
#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, ParseError> {
    ctx.load::<T>(offset).map_err(|_| ParseError::Malformed)
}

#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext) -> Result<Ipv4, ParseError> {
    let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|_| ParseError::NotIpv4)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Err(ParseError::NotIpv4);
    }
    let l3_off = EthHdr::LEN;
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3_off)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let header_len = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Err(ParseError::Malformed);
    }
    // The whole header, and as many bytes as the packet says it has, must
    // be there (0: a GSO super-packet's length may not fit the field).
    let total_len = u16::from_be_bytes(ip.tot_len) as usize;
    let frame_len = ctx.len() as usize;
    if l3_off + header_len > frame_len
        || (total_len != 0 && (total_len < header_len || l3_off + total_len > frame_len))
    {
        return Err(ParseError::Malformed);
    }
    let frags = u16::from_be_bytes(ip.frags);
    Ok(Ipv4 {
        l3_off,
        l4_off: l3_off + header_len,
        src: u32::from_ne_bytes(ip.src_addr),
        dst: u32::from_ne_bytes(ip.dst_addr),
        proto: ip.proto,
        id: u16::from_ne_bytes(ip.id),
        total_len: total_len as u16,
        is_fragment: frags & (IP_MF | IP_OFFSET_MASK) != 0,
        has_transport_header: frags & IP_OFFSET_MASK == 0,
    })
}

/// Reads the ports (TCP/UDP) or the echo identifier (ICMP echo; 0 for other
/// ICMP types), or `None` for protocols NAT does not translate.
#[inline(always)]
pub fn parse_transport(ctx: &TcContext, ip: &Ipv4) -> Result<Option<Transport>, ParseError> {
    match ip.proto {
        IPPROTO_TCP => {
            // The whole header: its checksum, past the flags, is rewritten too.
            let head: [u8; TCP_MIN_LEN] = load(ctx, ip.l4_off)?;
            Ok(Some(Transport {
                src_port: u16::from_ne_bytes([head[TCP_SOURCE], head[TCP_SOURCE + 1]]),
                dst_port: u16::from_ne_bytes([head[TCP_DEST], head[TCP_DEST + 1]]),
                icmp_type: 0,
                tcp_flags: head[TCP_FLAGS],
            }))
        }
        IPPROTO_UDP => {
            // The whole header: the checksum is rewritten too.
            let head: [u8; UDP_LEN] = load(ctx, ip.l4_off)?;
            Ok(Some(Transport {
                src_port: u16::from_ne_bytes([head[UDP_SOURCE], head[UDP_SOURCE + 1]]),
                dst_port: u16::from_ne_bytes([head[UDP_DEST], head[UDP_DEST + 1]]),
                icmp_type: 0,
                tcp_flags: 0,
            }))
        }
        IPPROTO_ICMP => {
            let icmp: [u8; ICMP_LEN] = load(ctx, ip.l4_off)?;
            let id = u16::from_ne_bytes([icmp[ICMP_ECHO_ID], icmp[ICMP_ECHO_ID + 1]]);
            // Other types (errors) carry no flow identifier of their own.
            let (src_port, dst_port) = match icmp[ICMP_TYPE] {
                ICMP_ECHO_REQUEST => (id, 0),
                ICMP_ECHO_REPLY => (0, id),
                _ => (0, 0),
            };
            Ok(Some(Transport {
                src_port,
                dst_port,
                icmp_type: icmp[ICMP_TYPE],
                tcp_flags: 0,
            }))
        }
        _ => Ok(None),
    }
}
