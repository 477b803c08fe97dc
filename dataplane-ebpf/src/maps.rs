//! The maps, pinned by name: the loader points them at the instance's folder
//! under /sys/fs/bpf/bpfmasq/ so state outlives the loading process.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use dataplane_common::{
    config::NatConfig,
    counters::Counter,
    flow::{FlowEntry, FlowKey},
    fragments::{
        DATAGRAMS_ENTRIES, DatagramEntry, DatagramKey, PARKED_ENTRIES, ParkedFragment, ParkedKey,
    },
    maps::{CONNTRACK_DEFAULT_ENTRIES, NO_MASQ_ENTRIES},
    pods::{PODS_ENTRIES, PodRecord},
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

/// The containers the CNI plugin attached, by pod IPv4 address (network
/// order); written by `bpfmasq-cni`, read by `bpfmasq containers`. Not
/// preallocated: most hosts run far fewer pods than a /16 holds.
#[map]
pub static PODS: HashMap<u32, PodRecord> = HashMap::pinned(PODS_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

/// Fragmented datagrams in flight. LRU and not pinned: bounded, self-cleaning
/// state that is worthless after a few seconds anyway.
#[map]
pub static FRAG_DATAGRAMS: LruHashMap<DatagramKey, DatagramEntry> =
    LruHashMap::with_max_entries(DATAGRAMS_ENTRIES, 0);

/// Incoming fragments that arrived before their datagram's first fragment.
#[map]
pub static FRAG_PARKED: LruHashMap<ParkedKey, ParkedFragment> =
    LruHashMap::with_max_entries(PARKED_ENTRIES, 0);

/// Per-CPU room to copy a fragment into before it is parked: too big for
/// the 512-byte BPF stack.
#[map]
pub static FRAG_SCRATCH: PerCpuArray<ParkedFragment> = PerCpuArray::with_max_entries(1, 0);
