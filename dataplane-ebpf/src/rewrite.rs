//! Rewriting an address and a port (or ICMP echo identifier) in place with
//! incremental checksum updates. The kernel helpers handle every skb
//! checksum state: CHECKSUM_PARTIAL (GSO/TSO: only the pseudo-header sum is
//! in the packet), CHECKSUM_COMPLETE and UDP's "no checksum" zero.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use dataplane_common::flow::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    offsets::{
        ICMP_CHECK, ICMP_ECHO_ID, IPV4_CHECK, IPV4_DST, IPV4_SRC, TCP_CHECK, TCP_DEST, TCP_SOURCE,
        UDP_CHECK,
    },
    packet::Ipv4,
};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Source,
    Destination,
}

/// A rewrite failed in a kernel helper; the packet must be dropped.
pub struct RewriteError;

/// Sets `endpoint`'s address to `new_addr` and its port (the echo identifier
/// for ICMP) to `new_port`; `old_*` are the values currently in the packet.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    ip: &Ipv4,
    endpoint: Endpoint,
    (old_addr, new_addr): (u32, u32),
    (old_port, new_port): (u16, u16),
) -> Result<(), RewriteError> {
    // TCP and UDP keep their ports at the same offsets.
    let port_off = match (ip.proto, endpoint) {
        (IPPROTO_ICMP, _) => ICMP_ECHO_ID,
        (_, Endpoint::Source) => TCP_SOURCE,
        (_, Endpoint::Destination) => TCP_DEST,
    };
    // (checksum offset, flags for an address change, flags for a port change)
    let (check_off, addr_flags, port_flags) = match ip.proto {
        IPPROTO_TCP => (TCP_CHECK, BPF_F_PSEUDO_HDR as u64, 0),
        IPPROTO_UDP => {
            let zero_ok = BPF_F_MARK_MANGLED_0 as u64;
            (UDP_CHECK, BPF_F_PSEUDO_HDR as u64 | zero_ok, zero_ok)
        }
        // The ICMP checksum covers no pseudo-header: only the identifier counts.
        _ => (ICMP_CHECK, 0, 0),
    };
    let l4_check = ip.l4_off + check_off;

    if old_port != new_port {
        ctx.l4_csum_replace(l4_check, old_port as u64, new_port as u64, port_flags | 2)
            .map_err(|_| RewriteError)?;
        ctx.store(ip.l4_off + port_off, &new_port, 0)
            .map_err(|_| RewriteError)?;
    }
    if old_addr != new_addr && ip.proto != IPPROTO_ICMP {
        ctx.l4_csum_replace(l4_check, old_addr as u64, new_addr as u64, addr_flags | 4)
            .map_err(|_| RewriteError)?;
    }
    rewrite_address(ctx, ip, endpoint, (old_addr, new_addr))
}

/// Sets `endpoint`'s address in the IPv4 header alone, fixing the header
/// checksum only: for packets without a transport header of their own
/// (fragments after the first) or whose checksum covers no pseudo-header.
#[inline(always)]
pub fn rewrite_address(
    ctx: &TcContext,
    ip: &Ipv4,
    endpoint: Endpoint,
    (old_addr, new_addr): (u32, u32),
) -> Result<(), RewriteError> {
    if old_addr == new_addr {
        return Ok(());
    }
    let addr_off = match endpoint {
        Endpoint::Source => IPV4_SRC,
        Endpoint::Destination => IPV4_DST,
    };
    ctx.l3_csum_replace(ip.l3_off + IPV4_CHECK, old_addr as u64, new_addr as u64, 4)
        .map_err(|_| RewriteError)?;
    ctx.store(ip.l3_off + addr_off, &new_addr, 0)
        .map_err(|_| RewriteError)
}
