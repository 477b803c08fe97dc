//! The fast path: pod traffic forwarded between the bridge and the uplink
//! by the TC programs themselves, past the host's IP stack (routing input,
//! netfilter's hooks, forwarding, neighbour output), as Cilium's BPF host
//! routing does.
//!
//! Outgoing, the bridge's ingress program routes a pod's packet with
//! `bpf_fib_lookup`, decrements its TTL and redirects it to the uplink; the
//! uplink's egress program then masquerades it exactly as it does a packet
//! the host forwarded, so NAT keeps one place. Incoming, the uplink's ingress
//! program, once it translated a reply back to its pod, routes and redirects
//! it to the bridge, which hands it to the container's port.
//!
//! The host's nf_conntrack never sees a fast-pathed flow, so the ICMP errors
//! about it go the fast way too, both ways: handed to the host, a stateful
//! FORWARD rule (`--ctstate INVALID -j DROP`) would drop them.
//!
//! Anything the fast path does not handle goes the slow way, untouched and
//! counted by reason: the host stack then does what it always did (sends the
//! ICMP error for an expiring TTL, a missing route or a too small MTU,
//! fragments, delivers to itself, drops martians...).

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibLookup, bpf_redir_neigh as RedirNeigh,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use dataplane_common::{
    config::NatConfig,
    counters::Counter,
    flow::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    martian::is_martian,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    icmp_error, kernel,
    maps::CONFIG,
    nat::is_excluded,
    offsets::{IPV4_CHECK, IPV4_TTL, TCP_DATA_OFFSET, TCP_DEST, TCP_SOURCE, UDP_LEN},
    packet::{ICMP_ECHO_REQUEST, Ipv4, parse_ipv4},
    rewrite::RewriteError,
    verdict::{Outcome, Verdict},
};

const AF_INET: u8 = 2;
/// `skb->pkt_type` of a frame addressed to this host's MAC.
const PACKET_HOST: u32 = 0;

/// The configuration, if the fast path is on (and the kernel can run it:
/// otherwise the verifier never sees the helpers below).
#[inline(always)]
fn enabled() -> Option<&'static NatConfig> {
    if !kernel::has_fast_path() {
        return None;
    }
    CONFIG.get(0).filter(|cfg| cfg.fast_path())
}

/// Leaves the packet to the host stack, untouched, counting why.
#[inline(always)]
fn fallback(reason: Counter) -> Outcome {
    Ok(Verdict::Pass(reason))
}

/// Bridge ingress: a pod's packet to the outside, forwarded straight to the
/// uplink (whose egress program masquerades it).
#[inline(always)]
pub fn forward_out(ctx: &TcContext) -> Outcome {
    let Some(cfg) = enabled() else {
        return Ok(Verdict::Ignored);
    };
    // Not IPv4, or unreadable: the host stack decides, as without us.
    let Ok(ip) = parse_ipv4(ctx) else {
        return Ok(Verdict::Ignored);
    };
    // SAFETY: the context's own sk_buff.
    let pkt_type = unsafe { (*ctx.skb.skb).pkt_type };
    // Not a pod's packet routed through the host (another host's frame
    // passed up by a promiscuous bridge, a spoofed source): not ours.
    if pkt_type != PACKET_HOST || !cfg.is_pod_addr(ip.src) {
        return Ok(Verdict::Ignored);
    }
    if is_excluded(ip.dst) {
        return fallback(Counter::FallbackExcluded);
    }
    // The route lookup skips the host's martian rules: the host judges.
    if is_martian(ip.dst) {
        return fallback(Counter::FallbackMartian);
    }
    forward(ctx, &ip, cfg.uplink_ifindex, Crossing::Out)
}

/// Uplink ingress, after the NAT translated a packet of a flow back to its
/// pod (a reply, or an ICMP error about the flow): delivered straight to
/// the bridge.
#[inline(always)]
pub fn deliver_in(ctx: &TcContext) -> Outcome {
    let Some(cfg) = enabled() else {
        return Ok(Verdict::Ignored);
    };
    let Ok(ip) = parse_ipv4(ctx) else {
        return Ok(Verdict::Ignored);
    };
    // An ICMP error's source is whichever router sent it: the host judges
    // a martian one, as it would without the fast path.
    if is_martian(ip.src) {
        return fallback(Counter::FallbackMartian);
    }
    forward(ctx, &ip, cfg.bridge_ifindex, Crossing::In)
}

/// Which way a packet crosses the host.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Crossing {
    /// Pod to outside: only what the NAT masquerades qualifies.
    Out,
    /// A reply the NAT already translated, back to its pod.
    In,
}

impl Crossing {
    /// What a packet forwarded this way counts as.
    fn forwarded(self) -> Counter {
        match self {
            Crossing::Out => Counter::FastPathOut,
            Crossing::In => Counter::FastPathIn,
        }
    }
}

/// What the route lookup needs from the transport header.
struct RouteKeys {
    src_port: u16,
    dst_port: u16,
    /// TCP or UDP header length: with GSO, a segment's size is this plus
    /// the IPv4 header plus the skb's gso_size.
    header_len: u16,
}

/// Routes the packet and redirects it to `out_ifindex`, or says why the
/// host stack must forward it instead (nothing in the packet changed then).
#[inline(always)]
fn forward(ctx: &TcContext, ip: &Ipv4, out_ifindex: u32, crossing: Crossing) -> Outcome {
    let Some((ihl, tos, ttl)) = header_fields(ctx, ip) else {
        return fallback(Counter::FallbackUnsupported);
    };
    if ihl != 5 {
        return fallback(Counter::FallbackIpOptions);
    }
    if ip.is_fragment {
        return fallback(Counter::FallbackFragment);
    }
    if ttl <= 1 {
        return fallback(Counter::FallbackTtl);
    }
    let Some(l4) = route_keys(ctx, ip, crossing) else {
        return fallback(Counter::FallbackUnsupported);
    };

    // SAFETY: the context's own sk_buff.
    let (gso_size, in_ifindex) = unsafe { ((*ctx.skb.skb).gso_size, (*ctx.skb.skb).ifindex) };
    // The MTU check is on what goes on the wire: each segment of a GSO packet.
    let wire_len = if gso_size == 0 {
        ip.total_len
    } else {
        (Ipv4Hdr::LEN as u16)
            .saturating_add(l4.header_len)
            .saturating_add(gso_size as u16)
    };
    // SAFETY: plain-old-data parameter block, all zeroes is its empty state.
    let mut fib: FibLookup = unsafe { zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.proto;
    fib.sport = l4.src_port;
    fib.dport = l4.dst_port;
    fib.__bindgen_anon_1.tot_len = wire_len;
    fib.ifindex = in_ifindex;
    fib.__bindgen_anon_2.tos = tos;
    fib.__bindgen_anon_3.ipv4_src = ip.src;
    fib.__bindgen_anon_4.ipv4_dst = ip.dst;
    // SAFETY: helper call with a valid parameter block of the size given.
    let found = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            size_of::<FibLookup>() as i32,
            0,
        )
    };
    let resolved = match u32::try_from(found) {
        Ok(BPF_FIB_LKUP_RET_SUCCESS) => true,
        // The kernel resolves the neighbour itself (bpf_redirect_neigh).
        Ok(BPF_FIB_LKUP_RET_NO_NEIGH) => false,
        Ok(BPF_FIB_LKUP_RET_FRAG_NEEDED) => return fallback(Counter::FallbackFragNeeded),
        Ok(BPF_FIB_LKUP_RET_NOT_FWDED) => return fallback(Counter::FallbackLocal),
        _ => return fallback(Counter::FallbackNoRoute),
    };
    if fib.ifindex != out_ifindex {
        return fallback(Counter::FallbackOtherInterface);
    }

    // From here on the packet is ours to deliver: a helper failing leaves
    // it half-rewritten, so it is dropped (`?`), never handed to the stack.
    decrement_ttl(ctx, ip, ttl)?;
    let forwarded = crossing.forwarded();
    if resolved {
        // Destination then source MAC, as the neighbour entry says.
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&fib.dmac);
        macs[6..].copy_from_slice(&fib.smac);
        ctx.store(0, &macs, 0).map_err(|_| RewriteError)?;
        // SAFETY: plain helper call.
        let action = unsafe { bpf_redirect(out_ifindex, 0) } as i32;
        return Ok(Verdict::Redirected(action, forwarded));
    }
    // SAFETY: plain-old-data parameter block.
    let mut next_hop: RedirNeigh = unsafe { zeroed() };
    next_hop.nh_family = u32::from(AF_INET);
    // SAFETY: union field written by the lookup for IPv4: the gateway, or
    // the destination itself on a directly connected route.
    next_hop.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
    // SAFETY: helper call with a valid parameter block of the size given.
    let action = unsafe {
        bpf_redirect_neigh(
            out_ifindex,
            &mut next_hop,
            size_of::<RedirNeigh>() as i32,
            0,
        )
    } as i32;
    Ok(Verdict::Redirected(action, forwarded))
}

/// The IPv4 header's length in words, TOS and TTL.
#[inline(always)]
fn header_fields(ctx: &TcContext, ip: &Ipv4) -> Option<(u8, u8, u8)> {
    // parse_ipv4 made the header linear; the verifier wants its own check.
    if ctx.data() + ip.l3_off + Ipv4Hdr::LEN > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked above.
    let header = unsafe { &*((ctx.data() + ip.l3_off) as *const Ipv4Hdr) };
    Some((header.vihl & 0x0f, header.tos, header.ttl))
}

/// The ports (echo identifier for ICMP) and header length, or `None` for
/// what the fast path leaves to the host: outgoing, only what the NAT
/// masquerades (TCP, UDP, ICMP echo requests) and the pod's ICMP errors
/// about such flows (the host's conntrack never saw the flow, so a stateful
/// firewall there would drop them as INVALID); incoming, the NAT already
/// translated it.
#[inline(always)]
fn route_keys(ctx: &TcContext, ip: &Ipv4, crossing: Crossing) -> Option<RouteKeys> {
    match ip.proto {
        IPPROTO_TCP => {
            let head: [u8; TCP_DATA_OFFSET + 1] = ctx.load(ip.l4_off).ok()?;
            Some(RouteKeys {
                src_port: u16::from_ne_bytes([head[TCP_SOURCE], head[TCP_SOURCE + 1]]),
                dst_port: u16::from_ne_bytes([head[TCP_DEST], head[TCP_DEST + 1]]),
                header_len: u16::from(head[TCP_DATA_OFFSET] >> 4) * 4,
            })
        }
        IPPROTO_UDP => {
            let ports: [u16; 2] = ctx.load(ip.l4_off).ok()?;
            Some(RouteKeys {
                src_port: ports[0],
                dst_port: ports[1],
                header_len: UDP_LEN as u16,
            })
        }
        IPPROTO_ICMP => {
            let icmp_type: u8 = ctx.load(ip.l4_off).ok()?;
            (crossing == Crossing::In
                || icmp_type == ICMP_ECHO_REQUEST
                || icmp_error::is_error(icmp_type))
            .then_some(RouteKeys {
                src_port: 0,
                dst_port: 0,
                header_len: 0,
            })
        }
        _ => None,
    }
}

/// What forwarding does to every packet: TTL minus one, header checksum
/// fixed (the TTL shares a checksummed 16-bit word with the protocol).
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, ip: &Ipv4, ttl: u8) -> Result<(), RewriteError> {
    let old = u16::from_ne_bytes([ttl, ip.proto]);
    let new = u16::from_ne_bytes([ttl - 1, ip.proto]);
    ctx.l3_csum_replace(ip.l3_off + IPV4_CHECK, old as u64, new as u64, 2)
        .map_err(|_| RewriteError)?;
    ctx.store(ip.l3_off + IPV4_TTL, &(ttl - 1), 0)
        .map_err(|_| RewriteError)
}
