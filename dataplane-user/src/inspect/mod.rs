//! Operators' view of a datapath, read from its pinned maps: works from any
//! process, with or without `bpfmasq run`.

mod conntrack;
mod stats;
mod status;

pub use conntrack::{Flow, conntrack_count, conntrack_flush, conntrack_list, flows};
pub use stats::{counter_totals, stats};
pub use status::status;
