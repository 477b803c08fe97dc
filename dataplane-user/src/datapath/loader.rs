//! The embedded eBPF object and loading it with its maps pinned in an
//! instance's folder.

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, lpm_trie::Key},
    programs::SchedClassifier,
};
use dataplane_common::{config::NatConfig, maps};

use super::{instance::Instance, options::Resolved};

/// The object built by build.rs (empty when built without bpf-linker).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane"));

/// Loads the programs into the kernel, creating (or reusing) the maps
/// pinned in `instance`'s folder. A reused map keeps its contents and its
/// size (`--ct-max` only sizes a new CONNTRACK).
pub fn load(instance: &Instance, resolved: &Resolved) -> Result<Ebpf> {
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this bpfmasq was built without its eBPF object (bpf-linker was missing); run `cargo xtask build`"
        );
    }
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(instance.dir())
        .map_max_entries(maps::CONNTRACK, resolved.ct_max.saturating_mul(2))
        .load(EBPF_OBJECT)
        .map_err(|e| anyhow!("loading the eBPF object failed (does this kernel have BPF?): {e}"))?;
    for name in PROGRAMS {
        classifier(&mut ebpf, name)?
            .load()
            .with_context(|| format!("the kernel rejected program `{name}`"))?;
    }
    Ok(ebpf)
}

/// The object's TC programs: uplink egress, uplink ingress, bridge ingress.
pub const PROGRAMS: [&str; 3] = [
    maps::PROG_UPLINK_EGRESS,
    maps::PROG_UPLINK_INGRESS,
    maps::PROG_BRIDGE_INGRESS,
];

/// A TC program of the object, by name.
pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program `{name}` missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program `{name}` is not a TC classifier"))
}

/// Writes the configuration and the exclusion list into the maps.
pub fn configure(ebpf: &mut Ebpf, config: &NatConfig, resolved: &Resolved) -> Result<()> {
    write_config(ebpf, config)?;
    let mut no_masq: LpmTrie<&mut MapData, u32, u8> = ebpf
        .map_mut(maps::NO_MASQ)
        .ok_or_else(|| anyhow!("map {} missing", maps::NO_MASQ))?
        .try_into()?;
    let wanted: Vec<(u32, u32)> = resolved
        .no_masq
        .iter()
        .map(|net| {
            (
                u32::from(net.prefix_len()),
                u32::from_ne_bytes(net.network().octets()),
            )
        })
        .collect();
    for (net, &(prefix_len, addr)) in resolved.no_masq.iter().zip(&wanted) {
        no_masq
            .insert(&Key::new(prefix_len, addr), 1, 0)
            .with_context(|| format!("adding {net} to {}", maps::NO_MASQ))?;
    }
    // A reused (pinned) map may hold entries of an earlier configuration:
    // they go after the new ones are in, so a wanted entry is never missing.
    let stale: Vec<Key<u32>> = no_masq
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted.contains(&(key.prefix_len(), key.data())))
        .collect();
    for key in &stale {
        no_masq
            .remove(key)
            .with_context(|| format!("removing a stale entry from {}", maps::NO_MASQ))?;
    }
    Ok(())
}

/// The kernel's ids of the loaded programs, in [`PROGRAMS`] order.
pub fn program_ids(ebpf: &mut Ebpf) -> Result<[u32; 3]> {
    let mut ids = [0; 3];
    for (id, name) in ids.iter_mut().zip(PROGRAMS) {
        *id = classifier(ebpf, name)?
            .info()
            .with_context(|| format!("reading the id of program `{name}`"))?
            .id();
    }
    Ok(ids)
}

/// Writes the CONFIG map's only slot.
pub fn write_config(ebpf: &mut Ebpf, config: &NatConfig) -> Result<()> {
    let mut array: Array<&mut MapData, NatConfig> = ebpf
        .map_mut(maps::CONFIG)
        .ok_or_else(|| anyhow!("map {} missing", maps::CONFIG))?
        .try_into()?;
    array
        .set(0, config, 0)
        .context("writing the datapath configuration")
}
