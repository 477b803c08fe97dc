//! No NAT at all: the outside peer gets a route back to the pod network,
//! the ceiling every NAT variant is measured against.

use anyhow::{Result, bail};

use super::NatVariant;
use crate::{
    lab::BenchLab,
    netfilter::{IptablesBackend, Trial},
};

pub struct Routed;

impl NatVariant for Routed {
    fn set_up(&self, lab: &BenchLab, _n: u32) -> Result<Option<[u32; 3]>> {
        lab.add_return_route()?;
        Ok(None)
    }

    fn tear_down(&self, lab: &BenchLab, _backend: IptablesBackend) -> Result<()> {
        lab.delete_return_route()
    }

    fn trial(&self, _lab: &BenchLab) -> Result<Trial> {
        bail!("routing has no per-container NAT")
    }

    fn trial_description(&self) -> &'static str {
        "nothing"
    }
}
