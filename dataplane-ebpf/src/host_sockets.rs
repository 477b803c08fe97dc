//! The host's own sockets on the NAT address. The NAT shares its address
//! with the host, so a port the host uses there (a listener, a bound or
//! connected UDP socket, an established connection) is never handed to a
//! container's flow, and a connection the host opens later on a tuple a
//! flow holds takes that tuple over: its replies go to the host.

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as Ipv4Tuple,
    },
    helpers::{bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    programs::TcContext,
};
use dataplane_common::{
    counters::Counter,
    flow::{Direction, FlowKey, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{counters::count, maps::CONNTRACK, packet::Ipv4, packet::parse_transport};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Whether a socket of the host (in the network namespace of the packet's
/// interface) would receive a TCP/UDP packet from `remote` to `local`,
/// addresses and ports in network byte order: the kernel's own lookup,
/// connected sockets first, then listening or bound ones.
#[inline(always)]
pub fn host_would_receive(
    ctx: &TcContext,
    proto: u8,
    remote: (u32, u16),
    local: (u32, u16),
) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: Ipv4Tuple {
                saddr: remote.0,
                daddr: local.0,
                sport: remote.1,
                dport: local.1,
            },
        },
    };
    let size = size_of::<Ipv4Tuple>() as u32;
    let netns = BPF_F_CURRENT_NETNS as u64;
    let skb = ctx.skb.skb.cast();
    // SAFETY: helper calls on this program's skb with a tuple on the stack;
    // a socket found is released before returning.
    unsafe {
        let sock = match proto {
            IPPROTO_TCP => bpf_sk_lookup_tcp(skb, &mut tuple, size, netns, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(skb, &mut tuple, size, netns, 0),
            _ => return false,
        };
        if sock.is_null() {
            return false;
        }
        bpf_sk_release(sock.cast());
    }
    true
}

/// A packet the host itself sends from the NAT address: if a container's
/// flow holds the same tuple, the host's connection wins it (the flow is
/// removed, so replies reach the host), as nf_nat would have kept the host's
/// tuple unique.
#[inline(always)]
pub fn claim_for_host(ctx: &TcContext, ip: &Ipv4) {
    if ip.is_fragment || !matches!(ip.proto, IPPROTO_TCP | IPPROTO_UDP) {
        return;
    }
    let Ok(Some(l4)) = parse_transport(ctx, ip) else {
        return;
    };
    // A TCP connection of the host claims its tuple with its first SYN; any
    // other segment (an RST the host answers a stray packet with, say) must
    // not let an outsider make the host tear a container's flow down.
    if ip.proto == IPPROTO_TCP && l4.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return;
    }
    // How the peer's answers to the host arrive: the key of a flow's reply half.
    let reply_key = FlowKey::new(ip.dst, ip.src, l4.dst_port, l4.src_port, ip.proto);
    let Some(entry) = CONNTRACK.get_ptr_mut(reply_key) else {
        return;
    };
    // SAFETY: map value pointer, valid for this run.
    let (direction, pod_addr, pod_port) = unsafe {
        (
            (*entry).direction,
            (*entry).rewrite_addr,
            (*entry).rewrite_port,
        )
    };
    if direction != Direction::Reply as u8 {
        return;
    }
    // Original half first: a container packet in between then starts a new
    // flow, which cannot claim this tuple while its reply half still exists.
    let original_key = FlowKey::new(pod_addr, ip.dst, pod_port, l4.dst_port, ip.proto);
    let _ = CONNTRACK.remove(original_key);
    let _ = CONNTRACK.remove(reply_key);
    count(Counter::FlowYieldedToHost);
}
