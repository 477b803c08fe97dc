//! Opening an instance's pinned maps from any process: the inspection verbs
//! and `detach` read the datapath's state without loading anything, and
//! which program each pinned hook runs. Each opening of a map checks first
//! that the pins have this bpfmasq's layout.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{
        ProgramInfo,
        links::{FdLink, PinnedLink},
    },
};
use dataplane_common::{
    config::{AttachMode, DatapathRecord, NatConfig},
    flow::{FlowEntry, FlowKey},
    maps,
    pods::PodRecord,
};

use super::{
    instance::{
        Instance, PIN_BRIDGE_INGRESS, PIN_EGRESS, PIN_INGRESS, PIN_PROG_BRIDGE_INGRESS,
        PIN_PROG_EGRESS, PIN_PROG_INGRESS,
    },
    layout,
};

fn open(instance: &Instance, name: &str) -> Result<Map> {
    let path = instance.pin(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).map_err(|e| anyhow!("pinned map {}: {e}", path.display()))
}

pub fn read_config(instance: &Instance) -> Result<NatConfig> {
    layout::check(instance)?;
    let array: Array<MapData, NatConfig> = open(instance, maps::CONFIG)?.try_into()?;
    array
        .get(&0, 0)
        .context("reading the datapath configuration")
}

pub fn read_record(instance: &Instance) -> Result<DatapathRecord> {
    layout::check(instance)?;
    read_record_unchecked(instance)
}

/// The RECORD slot, read without checking the layout (for [`layout::check`]).
pub(super) fn read_record_unchecked(instance: &Instance) -> Result<DatapathRecord> {
    let array: Array<MapData, DatapathRecord> = open(instance, maps::RECORD)?.try_into()?;
    array.get(&0, 0).context("reading the datapath's record")
}

/// Writes the pinned RECORD's only slot.
pub fn write_record(instance: &Instance, record: &DatapathRecord) -> Result<()> {
    let mut array: Array<MapData, DatapathRecord> = open(instance, maps::RECORD)?.try_into()?;
    array
        .set(0, record, 0)
        .context("writing the datapath's record")
}

/// Writes the pinned CONFIG's only slot.
pub fn write_config(instance: &Instance, config: &NatConfig) -> Result<()> {
    let mut array: Array<MapData, NatConfig> = open(instance, maps::CONFIG)?.try_into()?;
    array
        .set(0, config, 0)
        .context("writing the datapath configuration")
}

pub fn conntrack(instance: &Instance) -> Result<HashMap<MapData, FlowKey, FlowEntry>> {
    layout::check(instance)?;
    Ok(open(instance, maps::CONNTRACK)?.try_into()?)
}

pub fn pod_flows(instance: &Instance) -> Result<HashMap<MapData, u32, u32>> {
    layout::check(instance)?;
    Ok(open(instance, maps::POD_FLOWS)?.try_into()?)
}

pub fn counters(instance: &Instance) -> Result<PerCpuArray<MapData, u64>> {
    layout::check(instance)?;
    Ok(open(instance, maps::COUNTERS)?.try_into()?)
}

pub fn pods(instance: &Instance) -> Result<HashMap<MapData, u32, PodRecord>> {
    layout::check(instance)?;
    Ok(open(instance, maps::PODS)?.try_into()?)
}

/// Each hook (`egress`, `ingress`, `bridge ingress`) and the id of the
/// program it runs, when it can be read.
pub fn hook_programs(instance: &Instance, mode: AttachMode) -> Vec<(&'static str, Option<u32>)> {
    [
        ("egress", (PIN_EGRESS, PIN_PROG_EGRESS)),
        ("ingress", (PIN_INGRESS, PIN_PROG_INGRESS)),
        (
            "bridge ingress",
            (PIN_BRIDGE_INGRESS, PIN_PROG_BRIDGE_INGRESS),
        ),
    ]
    .into_iter()
    .map(|(hook, pins)| (hook, program_id(instance, mode, pins)))
    .collect()
}

/// The program a hook runs: read from its pinned tcx link, or (clsact) from
/// the program pinned beside the filter.
fn program_id(
    instance: &Instance,
    mode: AttachMode,
    (link_pin, program_pin): (&str, &str),
) -> Option<u32> {
    match mode {
        AttachMode::Tcx => {
            let link: FdLink = PinnedLink::from_pin(instance.pin(link_pin)).ok()?.into();
            link.info().ok().map(|info| info.program_id())
        }
        AttachMode::Clsact => ProgramInfo::from_pin(instance.pin(program_pin))
            .ok()
            .map(|info| info.id()),
        AttachMode::None => None,
    }
}
