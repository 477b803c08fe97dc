//! Garbage collection of the conntrack table: expired flows go, both
//! directions together, as nf_conntrack's timeouts say; flows bound to a
//! NAT address the uplink no longer has go too (MASQUERADE's flush).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::IterableMap as _;
use dataplane_common::{conntrack::Timeouts, flow::FlowKey};
use serde::Serialize;

use super::{
    batch,
    flows::{ConntrackMap, FlowView, monotonic_ns, snapshot},
    instance::Instance,
    pinned, pod_flows,
};

/// Orphan reply entries younger than this may belong to a flow being
/// created right now (reply half inserted first): leave them alone.
const ORPHAN_GRACE_NS: u64 = 10_000_000_000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepReport {
    /// Map entries looked at.
    pub entries: usize,
    pub flows: usize,
    pub expired: usize,
    /// Flows whose NAT address is no longer the uplink's.
    pub rebound: usize,
    pub orphans: usize,
    /// Flows each pod address holds after the sweep (for `--ct-max-per-pod`).
    #[serde(skip)]
    pub pod_flows: BTreeMap<u32, u32>,
    #[serde(serialize_with = "as_secs_f64")]
    pub duration: Duration,
}

fn as_secs_f64<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// One pass over `instance`'s table with the configuration pinned now
/// (timeouts and NAT address may have changed since the last), then the
/// per-pod flow counts written back.
pub fn sweep_pinned(instance: &Instance, table: &mut ConntrackMap) -> Result<SweepReport> {
    let config = pinned::read_config(instance)?;
    let record = pinned::read_record(instance)?;
    let report = sweep(table, config.nat_addr, &record.timeouts)?;
    pod_flows::store(instance, &config, &report.pod_flows)?;
    Ok(report)
}

/// One pass over the table: flows expired by `timeouts`, or bound to
/// another NAT address than `nat_addr`, are removed.
pub fn sweep(table: &mut ConntrackMap, nat_addr: u32, timeouts: &Timeouts) -> Result<SweepReport> {
    let started = Instant::now();
    let snapshot = snapshot(table)?;
    let now = monotonic_ns();
    let mut report = SweepReport {
        entries: snapshot.entries,
        flows: snapshot.flows.len(),
        ..Default::default()
    };
    let mut doomed: Vec<&FlowView> = Vec::new();
    for flow in &snapshot.flows {
        if flow.original.rewrite_addr != nat_addr {
            doomed.push(flow);
            report.rebound += 1;
        } else if flow.remaining_ns(timeouts, now) == 0 && still_idle(table, flow) {
            doomed.push(flow);
            report.expired += 1;
        } else {
            *report.pod_flows.entry(flow.key.src_addr).or_default() += 1;
        }
    }
    remove_flows(table, &doomed)?;
    let orphans: Vec<FlowKey> = snapshot
        .orphan_replies
        .iter()
        .filter(|(_, entry)| now.saturating_sub(entry.created_ns) > ORPHAN_GRACE_NS)
        .map(|(key, _)| *key)
        .collect();
    report.orphans = batch::delete(table.map(), &orphans).context("removing orphan halves")?;
    report.duration = started.elapsed();
    Ok(report)
}

/// Re-reads the original entry just before removal: a packet that arrived
/// since the snapshot keeps its flow.
fn still_idle(table: &ConntrackMap, flow: &FlowView) -> bool {
    table
        .get(&flow.key, 0)
        .is_ok_and(|now| now.last_seen_ns == flow.original.last_seen_ns)
}

/// Removes whole flows: every original half first, so the datapath stops
/// using a mapping before its port is released, then the reply halves.
/// Shared by the sweep and `conntrack flush`.
pub fn remove_flows(table: &ConntrackMap, flows: &[&FlowView]) -> Result<()> {
    let originals: Vec<FlowKey> = flows.iter().map(|f| f.key).collect();
    let replies: Vec<FlowKey> = flows.iter().map(|f| f.reply_key).collect();
    batch::delete(table.map(), &originals).context("removing flows")?;
    batch::delete(table.map(), &replies).context("removing flows' reply halves")?;
    Ok(())
}
