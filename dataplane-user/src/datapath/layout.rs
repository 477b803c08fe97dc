//! The pinned state's layout, checked before anything reads it: a datapath
//! pinned by a bpfmasq whose map types differ (an upgrade that changed
//! `FlowEntry`, say) is refused with the way out, never misread.

use std::mem::size_of;

use anyhow::Result;
use aya::maps::MapInfo;
use dataplane_common::{
    config::{DatapathRecord, LAYOUT_VERSION, NatConfig},
    counters::Counter,
    flow::{FlowEntry, FlowKey},
    maps,
    pods::PodRecord,
    trace,
};

use super::{instance::Instance, pinned};

/// A pinned map as this bpfmasq reads it.
struct Expected {
    name: &'static str,
    key_size: usize,
    value_size: usize,
    /// Fewer entries than this and indexes this bpfmasq uses are missing.
    min_entries: u32,
}

const EXPECTED: [Expected; 9] = [
    Expected {
        name: maps::CONFIG,
        key_size: size_of::<u32>(),
        value_size: size_of::<NatConfig>(),
        min_entries: 1,
    },
    Expected {
        name: maps::RECORD,
        key_size: size_of::<u32>(),
        value_size: size_of::<DatapathRecord>(),
        min_entries: 1,
    },
    Expected {
        name: maps::CONNTRACK,
        key_size: size_of::<FlowKey>(),
        value_size: size_of::<FlowEntry>(),
        min_entries: 0,
    },
    Expected {
        name: maps::NO_MASQ,
        // An LPM key: prefix length, then the address.
        key_size: size_of::<u32>() * 2,
        value_size: size_of::<u8>(),
        min_entries: 0,
    },
    Expected {
        name: maps::PODS,
        key_size: size_of::<u32>(),
        value_size: size_of::<PodRecord>(),
        min_entries: 0,
    },
    Expected {
        name: maps::POD_FLOWS,
        key_size: size_of::<u32>(),
        value_size: size_of::<u32>(),
        min_entries: 0,
    },
    Expected {
        name: maps::COUNTERS,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        min_entries: Counter::COUNT,
    },
    Expected {
        name: maps::TRACE_ACTIVE,
        key_size: size_of::<u32>(),
        value_size: size_of::<u32>(),
        min_entries: 1,
    },
    Expected {
        name: maps::TRACE_LOST,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        min_entries: trace::SLOTS,
    },
];

/// Refuses `instance`'s pins unless this bpfmasq's layout matches them.
pub fn check(instance: &Instance) -> Result<()> {
    for expected in &EXPECTED {
        let path = instance.pin(expected.name);
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue; // missing pins are reported by whoever opens them
        };
        let found = (
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        if found.0 != expected.key_size
            || found.1 != expected.value_size
            || found.2 < expected.min_entries
        {
            return Err(incompatible(
                instance,
                &format!(
                    "its {} map has {}-byte keys, {}-byte values and {} entries; this bpfmasq \
                     expects {}-byte keys, {}-byte values and at least {} entries",
                    expected.name,
                    found.0,
                    found.1,
                    found.2,
                    expected.key_size,
                    expected.value_size,
                    expected.min_entries
                ),
            ));
        }
    }
    // A missing or unreadable RECORD is for the caller to judge (defunct).
    let Ok(pinned) = pinned::read_record_unchecked(instance) else {
        return Ok(());
    };
    let pinned_version = pinned.layout_version;
    if pinned_version != LAYOUT_VERSION {
        return Err(incompatible(
            instance,
            &format!("its layout is version {pinned_version}, this bpfmasq's is {LAYOUT_VERSION}"),
        ));
    }
    Ok(())
}

fn incompatible(instance: &Instance, detail: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the datapath pinned in {} was attached by another bpfmasq version ({detail}): \
         detach it with the bpfmasq that attached it, then attach again",
        instance.dir().display()
    )
}
