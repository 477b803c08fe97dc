//! `bpfmasq run`, the foreground daemon, and `bpfmasq gc` (being written).
use anyhow::{Result, bail};

use crate::{
    cli::{InstanceArgs, RunArgs},
    datapath::{
        gc,
        instance::{Instance, netns_label},
        pinned,
    },
    privileges::require_root,
};

pub async fn run(_netns: Option<&str>, _args: &RunArgs) -> Result<()> {
    bail!("bpfmasq run is not implemented yet")
}

/// One sweep now, reported.
pub fn gc_once(netns: Option<&str>, args: &InstanceArgs) -> Result<()> {
    require_root("bpfmasq gc")?;
    let instance = Instance::find(&netns_label(netns)?, args.uplink.as_deref())?;
    let config = pinned::read_config(&instance)?;
    let report = gc::sweep(&mut pinned::conntrack(&instance)?, &config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "swept {} entries ({} flows) in {:.3}s: {} expired, {} rebound to a new NAT address, {} orphan halves removed",
            report.entries,
            report.flows,
            report.duration.as_secs_f64(),
            report.expired,
            report.rebound,
            report.orphans
        );
    }
    Ok(())
}
