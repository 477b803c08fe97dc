//! The NAT core shared by every attach point: masquerade a pod's packet on
//! its way out (`snat`) and translate the answer back (`unsnat`).
//!
//! Safety rule: a packet from the pod network that is not translated for any
//! reason other than an excluded destination is dropped (TC_ACT_SHOT) and
//! counted; it never leaves with its pod source address.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use aya_log_ebpf::warn;
use dataplane_common::{
    config::NatConfig,
    conntrack::seen_bits,
    counters::Counter,
    flow::{FlowEntry, FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack::{self, FlowError},
    counters::count,
    fragments, host_sockets,
    icmp_error::{self, Untranslated},
    maps::{CONFIG, NO_MASQ},
    packet::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, Ipv4, ParseError, parse_ipv4, parse_transport},
    rewrite::{Endpoint, rewrite},
};

/// What the NAT core did with a packet: the TC action to take, and whether
/// a conntrack flow translated it (a whole packet or a first fragment). Only
/// a translated packet may be forwarded by the caller itself (the fast path).
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: i32,
    pub translated: bool,
}

impl Verdict {
    const fn untranslated(action: i32) -> Self {
        Self {
            action,
            translated: false,
        }
    }
}

/// Passes the packet, counting why.
#[inline(always)]
fn pass(counter: Counter) -> Result<Verdict, ()> {
    count(counter);
    Ok(Verdict::untranslated(TC_ACT_OK))
}

/// Carries out a verdict taken elsewhere, counting why.
#[inline(always)]
fn verdict((action, counter): (i32, Counter)) -> Result<Verdict, ()> {
    count(counter);
    Ok(Verdict::untranslated(action))
}

/// Drops the packet, counting why.
#[inline(always)]
fn drop(counter: Counter) -> Result<Verdict, ()> {
    count(counter);
    Ok(Verdict::untranslated(TC_ACT_SHOT))
}

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
pub fn snat(ctx: &TcContext) -> Result<Verdict, ()> {
    let ip = match parse_ipv4(ctx) {
        Ok(ip) => ip,
        Err(ParseError::NotIpv4) => return pass(Counter::PassedNotIpv4),
        // Without a readable source we cannot rule out a pod address.
        Err(ParseError::Malformed) => return drop(Counter::DropMalformed),
    };
    let Some(cfg) = config() else {
        return drop(Counter::DropNoConfig);
    };
    if !cfg.is_pod_addr(ip.src) {
        if ip.src == cfg.nat_addr {
            host_sockets::claim_for_host(ctx, &ip);
        }
        return pass(Counter::PassedNotPod);
    }
    if is_excluded(ip.dst) {
        return pass(Counter::PassedExcluded);
    }
    if cfg.nat_addr == 0 {
        return drop(Counter::DropNoConfig);
    }
    if !matches!(ip.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
        return drop(Counter::DropUnsupported);
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if ip.is_fragment {
        if let Err(refused) = fragments::claim_outgoing(&ip, cfg.nat_addr, now) {
            return drop(refused);
        }
        if !ip.has_transport_header {
            return verdict(fragments::snat_later(ctx, &ip, cfg.nat_addr));
        }
    }
    let l4 = match parse_transport(ctx, &ip) {
        Ok(Some(l4)) if ip.proto != IPPROTO_ICMP || l4.icmp_type == ICMP_ECHO_REQUEST => l4,
        Ok(_) => return drop(Counter::DropUnsupported),
        Err(_) => return drop(Counter::DropMalformed),
    };
    let key = FlowKey::new(ip.src, ip.dst, l4.src_port, l4.dst_port, ip.proto);
    let entry = match conntrack::original_entry(ctx, &key, cfg, now) {
        Ok(entry) => entry,
        Err(e) => {
            // Rare and worth an operator's attention, like nf_conntrack's
            // "table full, dropping packet": `bpfmasq run` prints these.
            let pod = u32::from_be(ip.src);
            match e {
                FlowError::TableFull => warn!(
                    ctx,
                    "conntrack table full, dropping a new flow from {:i}", pod
                ),
                FlowError::NoPort => {
                    warn!(ctx, "no free port left, dropping a new flow from {:i}", pod)
                }
            }
            return drop(e.counter());
        }
    };
    let seen = seen_bits(l4.tcp_flags);
    conntrack::restart_if_reused(&key, entry, seen);
    let old = (ip.src, l4.src_port);
    apply(
        ctx,
        &ip,
        Endpoint::Source,
        old,
        entry,
        (now, seen),
        Counter::TranslatedOut,
    )
}

/// Translates a reply arriving at the NAT address back to its pod.
#[inline(always)]
pub fn unsnat(ctx: &TcContext) -> Result<Verdict, ()> {
    if fragments::is_released(ctx) {
        return Ok(Verdict::untranslated(TC_ACT_OK));
    }
    let ip = match parse_ipv4(ctx) {
        Ok(ip) => ip,
        Err(ParseError::NotIpv4) => return pass(Counter::PassedNotIpv4),
        // The host stack drops what it cannot parse either.
        Err(ParseError::Malformed) => return pass(Counter::PassedMalformed),
    };
    let Some(cfg) = config() else {
        return pass(Counter::PassedNoFlow);
    };
    // Pods are reached through the bridge, never through the uplink.
    if cfg.is_pod_addr(ip.src) {
        return drop(Counter::DropSpoofedPodSource);
    }
    // A pod talks to non-excluded destinations only through the NAT, so
    // such a source sending to a pod address directly was never invited.
    if cfg.is_pod_addr(ip.dst) {
        return if is_excluded(ip.src) {
            pass(Counter::PassedExcluded)
        } else {
            drop(Counter::DropUninvitedToPod)
        };
    }
    if ip.dst != cfg.nat_addr {
        return pass(Counter::PassedNoFlow);
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if !ip.is_fragment {
        return unsnat_packet(ctx, &ip, cfg, now);
    }
    if !ip.has_transport_header {
        return verdict(fragments::unsnat_later(ctx, &ip, now));
    }
    match unsnat_packet(ctx, &ip, cfg, now)? {
        Verdict {
            action: TC_ACT_OK, ..
        } => Ok(Verdict::untranslated(fragments::first_incoming(
            ctx, &ip, now,
        ))),
        other => Ok(other),
    }
}

/// Translates a whole packet (or a first fragment) arriving at the NAT
/// address back to its pod, or leaves it to the host.
#[inline(always)]
fn unsnat_packet(ctx: &TcContext, ip: &Ipv4, cfg: &NatConfig, now: u64) -> Result<Verdict, ()> {
    let l4 = match parse_transport(ctx, ip) {
        Ok(Some(l4)) if ip.proto != IPPROTO_ICMP || l4.icmp_type == ICMP_ECHO_REPLY => l4,
        Ok(Some(l4)) if icmp_error::is_error(l4.icmp_type) => {
            return match icmp_error::unsnat_error(ctx, ip, cfg) {
                Ok(()) => pass(Counter::TranslatedIcmpError),
                Err(Untranslated::NotOurs) => pass(Counter::PassedNoFlow),
                Err(Untranslated::RewriteFailed) => drop(Counter::DropRewrite),
            };
        }
        Ok(_) => return pass(Counter::PassedNoFlow),
        Err(_) => return pass(Counter::PassedMalformed),
    };
    let key = FlowKey::new(ip.src, ip.dst, l4.src_port, l4.dst_port, ip.proto);
    let Some(entry) = conntrack::reply_entry(&key) else {
        return pass(Counter::PassedNoFlow);
    };
    let old = (ip.dst, l4.dst_port);
    let seen = seen_bits(l4.tcp_flags);
    apply(
        ctx,
        ip,
        Endpoint::Destination,
        old,
        entry,
        (now, seen),
        Counter::TranslatedIn,
    )
}

/// Rewrites `endpoint` from `old` (address, port) to what `entry` says,
/// accounts the packet to the flow and passes it; drops it if the rewrite
/// fails half-way.
#[inline(always)]
fn apply(
    ctx: &TcContext,
    ip: &Ipv4,
    endpoint: Endpoint,
    (old_addr, old_port): (u32, u16),
    entry: *mut FlowEntry,
    (now, seen): (u64, u8),
    done: Counter,
) -> Result<Verdict, ()> {
    // SAFETY: map value pointer, valid for this run.
    let (new_addr, new_port) = unsafe { ((*entry).rewrite_addr, (*entry).rewrite_port) };
    if rewrite(
        ctx,
        ip,
        endpoint,
        (old_addr, new_addr),
        (old_port, new_port),
    )
    .is_err()
    {
        return drop(Counter::DropRewrite);
    }
    conntrack::touch(entry, now, ctx.len(), seen);
    count(done);
    Ok(Verdict {
        action: TC_ACT_OK,
        translated: true,
    })
}
