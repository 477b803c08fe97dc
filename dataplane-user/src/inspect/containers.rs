//! `bpfmasq containers`: the containers a runtime attached through the CNI
//! plugin (the pinned `PODS` records) with their flows and bytes.

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::datapath::{
    flows::snapshot,
    instance::{Instance, netns_label},
    pinned,
    pods::{self, Container},
};

use super::Query;

/// One container as `containers` shows it.
#[derive(Debug, Serialize)]
pub struct ContainerView {
    #[serde(flatten)]
    pub container: Container,
    /// Flows whose original source is one of the container's addresses.
    pub flows: usize,
    /// Bytes of those flows, both directions.
    pub bytes: u64,
}

/// Every recorded container of the instance with its flows.
pub fn container_views(instance: &Instance) -> Result<Vec<ContainerView>> {
    let map = pods::open(instance).context(
        "this datapath keeps no container records (attach it through bpfmasq-cni, or re-attach with this version)",
    )?;
    let containers = pods::containers(&map)?;
    let snapshot = snapshot(&pinned::conntrack(instance)?)?;
    Ok(containers
        .into_iter()
        .map(|container| {
            let flows = pods::flows_of(&snapshot.flows, &container.raw_ips());
            let bytes = flows
                .iter()
                .map(|f| f.original.bytes + f.reply.map_or(0, |r| r.bytes))
                .sum();
            ContainerView {
                flows: flows.len(),
                bytes,
                container,
            }
        })
        .collect())
}

pub fn containers(netns: Option<&str>, query: &Query) -> Result<()> {
    let instance = Instance::find(&netns_label(netns)?, query.uplink.as_deref())?;
    let views = container_views(&instance)?;
    if query.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<8} {:<32} {:<16} {:>6} {:>12}",
        "CONTAINER", "IFNAME", "IPS", "HOST VETH", "FLOWS", "BYTES"
    );
    for v in &views {
        let c = &v.container;
        let ips: Vec<String> = c.ips.iter().map(ToString::to_string).collect();
        println!(
            "{:<12} {:<8} {:<32} {:<16} {:>6} {:>12}",
            c.container_id.get(..12).unwrap_or(&c.container_id),
            c.ifname,
            ips.join(","),
            c.host_veth,
            v.flows,
            v.bytes
        );
    }
    println!("{} container(s)", views.len());
    Ok(())
}
