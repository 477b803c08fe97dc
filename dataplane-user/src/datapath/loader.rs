//! The embedded eBPF object and loading it with its maps pinned in an
//! instance's folder.

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, LpmTrie, MapData, lpm_trie::Key},
    programs::SchedClassifier,
};
use std::{path::Path, time::Instant};

use dataplane_common::{
    config::{DatapathRecord, NatConfig},
    kernel::KERNEL_FEATURES,
    maps,
};

use super::{
    instance::Instance,
    kernel::Kernel,
    options::Resolved,
    verifier::{Budget, Rejection},
};

/// Name of the programs' global that [`TEST_REJECT_ENV`] sets.
const TEST_REJECT: &str = "TEST_REJECT";

/// The object built by build.rs (empty when built without bpf-linker).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane"));

/// Loads the programs into the kernel, creating (or reusing) the maps
/// pinned in `instance`'s folder. A reused map keeps its contents and its
/// size (`--ct-max` only sizes a new CONNTRACK). The probed kernel says
/// which parts of the programs it can run.
pub fn load(instance: &Instance, resolved: &Resolved) -> Result<Ebpf> {
    let kernel = &resolved.kernel;
    let mut ebpf = load_object(&instance.dir(), resolved.ct_max, kernel)?;
    for name in PROGRAMS {
        load_program(&mut ebpf, name, kernel)?;
    }
    Ok(ebpf)
}

/// Loads every program with its maps pinned in `pin_dir` (a throwaway
/// folder) and reports what verifying each one cost, or why the kernel
/// refused it; attaches nothing.
pub fn verify_all(pin_dir: &Path, kernel: &Kernel) -> Result<Vec<Result<Budget>>> {
    let mut ebpf = load_object(pin_dir, MIN_CT_MAX, kernel)?;
    Ok(PROGRAMS
        .iter()
        .map(|name| load_program(&mut ebpf, name, kernel))
        .collect())
}

/// The smallest table `--ct-max` allows: enough to verify the programs.
const MIN_CT_MAX: u32 = 16;

/// Environment variable that, set to anything, makes the loader set the
/// programs' `TEST_REJECT` global: `uplink_egress` then holds an access no
/// verifier accepts, so tests can see how bpfmasq reports a rejected
/// program. Unset, the verifier removes that code before it runs.
pub const TEST_REJECT_ENV: &str = "BPFMASQ_TEST_REJECT";

fn load_object(pin_dir: &Path, ct_max: u32, kernel: &Kernel) -> Result<Ebpf> {
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this bpfmasq was built without its eBPF object (bpf-linker was missing); run `cargo xtask build`"
        );
    }
    let features = kernel.program_features();
    let test_reject = u32::from(std::env::var_os(TEST_REJECT_ENV).is_some());
    EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .map_max_entries(maps::CONNTRACK, ct_max.saturating_mul(2))
        .override_global(KERNEL_FEATURES, &features, true)
        .override_global(TEST_REJECT, &test_reject, true)
        .load(EBPF_OBJECT)
        .map_err(|e| anyhow!("loading the eBPF object failed (does this kernel have BPF?): {e}"))
}

/// Loads one program; a verifier rejection becomes a one-line error.
fn load_program(ebpf: &mut Ebpf, name: &str, kernel: &Kernel) -> Result<Budget> {
    let program = classifier(ebpf, name)?;
    let started = Instant::now();
    program
        .load()
        .map_err(|e| Rejection::from_load_error(name, &kernel.release, e))?;
    let load_time = started.elapsed();
    let instructions_processed = program
        .info()
        .ok()
        .and_then(|info| info.verified_instruction_count());
    Ok(Budget {
        instructions_processed,
        load_time,
    })
}

/// The object's TC programs: the three hooks' (uplink egress, uplink
/// ingress, bridge ingress), then the pods' ports' source check.
pub const PROGRAMS: [&str; 4] = [
    maps::PROG_UPLINK_EGRESS,
    maps::PROG_UPLINK_INGRESS,
    maps::PROG_BRIDGE_INGRESS,
    maps::PROG_POD_PORT_INGRESS,
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

/// The kernel's ids of the three hooks' programs, in [`PROGRAMS`] order.
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
    write_only_slot(ebpf, maps::CONFIG, config).context("writing the datapath configuration")
}

/// Writes the RECORD map's only slot.
pub fn write_record(ebpf: &mut Ebpf, record: &DatapathRecord) -> Result<()> {
    write_only_slot(ebpf, maps::RECORD, record).context("writing the datapath's record")
}

/// Writes slot 0 of the one-slot array `name`.
fn write_only_slot<T: Pod>(ebpf: &mut Ebpf, name: &str, value: &T) -> Result<()> {
    let mut array: Array<&mut MapData, T> = ebpf
        .map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing"))?
        .try_into()?;
    Ok(array.set(0, value, 0)?)
}
