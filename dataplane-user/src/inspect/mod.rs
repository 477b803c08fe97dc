//! Operators' view of a datapath, read from its pinned maps: works from any
//! process, with or without `bpfmasq run`; and of the kernel it runs on.

mod conntrack;
mod probe;
mod stats;
mod status;

pub use conntrack::{Flow, conntrack_count, conntrack_flush, conntrack_list, flows};
pub use probe::probe;
pub use stats::{counter_totals, stats};
pub use status::status;
