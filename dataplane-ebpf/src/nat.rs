//! The NAT core shared by every attach point, one pipeline per direction:
//! parse, find or create the flow, rewrite. `snat` masquerades a pod's
//! packet on its way out; `unsnat` translates the answer back.
//!
//! Safety rule: a packet from the pod network that is not translated for
//! any reason other than an excluded destination is dropped and counted
//! (see [`crate::verdict`]); it never leaves with its pod source address.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key, programs::TcContext};
use dataplane_common::{
    config::NatConfig,
    conntrack::seen_bits,
    counters::Counter,
    flow::{FlowEntry, FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack, fragments, host_sockets, icmp_error, kernel,
    maps::{CONFIG, NO_MASQ},
    packet::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, Ipv4, ParseError, parse_ipv4, parse_transport},
    rewrite::{Endpoint, rewrite},
    tcp_window,
    verdict::{Drop, Outcome, Verdict},
};

#[inline(always)]
fn config() -> Option<&'static NatConfig> {
    CONFIG.get(0)
}

/// Whether `dst` is never masqueraded (pod CIDR, multicast, broadcast, --no-masq).
#[inline(always)]
pub fn is_excluded(dst: u32) -> bool {
    NO_MASQ.get(Key::new(32, dst)).is_some()
}

/// Masquerades a packet leaving through the uplink.
#[inline(always)]
pub fn snat(ctx: &TcContext) -> Outcome {
    let ip = match parse_ipv4(ctx) {
        Ok(ip) => ip,
        Err(ParseError::NotIpv4) => return Ok(Verdict::Pass(Counter::PassedNotIpv4)),
        // Without a readable source we cannot rule out a pod address.
        Err(ParseError::Malformed) => {
            // A rare path the verifier always explores (packet contents are
            // unknown to it): the test hook costs nothing on normal packets.
            kernel::reject_if_testing();
            return Err(Drop(Counter::DropMalformed));
        }
    };
    let cfg = config().ok_or(Drop(Counter::DropNoConfig))?;
    // ICMP errors are looked at whoever sends them: the host's own may quote
    // a pod's address too. (Never fragmented: at most 576 bytes.)
    if ip.proto == IPPROTO_ICMP
        && !ip.is_fragment
        && let Ok(Some(l4)) = parse_transport(ctx, &ip)
        && icmp_error::is_error(l4.icmp_type)
    {
        if cfg.is_pod_addr(ip.src) && is_excluded(ip.dst) {
            return Ok(Verdict::Pass(Counter::PassedExcluded));
        }
        return icmp_error::snat_error(ctx, &ip, cfg);
    }
    if !cfg.is_pod_addr(ip.src) {
        if ip.src == cfg.nat_addr {
            host_sockets::claim_for_host(ctx, &ip);
        }
        return Ok(Verdict::Pass(Counter::PassedNotPod));
    }
    if is_excluded(ip.dst) {
        return Ok(Verdict::Pass(Counter::PassedExcluded));
    }
    if cfg.nat_addr == 0 {
        return Err(Drop(Counter::DropNoConfig));
    }
    if !matches!(ip.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
        return Err(Drop(Counter::DropUnsupported));
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if ip.is_fragment {
        fragments::claim_outgoing(&ip, cfg.nat_addr, now)?;
        if !ip.has_transport_header {
            return fragments::snat_later(ctx, &ip, cfg.nat_addr);
        }
    }
    let l4 = match parse_transport(ctx, &ip) {
        Ok(Some(l4)) if ip.proto != IPPROTO_ICMP || l4.icmp_type == ICMP_ECHO_REQUEST => l4,
        Ok(_) => return Err(Drop(Counter::DropUnsupported)),
        Err(_) => return Err(Drop(Counter::DropMalformed)),
    };
    let key = FlowKey::new(ip.src, ip.dst, l4.src_port, l4.dst_port, ip.proto);
    let entry = conntrack::original_entry(ctx, &key, cfg, now)?;
    let seen = seen_bits(l4.tcp_flags);
    conntrack::restart_if_reused(&key, entry, seen);
    if ip.proto == IPPROTO_TCP {
        tcp_window::record_pod_segment(ctx, &ip, entry, &l4);
    }
    let old = (ip.src, l4.src_port);
    apply(ctx, &ip, Endpoint::Source, old, entry, (now, seen))?;
    Ok(Verdict::Translated(Counter::TranslatedOut))
}

/// Translates a reply arriving at the NAT address back to its pod.
#[inline(always)]
pub fn unsnat(ctx: &TcContext) -> Outcome {
    if fragments::is_released(ctx) {
        return Ok(Verdict::Pass(Counter::ReenteredFragment));
    }
    let ip = match parse_ipv4(ctx) {
        Ok(ip) => ip,
        Err(ParseError::NotIpv4) => return Ok(Verdict::Pass(Counter::PassedNotIpv4)),
        // The host stack drops what it cannot parse either.
        Err(ParseError::Malformed) => return Ok(Verdict::Pass(Counter::PassedMalformed)),
    };
    let Some(cfg) = config() else {
        return Ok(Verdict::Pass(Counter::PassedNoFlow));
    };
    // Pods are reached through the bridge, never through the uplink.
    if cfg.is_pod_addr(ip.src) {
        return Err(Drop(Counter::DropSpoofedPodSource));
    }
    // A pod talks to non-excluded destinations only through the NAT, so
    // such a source sending to a pod address directly was never invited.
    if cfg.is_pod_addr(ip.dst) {
        return if is_excluded(ip.src) {
            Ok(Verdict::Pass(Counter::PassedExcluded))
        } else {
            Err(Drop(Counter::DropUninvitedToPod))
        };
    }
    if ip.dst != cfg.nat_addr {
        return Ok(Verdict::Pass(Counter::PassedNoFlow));
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if !ip.is_fragment {
        return unsnat_packet(ctx, &ip, cfg, now);
    }
    if !ip.has_transport_header {
        return fragments::unsnat_later(ctx, &ip, now);
    }
    match unsnat_packet(ctx, &ip, cfg, now)? {
        // A first fragment goes on (to its pod, or to the host); the rest
        // of its datagram follows it.
        Verdict::Pass(counter) | Verdict::Translated(counter) => {
            Ok(fragments::first_incoming(ctx, &ip, now, counter))
        }
        other => Ok(other),
    }
}

/// Translates a whole packet (or a first fragment) arriving at the NAT
/// address back to its pod, or leaves it to the host.
#[inline(always)]
fn unsnat_packet(ctx: &TcContext, ip: &Ipv4, cfg: &NatConfig, now: u64) -> Outcome {
    let l4 = match parse_transport(ctx, ip) {
        Ok(Some(l4)) if ip.proto != IPPROTO_ICMP || l4.icmp_type == ICMP_ECHO_REPLY => l4,
        Ok(Some(l4)) if icmp_error::is_error(l4.icmp_type) => {
            return icmp_error::unsnat_error(ctx, ip, cfg);
        }
        Ok(_) => return Ok(Verdict::Pass(Counter::PassedNoFlow)),
        Err(_) => return Ok(Verdict::Pass(Counter::PassedMalformed)),
    };
    let key = FlowKey::new(ip.src, ip.dst, l4.src_port, l4.dst_port, ip.proto);
    let Some(entry) = conntrack::reply_entry(&key) else {
        return Ok(Verdict::Pass(Counter::PassedNoFlow));
    };
    let old = (ip.dst, l4.dst_port);
    let seen = tcp_window::checked_outside_bits(ctx, ip, &key, entry, seen_bits(l4.tcp_flags));
    apply(ctx, ip, Endpoint::Destination, old, entry, (now, seen))?;
    Ok(Verdict::Translated(Counter::TranslatedIn))
}

/// Rewrites `endpoint` from `old` (address, port) to what `entry` says and
/// accounts the packet to the flow.
#[inline(always)]
fn apply(
    ctx: &TcContext,
    ip: &Ipv4,
    endpoint: Endpoint,
    (old_addr, old_port): (u32, u16),
    entry: *mut FlowEntry,
    (now, seen): (u64, u8),
) -> Result<(), Drop> {
    // SAFETY: map value pointer, valid for this run.
    let (new_addr, new_port) = unsafe { ((*entry).rewrite_addr, (*entry).rewrite_port) };
    rewrite(
        ctx,
        ip,
        endpoint,
        (old_addr, new_addr),
        (old_port, new_port),
    )?;
    conntrack::touch(entry, now, ctx.len(), seen);
    Ok(())
}
