//! The datapath's half of [`dataplane_common::tcp_window`]: the pod's
//! segments record its acknowledgment and window (and, on its SYN, its
//! window scale option); a RST or FIN from outside outside that window
//! leaves the flow's state alone.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    conntrack::{SEEN_FIN, SEEN_RST, TCP_ACK, TCP_SYN},
    counters::Counter,
    flow::{FlowEntry, FlowKey},
};

use crate::{
    conntrack,
    counters::count,
    offsets::{TCP_ACK_SEQ, TCP_DATA_OFFSET, TCP_MIN_LEN, TCP_SEQ, TCP_WINDOW},
    packet::{Ipv4, Transport},
};

/// A TCP segment's sequence fields, host byte order.
struct Sequence {
    seq: u32,
    ack: u32,
    window: u16,
    /// The header's length in bytes, options included.
    header_len: usize,
}

/// Reads the sequence fields of the TCP segment at `l4_off`: only packets
/// that need them pay for the read.
#[inline(always)]
fn sequence(ctx: &TcContext, l4_off: usize) -> Option<Sequence> {
    let head: [u8; TCP_MIN_LEN] = ctx.load(l4_off).ok()?;
    let word = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    Some(Sequence {
        seq: word(TCP_SEQ),
        ack: word(TCP_ACK_SEQ),
        window: u16::from_be_bytes([head[TCP_WINDOW], head[TCP_WINDOW + 1]]),
        header_len: ((head[TCP_DATA_OFFSET] >> 4) as usize) * 4,
    })
}

/// TCP option kinds (RFC 9293, RFC 7323).
const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
const OPTION_WINDOW_SCALE: u8 = 3;
/// Options read before giving up: 40 bytes of options hold at most 20
/// options of two bytes or more; NOP padding rarely exceeds a few.
const MAX_OPTIONS: usize = 20;
/// [`window_scale`]'s answer when the SYN carries no such option.
const NO_WINDOW_SCALE: u32 = u32::MAX;

/// Records a pod's TCP segment in its flow's original entry.
#[inline(always)]
pub fn record_pod_segment(ctx: &TcContext, ip: &Ipv4, entry: *mut FlowEntry, l4: &Transport) {
    let Some(segment) = sequence(ctx, ip.l4_off) else {
        return;
    };
    // SAFETY: map value pointer, valid for this run.
    let entry = unsafe { &mut *entry };
    let is_syn = l4.tcp_flags & TCP_SYN != 0;
    if is_syn {
        let shift = window_scale(ctx, ip.l4_off, segment.header_len);
        entry.record_syn((shift != NO_WINDOW_SCALE).then_some(shift as u8));
    }
    if l4.tcp_flags & TCP_ACK != 0 {
        entry.record_ack(segment.ack, segment.window, is_syn);
    }
}

/// The state bits an outside segment may set on its flow: its RST and FIN
/// only if its sequence number lies in the window the pod advertised.
/// `key` and `reply` are the flow's reply entry and its key.
#[inline(always)]
pub fn checked_outside_bits(
    ctx: &TcContext,
    ip: &Ipv4,
    key: &FlowKey,
    reply: *mut FlowEntry,
    seen: u8,
) -> u8 {
    if seen & (SEEN_FIN | SEEN_RST) == 0 {
        return seen;
    }
    let Some(segment) = sequence(ctx, ip.l4_off) else {
        return seen;
    };
    // SAFETY: map value pointer, valid for this run.
    let (pod_addr, pod_port) = unsafe { ((*reply).rewrite_addr, (*reply).rewrite_port) };
    let Some(pod) = conntrack::original(&key.original_before_snat(pod_addr, pod_port)) else {
        return seen;
    };
    // SAFETY: map value pointer, valid for this run.
    if unsafe { (*pod).window_accepts(segment.seq) } {
        return seen;
    }
    count(Counter::TcpOutOfWindow);
    seen & !(SEEN_FIN | SEEN_RST)
}

/// The window scale option of a SYN whose TCP header (options included) is
/// `header_len` bytes at `l4_off`, or [`NO_WINDOW_SCALE`].
///
/// A function of its own, returning a plain number: the verifier checks its
/// loop once, not once per path of the caller.
#[inline(never)]
fn window_scale(ctx: &TcContext, l4_off: usize, header_len: usize) -> u32 {
    let end = l4_off + header_len.min(60);
    let mut at = l4_off + TCP_MIN_LEN;
    for _ in 0..MAX_OPTIONS {
        if at + 1 >= end {
            break;
        }
        let Ok(kind) = ctx.load::<u8>(at) else {
            break;
        };
        match kind {
            OPTION_END => break,
            OPTION_NOP => at += 1,
            OPTION_WINDOW_SCALE => {
                return ctx.load::<u8>(at + 2).map_or(NO_WINDOW_SCALE, u32::from);
            }
            _ => match ctx.load::<u8>(at + 1) {
                Ok(len) if len >= 2 => at += len as usize,
                _ => break,
            },
        }
    }
    NO_WINDOW_SCALE
}
