//! Per-datagram state for IP fragments. Only a datagram's first fragment
//! carries the ports NAT keys flows on, so the later ones are matched to
//! their datagram by (source, destination, IP ID, protocol), as reassembly
//! does. The state lives in LRU maps: bounded, the oldest datagram forgotten
//! first, and an entry older than [`DATAGRAM_TIMEOUT_NS`] counts as absent.

/// How long a fragmented datagram's state is trusted. Fragments of one
/// datagram travel back to back; Linux gives reassembly 30 s, but state for
/// a datagram that never completes should not outlive a burst by much.
pub const DATAGRAM_TIMEOUT_NS: u64 = 3_000_000_000;
/// Capacity of `FRAG_DATAGRAMS`: incoming datagrams in flight at once.
pub const DATAGRAMS_ENTRIES: u32 = 8192;
/// Capacity of `FRAG_CLAIMS`: outgoing datagrams in flight at once. A map
/// of their own, so that fragments from outside can never evict them.
pub const CLAIMS_ENTRIES: u32 = 8192;
/// Incoming datagrams one source may have tracked per
/// [`DATAGRAM_TIMEOUT_NS`]: beyond it, its fragments are left to the host,
/// so one sender cannot fill the tables everyone else's datagrams need.
pub const MAX_DATAGRAMS_PER_SOURCE: u32 = 64;
/// Capacity of `FRAG_SOURCES`: sources with incoming fragments at once.
pub const SOURCES_ENTRIES: u32 = 4096;
/// Most fragments held for one datagram whose first fragment has not come
/// yet (a 64 KiB datagram at MTU 1500 has 44; 8000 bytes has 6).
pub const MAX_PARKED_PER_DATAGRAM: u32 = 16;
/// Capacity of `FRAG_PARKED`: fragments held at once (2 MiB).
pub const PARKED_ENTRIES: u32 = 1024;
/// Largest fragment (IPv4 header and payload) that can be held.
pub const PARKED_MAX_LEN: usize = 1500;
/// Room for a held fragment: a power of two above [`PARKED_MAX_LEN`], so
/// that a length masked with `PARKED_ROOM - 1` is provably inside it (the
/// verifier follows a mask where it loses track of compiled range checks).
pub const PARKED_ROOM: usize = 2048;

/// Identity of a datagram on the wire, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DatagramKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub ip_id: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl DatagramKey {
    pub const fn new(src_addr: u32, dst_addr: u32, ip_id: u16, proto: u8) -> Self {
        Self {
            src_addr,
            dst_addr,
            ip_id,
            proto,
            _pad: 0,
        }
    }
}

/// What is known of a fragmented datagram.
///
/// Outgoing (keyed by the datagram as it leaves, from the NAT address): the
/// pod that owns this IP ID towards this destination, so that two pods'
/// datagrams never merge at the peer. Incoming (keyed by the datagram as it
/// arrives at the NAT address): where its fragments go, once the first
/// fragment has said so, and how many fragments wait for that.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramEntry {
    pub first_seen_ns: u64,
    /// Outgoing: the owning pod. Incoming: the destination the fragments are
    /// rewritten to (a pod, or the NAT address itself when the datagram is
    /// for the host); 0 while the first fragment is still missing.
    pub addr: u32,
    /// Incoming: fragments held in `FRAG_PARKED`, slots `0..parked`.
    pub parked: u32,
}

impl DatagramEntry {
    pub const fn new(addr: u32, now_ns: u64) -> Self {
        Self {
            first_seen_ns: now_ns,
            addr,
            parked: 0,
        }
    }

    pub const fn is_fresh(&self, now_ns: u64) -> bool {
        now_ns.wrapping_sub(self.first_seen_ns) < DATAGRAM_TIMEOUT_NS
    }
}

/// How many incoming datagrams one source started in its current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceBudget {
    pub window_start_ns: u64,
    pub datagrams: u32,
    pub _pad: u32,
}

impl SourceBudget {
    /// A budget whose window starts now with one datagram counted.
    pub const fn first(now_ns: u64) -> Self {
        Self {
            window_start_ns: now_ns,
            datagrams: 1,
            _pad: 0,
        }
    }

    /// Counts one more datagram of this source; false if it has had its
    /// [`MAX_DATAGRAMS_PER_SOURCE`] in this window.
    #[inline(always)]
    pub fn admit(&mut self, now_ns: u64) -> bool {
        if now_ns.wrapping_sub(self.window_start_ns) >= DATAGRAM_TIMEOUT_NS {
            *self = Self::first(now_ns);
            return true;
        }
        if self.datagrams >= MAX_DATAGRAMS_PER_SOURCE {
            return false;
        }
        self.datagrams += 1;
        true
    }
}

/// A held fragment's slot: its datagram and its arrival rank.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ParkedKey {
    pub datagram: DatagramKey,
    pub slot: u32,
}

/// A held fragment: its IPv4 packet, header included, as it arrived.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ParkedFragment {
    pub len: u32,
    pub bytes: [u8; PARKED_ROOM],
}

/// `len` (1..=[`PARKED_ROOM`]) in a form the verifier can bound: a helper
/// given a byte count needs it provably in 1..=room.
#[inline(always)]
pub const fn verifier_len(len: u32) -> u32 {
    ((len.wrapping_sub(1)) & (PARKED_ROOM as u32 - 1)) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_ends_after_the_timeout() {
        let entry = DatagramEntry::new(1, 1_000);
        assert!(entry.is_fresh(1_000));
        assert!(entry.is_fresh(1_000 + DATAGRAM_TIMEOUT_NS - 1));
        assert!(!entry.is_fresh(1_000 + DATAGRAM_TIMEOUT_NS));
    }

    #[test]
    fn a_source_gets_its_share_of_datagrams_per_window() {
        let mut budget = SourceBudget::first(0);
        for _ in 1..MAX_DATAGRAMS_PER_SOURCE {
            assert!(budget.admit(10));
        }
        assert!(!budget.admit(10));
        assert!(!budget.admit(DATAGRAM_TIMEOUT_NS - 1));
        assert!(budget.admit(DATAGRAM_TIMEOUT_NS));
        assert_eq!(budget.datagrams, 1);
    }

    #[test]
    fn a_held_fragment_has_room_for_any_masked_length() {
        assert!(PARKED_ROOM.is_power_of_two() && PARKED_ROOM >= PARKED_MAX_LEN);
        assert_eq!(super::verifier_len(1), 1);
        assert_eq!(
            super::verifier_len(PARKED_MAX_LEN as u32),
            PARKED_MAX_LEN as u32
        );
    }
}
