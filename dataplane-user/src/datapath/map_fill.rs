//! How full the datapath's bounded maps are: every hash-like map its
//! attached programs use (pinned or not: the fragment tables live only as
//! long as the programs), found through the programs' map ids, so a map
//! added to the eBPF object is covered without being listed here. Arrays
//! are always full by construction and refuse nothing: they are left out.

use std::{collections::BTreeSet, os::fd::AsFd as _};

use anyhow::{Context as _, Result};
use aya::{
    maps::{MapData, MapType},
    programs::loaded_programs,
};
use dataplane_common::{config::AttachMode, maps};

use super::{instance::Instance, pinned, sys};

/// One bounded map and how many entries it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct MapFill {
    /// The map's name in the eBPF object (its pin name when pinned).
    pub name: String,
    pub entries: u64,
    pub capacity: u32,
}

impl MapFill {
    /// Fill ratio, 0 to 1.
    pub fn ratio(&self) -> f64 {
        if self.capacity == 0 {
            return 0.0;
        }
        (self.entries as f64 / f64::from(self.capacity)).min(1.0)
    }
}

/// Map types whose entries come and go and that refuse (or evict) when full.
fn is_bounded(map_type: MapType) -> bool {
    matches!(
        map_type,
        MapType::Hash
            | MapType::PerCpuHash
            | MapType::LruHash
            | MapType::LruPerCpuHash
            | MapType::LpmTrie
    )
}

/// Every bounded map of the datapath's attached programs, by name.
/// `conntrack_entries` is the conntrack table's size as just read by a
/// snapshot: that table may hold millions of entries, which are not walked
/// again here.
pub fn bounded_maps(
    instance: &Instance,
    mode: AttachMode,
    conntrack_entries: usize,
) -> Result<Vec<MapFill>> {
    let program_ids: BTreeSet<u32> = pinned::hook_programs(instance, mode)
        .into_iter()
        .filter_map(|(_, id)| id)
        .collect();
    let mut map_ids = BTreeSet::new();
    for program in loaded_programs().filter_map(Result::ok) {
        if program_ids.contains(&program.id()) {
            let ids = program
                .map_ids()
                .context("listing the maps of the datapath's programs")?;
            map_ids.extend(ids.unwrap_or_default());
        }
    }
    let mut fills = Vec::new();
    for id in map_ids {
        // A map freed since its id was listed (programs swapped) is skipped.
        let Ok(map) = MapData::from_id(id) else {
            continue;
        };
        let info = map.info().context("reading a map's information")?;
        if !info.map_type().is_ok_and(is_bounded) {
            continue;
        }
        let name = info.name_as_str().unwrap_or_default().to_owned();
        let entries = if name == maps::CONNTRACK {
            conntrack_entries as u64
        } else {
            sys::count_keys(
                map.fd().as_fd(),
                info.key_size(),
                u64::from(info.max_entries()),
            )
            .with_context(|| format!("counting the entries of map {name}"))?
        };
        fills.push(MapFill {
            name,
            entries,
            capacity: info.max_entries(),
        });
    }
    fills.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(fills)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_bounded() {
        let fill = |entries, capacity| MapFill {
            name: "M".into(),
            entries,
            capacity,
        };
        assert_eq!(fill(0, 0).ratio(), 0.0);
        assert_eq!(fill(5, 10).ratio(), 0.5);
        assert_eq!(fill(11, 10).ratio(), 1.0);
    }
}
