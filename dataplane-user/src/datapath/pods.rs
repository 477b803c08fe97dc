//! The containers a runtime attached through the CNI plugin, as the pinned
//! `PODS` map records them (one [`PodRecord`] per pod IPv4 address), and
//! their flows: the conntrack entries whose original source is one of a
//! container's addresses. Shared by `bpfmasq-cni` and the inspection verbs.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{HashMap, IterableMap as _, MapData};
use dataplane_common::pods::{PodRecord, field_str, to_field};
use serde::Serialize;

use super::{
    batch,
    flows::{FlowView, snapshot},
    gc,
    instance::Instance,
    options::KnownContainer,
    pinned,
};

pub type PodsMap = HashMap<MapData, u32, PodRecord>;

/// One container's attachment: every address recorded under its id and
/// interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Container {
    pub container_id: String,
    pub ifname: String,
    pub host_veth: String,
    pub host_ifindex: u32,
    pub ips: Vec<Ipv4Addr>,
}

impl Container {
    pub fn is(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }

    /// The addresses as the conntrack keys hold them.
    pub fn raw_ips(&self) -> Vec<u32> {
        self.ips.iter().map(|ip| raw(*ip)).collect()
    }
}

/// An address as the maps hold it (network order in a native integer).
pub fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Every recorded container, grouped by (id, interface), sorted.
pub fn containers(pods: &PodsMap) -> Result<Vec<Container>> {
    let mut grouped: BTreeMap<(String, String), Container> = BTreeMap::new();
    for item in pods.iter() {
        let (ip, record) = item.context("reading the container records")?;
        let id = field_str(&record.container_id).to_owned();
        let ifname = field_str(&record.ifname).to_owned();
        grouped
            .entry((id.clone(), ifname.clone()))
            .or_insert_with(|| Container {
                container_id: id,
                ifname,
                host_veth: field_str(&record.host_veth).to_owned(),
                host_ifindex: record.host_ifindex,
                ips: Vec::new(),
            })
            .ips
            .push(Ipv4Addr::from(ip.to_ne_bytes()));
    }
    let mut containers: Vec<Container> = grouped.into_values().collect();
    for c in &mut containers {
        c.ips.sort();
    }
    Ok(containers)
}

/// The one container whose id is `id` or starts with it (as podman accepts
/// a unique prefix).
pub fn find<'a>(containers: &'a [Container], id: &str) -> Result<&'a Container> {
    if let Some(exact) = containers.iter().find(|c| c.container_id == id) {
        return Ok(exact);
    }
    let matching: Vec<&Container> = containers
        .iter()
        .filter(|c| !id.is_empty() && c.container_id.starts_with(id))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => bail!("no container `{id}` is recorded (see `bpfmasq containers`)"),
        _ => bail!("container id `{id}` is ambiguous: give more of it"),
    }
}

/// The record of `container`, whose bridge port has index `host_ifindex`
/// (0: none known).
pub fn record(container: &KnownContainer, host_ifindex: u32) -> Result<PodRecord> {
    Ok(PodRecord {
        host_ifindex,
        container_id: field(&container.id, "container id")?,
        ifname: field(&container.ifname, "interface name")?,
        host_veth: field(&container.host_veth, "interface name")?,
    })
}

fn field<const N: usize>(text: &str, what: &str) -> Result<[u8; N]> {
    to_field(text).ok_or_else(|| anyhow!("{what} `{text}` is longer than {N} bytes"))
}

/// Opens the instance's records.
pub fn open(instance: &Instance) -> Result<PodsMap> {
    pinned::pods(instance)
}

/// Records `record` for each address (replacing what was there).
pub fn insert(pods: &mut PodsMap, ips: &[Ipv4Addr], record: &PodRecord) -> Result<()> {
    for ip in ips {
        pods.insert(raw(*ip), *record, 0)
            .with_context(|| format!("recording container address {ip}"))?;
    }
    Ok(())
}

/// Forgets the records of these addresses.
pub fn forget(pods: &PodsMap, ips: &[u32]) -> Result<()> {
    batch::delete(pods.map(), ips).context("removing container records")?;
    Ok(())
}

/// The flows of a set of pod addresses in a snapshot: those whose
/// original source is one of them.
pub fn flows_of<'a>(flows: &'a [FlowView], ips: &[u32]) -> Vec<&'a FlowView> {
    flows
        .iter()
        .filter(|f| ips.contains(&f.key.src_addr))
        .collect()
}

/// Removes every flow (both halves) whose original source is one of `ips`,
/// and reply halves left without their original that still lead to one of
/// them: an address given to the next container starts with none.
/// Returns the number of flows removed.
pub fn remove_flows_of(instance: &Instance, ips: &[u32]) -> Result<usize> {
    if ips.is_empty() {
        return Ok(0);
    }
    let table = pinned::conntrack(instance)?;
    let snapshot = snapshot(&table)?;
    let doomed = flows_of(&snapshot.flows, ips);
    gc::remove_flows(&table, &doomed)?;
    let orphans: Vec<_> = snapshot
        .orphan_replies
        .iter()
        .filter(|(_, entry)| ips.contains(&entry.rewrite_addr))
        .map(|(key, _)| *key)
        .collect();
    batch::delete(table.map(), &orphans).context("removing orphan reply halves")?;
    Ok(doomed.len())
}
