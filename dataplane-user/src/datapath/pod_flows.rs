//! `--ct-max-per-pod`'s bookkeeping: the datapath counts each pod's new
//! flows up in the pinned `POD_FLOWS`; nothing there counts them down, so
//! each sweep writes the true counts back (a pod address without flows is
//! removed), and a pod under its share again may open flows.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use dataplane_common::config::NatConfig;

use super::{instance::Instance, pinned};

/// Writes `counts` (flows per pod address, as a sweep found them) into the
/// datapath's per-pod table; nothing to do without a per-pod limit.
pub fn store(instance: &Instance, config: &NatConfig, counts: &BTreeMap<u32, u32>) -> Result<()> {
    if config.ct_max_per_pod == 0 {
        return Ok(());
    }
    let mut table = pinned::pod_flows(instance)?;
    let gone: Vec<u32> = table
        .keys()
        .filter_map(Result::ok)
        .filter(|pod| !counts.contains_key(pod))
        .collect();
    for pod in gone {
        // Removed meanwhile by the LRU: fine.
        let _ = table.remove(&pod);
    }
    for (pod, flows) in counts {
        table
            .insert(pod, flows, 0)
            .context("writing a pod's flow count")?;
    }
    Ok(())
}
