//! bpfmasq's TC programs. The uplink's egress program masquerades pod
//! traffic (SNAT); its ingress program translates the replies back. Both are
//! thin entry points over the shared NAT core in [`nat`], so that other
//! attach points (the bridge side of a fast path) reuse the same logic.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod fragments;
mod host_sockets;
mod icmp_error;
mod maps;
mod nat;
mod packet;
mod rewrite;

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};

/// SNAT on the uplink's egress: pod source -> NAT address.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    nat::snat(&ctx).unwrap_or(TC_ACT_SHOT)
}

/// Reverse SNAT on the uplink's ingress: NAT address -> pod.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    nat::unsnat(&ctx).unwrap_or(TC_ACT_SHOT)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
