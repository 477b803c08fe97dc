//! The maps, pinned by name: the loader points them at the instance's folder
//! under /sys/fs/bpf/bpfmasq/ so state outlives the loading process.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use dataplane_common::{
    config::{DatapathRecord, NatConfig},
    counters::Counter,
    flow::{FlowEntry, FlowKey},
    fragments::{
        CLAIMS_ENTRIES, DATAGRAMS_ENTRIES, DatagramEntry, DatagramKey, PARKED_ENTRIES,
        ParkedFragment, ParkedKey, SOURCES_ENTRIES, SourceBudget,
    },
    maps::{CONNTRACK_DEFAULT_ENTRIES, NO_MASQ_ENTRIES, POD_FLOWS_ENTRIES, RECENT_FLOWS_ENTRIES},
    pods::{PODS_ENTRIES, PodRecord},
};

/// What the programs read on every packet.
#[map]
pub static CONFIG: Array<NatConfig> = Array::pinned(1, 0);

/// The loader's record (layout version, attachment, table size, GC
/// timeouts): pinned beside the state it describes; the programs never
/// read it, so it stays out of every packet's lookup.
#[map]
pub static RECORD: Array<DatapathRecord> = Array::pinned(1, 0);

/// A plain hash (not LRU): the kernel never evicts a live half of a flow to
/// make room; a full table drops the *new* flow, like nf_conntrack.
#[map]
pub static CONNTRACK: HashMap<FlowKey, FlowEntry> = HashMap::pinned(CONNTRACK_DEFAULT_ENTRIES, 0);

/// Destinations never masqueraded: pod CIDR, multicast, broadcast, --no-masq.
#[map]
pub static NO_MASQ: LpmTrie<u32, u8> = LpmTrie::pinned(NO_MASQ_ENTRIES, 0);

/// Flows per pod address (`--ct-max-per-pod`). LRU: a pod address gone
/// for long is forgotten first.
#[map]
pub static POD_FLOWS: LruHashMap<u32, u32> = LruHashMap::pinned(POD_FLOWS_ENTRIES, 0);

/// Keys of the most recently created flows, a ring: where a full table
/// looks for an unreplied flow to drop. Not pinned: a hint.
#[map]
pub static RECENT_FLOWS: Array<FlowKey> = Array::with_max_entries(RECENT_FLOWS_ENTRIES, 0);

/// How many flows were ever written into [`RECENT_FLOWS`]: its next slot,
/// and how much of it is filled.
#[map]
pub static RECENT_CURSOR: Array<u32> = Array::with_max_entries(1, 0);

/// The containers the CNI plugin (or a lab's attach) recorded, by pod IPv4
/// address (network order): the source check reads each port's addresses
/// here, `bpfmasq containers` lists them. Not preallocated: most hosts run
/// far fewer pods than a /16 holds.
#[map]
pub static PODS: HashMap<u32, PodRecord> = HashMap::pinned(PODS_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

/// Incoming fragmented datagrams in flight. LRU and not pinned: bounded,
/// self-cleaning state that is worthless after a few seconds anyway.
#[map]
pub static FRAG_DATAGRAMS: LruHashMap<DatagramKey, DatagramEntry> =
    LruHashMap::with_max_entries(DATAGRAMS_ENTRIES, 0);

/// Outgoing datagrams' IP ID claims: apart from the incoming datagrams, so
/// that what outside senders send can never evict them.
#[map]
pub static FRAG_CLAIMS: LruHashMap<DatagramKey, DatagramEntry> =
    LruHashMap::with_max_entries(CLAIMS_ENTRIES, 0);

/// Incoming datagrams tracked per source and window, to bound each source.
#[map]
pub static FRAG_SOURCES: LruHashMap<u32, SourceBudget> =
    LruHashMap::with_max_entries(SOURCES_ENTRIES, 0);

/// Incoming fragments that arrived before their datagram's first fragment.
#[map]
pub static FRAG_PARKED: LruHashMap<ParkedKey, ParkedFragment> =
    LruHashMap::with_max_entries(PARKED_ENTRIES, 0);

/// Per-CPU room to copy a fragment into before it is parked: too big for
/// the 512-byte BPF stack.
#[map]
pub static FRAG_SCRATCH: PerCpuArray<ParkedFragment> = PerCpuArray::with_max_entries(1, 0);
