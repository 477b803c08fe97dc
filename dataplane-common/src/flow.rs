//! Conntrack map entries. A flow owns two entries: the *original* one, keyed
//! by the pod's packet as it leaves, and the *reply* one, keyed by the
//! packet the outside peer sends back to the NAT address. Each entry holds
//! what to rewrite for its own direction, so both directions take one lookup.

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A packet's 5-tuple, as seen on the wire (network byte order). For ICMP
/// echo the identifier sits in `src_port` of a request and in `dst_port` of a
/// reply, so a reply key is the request key reversed, exactly as for ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    pub const fn new(
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
        proto: u8,
    ) -> Self {
        Self {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            proto,
            _pad: [0; 3],
        }
    }

    /// The key of the packet that answers this one once its source became
    /// `nat_addr:nat_port`.
    #[inline(always)]
    pub const fn reply_after_snat(&self, nat_addr: u32, nat_port: u16) -> Self {
        Self::new(self.dst_addr, nat_addr, self.dst_port, nat_port, self.proto)
    }

    /// The original key of the flow whose reply entry is `self` (keyed by the
    /// reply packet) and which translates back to `pod_addr:pod_port`.
    #[inline(always)]
    pub const fn original_before_snat(&self, pod_addr: u32, pod_port: u16) -> Self {
        Self::new(pod_addr, self.src_addr, pod_port, self.src_port, self.proto)
    }
}

/// Which half of a flow an entry is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Pod to outside: rewrite the source.
    Original = 0,
    /// Outside to pod: rewrite the destination.
    Reply = 1,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The address that replaces the source (original) or destination (reply).
    pub rewrite_addr: u32,
    /// The port that replaces the source (original) or destination (reply).
    pub rewrite_port: u16,
    /// [`Direction`] as u8.
    pub direction: u8,
    /// Protocol state (TCP flags seen); maintained by the datapath.
    pub state: u8,
    /// bpf_ktime_get_ns() when the flow was created; in a reply entry,
    /// once answered, when the first answer came (so the garbage collector
    /// can tell a UDP stream from a lone request and its answer).
    pub created_ns: u64,
    /// bpf_ktime_get_ns() of the last packet in this direction.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// TCP, original entries: the pod's last acknowledgment number (host
    /// order) and receive window in bytes, for [`crate::tcp_window`].
    pub tcp_ack: u32,
    pub tcp_window: u32,
    /// TCP, original entries: the pod's window scale, once its SYN was seen.
    pub tcp_wscale: u8,
    /// [`crate::tcp_window`]'s `TRACK_*` bits.
    pub tcp_track: u8,
    pub _pad: [u8; 6],
}

impl FlowEntry {
    pub const fn new(
        direction: Direction,
        rewrite_addr: u32,
        rewrite_port: u16,
        now_ns: u64,
    ) -> Self {
        Self {
            rewrite_addr,
            rewrite_port,
            direction: direction as u8,
            state: 0,
            created_ns: now_ns,
            last_seen_ns: now_ns,
            packets: 0,
            bytes: 0,
            tcp_ack: 0,
            tcp_window: 0,
            tcp_wscale: 0,
            tcp_track: 0,
            _pad: [0; 6],
        }
    }

    pub fn is_reply(&self) -> bool {
        self.direction == Direction::Reply as u8
    }
}

/// Both entries of a masqueraded flow: `original` (the pod's packet as it
/// leaves) translated to `nat_addr:nat_port`, each half with its `state`
/// bits, created at `now_ns`. Returned reply half first, the order they
/// must be inserted in (the reply half is the port claim, as in the
/// datapath). The one place user space builds flows (takeover's import,
/// the benchmark's synthetic flows, tests), so a change to [`FlowEntry`]
/// reaches them all.
pub const fn nat_flow_pair(
    original: FlowKey,
    nat_addr: u32,
    nat_port: u16,
    original_state: u8,
    reply_state: u8,
    now_ns: u64,
) -> [(FlowKey, FlowEntry); 2] {
    let mut out = FlowEntry::new(Direction::Original, nat_addr, nat_port, now_ns);
    out.state = original_state;
    let mut back = FlowEntry::new(
        Direction::Reply,
        original.src_addr,
        original.src_port,
        now_ns,
    );
    back.state = reply_state;
    [
        (original.reply_after_snat(nat_addr, nat_port), back),
        (original, out),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_key_round_trips_to_original() {
        let pod = u32::from_ne_bytes([10, 85, 0, 2]);
        let server = u32::from_ne_bytes([192, 168, 61, 12]);
        let nat = u32::from_ne_bytes([192, 168, 61, 11]);
        let original = FlowKey::new(pod, server, 40000u16.to_be(), 80u16.to_be(), IPPROTO_TCP);
        let reply = original.reply_after_snat(nat, 41000u16.to_be());
        assert_eq!(
            reply,
            FlowKey::new(server, nat, 80u16.to_be(), 41000u16.to_be(), IPPROTO_TCP)
        );
        assert_eq!(reply.original_before_snat(pod, 40000u16.to_be()), original);
    }

    #[test]
    fn a_nat_flow_pair_translates_both_ways() {
        let pod = u32::from_ne_bytes([10, 85, 0, 3]);
        let server = u32::from_ne_bytes([192, 168, 61, 12]);
        let nat = u32::from_ne_bytes([192, 168, 61, 11]);
        let key = FlowKey::new(pod, server, 40000u16.to_be(), 80u16.to_be(), IPPROTO_TCP);
        let [(reply_key, reply), (original_key, original)] =
            nat_flow_pair(key, nat, 41000u16.to_be(), 3, 5, 7);
        assert_eq!(original_key, key);
        assert_eq!(reply_key, key.reply_after_snat(nat, 41000u16.to_be()));
        assert!(!original.is_reply() && reply.is_reply());
        assert_eq!(
            (original.rewrite_addr, original.rewrite_port),
            (nat, 41000u16.to_be())
        );
        assert_eq!(
            (reply.rewrite_addr, reply.rewrite_port),
            (pod, 40000u16.to_be())
        );
        assert_eq!((original.state, reply.state), (3, 5));
        assert_eq!((original.created_ns, reply.last_seen_ns), (7, 7));
    }

    #[test]
    fn layout_is_stable() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 16);
        assert_eq!(core::mem::size_of::<FlowEntry>(), 56);
    }
}
