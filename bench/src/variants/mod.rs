//! The NAT variants the bench compares, one file each behind [`NatVariant`]:
//! what setting one up for N containers, taking it down and one container's
//! add/remove (the control-plane trial) mean for it. The workloads and the
//! report know only this trait, never a variant's own tools.

mod bpfmasq;
mod iptables;
mod nftables;
mod routed;

use anyhow::Result;

use crate::{
    lab::BenchLab,
    netfilter::{IptablesBackend, Trial},
    plan::Variant,
};

/// One way of getting the containers' traffic past the lab's host.
pub trait NatVariant: Sync {
    /// Sets the variant up for `n` containers in the lab's host; returns
    /// the ids of its eBPF programs (uplink egress, ingress, bridge ingress)
    /// if it has any, for the eBPF cost workload.
    fn set_up(&self, lab: &BenchLab, n: u32) -> Result<Option<[u32; 3]>>;

    /// Removes what [`NatVariant::set_up`] made.
    fn tear_down(&self, lab: &BenchLab, backend: IptablesBackend) -> Result<()>;

    /// Adds and removes one container's NAT, timed.
    fn trial(&self, lab: &BenchLab) -> Result<Trial>;

    /// What [`NatVariant::trial`] does, for the report.
    fn trial_description(&self) -> &'static str;
}

/// The implementation of `variant`.
pub fn of(variant: Variant) -> &'static dyn NatVariant {
    match variant {
        Variant::Routed => &routed::Routed,
        Variant::Iptables => &iptables::Iptables,
        Variant::Nftables => &nftables::Nftables { flowtable: false },
        Variant::NftablesFlowtable => &nftables::Nftables { flowtable: true },
        Variant::Bpfmasq => &bpfmasq::Bpfmasq { fast_path: false },
        Variant::BpfmasqFast => &bpfmasq::Bpfmasq { fast_path: true },
    }
}
