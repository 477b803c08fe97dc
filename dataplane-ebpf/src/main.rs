//! bpfmasq's TC programs. The uplink's egress program masquerades pod
//! traffic (SNAT); its ingress program translates the replies back. Both are
//! thin entry points over the shared NAT core in [`nat`]. With the fast path
//! on, the bridge's ingress program and the uplink's ingress program also
//! forward pod traffic themselves, past the host's IP stack ([`fast_path`]).
//! Each recorded pod's bridge port checks the sources it sends
//! ([`source_check`]).
#![no_std]
#![no_main]

mod admission;
mod conntrack;
mod counters;
mod fast_path;
mod fragments;
mod host_sockets;
mod icmp_error;
mod kernel;
mod maps;
mod nat;
mod offsets;
mod packet;
mod rewrite;
mod source_check;
mod tcp_window;
mod trace;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use dataplane_common::counters::Counter;
use verdict::{Drop, Outcome, Program, Verdict};

/// SNAT on the uplink's egress: pod source -> NAT address.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    trace::run!(Program::UplinkEgress, &ctx, snat_making_room(&ctx))
}

/// SNAT; a new flow that found the table full is dropped, and room is made
/// for the next one (`admission::early_drop`).
#[inline(always)]
fn snat_making_room(ctx: &TcContext) -> Outcome {
    let outcome = nat::snat(ctx);
    if let Err(Drop(Counter::DropTableFull)) = outcome {
        admission::early_drop();
    }
    outcome
}

/// Reverse SNAT on the uplink's ingress: NAT address -> pod; a translated
/// reply then takes the fast path to the bridge when it can.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    trace::run!(Program::UplinkIngress, &ctx, unsnat_and_deliver(&ctx))
}

#[inline(always)]
fn unsnat_and_deliver(ctx: &TcContext) -> Outcome {
    match nat::unsnat(ctx) {
        Ok(Verdict::Translated(translated)) => match fast_path::deliver_in(ctx) {
            // The fast path is off: the translation is the packet's verdict.
            Ok(Verdict::Ignored) => Ok(Verdict::Translated(translated)),
            // The translation counts; what the fast path did next is the
            // packet's verdict.
            next => {
                counters::count(translated);
                next
            }
        },
        other => other,
    }
}

/// The fast path out, on the bridge's ingress: a pod's packet to the
/// outside goes straight to the uplink (whose egress program masquerades it).
#[classifier]
pub fn bridge_ingress(ctx: TcContext) -> i32 {
    trace::run!(Program::BridgeIngress, &ctx, fast_path::forward_out(&ctx))
}

/// The source check on each recorded pod's bridge port (its host-side
/// veth's ingress): a packet whose source is not that pod's is dropped.
#[classifier]
pub fn pod_port_ingress(ctx: TcContext) -> i32 {
    trace::run!(Program::PodPortIngress, &ctx, source_check::check(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
