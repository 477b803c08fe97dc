//! The datapath's configuration: what the programs read on every packet
//! (`CONFIG`), and what the loader records beside it (`RECORD`).

use crate::conntrack::Timeouts;

/// How the programs are attached; recorded so `detach` can undo exactly it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Nothing attached (the slot was never written).
    None = 0,
    /// tcx links (kernel >= 6.6), pinned.
    Tcx = 1,
    /// A clsact qdisc with cls_bpf filters (older kernels).
    Clsact = 2,
}

impl AttachMode {
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::Tcx,
            2 => Self::Clsact,
            _ => Self::None,
        }
    }
}

/// Bit in [`NatConfig::flags`]: the fast path is on. The bridge's program
/// forwards pod packets straight to the uplink, the uplink's ingress program
/// delivers translated replies straight to the bridge, both past the host's
/// IP stack. Off, both leave every packet to the host stack.
pub const FLAG_FAST_PATH: u32 = 1 << 1;
/// Bit in [`DatapathRecord::flags`]: the loader created the uplink's clsact
/// qdisc (and so removes it on detach).
pub const FLAG_CREATED_CLSACT: u32 = 1 << 0;
/// Bit in [`DatapathRecord::flags`]: the loader created the bridge's clsact qdisc.
pub const FLAG_CREATED_BRIDGE_CLSACT: u32 = 1 << 2;

/// Version of the pinned state's layout: the key and value types of every
/// pinned map and what their fields mean. A datapath pinned by a bpfmasq with
/// another version is refused, never misread (`run` adopting it, `stats`
/// reading it). Bump it with any change to a pinned type; the test below
/// fails until you do.
pub const LAYOUT_VERSION: u32 = 3;

/// What the programs read on every packet (the `CONFIG` map): nothing else,
/// so the one lookup each packet makes stays small.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// Pod network address and mask, network byte order.
    pub pod_net: u32,
    pub pod_mask: u32,
    /// The address masqueraded flows leave with (the uplink's primary IPv4).
    pub nat_addr: u32,
    /// Inclusive range for translated ports and ICMP identifiers, host order.
    pub port_min: u16,
    pub port_max: u16,
    pub uplink_ifindex: u32,
    pub bridge_ifindex: u32,
    /// [`FLAG_FAST_PATH`].
    pub flags: u32,
    /// Maximum number of flows one pod address may hold (`--ct-max-per-pod`);
    /// 0: no limit but the table's.
    pub ct_max_per_pod: u32,
}

impl NatConfig {
    /// Whether `addr` (network byte order) is inside the pod network.
    #[inline(always)]
    pub fn is_pod_addr(&self, addr: u32) -> bool {
        self.pod_mask != 0 && addr & self.pod_mask == self.pod_net
    }

    #[inline(always)]
    pub fn fast_path(&self) -> bool {
        self.flags & FLAG_FAST_PATH != 0
    }
}

/// What the loader records about a datapath (the `RECORD` map, pinned with
/// the others, never read by the programs): the layout version, how it is
/// attached (so `detach` undoes exactly that), the table's size and the
/// garbage collector's timeouts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathRecord {
    /// [`LAYOUT_VERSION`] of the bpfmasq that attached. First in every
    /// version, so any version can read it.
    pub layout_version: u32,
    /// [`AttachMode`] as u8.
    pub attach_mode: u8,
    pub _pad: [u8; 3],
    /// [`FLAG_CREATED_CLSACT`], [`FLAG_CREATED_BRIDGE_CLSACT`].
    pub flags: u32,
    /// clsact only: the filters' priorities and handles, to remove exactly them.
    pub tc_egress_priority: u16,
    pub tc_ingress_priority: u16,
    pub tc_egress_handle: u32,
    pub tc_ingress_handle: u32,
    /// clsact only: the bridge's ingress filter (the fast path's program).
    pub tc_bridge_priority: u16,
    pub _pad2: [u8; 2],
    pub tc_bridge_handle: u32,
    /// Flow expiry, applied by the garbage collector of `bpfmasq run`.
    pub timeouts: Timeouts,
    /// Maximum number of flows (`--ct-max`); the map holds two entries each.
    pub ct_max: u32,
}

impl DatapathRecord {
    pub fn attach_mode(&self) -> AttachMode {
        AttachMode::from_raw(self.attach_mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn pod_membership_uses_wire_order() {
        let cfg = NatConfig {
            pod_net: be([10, 85, 0, 0]),
            pod_mask: be([255, 255, 0, 0]),
            ..Default::default()
        };
        assert!(cfg.is_pod_addr(be([10, 85, 0, 2])));
        assert!(cfg.is_pod_addr(be([10, 85, 255, 255])));
        assert!(!cfg.is_pod_addr(be([10, 86, 0, 2])));
        assert!(!cfg.is_pod_addr(be([192, 168, 61, 11])));
    }

    /// A pinned type changed size without [`LAYOUT_VERSION`] moving: bump
    /// the version, then update the sizes here.
    #[test]
    fn layout_version_moves_with_the_pinned_sizes() {
        use crate::{
            flow::{FlowEntry, FlowKey},
            pods::PodRecord,
            trace::TraceEvent,
        };
        use core::mem::size_of;
        let sizes = (
            size_of::<NatConfig>(),
            size_of::<DatapathRecord>(),
            size_of::<FlowKey>(),
            size_of::<FlowEntry>(),
            size_of::<PodRecord>(),
            // What the trace ring buffers carry.
            size_of::<TraceEvent>(),
        );
        assert_eq!((LAYOUT_VERSION, sizes), (3, (32, 80, 16, 56, 100, 56)));
    }

    #[test]
    fn unconfigured_has_no_pods() {
        assert!(!NatConfig::default().is_pod_addr(0));
    }
}
