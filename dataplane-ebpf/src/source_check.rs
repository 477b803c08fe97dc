//! The source check on a pod's bridge port: the program on the ingress of
//! each host-side veth a container was recorded on (CNI ADD, or the lab)
//! lets an IPv4 packet on only when its source is an address recorded for
//! that very port in `PODS`. Without it one pod could send with another's
//! address: be masqueraded as that pod, answer, close or exhaust its flows.
//!
//! The bridge's own hooks cannot do this check: a frame the bridge passes up
//! to the host arrives there with the bridge as its device, its port is
//! forgotten. So the check sits on the port itself, where pod-to-pod frames
//! (bridged, never routed) are checked too. Non-IPv4 frames (ARP, IPv6) go
//! on untouched.

use aya_ebpf::programs::TcContext;
use dataplane_common::counters::Counter;

use crate::{
    maps::PODS,
    packet::{ParseError, parse_ipv4},
    verdict::{Drop, Outcome, Verdict},
};

/// Lets the packet on if its source belongs to the port it came in on.
#[inline(always)]
pub fn check(ctx: &TcContext) -> Outcome {
    let ip = match parse_ipv4(ctx) {
        Ok(ip) => ip,
        // The host stack drops a header it cannot parse (and counts it),
        // the uplink's SNAT whatever it cannot translate: nothing to add.
        Err(ParseError::NotIpv4 | ParseError::Malformed) => return Ok(Verdict::Ignored),
    };
    // SAFETY: the context's own sk_buff.
    let port = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is only read, right here.
    match unsafe { PODS.get(ip.src) } {
        Some(record) if record.host_ifindex == port => Ok(Verdict::Ignored),
        _ => Err(Drop(Counter::DropSpoofedSourceOnBridge)),
    }
}
