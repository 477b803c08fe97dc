//! One trace event as `bpfmasq trace` shows it: decoded from the ring
//! buffer's bytes, matched against the command's filters, printed as a line
//! of text or of JSON.

use std::{
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dataplane_common::{
    counters::{Counter, Family},
    flow::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    trace::{
        PROGRAM_UPLINK_INGRESS, PROGRAMS, TUPLE_ICMP, TUPLE_NONE, TUPLE_PORTS, TraceEvent, Tuple,
    },
};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::inspect::Proto;

/// Which packets a trace shows (all, when empty). Addresses as
/// `conntrack list` has them: `src` is a flow's pod side and `dst` its
/// peer, whichever way the packet goes; the packet's tuple before or after
/// translation may match.
#[derive(Clone, Debug, Default)]
pub struct TraceFilter {
    pub proto: Option<Proto>,
    pub src: Option<Ipv4Net>,
    pub dst: Option<Ipv4Net>,
    /// A TCP or UDP port on either side, before or after translation.
    pub port: Option<u16>,
}

/// A decoded event.
#[derive(Clone, Copy, Debug)]
pub struct Event(pub TraceEvent);

impl Event {
    /// The event in `bytes` (one ring buffer record); `None` if too short.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<TraceEvent>() {
            return None;
        }
        // SAFETY: enough bytes for a TraceEvent, a plain-data repr(C) type
        // valid for any bit pattern; read unaligned.
        Some(Self(unsafe {
            std::ptr::read_unaligned(bytes.as_ptr().cast::<TraceEvent>())
        }))
    }

    pub fn program(&self) -> &'static str {
        PROGRAMS
            .get(usize::from(self.0.program))
            .copied()
            .unwrap_or("unknown")
    }

    pub fn counter(&self) -> Option<Counter> {
        Counter::ALL.get(self.0.counter as usize).copied()
    }

    /// Whether the packet came in from outside (replies), so that its
    /// destination is a flow's pod side.
    fn inbound(&self) -> bool {
        self.0.program == PROGRAM_UPLINK_INGRESS
    }

    /// What became of the packet, in a word.
    pub fn verdict(&self) -> &'static str {
        let Some(counter) = self.counter() else {
            return "unknown";
        };
        match counter {
            Counter::ParkedFragment => "held",
            Counter::ReenteredFragment => "re-entered",
            _ => match counter.family() {
                Family::Drops => "dropped",
                Family::Fallbacks => "fallback",
                Family::FastPathPackets => "fast path",
                Family::TranslatedPackets
                | Family::TranslatedIcmpErrors
                | Family::TranslatedFragments => "translated",
                _ => "passed",
            },
        }
    }

    pub fn matches(&self, filter: &TraceFilter) -> bool {
        let tuples = [self.0.before, self.0.after];
        let proto_ok = filter.proto.is_none_or(|p| {
            let wanted = match p {
                Proto::Tcp => IPPROTO_TCP,
                Proto::Udp => IPPROTO_UDP,
                Proto::Icmp => IPPROTO_ICMP,
            };
            tuples
                .iter()
                .any(|t| t.kind != TUPLE_NONE && t.proto == wanted)
        });
        // (pod side, peer side) of each tuple.
        let sides = tuples.map(|t| {
            let (src, dst) = (addr(t.src_addr), addr(t.dst_addr));
            if self.inbound() {
                (dst, src)
            } else {
                (src, dst)
            }
        });
        let readable = |i: usize| tuples[i].kind != TUPLE_NONE;
        let src_ok = filter
            .src
            .is_none_or(|net| (0..2).any(|i| readable(i) && net.contains(&sides[i].0)));
        let dst_ok = filter
            .dst
            .is_none_or(|net| (0..2).any(|i| readable(i) && net.contains(&sides[i].1)));
        let port_ok = filter.port.is_none_or(|port| {
            tuples.iter().any(|t| {
                t.kind == TUPLE_PORTS
                    && (u16::from_be(t.src_port) == port || u16::from_be(t.dst_port) == port)
            })
        });
        proto_ok && src_ok && dst_ok && port_ok
    }

    /// One line of text: time, program, tuple before (and after, when the
    /// program changed it), verdict and its counter.
    pub fn line(&self, clock: &Clock) -> String {
        let (before, after) = (&self.0.before, &self.0.after);
        let tuples = if before == after {
            show_tuple(before)
        } else {
            format!("{}  =>  {}", show_tuple(before), show_tuple(after))
        };
        format!(
            "{} {:<14} {tuples}  {} ({})",
            clock.time_of_day(self.0.time_ns),
            self.program(),
            self.verdict(),
            self.counter().map_or("?", Counter::name)
        )
    }

    pub fn json(&self, clock: &Clock) -> serde_json::Value {
        serde_json::json!({
            "time": clock.unix_seconds(self.0.time_ns),
            "program": self.program(),
            "before": JsonTuple::of(&self.0.before),
            "after": JsonTuple::of(&self.0.after),
            "verdict": self.verdict(),
            "counter": self.counter().map(Counter::name),
            "action": action_name(self.0.action),
            "length": self.0.len,
        })
    }
}

fn addr(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".to_owned(),
        IPPROTO_UDP => "udp".to_owned(),
        IPPROTO_ICMP => "icmp".to_owned(),
        other => format!("proto-{other}"),
    }
}

fn icmp_type_name(icmp_type: u8) -> Option<&'static str> {
    Some(match icmp_type {
        0 => "echo-reply",
        3 => "unreachable",
        8 => "echo-request",
        11 => "time-exceeded",
        12 => "parameter-problem",
        _ => return None,
    })
}

fn action_name(action: i32) -> String {
    match action {
        // TC_ACT_UNSPEC (tcx's TCX_NEXT): goes on to the next program.
        -1 => "next".to_owned(),
        0 => "ok".to_owned(),
        2 => "shot".to_owned(),
        7 => "redirect".to_owned(),
        other => other.to_string(),
    }
}

fn show_tuple(t: &Tuple) -> String {
    let (src, dst) = (addr(t.src_addr), addr(t.dst_addr));
    let proto = proto_name(t.proto);
    match t.kind {
        TUPLE_NONE => "(not IPv4)".to_owned(),
        TUPLE_PORTS => format!(
            "{proto} {src}:{} > {dst}:{}",
            u16::from_be(t.src_port),
            u16::from_be(t.dst_port)
        ),
        TUPLE_ICMP => {
            let what = icmp_type_name(t.icmp_type).map_or_else(
                || format!("type {} code {}", t.icmp_type, t.icmp_code),
                str::to_owned,
            );
            let id = if matches!(t.icmp_type, 0 | 8) {
                format!(" id {}", u16::from_be(t.src_port))
            } else {
                String::new()
            };
            format!("{proto} {src} > {dst} {what}{id}")
        }
        _ => format!("{proto} {src} > {dst} (no ports: fragment or other protocol)"),
    }
}

/// A tuple in the JSON lines; fields that were not read are left out.
#[derive(Debug, Serialize)]
struct JsonTuple {
    #[serde(skip_serializing_if = "Option::is_none")]
    proto: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    echo_id: Option<u16>,
}

impl JsonTuple {
    fn of(t: &Tuple) -> Self {
        let readable = t.kind != TUPLE_NONE;
        let ports = t.kind == TUPLE_PORTS;
        let icmp = t.kind == TUPLE_ICMP;
        Self {
            proto: readable.then(|| proto_name(t.proto)),
            src: readable.then(|| addr(t.src_addr)),
            dst: readable.then(|| addr(t.dst_addr)),
            src_port: ports.then(|| u16::from_be(t.src_port)),
            dst_port: ports.then(|| u16::from_be(t.dst_port)),
            icmp_type: icmp.then_some(t.icmp_type),
            icmp_code: icmp.then_some(t.icmp_code),
            echo_id: (icmp && matches!(t.icmp_type, 0 | 8)).then(|| u16::from_be(t.src_port)),
        }
    }
}

/// Turns the datapath's CLOCK_MONOTONIC times into wall-clock times.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall clock minus monotonic clock, in ns, when the trace started.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        let monotonic = i128::from(crate::datapath::flows::monotonic_ns());
        Self {
            offset_ns: wall - monotonic,
        }
    }

    fn unix_ns(&self, monotonic_ns: u64) -> u128 {
        (i128::from(monotonic_ns) + self.offset_ns).max(0) as u128
    }

    /// Seconds since the epoch, with microseconds.
    pub fn unix_seconds(&self, monotonic_ns: u64) -> f64 {
        let ns = self.unix_ns(monotonic_ns);
        (ns / 1000) as f64 / 1e6
    }

    /// `HH:MM:SS.micros` (UTC), as tcpdump prints it.
    pub fn time_of_day(&self, monotonic_ns: u64) -> String {
        let since_epoch = Duration::from_nanos(self.unix_ns(monotonic_ns) as u64);
        let secs = since_epoch.as_secs() % 86_400;
        format!(
            "{:02}:{:02}:{:02}.{:06}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            since_epoch.subsec_micros()
        )
    }
}

#[cfg(test)]
mod tests {
    use dataplane_common::trace::PROGRAM_UPLINK_EGRESS;

    use super::*;

    fn ip(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Tuple {
        Tuple {
            src_addr: ip(src),
            dst_addr: ip(dst),
            src_port: sport.to_be(),
            dst_port: dport.to_be(),
            proto: IPPROTO_UDP,
            kind: TUPLE_PORTS,
            ..Default::default()
        }
    }

    fn event(program: u8, before: Tuple, after: Tuple, counter: Counter) -> Event {
        Event(TraceEvent {
            before,
            after,
            program,
            counter: counter as u32,
            ..Default::default()
        })
    }

    const POD: [u8; 4] = [10, 85, 0, 2];
    const NAT: [u8; 4] = [192, 168, 61, 11];
    const PEER: [u8; 4] = [192, 168, 61, 12];

    fn filter(src: Option<&str>, dst: Option<&str>, port: Option<u16>) -> TraceFilter {
        TraceFilter {
            proto: None,
            src: src.map(|s| s.parse().unwrap()),
            dst: dst.map(|s| s.parse().unwrap()),
            port,
        }
    }

    #[test]
    fn src_and_dst_follow_the_flow_both_ways() {
        let out = event(
            PROGRAM_UPLINK_EGRESS,
            udp(POD, 40000, PEER, 53),
            udp(NAT, 40000, PEER, 53),
            Counter::TranslatedOut,
        );
        let back = event(
            PROGRAM_UPLINK_INGRESS,
            udp(PEER, 53, NAT, 40000),
            udp(PEER, 53, POD, 40000),
            Counter::TranslatedIn,
        );
        for e in [&out, &back] {
            assert!(e.matches(&filter(Some("10.85.0.2/32"), None, None)));
            assert!(e.matches(&filter(None, Some("192.168.61.12/32"), Some(53))));
            assert!(!e.matches(&filter(Some("10.85.0.3/32"), None, None)));
            assert!(!e.matches(&filter(Some("192.168.61.12/32"), None, None)));
            assert!(!e.matches(&filter(None, None, Some(80))));
        }
        assert_eq!(out.verdict(), "translated");
        assert_eq!(
            back.line(&Clock { offset_ns: 0 }),
            "00:00:00.000000 uplink_ingress udp 192.168.61.12:53 > 192.168.61.11:40000  =>  \
             udp 192.168.61.12:53 > 10.85.0.2:40000  translated (translated_in)"
        );
    }

    #[test]
    fn verdicts_follow_the_counter_family() {
        let t = udp(PEER, 1, POD, 2);
        let verdict = |c| event(PROGRAM_UPLINK_INGRESS, t, t, c).verdict();
        assert_eq!(verdict(Counter::DropSpoofedPodSource), "dropped");
        assert_eq!(verdict(Counter::FallbackTtl), "fallback");
        assert_eq!(verdict(Counter::FastPathIn), "fast path");
        assert_eq!(verdict(Counter::PassedNoFlow), "passed");
        assert_eq!(verdict(Counter::ParkedFragment), "held");
    }

    #[test]
    fn decodes_what_the_datapath_writes() {
        let e = TraceEvent {
            time_ns: 7,
            counter: 3,
            len: 98,
            ..Default::default()
        };
        // SAFETY: reading a plain repr(C) struct's bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const e).cast::<u8>(), size_of::<TraceEvent>())
        };
        assert_eq!(Event::decode(bytes).unwrap().0, e);
        assert!(Event::decode(&bytes[..10]).is_none());
    }
}
