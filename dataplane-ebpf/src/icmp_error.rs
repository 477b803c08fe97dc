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
    counters::Counter,
    flow::{FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack,
    offsets::{
        ICMP_CHECK, ICMP_ECHO_ID, ICMP_LEN, IPV4_CHECK, IPV4_DST, IPV4_MIN_LEN, IPV4_PROTO,
        IPV4_SRC, TCP_CHECK, UDP_CHECK,
    },
    packet::{ICMP_ECHO_REQUEST, Ipv4},
    rewrite::{Endpoint, RewriteError, rewrite_address},
    verdict::{Outcome, Verdict},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

pub fn is_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    )
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
    let l3_off = ip.l4_off + ICMP_LEN;
    let inner: [u8; IPV4_MIN_LEN] = ctx.load(l3_off).ok()?;
    let header_len = ((inner[0] & 0x0f) as usize) * 4;
    if inner[0] >> 4 != 4 || header_len < IPV4_MIN_LEN {
        return None;
    }
    let word =
        |at: usize| u32::from_ne_bytes([inner[at], inner[at + 1], inner[at + 2], inner[at + 3]]);
    let (src, dst, proto) = (word(IPV4_SRC), word(IPV4_DST), inner[IPV4_PROTO]);
    if src != nat_addr {
        return None;
    }
    let l4_off = l3_off + header_len;
    let head: [u8; 8] = ctx.load(l4_off).ok()?;
    // TCP and UDP both start with the source port, then the destination port.
    let (port_off, port, reply_key) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let sport = u16::from_ne_bytes([head[0], head[1]]);
            let dport = u16::from_ne_bytes([head[2], head[3]]);
            (0, sport, FlowKey::new(dst, src, dport, sport, proto))
        }
        IPPROTO_ICMP if head[0] == ICMP_ECHO_REQUEST => {
            let id = u16::from_ne_bytes([head[ICMP_ECHO_ID], head[ICMP_ECHO_ID + 1]]);
            (
                ICMP_ECHO_ID,
                id,
                FlowKey::new(dst, src, 0, id, IPPROTO_ICMP),
            )
        }
        _ => return None,
    };
    Some(Quoted {
        l3_off,
        l4_off,
        proto,
        port_off,
        port,
        reply_key,
        ip_check: u16::from_ne_bytes([inner[IPV4_CHECK], inner[IPV4_CHECK + 1]]),
    })
}

/// Translates an ICMP error for a masqueraded flow back to its pod; one
/// that quotes no flow of ours is left to the host.
#[inline(always)]
pub fn unsnat_error(ctx: &TcContext, ip: &Ipv4, cfg: &NatConfig) -> Outcome {
    const NOT_OURS: Verdict = Verdict::Pass(Counter::PassedNoFlow);
    let Some(quoted) = parse_quoted(ctx, ip, cfg.nat_addr) else {
        return Ok(NOT_OURS);
    };
    let Some(entry) = conntrack::reply_entry(&quoted.reply_key) else {
        return Ok(NOT_OURS);
    };
    // SAFETY: map value pointer, valid for this run.
    let (pod_addr, pod_port) = unsafe { ((*entry).rewrite_addr, (*entry).rewrite_port) };
    rewrite_quoted(ctx, ip, &quoted, cfg.nat_addr, (pod_addr, pod_port))?;
    // Outer destination: the IPv4 header checksum only (ICMP has no pseudo-header).
    rewrite_address(ctx, ip, Endpoint::Destination, (cfg.nat_addr, pod_addr))?;
    // Not `Translated`: an ICMP error never takes the fast path.
    Ok(Verdict::Pass(Counter::TranslatedIcmpError))
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
) -> Result<(), RewriteError> {
    let icmp_check = ip.l4_off + ICMP_CHECK;
    // Writes `new` at `off` and folds the change into the ICMP checksum.
    let put16 = |off: usize, old: u16, new: u16| -> Result<(), RewriteError> {
        ctx.l4_csum_replace(icmp_check, old as u64, new as u64, 2)
            .map_err(|_| RewriteError)?;
        ctx.store(off, &new, 0).map_err(|_| RewriteError)
    };
    // The quoted transport checksum covers the source port (identifier) and,
    // for TCP/UDP, the source address through the pseudo-header. A UDP
    // checksum of zero means none; a TCP checksum may lie past the quote.
    let (l4_check_off, pseudo) = match quoted.proto {
        IPPROTO_UDP => (UDP_CHECK, true),
        IPPROTO_TCP => (TCP_CHECK, true),
        _ => (ICMP_CHECK, false),
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
    put16(quoted.l3_off + IPV4_CHECK, quoted.ip_check, new_ip_check)?;
    ctx.l4_csum_replace(icmp_check, nat_addr as u64, pod_addr as u64, 4)
        .map_err(|_| RewriteError)?;
    ctx.store(quoted.l3_off + IPV4_SRC, &pod_addr, 0)
        .map_err(|_| RewriteError)
}
