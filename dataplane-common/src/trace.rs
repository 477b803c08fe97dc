//! `bpfmasq trace`: what the datapath reports about each packet while a
//! trace runs. Each tracer owns one of [`SLOTS`] ring buffers
//! (`TRACE_EVENTS_<slot>`); bit `slot` of `TRACE_ACTIVE[0]` says it is
//! listening. With no bit set (no trace), a program pays one read of that
//! word per packet and reports nothing.

/// Traces that can run at once on one datapath (one ring buffer each).
pub const SLOTS: u32 = 4;
/// Size of each ring buffer: a power of two, a multiple of the page size.
pub const RING_BYTES: u32 = 256 * 1024;

/// [`Tuple::kind`]: nothing readable (not IPv4, truncated).
pub const TUPLE_NONE: u8 = 0;
/// An IPv4 packet whose transport header was not read (a later fragment, a
/// protocol without ports, a truncated header): addresses and protocol only.
pub const TUPLE_ADDRESSES: u8 = 1;
/// TCP or UDP: addresses and ports.
pub const TUPLE_PORTS: u8 = 2;
/// ICMP: addresses, type, code and the echo identifier (`src_port`).
pub const TUPLE_ICMP: u8 = 3;

/// A packet's identity as the program saw it: addresses and ports in
/// network byte order, as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub src_addr: u32,
    pub dst_addr: u32,
    /// TCP/UDP source port; ICMP: the echo identifier (0 for other types).
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// `TUPLE_*`: which fields were read.
    pub kind: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// What became of one packet: its tuple when the program started and when
/// it ended, and the counter its verdict was counted in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// bpf_ktime_get_ns(): CLOCK_MONOTONIC.
    pub time_ns: u64,
    pub before: Tuple,
    pub after: Tuple,
    /// Index of the [`crate::counters::Counter`] the verdict was counted in.
    pub counter: u32,
    /// The TC action returned (`TC_ACT_UNSPEC` -1: goes on, `TC_ACT_SHOT` 2,
    /// `TC_ACT_REDIRECT` 7).
    pub action: i32,
    /// Which program: an index into [`PROGRAMS`].
    pub program: u8,
    pub _pad: [u8; 3],
    /// The packet's length (skb->len) when the program ended.
    pub len: u32,
}

/// Program names by [`TraceEvent::program`].
pub const PROGRAMS: [&str; 4] = [
    crate::maps::PROG_UPLINK_EGRESS,
    crate::maps::PROG_UPLINK_INGRESS,
    crate::maps::PROG_BRIDGE_INGRESS,
    crate::maps::PROG_POD_PORT_INGRESS,
];
pub const PROGRAM_UPLINK_EGRESS: u8 = 0;
pub const PROGRAM_UPLINK_INGRESS: u8 = 1;
pub const PROGRAM_BRIDGE_INGRESS: u8 = 2;
pub const PROGRAM_POD_PORT_INGRESS: u8 = 3;

/// The pin name of slot `slot`'s ring buffer.
pub const fn ring_name(slot: u32) -> &'static str {
    match slot {
        0 => crate::maps::TRACE_EVENTS_0,
        1 => crate::maps::TRACE_EVENTS_1,
        2 => crate::maps::TRACE_EVENTS_2,
        _ => crate::maps::TRACE_EVENTS_3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_names_are_distinct_and_fit_the_kernel() {
        for slot in 0..SLOTS {
            let name = ring_name(slot);
            // BPF_OBJ_NAME_LEN is 16 with the terminating zero.
            assert!(name.len() < 16, "{name}");
            for other in slot + 1..SLOTS {
                assert_ne!(name, ring_name(other));
            }
        }
        assert!(RING_BYTES.is_power_of_two() && RING_BYTES.is_multiple_of(4096));
    }

    #[test]
    fn event_layout_has_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<Tuple>(), 16);
        assert_eq!(core::mem::size_of::<TraceEvent>(), 56);
    }
}
