//! The CNI bridge plugin's iptables rules: one `CNI-*` chain per container,
//! reached from POSTROUTING, ending in MASQUERADE.

use anyhow::Result;

use super::NatVariant;
use crate::{
    lab::BenchLab,
    netfilter::{self, IptablesBackend, Trial},
};

pub struct Iptables;

impl NatVariant for Iptables {
    fn set_up(&self, lab: &BenchLab, n: u32) -> Result<Option<[u32; 3]>> {
        netfilter::setup_iptables(&lab.host, n, lab.scratch.path())?;
        Ok(None)
    }

    fn tear_down(&self, lab: &BenchLab, backend: IptablesBackend) -> Result<()> {
        netfilter::flush(&lab.host, backend)
    }

    fn trial(&self, lab: &BenchLab) -> Result<Trial> {
        netfilter::iptables_trial(&lab.host)
    }

    fn trial_description(&self) -> &'static str {
        "add: iptables -t nat -N CNI-x; -A CNI-x (ACCEPT); -A CNI-x (MASQUERADE); -A POSTROUTING -j CNI-x \
         / remove: -D POSTROUTING; -F CNI-x; -X CNI-x (one iptables invocation each)"
    }
}
