//! Attaching the TC programs to an interface and removing them again.
//!
//! tcx links are preferred (kernel >= 6.6): they are pinned, so the datapath
//! outlives the loader and detaching is unpinning. Without tcx, a clsact
//! qdisc with cls_bpf filters does the job; their priority and handle are
//! recorded in the CONFIG map so `detach` removes exactly those filters.
//! Either way a failure half-way rolls back what was attached.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        Link as _, LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{
            NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle, qdisc_add_clsact,
        },
    },
};
use dataplane_common::{
    config::{AttachMode, FLAG_CREATED_CLSACT, NatConfig},
    maps,
};
use netlink_packet_route::tc::TcHandle as NlTcHandle;

use super::{
    instance::{Instance, PIN_EGRESS, PIN_INGRESS, PIN_PROG_EGRESS, PIN_PROG_INGRESS},
    loader::classifier,
};
use crate::{cli::LinkType, netlink::Netlink};

/// One program on one hook of the uplink.
struct Hook {
    program: &'static str,
    attach_type: TcAttachType,
    link_pin: &'static str,
    program_pin: &'static str,
}

const UPLINK_HOOKS: [Hook; 2] = [
    Hook {
        program: maps::PROG_UPLINK_EGRESS,
        attach_type: TcAttachType::Egress,
        link_pin: PIN_EGRESS,
        program_pin: PIN_PROG_EGRESS,
    },
    Hook {
        program: maps::PROG_UPLINK_INGRESS,
        attach_type: TcAttachType::Ingress,
        link_pin: PIN_INGRESS,
        program_pin: PIN_PROG_INGRESS,
    },
];

/// What was attached, to be stored in [`NatConfig`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AttachRecord {
    pub mode: Option<AttachMode>,
    pub created_clsact: bool,
    /// clsact filters (priority, handle), in UPLINK_HOOKS order.
    pub filters: [(u16, u32); 2],
}

impl AttachRecord {
    pub fn store_in(&self, config: &mut NatConfig) {
        config.attach_mode = self.mode.unwrap_or(AttachMode::None) as u8;
        if self.created_clsact {
            config.flags |= FLAG_CREATED_CLSACT;
        }
        (config.tc_egress_priority, config.tc_egress_handle) = self.filters[0];
        (config.tc_ingress_priority, config.tc_ingress_handle) = self.filters[1];
    }

    pub fn from_config(config: &NatConfig) -> Self {
        Self {
            mode: Some(config.attach_mode()),
            created_clsact: config.flags & FLAG_CREATED_CLSACT != 0,
            filters: [
                (config.tc_egress_priority, config.tc_egress_handle),
                (config.tc_ingress_priority, config.tc_ingress_handle),
            ],
        }
    }
}

/// Attaches both uplink programs; on error nothing stays attached.
pub async fn attach(
    ebpf: &mut Ebpf,
    netlink: &Netlink,
    instance: &Instance,
    iface_index: u32,
    link_type: LinkType,
) -> Result<AttachRecord> {
    let iface = instance.uplink.as_str();
    match link_type {
        LinkType::Tcx => attach_tcx(ebpf, instance, iface),
        LinkType::Clsact => attach_clsact(ebpf, netlink, instance, iface, iface_index).await,
        LinkType::Auto => match attach_tcx(ebpf, instance, iface) {
            Ok(record) => Ok(record),
            Err(tcx_error) => attach_clsact(ebpf, netlink, instance, iface, iface_index)
                .await
                .with_context(|| {
                    format!("tcx attach failed ({tcx_error:#}), and so did the clsact fallback")
                }),
        },
    }
}

fn attach_tcx(ebpf: &mut Ebpf, instance: &Instance, iface: &str) -> Result<AttachRecord> {
    for (done, hook) in UPLINK_HOOKS.iter().enumerate() {
        if let Err(e) = attach_tcx_hook(ebpf, hook, iface, &instance.pin(hook.link_pin)) {
            for attached in &UPLINK_HOOKS[..done] {
                let _ = unpin_link(&instance.pin(attached.link_pin));
            }
            return Err(e);
        }
    }
    Ok(AttachRecord {
        mode: Some(AttachMode::Tcx),
        ..Default::default()
    })
}

fn attach_tcx_hook(ebpf: &mut Ebpf, hook: &Hook, iface: &str, pin: &Path) -> Result<()> {
    let program = classifier(ebpf, hook.program)?;
    let id = program
        .attach_with_options(
            iface,
            hook.attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .with_context(|| {
            format!(
                "attaching {} to {iface} ({:?}) with tcx",
                hook.program, hook.attach_type
            )
        })?;
    let link: FdLink = program
        .take_link(id)?
        .try_into()
        .context("tcx link is not an fd link")?;
    // If pinning fails the link is dropped here, which detaches it.
    link.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// Unpins a tcx link; closing the last reference detaches it.
fn unpin_link(pin: &Path) -> Result<()> {
    let link = PinnedLink::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    link.unpin()
        .with_context(|| format!("unpinning {}", pin.display()))?;
    Ok(())
}

async fn attach_clsact(
    ebpf: &mut Ebpf,
    netlink: &Netlink,
    instance: &Instance,
    iface: &str,
    iface_index: u32,
) -> Result<AttachRecord> {
    let created_clsact = match qdisc_add_clsact(iface) {
        Ok(()) => true,
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(e) => return Err(e).with_context(|| format!("adding a clsact qdisc to {iface}")),
    };
    let mut record = AttachRecord {
        mode: Some(AttachMode::Clsact),
        created_clsact,
        ..Default::default()
    };
    for (done, hook) in UPLINK_HOOKS.iter().enumerate() {
        match attach_clsact_hook(ebpf, hook, iface, &instance.pin(hook.program_pin)) {
            Ok(filter) => record.filters[done] = filter,
            Err(e) => {
                for (attached, filter) in UPLINK_HOOKS[..done].iter().zip(record.filters) {
                    let _ = detach_filter(iface, attached.attach_type, filter);
                }
                if created_clsact {
                    let _ = delete_clsact(netlink, iface_index).await;
                }
                return Err(e);
            }
        }
    }
    Ok(record)
}

fn attach_clsact_hook(
    ebpf: &mut Ebpf,
    hook: &Hook,
    iface: &str,
    program_pin: &Path,
) -> Result<(u16, u32)> {
    let program = classifier(ebpf, hook.program)?;
    let id = program
        .attach_with_options(
            iface,
            hook.attach_type,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .with_context(|| {
            format!(
                "attaching {} to {iface} ({:?}) with clsact",
                hook.program, hook.attach_type
            )
        })?;
    let link = program.take_link(id)?;
    let filter = (link.priority()?, u32::from(link.handle()?));
    // Dropping a netlink link removes the filter; it must outlive us.
    std::mem::forget(link);
    // The filter keeps the program alive; the pin makes it visible under our folder.
    if let Err(e) = program.pin(program_pin) {
        detach_filter(iface, hook.attach_type, filter)?;
        return Err(e).with_context(|| format!("pinning {}", program_pin.display()));
    }
    Ok(filter)
}

fn detach_filter(
    iface: &str,
    attach_type: TcAttachType,
    (priority, handle): (u16, u32),
) -> Result<()> {
    SchedClassifierLink::attached(iface, attach_type, priority, TcHandle::from(handle), None)
        .with_context(|| format!("finding {iface}"))?
        .detach()
        .with_context(|| format!("removing the {attach_type:?} filter from {iface}"))
}

async fn delete_clsact(netlink: &Netlink, iface_index: u32) -> Result<()> {
    let mut request = netlink.handle.clone().qdisc().del(iface_index as i32);
    let header = &mut request.message_mut().header;
    header.parent = NlTcHandle::CLSACT;
    header.handle = NlTcHandle {
        major: 0xffff,
        minor: 0,
    };
    request
        .execute()
        .await
        .map_err(|e| anyhow!("removing the clsact qdisc: {e}"))
}

/// Removes whatever `record` says was attached to the instance's uplink.
/// Keeps going past failures (an interface that is already gone, say) and
/// returns every error, so one stuck step never leaves the rest behind.
pub async fn detach(
    netlink: Option<&Netlink>,
    instance: &Instance,
    iface_index: Option<u32>,
    record: &AttachRecord,
) -> Vec<anyhow::Error> {
    let iface = instance.uplink.as_str();
    let mut errors = Vec::new();
    for (hook, filter) in UPLINK_HOOKS.iter().zip(record.filters) {
        let link_pin = instance.pin(hook.link_pin);
        if link_pin.exists() {
            errors.extend(unpin_link(&link_pin).err());
        }
        if record.mode == Some(AttachMode::Clsact) && iface_index.is_some() {
            errors.extend(detach_filter(iface, hook.attach_type, filter).err());
        }
    }
    if record.created_clsact
        && let (Some(netlink), Some(index)) = (netlink, iface_index)
    {
        errors.extend(delete_clsact(netlink, index).await.err());
    }
    errors
}

/// Why the attachment recorded in `config` can no longer carry the uplink's
/// traffic (`None`: it still can, as far as can be checked up front).
/// `iface_index` is the uplink's current ifindex.
pub fn defunct_reason(instance: &Instance, config: &NatConfig, iface_index: u32) -> Option<String> {
    let iface = instance.uplink.as_str();
    if config.uplink_ifindex != iface_index {
        return Some(format!(
            "it was attached to interface index {}, but `{iface}` now has index {iface_index} (the interface was re-created)",
            config.uplink_ifindex
        ));
    }
    match config.attach_mode() {
        AttachMode::None => Some("its CONFIG records no attachment".to_owned()),
        AttachMode::Tcx => UPLINK_HOOKS
            .iter()
            .find_map(|hook| tcx_hook_defunct(instance, hook)),
        // A missing filter or qdisc shows when `replace` finds nothing to replace.
        AttachMode::Clsact => None,
    }
}

/// A pinned tcx link survives its interface (the link then points nowhere):
/// it is live only if the interface lists the link's program on that hook.
fn tcx_hook_defunct(instance: &Instance, hook: &Hook) -> Option<String> {
    let iface = instance.uplink.as_str();
    let pin = instance.pin(hook.link_pin);
    let program_id = match PinnedLink::from_pin(&pin).map(FdLink::from) {
        Ok(link) => match link.info() {
            Ok(info) => info.program_id(),
            Err(e) => return Some(format!("reading the link pinned at {}: {e}", pin.display())),
        },
        Err(e) => return Some(format!("its link {} cannot be opened: {e}", pin.display())),
    };
    match SchedClassifier::query_tcx(iface, hook.attach_type) {
        Ok((_, programs)) if programs.iter().any(|p| p.id() == program_id) => None,
        Ok(_) => Some(format!(
            "its {:?} link ({}) is no longer attached to `{iface}`",
            hook.attach_type,
            pin.display()
        )),
        Err(e) => Some(format!(
            "listing the tcx programs on `{iface}` ({:?}): {e}",
            hook.attach_type
        )),
    }
}

/// Swaps the programs loaded in `ebpf` in for the ones attached as `record`
/// says, without detaching anything: tcx links are updated in place
/// (BPF_LINK_UPDATE), clsact filters are replaced at the same priority and
/// handle (RTM_NEWTFILTER without NLM_F_CREATE, which fails if the filter is
/// gone). Each hook switches atomically; packets see the old or the new program.
pub fn replace(ebpf: &mut Ebpf, instance: &Instance, record: &AttachRecord) -> Result<()> {
    let iface = instance.uplink.as_str();
    for (hook, (priority, handle)) in UPLINK_HOOKS.iter().zip(record.filters) {
        let program = classifier(ebpf, hook.program)?;
        match record.mode {
            Some(AttachMode::Tcx) => {
                let pin = instance.pin(hook.link_pin);
                let link: SchedClassifierLink = FdLink::from(
                    PinnedLink::from_pin(&pin)
                        .with_context(|| format!("opening {}", pin.display()))?,
                )
                .try_into()
                .with_context(|| format!("{} is not a tcx link", pin.display()))?;
                let id = program.attach_to_link(link).with_context(|| {
                    format!(
                        "updating the tcx link {} to the new {}",
                        pin.display(),
                        hook.program
                    )
                })?;
                // The pin keeps the link, now running the new program; our fd can go.
                drop(program.take_link(id)?);
            }
            Some(AttachMode::Clsact) => {
                let link = SchedClassifierLink::attached(
                    iface,
                    hook.attach_type,
                    priority,
                    TcHandle::from(handle),
                    None,
                )
                .with_context(|| format!("finding {iface}"))?;
                let id = program.attach_to_link(link).with_context(|| {
                    format!(
                        "replacing the {:?} filter (priority {priority}, handle {handle:#x}) on {iface}",
                        hook.attach_type
                    )
                })?;
                // As in attach: dropping a netlink link would remove the filter.
                std::mem::forget(program.take_link(id)?);
                // The filter now holds the new program; the pin follows it
                // (unpinning the old one lets the kernel free it).
                let pin = instance.pin(hook.program_pin);
                match std::fs::remove_file(&pin) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("unpinning {}", pin.display()));
                    }
                }
                program
                    .pin(&pin)
                    .with_context(|| format!("pinning {}", pin.display()))?;
            }
            None | Some(AttachMode::None) => {
                return Err(anyhow!(
                    "the pinned datapath records no attachment to replace"
                ));
            }
        }
    }
    Ok(())
}
