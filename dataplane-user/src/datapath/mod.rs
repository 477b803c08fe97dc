//! The datapath's lifecycle: `attach` loads the programs, configures the
//! maps, attaches to the uplink and pins everything; `detach` undoes it.
//! `bpfmasq run` reuses the steps, and adopts a pinned datapath in place.

pub mod batch;
pub mod bpffs;
pub mod flows;
pub mod gc;
pub mod instance;
pub mod kernel;
pub mod layout;
pub mod loader;
pub mod map_fill;
pub mod options;
pub mod pinned;
pub mod pod_flows;
pub mod pods;
pub mod ports;
pub mod sys;
pub mod tc;
pub mod verifier;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::Ebpf;
use dataplane_common::config::{DatapathRecord, FLAG_FAST_PATH, NatConfig};

use self::{
    instance::{Instance, netns_label},
    options::{AttachOptions, LinkType, Resolved},
    tc::{AttachRecord, Interfaces},
};
use crate::{
    netlink::Netlink,
    privileges::{require_datapath_capabilities, require_root},
};

/// Removes a half-made instance's pins unless disarmed: an `attach` that
/// fails part-way leaves nothing behind.
struct PinsGuard<'a> {
    instance: &'a Instance,
    armed: bool,
}

impl Drop for PinsGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.instance.remove_pins();
        }
    }
}

pub async fn attach(netns: Option<&str>, args: &AttachOptions) -> Result<()> {
    if args.takeover {
        return crate::takeover::attach(netns, args).await;
    }
    require_root("bpfmasq attach")?;
    require_datapath_capabilities("bpfmasq attach")?;
    let netlink = Netlink::connect()?;
    let resolved = Resolved::resolve(&netlink, args).await?;
    let instance = Instance::new(&netns_label(netns)?, &resolved.uplink);
    refuse_if_attached(&instance, netns)?;
    let (_, _, record) = attach_fresh(&netlink, &instance, &resolved, args.link_type).await?;
    println!(
        "{}",
        attached_line(&instance, &resolved, &record, args.fast_path)
    );
    eprintln!(
        "note: nothing maintains this datapath until `bpfmasq run` adopts it: flows never \
         expire (a full table refuses new ones) and a new uplink address is not followed"
    );
    Ok(())
}

/// What `attach` says once the datapath is attached.
pub fn attached_line(
    instance: &Instance,
    resolved: &Resolved,
    record: &DatapathRecord,
    asked_fast_path: bool,
) -> String {
    format!(
        "attached to {} and {} ({:?}): masquerading {} to {} (ports {}), fast path {}, pinned in {}",
        resolved.uplink,
        resolved.bridge,
        record.attach_mode(),
        resolved.pod_cidr,
        resolved.nat_addr,
        resolved.ports,
        fast_path_state(asked_fast_path, resolved),
        instance.dir().display()
    )
}

/// Fails if `instance` already has a datapath (`attach` never replaces one).
pub fn refuse_if_attached(instance: &Instance, netns: Option<&str>) -> Result<()> {
    if instance.dir().exists() {
        bail!(
            "a datapath is already attached to `{}` in network namespace `{}`; run `bpfmasq{} detach --uplink {}` first",
            instance.uplink,
            instance.netns,
            netns.map(|n| format!(" --netns {n}")).unwrap_or_default(),
            instance.uplink
        );
    }
    Ok(())
}

/// `on`, `off`, or why it is off although asked for.
pub fn fast_path_state(asked: bool, resolved: &Resolved) -> String {
    match (asked, resolved.kernel.fast_path_unavailable()) {
        (false, _) => "off".to_owned(),
        (true, None) => "on".to_owned(),
        (true, Some(reason)) => format!("off ({reason})"),
    }
}

/// Loads, configures, attaches and pins a new datapath in `instance`'s
/// (absent) folder; on error nothing is left behind. Returns the loaded
/// object (dropping it leaves everything running through the pins), the
/// configuration and the record written.
pub async fn attach_fresh(
    netlink: &Netlink,
    instance: &Instance,
    resolved: &Resolved,
    link_type: LinkType,
) -> Result<(Ebpf, NatConfig, DatapathRecord)> {
    bpffs::ensure_mounted()?;
    std::fs::create_dir_all(instance.dir())
        .with_context(|| format!("creating {}", instance.dir().display()))?;
    let mut pins = PinsGuard {
        instance,
        armed: true,
    };

    let mut ebpf = loader::load(instance, resolved)?;
    ports::pin_program(&mut ebpf, instance)?;
    let config = resolved.nat_config();
    loader::configure(&mut ebpf, &config, resolved)?;
    let ifaces = Interfaces::resolved(resolved);
    let attached = tc::attach(
        &mut ebpf,
        netlink,
        instance,
        &ifaces,
        link_type,
        &resolved.kernel,
    )
    .await?;
    let mut record = resolved.record();
    attached.store_in(&mut record);
    let configured = loader::write_record(&mut ebpf, &record).and_then(|()| {
        ports::record_known(instance, record.attach_mode(), &resolved.known_containers)
    });
    if let Err(e) = configured {
        let _ = ports::detach_recorded(instance, record.attach_mode());
        let _ = tc::detach(netlink, instance, &ifaces, &attached).await;
        return Err(e);
    }
    pins.armed = false;
    Ok((ebpf, config, record))
}

/// The first half of adopting a datapath pinned by an earlier `attach` or
/// `run`: loads the embedded programs against the pinned maps (aya reuses
/// maps pinned by name, so flows and counters are kept) and writes
/// `resolved`'s configuration into them, keeping what cannot change under a
/// running datapath: how it is attached and the table's size. The second
/// half is [`tc::replace`], which swaps the programs in. The recorded
/// containers' ports get the new source check here.
pub fn load_adopting(
    instance: &Instance,
    resolved: &Resolved,
    pinned: &DatapathRecord,
) -> Result<(Ebpf, NatConfig, DatapathRecord)> {
    let mut ebpf = loader::load(instance, resolved)?;
    let config = resolved.nat_config();
    let mut record = resolved.record();
    record.ct_max = pinned.ct_max;
    AttachRecord::from_record(pinned).store_in(&mut record);
    loader::configure(&mut ebpf, &config, resolved)?;
    loader::write_record(&mut ebpf, &record)?;
    ports::pin_program(&mut ebpf, instance)?;
    ports::record_known(instance, record.attach_mode(), &resolved.known_containers)?;
    ports::attach_recorded(instance, record.attach_mode())?;
    Ok((ebpf, config, record))
}

pub async fn detach(netns: Option<&str>, uplink: Option<&str>, handback: bool) -> Result<()> {
    if handback {
        return crate::takeover::detach(netns, uplink).await;
    }
    require_root("bpfmasq detach")?;
    let instance = Instance::find(&netns_label(netns)?, uplink)?;
    let netlink = Netlink::connect()?;
    detach_instance(&netlink, &instance).await?;
    let note = if crate::takeover::record_path(&instance).exists() {
        crate::takeover::forget(&instance);
        " (the masquerade rules `attach --takeover` removed were not restored: that is `detach --handback`)"
    } else {
        ""
    };
    println!(
        "detached from {} in network namespace `{}`{note}",
        instance.uplink, instance.netns
    );
    Ok(())
}

/// Removes everything `instance` attached and pinned, as its RECORD says.
/// Keeps going past errors and reports them all at the end.
pub async fn detach_instance(netlink: &Netlink, instance: &Instance) -> Result<()> {
    // Another version's record could name the wrong filters to remove.
    layout::check(instance)?;
    // The interfaces may be gone (their namespace torn down): then only pins remain.
    let config = pinned::read_config(instance).unwrap_or_default();
    let pinned_record = pinned::read_record(instance).unwrap_or_default();
    let record = AttachRecord::from_record(&pinned_record);
    // Without the interface list nothing could be detached reliably: stop
    // before removing anything, so that a retry finds it all in place.
    let ifaces = Interfaces::recorded(netlink, instance, &config)
        .await
        .context("listing the interfaces to detach from; nothing was detached")?;
    let mut errors = Vec::new();
    // The bridge program goes inert first: whatever step fails below, it
    // never redirects a pod's packet to an uplink whose SNAT is gone.
    if config.fast_path() {
        let inert = NatConfig {
            flags: config.flags & !FLAG_FAST_PATH,
            ..config
        };
        errors.extend(pinned::write_config(instance, &inert).err());
    }
    errors.extend(ports::detach_recorded(
        instance,
        pinned_record.attach_mode(),
    ));
    errors.extend(tc::detach(netlink, instance, &ifaces, &record).await);
    errors.extend(instance.remove_pins().err());
    if errors.is_empty() {
        return Ok(());
    }
    let report: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
    Err(anyhow!(
        "detach finished with errors: {}",
        report.join("; ")
    ))
}
