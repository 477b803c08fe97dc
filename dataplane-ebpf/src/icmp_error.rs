//! ICMP errors that answer a masqueraded packet (destination unreachable,
//! including fragmentation needed; time exceeded; parameter problem) arrive
//! at the NAT address quoting that packet as it left. Translating them back
//! (outer destination, quoted source address and port or echo identifier,
//! and every checksum involved) is what makes PMTU discovery, traceroute
//! and ECONNREFUSED work from inside a container. The other way, errors
//! about a pod's flow leaving through the uplink are translated too, so no
//! pod address leaves quoted inside one.

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
    packet::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, Ipv4},
    rewrite::{Endpoint, RewriteError, rewrite_address},
    verdict::{Drop, Outcome, Verdict},
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
    src: u32,
    dst: u32,
    /// Source and destination port; for ICMP echo, the identifier is the
    /// source "port" of a request and the destination "port" of a reply
    /// (the conntrack key convention), the other one zero.
    sport: u16,
    dport: u16,
    /// Offsets (from l4_off) of those two fields in the quoted header.
    sport_off: usize,
    dport_off: usize,
    ip_check: u16,
}

impl Quoted {
    /// The key of the packet answering the quoted one (its tuple reversed).
    fn reversed_key(&self) -> FlowKey {
        FlowKey::new(self.dst, self.src, self.dport, self.sport, self.proto)
    }

    /// The quoted `endpoint`'s address, port and where they sit.
    fn endpoint(&self, endpoint: Endpoint) -> QuotedEndpoint {
        match endpoint {
            Endpoint::Source => QuotedEndpoint {
                addr: self.src,
                addr_off: self.l3_off + IPV4_SRC,
                port: self.sport,
                port_off: self.l4_off + self.sport_off,
            },
            Endpoint::Destination => QuotedEndpoint {
                addr: self.dst,
                addr_off: self.l3_off + IPV4_DST,
                port: self.dport,
                port_off: self.l4_off + self.dport_off,
            },
        }
    }
}

struct QuotedEndpoint {
    addr: u32,
    addr_off: usize,
    port: u16,
    port_off: usize,
}

#[inline(always)]
fn parse_quoted(ctx: &TcContext, ip: &Ipv4) -> Option<Quoted> {
    let l3_off = ip.l4_off + ICMP_LEN;
    let inner: [u8; IPV4_MIN_LEN] = ctx.load(l3_off).ok()?;
    let header_len = ((inner[0] & 0x0f) as usize) * 4;
    if inner[0] >> 4 != 4 || header_len < IPV4_MIN_LEN {
        return None;
    }
    let word =
        |at: usize| u32::from_ne_bytes([inner[at], inner[at + 1], inner[at + 2], inner[at + 3]]);
    let l4_off = l3_off + header_len;
    let head: [u8; 8] = ctx.load(l4_off).ok()?;
    let half = |at: usize| u16::from_ne_bytes([head[at], head[at + 1]]);
    let proto = inner[IPV4_PROTO];
    // (source port, its offset, destination port, its offset). TCP and UDP
    // both start with the two ports. For ICMP echo, the identifier is the
    // "port" of the pod's side: the source of a request, the destination of
    // a reply; the other one reads as zero and is never rewritten.
    let (sport, sport_off, dport, dport_off) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (half(0), 0, half(2), 2),
        IPPROTO_ICMP if head[0] == ICMP_ECHO_REQUEST => {
            (half(ICMP_ECHO_ID), ICMP_ECHO_ID, 0, ICMP_ECHO_ID)
        }
        IPPROTO_ICMP if head[0] == ICMP_ECHO_REPLY => {
            (0, ICMP_ECHO_ID, half(ICMP_ECHO_ID), ICMP_ECHO_ID)
        }
        _ => return None,
    };
    Some(Quoted {
        l3_off,
        l4_off,
        proto,
        src: word(IPV4_SRC),
        dst: word(IPV4_DST),
        sport,
        dport,
        sport_off,
        dport_off,
        ip_check: u16::from_ne_bytes([inner[IPV4_CHECK], inner[IPV4_CHECK + 1]]),
    })
}

/// Translates an ICMP error for a masqueraded flow back to its pod; one
/// that quotes no flow of ours is left to the host.
#[inline(always)]
pub fn unsnat_error(ctx: &TcContext, ip: &Ipv4, cfg: &NatConfig) -> Outcome {
    const NOT_OURS: Verdict = Verdict::Pass(Counter::PassedNoFlow);
    let Some(quoted) = parse_quoted(ctx, ip).filter(|q| q.src == cfg.nat_addr) else {
        return Ok(NOT_OURS);
    };
    // The quoted packet left as nat:port -> peer; the flow's reply entry is
    // keyed by the peer's answer to it.
    let Some(entry) = conntrack::reply_entry(&quoted.reversed_key()) else {
        return Ok(NOT_OURS);
    };
    // SAFETY: map value pointer, valid for this run.
    let pod = unsafe { ((*entry).rewrite_addr, (*entry).rewrite_port) };
    rewrite_quoted(ctx, ip, &quoted, Endpoint::Source, pod)?;
    // Outer destination: the IPv4 header checksum only (ICMP has no pseudo-header).
    rewrite_address(ctx, ip, Endpoint::Destination, (cfg.nat_addr, pod.0))?;
    // `Translated`: it takes the fast path to the pod like the flow's other
    // packets (the host's conntrack never saw the flow: a stateful firewall
    // there would drop the error as INVALID).
    Ok(Verdict::Translated(Counter::TranslatedIcmpError))
}

/// An ICMP error leaving through the uplink that quotes a packet of a pod's
/// flow: the host's own (a reply's TTL ran out on the way to the bridge, or
/// it needed fragmenting for the bridge's MTU) or the pod's (its socket was
/// closed when the peer's reply came). As MASQUERADE does for such RELATED
/// packets, the quoted pod address and port become the NAT address and port
/// the peer knows, and a pod's outer source the NAT address. One quoting a
/// pod address that belongs to no flow is dropped: a pod address never
/// leaves, not even quoted.
#[inline(always)]
pub fn snat_error(ctx: &TcContext, ip: &Ipv4, cfg: &NatConfig) -> Outcome {
    let from_pod = cfg.is_pod_addr(ip.src);
    let Some(quoted) = parse_quoted(ctx, ip) else {
        return if from_pod || quotes_pod_address(ctx, ip, cfg) {
            Err(Drop(Counter::DropIcmpErrorNoFlow))
        } else {
            Ok(Verdict::Pass(Counter::PassedNotPod))
        };
    };
    if !cfg.is_pod_addr(quoted.dst) {
        return if from_pod || cfg.is_pod_addr(quoted.src) {
            Err(Drop(Counter::DropIcmpErrorNoFlow))
        } else {
            Ok(Verdict::Pass(Counter::PassedNotPod))
        };
    }
    // The quoted packet went peer -> pod: the flow's original entry is keyed
    // by the pod's packet, its tuple reversed.
    let entry =
        conntrack::original(&quoted.reversed_key()).ok_or(Drop(Counter::DropIcmpErrorNoFlow))?;
    // SAFETY: map value pointer, valid for this run.
    let nat = unsafe { ((*entry).rewrite_addr, (*entry).rewrite_port) };
    if nat.0 != cfg.nat_addr {
        return Err(Drop(Counter::DropIcmpErrorNoFlow));
    }
    rewrite_quoted(ctx, ip, &quoted, Endpoint::Destination, nat)?;
    if from_pod {
        rewrite_address(ctx, ip, Endpoint::Source, (ip.src, cfg.nat_addr))?;
    }
    Ok(Verdict::Pass(Counter::TranslatedIcmpErrorOut))
}

/// Whether the quoted IPv4 header (all that may be there) names a pod.
#[inline(always)]
fn quotes_pod_address(ctx: &TcContext, ip: &Ipv4, cfg: &NatConfig) -> bool {
    let l3_off = ip.l4_off + ICMP_LEN;
    let Ok(inner) = ctx.load::<[u8; IPV4_MIN_LEN]>(l3_off) else {
        return false;
    };
    let word =
        |at: usize| u32::from_ne_bytes([inner[at], inner[at + 1], inner[at + 2], inner[at + 3]]);
    cfg.is_pod_addr(word(IPV4_SRC)) || cfg.is_pod_addr(word(IPV4_DST))
}

/// Rewrites the quoted packet's `endpoint` to `(addr, port)`, keeping the
/// quoted checksums right and the ICMP checksum (which covers all of it) too.
#[inline(always)]
fn rewrite_quoted(
    ctx: &TcContext,
    ip: &Ipv4,
    quoted: &Quoted,
    endpoint: Endpoint,
    (new_addr, new_port): (u32, u16),
) -> Result<(), RewriteError> {
    let icmp_check = ip.l4_off + ICMP_CHECK;
    // Writes `new` at `off` and folds the change into the ICMP checksum.
    let put16 = |off: usize, old: u16, new: u16| -> Result<(), RewriteError> {
        ctx.l4_csum_replace(icmp_check, old as u64, new as u64, 2)
            .map_err(|_| RewriteError)?;
        ctx.store(off, &new, 0).map_err(|_| RewriteError)
    };
    let old = quoted.endpoint(endpoint);
    // The quoted transport checksum covers the port (identifier) and, for
    // TCP/UDP, the address through the pseudo-header. A UDP checksum of zero
    // means none; a TCP checksum may lie past the quote.
    let (l4_check_off, pseudo) = match quoted.proto {
        IPPROTO_UDP => (UDP_CHECK, true),
        IPPROTO_TCP => (TCP_CHECK, true),
        _ => (ICMP_CHECK, false),
    };
    if let Ok(old_check) = ctx.load::<u16>(quoted.l4_off + l4_check_off)
        && !(quoted.proto == IPPROTO_UDP && old_check == 0)
    {
        let mut new_check = replace16(old_check, old.port, new_port);
        if pseudo {
            new_check = replace32(new_check, old.addr, new_addr);
        }
        put16(quoted.l4_off + l4_check_off, old_check, new_check)?;
    }
    put16(old.port_off, old.port, new_port)?;
    // The quoted IPv4 address and its header checksum.
    let new_ip_check = replace32(quoted.ip_check, old.addr, new_addr);
    put16(quoted.l3_off + IPV4_CHECK, quoted.ip_check, new_ip_check)?;
    ctx.l4_csum_replace(icmp_check, old.addr as u64, new_addr as u64, 4)
        .map_err(|_| RewriteError)?;
    ctx.store(old.addr_off, &new_addr, 0)
        .map_err(|_| RewriteError)
}
