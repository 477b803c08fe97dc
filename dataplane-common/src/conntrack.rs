//! Connection state and expiry, with nf_conntrack's default timeouts.
//!
//! The datapath only records, per direction, which TCP flags it has seen
//! ([`FlowEntry::state`](crate::flow::FlowEntry)); the state of a flow and
//! when it expires follow from both directions together, computed here so
//! the garbage collector and the CLI agree.

use crate::flow::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

/// Bits of `FlowEntry::state`: TCP flags seen in that entry's direction.
pub const SEEN_SYN: u8 = 1 << 0;
pub const SEEN_ACK: u8 = 1 << 1;
pub const SEEN_FIN: u8 = 1 << 2;
pub const SEEN_RST: u8 = 1 << 3;
/// Not a TCP flag: set on both entries of a flow `attach --takeover`
/// imported from nf_conntrack, so `conntrack list` can say so. The datapath
/// only ORs flags in (and clears them all when a closed tuple is reused by
/// a new connection, which is then no longer the imported one).
pub const IMPORTED: u8 = 1 << 7;

/// TCP header flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The `state` bits a TCP segment with `flags` adds to its direction.
#[inline(always)]
pub const fn seen_bits(tcp_flags: u8) -> u8 {
    let mut bits = 0;
    if tcp_flags & TCP_SYN != 0 {
        bits |= SEEN_SYN;
    }
    if tcp_flags & TCP_ACK != 0 {
        bits |= SEEN_ACK;
    }
    if tcp_flags & TCP_FIN != 0 {
        bits |= SEEN_FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        bits |= SEEN_RST;
    }
    bits
}

/// A flow's state, as `conntrack -L` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    TcpSynSent,
    TcpSynRecv,
    TcpEstablished,
    TcpFinWait,
    TcpCloseWait,
    TcpTimeWait,
    TcpClose,
    /// UDP or ICMP with no answer yet.
    Unreplied,
    /// UDP or ICMP answered at least once.
    Replied,
    /// UDP that kept going after its first answer (nf_conntrack's
    /// "stream"): the long timeout. A lone request and its answer (DNS)
    /// stays `Replied`, with the short one.
    Stream,
}

impl FlowState {
    pub const fn name(self) -> &'static str {
        match self {
            Self::TcpSynSent => "SYN_SENT",
            Self::TcpSynRecv => "SYN_RECV",
            Self::TcpEstablished => "ESTABLISHED",
            Self::TcpFinWait => "FIN_WAIT",
            Self::TcpCloseWait => "CLOSE_WAIT",
            Self::TcpTimeWait => "TIME_WAIT",
            Self::TcpClose => "CLOSE",
            Self::Unreplied => "UNREPLIED",
            Self::Replied => "REPLIED",
            Self::Stream => "STREAM",
        }
    }
}

/// What a flow's two entries say about its answers, for [`flow_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answers {
    None,
    /// Answered; the pod sent nothing after the first answer.
    Replied,
    /// Answered, and the pod sent more after the first answer.
    Continued,
}

/// The state of a flow of protocol `proto` from the `state` bits of its
/// original and reply entries and what its answers were.
pub const fn flow_state(proto: u8, original: u8, reply: u8, answers: Answers) -> FlowState {
    if proto != IPPROTO_TCP {
        return match answers {
            Answers::None => FlowState::Unreplied,
            Answers::Replied => FlowState::Replied,
            // Only UDP streams: an echo flow is one request and its reply.
            Answers::Continued if proto == IPPROTO_UDP => FlowState::Stream,
            Answers::Continued => FlowState::Replied,
        };
    }
    if (original | reply) & SEEN_RST != 0 {
        FlowState::TcpClose
    } else if original & SEEN_FIN != 0 && reply & SEEN_FIN != 0 {
        FlowState::TcpTimeWait
    } else if original & SEEN_FIN != 0 {
        FlowState::TcpFinWait
    } else if reply & SEEN_FIN != 0 {
        FlowState::TcpCloseWait
    } else if reply & (SEEN_SYN | SEEN_ACK) == 0 {
        FlowState::TcpSynSent
    } else if original & SEEN_ACK == 0 {
        FlowState::TcpSynRecv
    } else {
        FlowState::TcpEstablished
    }
}

/// Idle timeouts in seconds, per protocol and state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close_wait: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    pub udp_unreplied: u32,
    pub udp_replied: u32,
    pub udp_stream: u32,
    pub icmp: u32,
}

impl Timeouts {
    /// nf_conntrack's defaults.
    pub const NF_CONNTRACK: Self = Self {
        tcp_syn_sent: 120,
        tcp_syn_recv: 60,
        tcp_established: 432_000,
        tcp_fin_wait: 120,
        tcp_close_wait: 60,
        tcp_time_wait: 120,
        tcp_close: 10,
        udp_unreplied: 30,
        udp_replied: 30,
        udp_stream: 120,
        icmp: 30,
    };

    /// Seconds a flow of `proto` in `state` may stay idle.
    pub const fn for_state(&self, proto: u8, state: FlowState) -> u32 {
        match (proto, state) {
            (IPPROTO_ICMP, _) => self.icmp,
            (IPPROTO_UDP, FlowState::Replied) => self.udp_replied,
            (IPPROTO_UDP, FlowState::Stream) => self.udp_stream,
            (IPPROTO_UDP, _) => self.udp_unreplied,
            (_, FlowState::TcpSynSent) => self.tcp_syn_sent,
            (_, FlowState::TcpSynRecv) => self.tcp_syn_recv,
            (_, FlowState::TcpEstablished) => self.tcp_established,
            (_, FlowState::TcpFinWait) => self.tcp_fin_wait,
            (_, FlowState::TcpCloseWait) => self.tcp_close_wait,
            (_, FlowState::TcpTimeWait) => self.tcp_time_wait,
            (_, FlowState::TcpClose) => self.tcp_close,
            // Other protocols are never tracked; treat like unreplied UDP.
            (_, FlowState::Replied | FlowState::Stream) => self.udp_replied,
            (_, FlowState::Unreplied) => self.udp_unreplied,
        }
    }
}

impl Timeouts {
    /// Every timeout with its CLI/JSON name (`--timeout NAME=SECONDS`).
    pub fn named(&self) -> [(&'static str, u32); 11] {
        [
            ("tcp-syn-sent", self.tcp_syn_sent),
            ("tcp-syn-recv", self.tcp_syn_recv),
            ("tcp-established", self.tcp_established),
            ("tcp-fin-wait", self.tcp_fin_wait),
            ("tcp-close-wait", self.tcp_close_wait),
            ("tcp-time-wait", self.tcp_time_wait),
            ("tcp-close", self.tcp_close),
            ("udp-unreplied", self.udp_unreplied),
            ("udp-replied", self.udp_replied),
            ("udp-stream", self.udp_stream),
            ("icmp", self.icmp),
        ]
    }

    /// Sets the timeout called `name`; false if there is no such timeout.
    pub fn set(&mut self, name: &str, seconds: u32) -> bool {
        let slot = match name {
            "tcp-syn-sent" => &mut self.tcp_syn_sent,
            "tcp-syn-recv" => &mut self.tcp_syn_recv,
            "tcp-established" => &mut self.tcp_established,
            "tcp-fin-wait" => &mut self.tcp_fin_wait,
            "tcp-close-wait" => &mut self.tcp_close_wait,
            "tcp-time-wait" => &mut self.tcp_time_wait,
            "tcp-close" => &mut self.tcp_close,
            "udp-unreplied" => &mut self.udp_unreplied,
            "udp-replied" => &mut self.udp_replied,
            "udp-stream" => &mut self.udp_stream,
            "icmp" => &mut self.icmp,
            _ => return false,
        };
        *slot = seconds;
        true
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::NF_CONNTRACK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = SEEN_SYN;
    const SYNACK: u8 = SEEN_SYN | SEEN_ACK;
    const ACK: u8 = SEEN_ACK;

    #[test]
    fn tcp_handshake_and_teardown() {
        assert_eq!(
            flow_state(IPPROTO_TCP, SYN, 0, Answers::None),
            FlowState::TcpSynSent
        );
        assert_eq!(
            flow_state(IPPROTO_TCP, SYN, SYNACK, Answers::Replied),
            FlowState::TcpSynRecv
        );
        assert_eq!(
            flow_state(IPPROTO_TCP, SYN | ACK, SYNACK, Answers::Replied),
            FlowState::TcpEstablished
        );
        assert_eq!(
            flow_state(IPPROTO_TCP, SYN | ACK | SEEN_FIN, SYNACK, Answers::Replied),
            FlowState::TcpFinWait
        );
        assert_eq!(
            flow_state(IPPROTO_TCP, SYN | ACK, SYNACK | SEEN_FIN, Answers::Replied),
            FlowState::TcpCloseWait
        );
        assert_eq!(
            flow_state(
                IPPROTO_TCP,
                ACK | SEEN_FIN,
                ACK | SEEN_FIN,
                Answers::Replied
            ),
            FlowState::TcpTimeWait
        );
        assert_eq!(
            flow_state(IPPROTO_TCP, ACK, SEEN_RST, Answers::Replied),
            FlowState::TcpClose
        );
    }

    #[test]
    fn flows_picked_up_mid_stream_are_established() {
        assert_eq!(
            flow_state(IPPROTO_TCP, ACK, ACK, Answers::Replied),
            FlowState::TcpEstablished
        );
    }

    #[test]
    fn udp_and_icmp_by_reply() {
        let udp = |answers| flow_state(IPPROTO_UDP, 0, 0, answers);
        assert_eq!(udp(Answers::None), FlowState::Unreplied);
        assert_eq!(udp(Answers::Replied), FlowState::Replied);
        assert_eq!(udp(Answers::Continued), FlowState::Stream);
        assert_eq!(
            flow_state(IPPROTO_ICMP, 0, 0, Answers::Continued),
            FlowState::Replied
        );
        let t = Timeouts::NF_CONNTRACK;
        assert_eq!(t.for_state(IPPROTO_UDP, FlowState::Unreplied), 30);
        // A lone request and its answer (DNS) goes as soon as an unanswered one.
        assert_eq!(t.for_state(IPPROTO_UDP, FlowState::Replied), 30);
        assert_eq!(t.for_state(IPPROTO_UDP, FlowState::Stream), 120);
        assert_eq!(t.for_state(IPPROTO_ICMP, FlowState::Replied), 30);
        assert_eq!(t.for_state(IPPROTO_TCP, FlowState::TcpEstablished), 432_000);
    }

    #[test]
    fn every_named_timeout_can_be_set() {
        let mut t = Timeouts::NF_CONNTRACK;
        for (name, _) in Timeouts::NF_CONNTRACK.named() {
            assert!(t.set(name, 7), "{name}");
        }
        assert!(t.named().iter().all(|&(_, v)| v == 7));
        assert!(!t.set("tcp-nonsense", 1));
    }

    #[test]
    fn seen_bits_from_flags() {
        assert_eq!(seen_bits(TCP_SYN | TCP_ACK), SEEN_SYN | SEEN_ACK);
        assert_eq!(seen_bits(TCP_FIN | TCP_ACK), SEEN_FIN | SEEN_ACK);
        assert_eq!(seen_bits(TCP_RST), SEEN_RST);
        assert_eq!(seen_bits(0), 0);
    }
}
