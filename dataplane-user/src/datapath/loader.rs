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
/// pinned in `instance`'s folder.
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
    for name in [maps::PROG_UPLINK_EGRESS, maps::PROG_UPLINK_INGRESS] {
        classifier(&mut ebpf, name)?
            .load()
            .with_context(|| format!("the kernel rejected program `{name}`"))?;
    }
    Ok(ebpf)
}

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
    for net in &resolved.no_masq {
        let key = Key::new(
            u32::from(net.prefix_len()),
            u32::from_ne_bytes(net.network().octets()),
        );
        no_masq
            .insert(&key, 1, 0)
            .with_context(|| format!("adding {net} to {}", maps::NO_MASQ))?;
    }
    Ok(())
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
