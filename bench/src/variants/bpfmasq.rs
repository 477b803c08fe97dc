//! bpfmasq attached to the lab's uplink, with the host forwarding or with
//! its own fast path, and N containers registered as synthetic flows in its
//! conntrack map (so the table is as full as N containers make it).

use anyhow::{Result, bail};

use super::NatVariant;
use crate::{
    bpf,
    lab::BenchLab,
    netfilter::{IptablesBackend, Trial},
};

pub struct Bpfmasq {
    pub fast_path: bool,
}

impl NatVariant for Bpfmasq {
    fn set_up(&self, lab: &BenchLab, n: u32) -> Result<Option<[u32; 3]>> {
        bpf::attach(&lab.host, self.fast_path)?;
        bpf::register_containers(&lab.host, n)?;
        let entries = bpf::count_entries(&lab.host)?;
        if entries != 2 * n as usize {
            bail!(
                "the conntrack map holds {entries} entries, expected {}",
                2 * n
            );
        }
        Ok(Some(bpf::program_ids(&lab.host)?))
    }

    fn tear_down(&self, lab: &BenchLab, _backend: IptablesBackend) -> Result<()> {
        bpf::detach(&lab.host)
    }

    fn trial(&self, lab: &BenchLab) -> Result<Trial> {
        bpf::trial(&lab.host)
    }

    fn trial_description(&self) -> &'static str {
        "add: open the pinned CONNTRACK map, insert one flow's two entries / remove: open, delete both"
    }
}
