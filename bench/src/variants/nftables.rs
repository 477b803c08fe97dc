//! The newer bridge plugin's nftables masquerade (one rule per container),
//! optionally with a flowtable offloading established flows.

use anyhow::Result;

use super::NatVariant;
use crate::{
    lab::BenchLab,
    netfilter::{self, IptablesBackend, Trial},
};

pub struct Nftables {
    /// Add a flowtable (needs CONFIG_NF_FLOW_TABLE in the kernel).
    pub flowtable: bool,
}

impl NatVariant for Nftables {
    fn set_up(&self, lab: &BenchLab, n: u32) -> Result<Option<[u32; 3]>> {
        netfilter::setup_nftables(&lab.host, n, self.flowtable, lab.scratch.path())?;
        Ok(None)
    }

    fn tear_down(&self, lab: &BenchLab, backend: IptablesBackend) -> Result<()> {
        netfilter::flush(&lab.host, backend)
    }

    fn trial(&self, lab: &BenchLab) -> Result<Trial> {
        netfilter::nft_trial(&lab.host)
    }

    fn trial_description(&self) -> &'static str {
        "add: nft add rule / remove: nft -a list chain (find the handle by comment); nft delete rule handle H"
    }
}
