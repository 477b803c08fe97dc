//! STUB: replaced by the lab implementation.
use std::process::ExitCode;

use anyhow::Result;

pub async fn up(_name: &str, _containers: u16) -> Result<()> {
    todo!()
}
pub async fn down(_name: &str) -> Result<()> {
    todo!()
}
pub async fn status(_name: &str, _json: bool) -> Result<()> {
    todo!()
}
pub fn exec(_name: &str, _node: &str, _command: &[String]) -> Result<ExitCode> {
    todo!()
}
