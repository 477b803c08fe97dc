//! What keeps an outsider from closing a pod's TCP flow: a RST or FIN from
//! the outside changes the flow's state only when its sequence number lies
//! in the window the pod last advertised, as nf_conntrack's `tcp_in_window`
//! demands. Anything else (an off-path attacker spraying RSTs over the NAT
//! ports with guessed sequence numbers) still reaches the pod, whose own
//! stack judges it, but leaves the flow's state alone.
//!
//! Only the pod's side is recorded, from the pod's own segments (in the
//! flow's original entry): nothing an outsider sends can move the window it
//! is checked against. Pods are trusted here: their RST/FIN always count.

use crate::flow::FlowEntry;

/// Bits of [`FlowEntry::tcp_track`].
/// The pod's acknowledgment and window are recorded.
pub const TRACK_ACK_SEEN: u8 = 1 << 0;
/// The pod's SYN was seen, so [`FlowEntry::tcp_wscale`] is its window scale.
pub const TRACK_WSCALE_SEEN: u8 = 1 << 1;

/// The window scale assumed for a pod whose SYN bpfmasq never saw (a flow
/// picked up mid-stream): the largest RFC 7323 allows, so such a flow's
/// window errs towards accepting, as nf_conntrack is liberal with them.
pub const WSCALE_UNSEEN: u8 = 14;
/// The largest shift RFC 7323 allows.
const WSCALE_MAX: u8 = 14;

impl FlowEntry {
    /// Records the pod's SYN and its window scale option (`None`: it sent
    /// none). A SYN starts a connection: what the pod acknowledged before
    /// belonged to an older one on the same tuple.
    #[inline(always)]
    pub fn record_syn(&mut self, wscale: Option<u8>) {
        self.tcp_track &= !TRACK_ACK_SEEN;
        self.tcp_wscale = match wscale {
            Some(shift) if shift <= WSCALE_MAX => shift,
            Some(_) => WSCALE_MAX,
            None => 0,
        };
        self.tcp_track |= TRACK_WSCALE_SEEN;
    }

    /// Records what a segment of the pod says about its receiving side: the
    /// next byte it expects (`ack`, host order) and how many beyond that it
    /// accepts (`window` as in the header). A SYN's window is never scaled.
    #[inline(always)]
    pub fn record_ack(&mut self, ack: u32, window: u16, is_syn: bool) {
        let shift = if is_syn {
            0
        } else if self.tcp_track & TRACK_WSCALE_SEEN != 0 {
            self.tcp_wscale
        } else {
            WSCALE_UNSEEN
        };
        self.tcp_ack = ack;
        self.tcp_window = u32::from(window) << shift;
        self.tcp_track |= TRACK_ACK_SEEN;
    }

    /// Whether sequence number `seq` (host order) from the outside lies in
    /// the window the pod last advertised: from its last acknowledgment to
    /// that plus its window. Before the pod acknowledged anything (its SYN
    /// was just sent) every number is accepted: a refusing peer's RST then
    /// closes the flow as it should.
    #[inline(always)]
    pub fn window_accepts(&self, seq: u32) -> bool {
        self.tcp_track & TRACK_ACK_SEEN == 0
            || seq.wrapping_sub(self.tcp_ack) <= self.tcp_window.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Direction;

    fn pod_entry() -> FlowEntry {
        FlowEntry::new(Direction::Original, 0, 0, 0)
    }

    #[test]
    fn everything_is_accepted_before_the_pod_acknowledged_anything() {
        let entry = pod_entry();
        assert!(entry.window_accepts(0));
        assert!(entry.window_accepts(0x8000_0000));
    }

    #[test]
    fn a_sequence_number_in_the_scaled_window_is_accepted() {
        let mut entry = pod_entry();
        entry.record_syn(Some(7));
        entry.record_ack(1_000_000, 502, false);
        assert!(entry.window_accepts(1_000_000));
        assert!(entry.window_accepts(1_000_000 + (502 << 7)));
        assert!(!entry.window_accepts(1_000_000 + (502 << 7) + 1));
        assert!(!entry.window_accepts(999_999));
        assert!(!entry.window_accepts(1_000_000 ^ 0x8000_0000));
    }

    #[test]
    fn the_window_wraps_around_the_sequence_space() {
        let mut entry = pod_entry();
        entry.record_syn(None);
        entry.record_ack(u32::MAX - 10, 100, false);
        assert!(entry.window_accepts(20));
        assert!(!entry.window_accepts(200));
    }

    #[test]
    fn a_syns_window_is_not_scaled_and_an_unseen_scale_is_the_largest() {
        let mut entry = pod_entry();
        entry.record_syn(Some(9));
        entry.record_ack(50, 1000, true);
        assert!(!entry.window_accepts(50 + 1001));
        let mut picked_up = pod_entry();
        picked_up.record_ack(50, 1000, false);
        assert!(picked_up.window_accepts(50 + (1000 << 14)));
    }

    #[test]
    fn a_zero_window_still_accepts_the_next_byte() {
        let mut entry = pod_entry();
        entry.record_syn(Some(0));
        entry.record_ack(7, 0, false);
        assert!(entry.window_accepts(7) && entry.window_accepts(8));
        assert!(!entry.window_accepts(9));
    }

    #[test]
    fn a_new_syn_forgets_the_old_connections_acknowledgment() {
        let mut entry = FlowEntry::new(Direction::Original, 0, 0, 0);
        entry.record_syn(Some(7));
        entry.record_ack(1000, 10, false);
        assert!(!entry.window_accepts(0x8000_0000));
        entry.record_syn(Some(7));
        assert!(entry.window_accepts(0x8000_0000));
    }
}
