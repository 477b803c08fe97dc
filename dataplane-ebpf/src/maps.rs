//! The maps, pinned by name: the loader points them at the instance's folder
//! under /sys/fs/bpf/bpfmasq/ so state outlives the loading process.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use dataplane_common::{
    config::NatConfig,
    counters::Counter,
    flow::{FlowEntry, FlowKey},
    maps::{CONNTRACK_DEFAULT_ENTRIES, NO_MASQ_ENTRIES},
};

#[map]
pub static CONFIG: Array<NatConfig> = Array::pinned(1, 0);

/// A plain hash (not LRU): the kernel never evicts a live half of a flow to
/// make room; a full table drops the *new* flow, like nf_conntrack.
#[map]
pub static CONNTRACK: HashMap<FlowKey, FlowEntry> = HashMap::pinned(CONNTRACK_DEFAULT_ENTRIES, 0);

/// Destinations never masqueraded: pod CIDR, multicast, broadcast, --no-masq.
#[map]
pub static NO_MASQ: LpmTrie<u32, u8> = LpmTrie::pinned(NO_MASQ_ENTRIES, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);
