//! STUB (being written): attach/detach.
pub mod options;
use anyhow::Result;

use crate::cli::AttachArgs;

pub async fn attach(_netns: Option<&str>, _args: &AttachArgs) -> Result<()> {
    todo!()
}
pub async fn detach(_netns: Option<&str>, _uplink: Option<&str>) -> Result<()> {
    todo!()
}
