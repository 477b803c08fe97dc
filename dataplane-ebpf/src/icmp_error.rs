//! ICMP errors that answer a masqueraded packet (destination unreachable,
//! including fragmentation needed; time exceeded; parameter problem) arrive
//! at the NAT address quoting that packet as it left. Translating them back
//! (outer destination, quoted source address and port or echo identifier,
//! and every checksum involved) is what makes PMTU discovery, traceroute
//! and ECONNREFUSED work from inside a container.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    checksum::{replace16, replace32},
    config::NatConfig,
    flow::{FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack,
    packet::{ICMP_ECHO_REQUEST, Ipv4},
    rewrite::{Endpoint, rewrite_address},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// Type, code, checksum and four bytes of "rest of header".
const ICMP_HEADER_LEN: usize = 8;
const IPV4_HEADER_LEN: usize = 20;

pub fn is_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    )
}

/// Why an ICMP error was not translated.
pub enum Untranslated {
    /// It quotes no flow of ours: leave it to the host.
    NotOurs,
    /// A rewrite helper failed half-way: the packet must be dropped.
    RewriteFailed,
}

/// Where the quoted packet's fields are, and what they are.
struct Quoted {
    l3_off: usize,
    l4_off: usize,
    proto: u8,
    /// Offset (from l4_off) of the quoted source port or echo identifier.
    port_off: usize,
    port: u16,
    /// The reply entry of the flow the quoted packet belongs to.
    reply_key: FlowKey,
    ip_check: u16,
}

#[inline(always)]
fn parse_quoted(ctx: &TcContext, ip: &Ipv4, nat_addr: u32) -> Option<Quoted> {
    let l3_off = ip.l4_off + ICMP_HEADER_LEN;
    let inner: [u8; IPV4_HEADER_LEN] = ctx.load(l3_off).ok()?;
    let header_len = ((inner[0] & 0x0f) as usize) * 4;
    if inner[0] >> 4 != 4 || header_len < IPV4_HEADER_LEN {
        return None;
    }
    let src = u32::from_ne_bytes([inner[12], inner[13], inner[14], inner[15]]);
    let dst = u32::from_ne_bytes([inner[16], inner[17], inner[18], inner[19]]);
    if src != nat_addr {
        return None;
    }
    let l4_off = l3_off + header_len;
    let head: [u8; 8] = ctx.load(l4_off).ok()?;
    let (port_off, port, reply_key) = match inner[9] {
        IPPROTO_TCP | IPPROTO_UDP => {
            let sport = u16::from_ne_bytes([head[0], head[1]]);
            let dport = u16::from_ne_bytes([head[2], head[3]]);
            (0, sport, FlowKey::new(dst, src, dport, sport, inner[9]))
        }
        IPPROTO_ICMP if head[0] == ICMP_ECHO_REQUEST => {
            let id = u16::from_ne_bytes([head[4], head[5]]);
            (4, id, FlowKey::new(dst, src, 0, id, IPPROTO_ICMP))
        }
        _ => return None,
    };
    Some(Quoted {
        l3_off,
        l4_off,
        proto: inner[9],
        port_off,
        port,
        reply_key,
        ip_check: u16::from_ne_bytes([inner[10], inner[11]]),
    })
}

/// Translates an ICMP error for a masqueraded flow back to its pod.
#[inline(always)]
pub fn unsnat_error(ctx: &TcContext, ip: &Ipv4, cfg: &NatConfig) -> Result<(), Untranslated> {
    let quoted = parse_quoted(ctx, ip, cfg.nat_addr).ok_or(Untranslated::NotOurs)?;
    let entry = conntrack::reply_entry(&quoted.reply_key).ok_or(Untranslated::NotOurs)?;
    // SAFETY: map value pointer, valid for this run.
    let (pod_addr, pod_port) = unsafe { ((*entry).rewrite_addr, (*entry).rewrite_port) };
    rewrite_quoted(ctx, ip, &quoted, cfg.nat_addr, (pod_addr, pod_port))
        .map_err(|_| Untranslated::RewriteFailed)?;
    // Outer destination: the IPv4 header checksum only (ICMP has no pseudo-header).
    rewrite_address(ctx, ip, Endpoint::Destination, (cfg.nat_addr, pod_addr))
        .map_err(|_| Untranslated::RewriteFailed)
}

/// Rewrites the quoted packet's source back to the pod, keeping the quoted
/// checksums right and the ICMP checksum (which covers all of it) too.
#[inline(always)]
fn rewrite_quoted(
    ctx: &TcContext,
    ip: &Ipv4,
    quoted: &Quoted,
    nat_addr: u32,
    (pod_addr, pod_port): (u32, u16),
) -> Result<(), i64> {
    let icmp_check = ip.l4_off + 2;
    // Writes `new` at `off` and folds the change into the ICMP checksum.
    let put16 = |off: usize, old: u16, new: u16| -> Result<(), i64> {
        ctx.l4_csum_replace(icmp_check, old as u64, new as u64, 2)?;
        ctx.store(off, &new, 0)
    };
    // The quoted transport checksum covers the source port (identifier) and,
    // for TCP/UDP, the source address through the pseudo-header. A UDP
    // checksum of zero means none; a TCP checksum may lie past the quote.
    let (l4_check_off, pseudo) = match quoted.proto {
        IPPROTO_UDP => (6, true),
        IPPROTO_TCP => (16, true),
        _ => (2, false),
    };
    if let Ok(old_check) = ctx.load::<u16>(quoted.l4_off + l4_check_off)
        && !(quoted.proto == IPPROTO_UDP && old_check == 0)
    {
        let mut new_check = replace16(old_check, quoted.port, pod_port);
        if pseudo {
            new_check = replace32(new_check, nat_addr, pod_addr);
        }
        put16(quoted.l4_off + l4_check_off, old_check, new_check)?;
    }
    put16(quoted.l4_off + quoted.port_off, quoted.port, pod_port)?;
    // The quoted IPv4 source and its header checksum.
    let new_ip_check = replace32(quoted.ip_check, nat_addr, pod_addr);
    put16(quoted.l3_off + 10, quoted.ip_check, new_ip_check)?;
    ctx.l4_csum_replace(icmp_check, nat_addr as u64, pod_addr as u64, 4)?;
    ctx.store(quoted.l3_off + 12, &pod_addr, 0)
}
