//! Names of the maps and programs in the eBPF object. They are also the file
//! names of the pins under `/sys/fs/bpf/bpfmasq/<netns>/<uplink>/`.

/// `Array<NatConfig>` with one slot: what the datapath translates and to what.
pub const CONFIG: &str = "CONFIG";
/// `Array<DatapathRecord>`, one slot: the loader's record, never read by the programs.
pub const RECORD: &str = "RECORD";
/// `HashMap<FlowKey, FlowEntry>`: the conntrack table, one entry per direction.
pub const CONNTRACK: &str = "CONNTRACK";
/// `LpmTrie<u32, u8>`: destinations that are never masqueraded.
pub const NO_MASQ: &str = "NO_MASQ";
/// `LruHashMap<DatagramKey, DatagramEntry>`: fragmented datagrams in flight.
pub const FRAG_DATAGRAMS: &str = "FRAG_DATAGRAMS";
/// `LruHashMap<ParkedKey, ParkedFragment>`: fragments that arrived before
/// their datagram's first fragment.
pub const FRAG_PARKED: &str = "FRAG_PARKED";
/// `LruHashMap<u32, u32>`: flows per pod address, for `--ct-max-per-pod`;
/// counted up by the datapath, recounted by each sweep of `bpfmasq run`.
pub const POD_FLOWS: &str = "POD_FLOWS";
/// `Array<FlowKey>`: recently created flows, where a full table looks for
/// an unreplied one to drop early.
pub const RECENT_FLOWS: &str = "RECENT_FLOWS";
/// `PerCpuArray<u64>`, indexed by [`crate::counters::Counter`].
pub const COUNTERS: &str = "COUNTERS";
/// `HashMap<u32, PodRecord>`: the containers the CNI plugin attached, by
/// pod IPv4 address (see [`crate::pods`]).
pub const PODS: &str = "PODS";

/// `Array<u32>` with one slot: bit N set while a `bpfmasq trace` listens on
/// ring buffer N (see [`crate::trace`]).
pub const TRACE_ACTIVE: &str = "TRACE_ACTIVE";
/// `PerCpuArray<u64>`, one slot per trace ring buffer: events that did not
/// fit in it.
pub const TRACE_LOST: &str = "TRACE_LOST";
/// `RingBuf`s of [`crate::trace::TraceEvent`], one per trace slot.
pub const TRACE_EVENTS_0: &str = "TRACE_EVENTS_0";
pub const TRACE_EVENTS_1: &str = "TRACE_EVENTS_1";
pub const TRACE_EVENTS_2: &str = "TRACE_EVENTS_2";
pub const TRACE_EVENTS_3: &str = "TRACE_EVENTS_3";

/// TC program on the uplink's egress: SNAT.
pub const PROG_UPLINK_EGRESS: &str = "uplink_egress";
/// TC program on the uplink's ingress: reverse SNAT (and the fast path in).
pub const PROG_UPLINK_INGRESS: &str = "uplink_ingress";
/// TC program on the bridge's ingress: the fast path out.
pub const PROG_BRIDGE_INGRESS: &str = "bridge_ingress";
/// TC program on each recorded pod's bridge port (host-side veth) ingress:
/// the source check.
pub const PROG_POD_PORT_INGRESS: &str = "pod_port_ingress";

/// Capacity the eBPF object declares for `CONNTRACK`; the loader resizes it
/// from `--ct-max` (two entries per flow).
pub const CONNTRACK_DEFAULT_ENTRIES: u32 = 2 * 262_144;
/// Capacity of `POD_FLOWS`: every address of a /16 pod network.
pub const POD_FLOWS_ENTRIES: u32 = 65_536;
/// Slots of `RECENT_FLOWS`.
pub const RECENT_FLOWS_ENTRIES: u32 = 4096;
/// Capacity of `NO_MASQ`.
pub const NO_MASQ_ENTRIES: u32 = 256;
