//! `bpfmasq trace`: each program reports what became of a packet (its
//! tuple before and after, the counter of its verdict) to the ring buffer of
//! every trace listening. Without a trace, a program pays one read of
//! `TRACE_ACTIVE` per packet and runs exactly as it would without this
//! module: [`run!`] takes the untraced branch before the packet is touched.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::TcContext,
};
use dataplane_common::{
    counters::Counter,
    flow::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    trace::{RING_BYTES, SLOTS, TUPLE_ADDRESSES, TUPLE_ICMP, TUPLE_PORTS, TraceEvent, Tuple},
};
use network_types::eth::{EthHdr, EtherType};

use crate::{
    offsets::{ICMP_ECHO_ID, ICMP_LEN, IPV4_MIN_LEN},
    verdict::{Outcome, Program, finish_then},
};

/// Bit N set: a trace listens on `TRACE_EVENTS_<N>`.
#[map]
static TRACE_ACTIVE: Array<u32> = Array::pinned(1, 0);

/// Per trace slot: events its ring buffer had no room for.
#[map]
static TRACE_LOST: PerCpuArray<u64> = PerCpuArray::pinned(SLOTS, 0);

#[map]
static TRACE_EVENTS_0: RingBuf = RingBuf::pinned(RING_BYTES, 0);
#[map]
static TRACE_EVENTS_1: RingBuf = RingBuf::pinned(RING_BYTES, 0);
#[map]
static TRACE_EVENTS_2: RingBuf = RingBuf::pinned(RING_BYTES, 0);
#[map]
static TRACE_EVENTS_3: RingBuf = RingBuf::pinned(RING_BYTES, 0);

/// The event being built, per CPU (a program runs to its end on one CPU):
/// kept out of the stack, and out of the verifier's state, so the traced
/// path is verified about as cheaply as the untraced one.
#[map]
static TRACE_SCRATCH: PerCpuArray<TraceEvent> = PerCpuArray::with_max_entries(1, 0);

/// Runs a program's stage (an expression, evaluated once) and finishes the
/// packet. It expands the stage twice: when no trace listens, inline, the
/// program exactly as it would be without tracing, after one read of
/// `TRACE_ACTIVE`; else through [`traced`]. (A function taking the stage as
/// a closure lets the compiler turn the twice-called stage into a
/// subprogram, a call and a return on every packet.)
macro_rules! run {
    ($program:expr, $ctx:expr, $stage:expr) => {
        if $crate::trace::listening() == 0 {
            $crate::verdict::finish($program, $stage)
        } else {
            $crate::trace::traced($program, $ctx, || $stage)
        }
    };
}
pub(crate) use run;

/// The packet while a trace listens: its tuple is read before `stage` and
/// after it, and reported with the verdict's counter (see [`finish_then`]).
#[inline(always)]
pub fn traced(program: Program, ctx: &TcContext, stage: impl FnOnce() -> Outcome) -> i32 {
    if let Some(event) = TRACE_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch value, only this program run uses it.
        unsafe { read_tuple(ctx, &mut (*event).before) };
    }
    finish_then(program, stage(), |counter, action| {
        report(program, ctx, counter, action);
    })
}

/// Bit N set: a trace listens on ring buffer N.
#[inline(always)]
pub fn listening() -> u32 {
    TRACE_ACTIVE.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn report(program: Program, ctx: &TcContext, counter: Counter, action: i32) {
    let Some(event) = TRACE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch value, only this program run uses it.
    let event = unsafe { &mut *event };
    // SAFETY: plain helper call.
    event.time_ns = unsafe { bpf_ktime_get_ns() };
    read_tuple(ctx, &mut event.after);
    event.counter = counter as u32;
    event.action = action;
    event.program = program as u8;
    event.len = ctx.len();
    // Read again rather than kept from the start: a value live across the
    // whole program would split the verifier's states in two.
    let listening = listening();
    output(listening, 0, &TRACE_EVENTS_0, event);
    output(listening, 1, &TRACE_EVENTS_1, event);
    output(listening, 2, &TRACE_EVENTS_2, event);
    output(listening, 3, &TRACE_EVENTS_3, event);
}

/// Sends `event` to `ring` when slot `slot` listens; counts it lost when
/// the ring is full.
#[inline(always)]
fn output(listening: u32, slot: u32, ring: &RingBuf, event: &TraceEvent) {
    if listening & (1 << slot) == 0 {
        return;
    }
    if ring.output::<TraceEvent>(event, 0).is_err()
        && let Some(lost) = TRACE_LOST.get_ptr_mut(slot)
    {
        // SAFETY: per-CPU value, only this program on this CPU writes it.
        unsafe { *lost += 1 };
    }
}

const IP_OFFSET_MASK: u16 = 0x1fff;

/// Writes the packet's tuple as it is now into `tuple`, read with
/// bpf_skb_load_bytes (no packet pointers, so it works after any rewrite);
/// fields that cannot be read are 0 and `kind` says what was.
#[inline(always)]
fn read_tuple(ctx: &TcContext, tuple: &mut Tuple) {
    *tuple = Tuple::default();
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return;
    };
    if eth.ether_type != EtherType::Ipv4 as u16 {
        return;
    }
    let Ok(ip) = ctx.load::<[u8; IPV4_MIN_LEN]>(EthHdr::LEN) else {
        return;
    };
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || header_len < IPV4_MIN_LEN {
        return;
    }
    tuple.src_addr = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
    tuple.dst_addr = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
    tuple.proto = ip[9];
    tuple.kind = TUPLE_ADDRESSES;
    // A later fragment carries no transport header.
    if u16::from_be_bytes([ip[6], ip[7]]) & IP_OFFSET_MASK != 0 {
        return;
    }
    let l4_off = EthHdr::LEN + header_len;
    match tuple.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            if let Ok(ports) = ctx.load::<[u8; 4]>(l4_off) {
                tuple.src_port = u16::from_ne_bytes([ports[0], ports[1]]);
                tuple.dst_port = u16::from_ne_bytes([ports[2], ports[3]]);
                tuple.kind = TUPLE_PORTS;
            }
        }
        IPPROTO_ICMP => {
            if let Ok(icmp) = ctx.load::<[u8; ICMP_LEN]>(l4_off) {
                tuple.icmp_type = icmp[0];
                tuple.icmp_code = icmp[1];
                tuple.src_port = u16::from_ne_bytes([icmp[ICMP_ECHO_ID], icmp[ICMP_ECHO_ID + 1]]);
                tuple.kind = TUPLE_ICMP;
            }
        }
        _ => {}
    }
}
