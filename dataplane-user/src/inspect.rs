//! STUB (being written): conntrack list, stats.
use anyhow::Result;

use crate::cli::InstanceArgs;

pub fn conntrack_list(_netns: Option<&str>, _args: &InstanceArgs) -> Result<()> {
    todo!()
}
pub fn stats(_netns: Option<&str>, _args: &InstanceArgs) -> Result<()> {
    todo!()
}
