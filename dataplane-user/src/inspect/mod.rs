//! Operators' view of a datapath, read from its pinned maps: works from any
//! process, with or without `bpfmasq run`; and of the kernel it runs on.

mod conntrack;
mod containers;
mod probe;
mod stats;
mod status;
pub mod trace;

pub use conntrack::{
    Flow, FlowFilter, Proto, conntrack_count, conntrack_flush, conntrack_list, flows,
};
pub use containers::{ContainerView, container_views, containers};
pub use probe::probe;
pub use stats::{counter_totals, stats};
pub use status::status;
pub use trace::{TraceFilter, TraceOptions, trace};

/// Which datapath an inspection reads, and how it prints.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// The uplink of the datapath (`None`: the only one in the namespace).
    pub uplink: Option<String>,
    /// JSON instead of a table.
    pub json: bool,
}
