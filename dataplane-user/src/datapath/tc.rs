//! Attaching the TC programs to the uplink and the bridge, and removing
//! them again.
//!
//! Three hooks: the uplink's egress (SNAT) and ingress (reverse SNAT, fast
//! path in) and the bridge's ingress (fast path out). The bridge's program is
//! attached whether the fast path is on or not: off, it passes every packet
//! at once, and switching the fast path is a CONFIG write, never an attach.
//!
//! tcx links are preferred (kernel >= 6.6): they are pinned, so the datapath
//! outlives the loader and detaching is unpinning. Without tcx, a clsact
//! qdisc with cls_bpf filters does the job; their priority and handle are
//! recorded in the RECORD map so `detach` removes exactly those filters.
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
    config::{
        AttachMode, DatapathRecord, FLAG_CREATED_BRIDGE_CLSACT, FLAG_CREATED_CLSACT, NatConfig,
    },
    maps,
};
use netlink_packet_route::tc::TcHandle as NlTcHandle;

use super::{
    instance::{
        Instance, PIN_BRIDGE_INGRESS, PIN_EGRESS, PIN_INGRESS, PIN_PROG_BRIDGE_INGRESS,
        PIN_PROG_EGRESS, PIN_PROG_INGRESS,
    },
    kernel::Kernel,
    loader::classifier,
    options::{LinkType, Resolved},
};
use crate::netlink::Netlink;

/// Which of the two interfaces a hook is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Uplink = 0,
    Bridge = 1,
}

const SIDES: [Side; 2] = [Side::Uplink, Side::Bridge];

/// One program on one hook.
struct Hook {
    program: &'static str,
    side: Side,
    attach_type: TcAttachType,
    link_pin: &'static str,
    program_pin: &'static str,
}

const HOOKS: [Hook; 3] = [
    Hook {
        program: maps::PROG_UPLINK_EGRESS,
        side: Side::Uplink,
        attach_type: TcAttachType::Egress,
        link_pin: PIN_EGRESS,
        program_pin: PIN_PROG_EGRESS,
    },
    Hook {
        program: maps::PROG_UPLINK_INGRESS,
        side: Side::Uplink,
        attach_type: TcAttachType::Ingress,
        link_pin: PIN_INGRESS,
        program_pin: PIN_PROG_INGRESS,
    },
    Hook {
        program: maps::PROG_BRIDGE_INGRESS,
        side: Side::Bridge,
        attach_type: TcAttachType::Ingress,
        link_pin: PIN_BRIDGE_INGRESS,
        program_pin: PIN_PROG_BRIDGE_INGRESS,
    },
];

/// An interface the programs go on.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    /// `None` when it no longer exists (detaching after it was removed).
    pub index: Option<u32>,
}

/// The uplink and the bridge.
#[derive(Clone, Debug)]
pub struct Interfaces {
    pub uplink: Interface,
    pub bridge: Interface,
}

impl Interfaces {
    pub fn resolved(resolved: &Resolved) -> Self {
        Self {
            uplink: Interface {
                name: resolved.uplink.clone(),
                index: Some(resolved.uplink_ifindex),
            },
            bridge: Interface {
                name: resolved.bridge.clone(),
                index: Some(resolved.bridge_ifindex),
            },
        }
    }

    /// The interfaces `config` records, as they are now: the uplink by the
    /// instance's name, the bridge by its recorded index (a bridge re-created
    /// under the same name is not the one attached to).
    pub async fn recorded(
        netlink: &Netlink,
        instance: &Instance,
        config: &NatConfig,
    ) -> Result<Self> {
        let links = netlink.links().await?;
        let bridge = links.iter().find(|l| l.index == config.bridge_ifindex);
        Ok(Self {
            uplink: Interface {
                name: instance.uplink.clone(),
                index: links
                    .iter()
                    .find(|l| l.name == instance.uplink)
                    .map(|l| l.index),
            },
            bridge: Interface {
                name: bridge.map(|l| l.name.clone()).unwrap_or_default(),
                index: bridge.map(|l| l.index),
            },
        })
    }

    fn on(&self, side: Side) -> &Interface {
        match side {
            Side::Uplink => &self.uplink,
            Side::Bridge => &self.bridge,
        }
    }
}

/// What was attached, to be stored in the [`DatapathRecord`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AttachRecord {
    pub mode: Option<AttachMode>,
    /// Per side (uplink, bridge): the loader created the clsact qdisc.
    pub created_clsact: [bool; 2],
    /// clsact filters (priority, handle), in HOOKS order.
    pub filters: [(u16, u32); 3],
}

const CREATED_CLSACT_FLAGS: [u32; 2] = [FLAG_CREATED_CLSACT, FLAG_CREATED_BRIDGE_CLSACT];

impl AttachRecord {
    pub fn store_in(&self, record: &mut DatapathRecord) {
        record.attach_mode = self.mode.unwrap_or(AttachMode::None) as u8;
        for (created, flag) in self.created_clsact.iter().zip(CREATED_CLSACT_FLAGS) {
            if *created {
                record.flags |= flag;
            } else {
                record.flags &= !flag;
            }
        }
        (record.tc_egress_priority, record.tc_egress_handle) = self.filters[0];
        (record.tc_ingress_priority, record.tc_ingress_handle) = self.filters[1];
        (record.tc_bridge_priority, record.tc_bridge_handle) = self.filters[2];
    }

    pub fn from_record(record: &DatapathRecord) -> Self {
        Self {
            mode: Some(record.attach_mode()),
            created_clsact: CREATED_CLSACT_FLAGS.map(|flag| record.flags & flag != 0),
            filters: [
                (record.tc_egress_priority, record.tc_egress_handle),
                (record.tc_ingress_priority, record.tc_ingress_handle),
                (record.tc_bridge_priority, record.tc_bridge_handle),
            ],
        }
    }
}

/// Attaches the three programs (`--link-type auto`: with tcx links where the
/// kernel has them, else clsact); on error nothing stays attached.
pub async fn attach(
    ebpf: &mut Ebpf,
    netlink: &Netlink,
    instance: &Instance,
    ifaces: &Interfaces,
    link_type: LinkType,
    kernel: &Kernel,
) -> Result<AttachRecord> {
    match link_type {
        LinkType::Tcx if !kernel.has_tcx() => Err(anyhow!(
            "this kernel ({}) has no tcx links (Linux 6.6 or later); use --link-type clsact or auto",
            kernel.release
        )),
        LinkType::Tcx => attach_tcx(ebpf, instance, ifaces),
        LinkType::Auto if kernel.has_tcx() => attach_tcx(ebpf, instance, ifaces),
        LinkType::Clsact | LinkType::Auto => attach_clsact(ebpf, netlink, instance, ifaces).await,
    }
}

fn attach_tcx(ebpf: &mut Ebpf, instance: &Instance, ifaces: &Interfaces) -> Result<AttachRecord> {
    for (done, hook) in HOOKS.iter().enumerate() {
        let iface = &ifaces.on(hook.side).name;
        if let Err(e) = attach_tcx_hook(ebpf, hook, iface, &instance.pin(hook.link_pin)) {
            for attached in HOOKS[..done].iter().rev() {
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
    attach_tcx_first(program, iface, hook.attach_type, pin).with_context(|| {
        format!(
            "attaching {} to {iface} ({:?}) with tcx",
            hook.program, hook.attach_type
        )
    })
}

/// Attaches `program` first on `iface`'s tcx hook and pins the link at
/// `pin` (the link lives as long as the pin).
pub(super) fn attach_tcx_first(
    program: &mut SchedClassifier,
    iface: &str,
    attach_type: TcAttachType,
    pin: &Path,
) -> Result<()> {
    // First: a program before it that returned TCX_PASS would let
    // pod packets leave untranslated.
    let id = program.attach_with_options(
        iface,
        attach_type,
        TcAttachOptions::TcxOrder(LinkOrder::first()),
    )?;
    let link: FdLink = program
        .take_link(id)?
        .try_into()
        .context("tcx link is not an fd link")?;
    // If pinning fails the link is dropped here, which detaches it.
    link.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// Swaps `program` into the tcx link pinned at `pin` (BPF_LINK_UPDATE).
pub(super) fn update_tcx_link(program: &mut SchedClassifier, pin: &Path) -> Result<()> {
    let link: SchedClassifierLink = FdLink::from(
        PinnedLink::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?,
    )
    .try_into()
    .with_context(|| format!("{} is not a tcx link", pin.display()))?;
    let id = program
        .attach_to_link(link)
        .with_context(|| format!("updating the tcx link {}", pin.display()))?;
    // The pin keeps the link, now running the new program; our fd can go.
    drop(program.take_link(id)?);
    Ok(())
}

/// Attaches `program` as a clsact filter on `iface` with `options` and
/// leaves it there; returns its (priority, handle).
pub(super) fn add_filter(
    program: &mut SchedClassifier,
    iface: &str,
    attach_type: TcAttachType,
    options: NlOptions,
) -> Result<(u16, u32)> {
    let id = program.attach_with_options(iface, attach_type, TcAttachOptions::Netlink(options))?;
    let link = program.take_link(id)?;
    let filter = (link.priority()?, u32::from(link.handle()?));
    // Dropping a netlink link removes the filter; it must outlive us.
    std::mem::forget(link);
    Ok(filter)
}

/// Swaps `program` into the clsact filter (priority, handle) on `iface`
/// (RTM_NEWTFILTER without NLM_F_CREATE: fails if the filter is gone).
pub(super) fn replace_filter(
    program: &mut SchedClassifier,
    iface: &str,
    attach_type: TcAttachType,
    (priority, handle): (u16, u32),
) -> Result<()> {
    let link =
        SchedClassifierLink::attached(iface, attach_type, priority, TcHandle::from(handle), None)
            .with_context(|| format!("finding {iface}"))?;
    let id = program.attach_to_link(link).with_context(|| {
        format!(
            "replacing the {attach_type:?} filter (priority {priority}, handle {handle:#x}) on {iface}"
        )
    })?;
    // As in add_filter: dropping a netlink link would remove the filter.
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

/// Pins `program` at `pin`, in place of whatever was pinned there
/// (unpinning the old one lets the kernel free it once unused).
pub(super) fn repin_program(program: &mut SchedClassifier, pin: &Path) -> Result<()> {
    match std::fs::remove_file(pin) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("unpinning {}", pin.display())),
    }
    program
        .pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))
}

/// Unpins a tcx link; closing the last reference detaches it.
pub(super) fn unpin_link(pin: &Path) -> Result<()> {
    let link = PinnedLink::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    link.unpin()
        .with_context(|| format!("unpinning {}", pin.display()))?;
    Ok(())
}

async fn attach_clsact(
    ebpf: &mut Ebpf,
    netlink: &Netlink,
    instance: &Instance,
    ifaces: &Interfaces,
) -> Result<AttachRecord> {
    let mut record = AttachRecord {
        mode: Some(AttachMode::Clsact),
        ..Default::default()
    };
    let attached = async {
        for side in SIDES {
            let iface = &ifaces.on(side).name;
            record.created_clsact[side as usize] = match qdisc_add_clsact(iface) {
                Ok(()) => true,
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
                Err(e) => {
                    return Err(e).with_context(|| format!("adding a clsact qdisc to {iface}"));
                }
            };
        }
        for (done, hook) in HOOKS.iter().enumerate() {
            let iface = &ifaces.on(hook.side).name;
            record.filters[done] =
                attach_clsact_hook(ebpf, hook, iface, &instance.pin(hook.program_pin))?;
        }
        Ok(())
    }
    .await;
    match attached {
        Ok(()) => Ok(record),
        Err(e) => {
            // A filter not attached has handle 0: nothing to remove there.
            let _ = detach_clsact(netlink, ifaces, &record).await;
            Err(e)
        }
    }
}

fn attach_clsact_hook(
    ebpf: &mut Ebpf,
    hook: &Hook,
    iface: &str,
    program_pin: &Path,
) -> Result<(u16, u32)> {
    let program = classifier(ebpf, hook.program)?;
    let filter =
        add_filter(program, iface, hook.attach_type, NlOptions::default()).with_context(|| {
            format!(
                "attaching {} to {iface} ({:?}) with clsact",
                hook.program, hook.attach_type
            )
        })?;
    // The filter keeps the program alive; the pin makes it visible under our folder.
    if let Err(e) = program.pin(program_pin) {
        detach_filter(iface, hook.attach_type, filter)?;
        return Err(e).with_context(|| format!("pinning {}", program_pin.display()));
    }
    Ok(filter)
}

pub(super) fn detach_filter(
    iface: &str,
    attach_type: TcAttachType,
    (priority, handle): (u16, u32),
) -> Result<()> {
    SchedClassifierLink::attached(iface, attach_type, priority, TcHandle::from(handle), None)
        .with_context(|| format!("finding {iface}"))?
        .detach()
        .with_context(|| format!("removing the {attach_type:?} filter from {iface}"))
}

async fn delete_clsact(netlink: &Netlink, iface: &str, iface_index: u32) -> Result<()> {
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
        .map_err(|e| anyhow!("removing the clsact qdisc of {iface}: {e}"))
}

/// Removes the clsact filters `record` lists (those with a handle) and the
/// qdiscs it created, on the interfaces that still exist.
async fn detach_clsact(
    netlink: &Netlink,
    ifaces: &Interfaces,
    record: &AttachRecord,
) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    // Reverse order: the SNAT program goes last, so no pod packet can reach
    // the uplink without it while the fast path still redirects.
    for (hook, filter) in HOOKS.iter().zip(record.filters).rev() {
        let iface = ifaces.on(hook.side);
        if iface.index.is_some() && filter.1 != 0 {
            errors.extend(detach_filter(&iface.name, hook.attach_type, filter).err());
        }
    }
    for side in SIDES.into_iter().rev() {
        let iface = ifaces.on(side);
        if let (true, Some(index)) = (record.created_clsact[side as usize], iface.index) {
            errors.extend(delete_clsact(netlink, &iface.name, index).await.err());
        }
    }
    errors
}

/// Removes whatever `record` says was attached. Keeps going past failures
/// (an interface that is already gone, say) and returns every error, so one
/// stuck step never leaves the rest behind.
pub async fn detach(
    netlink: &Netlink,
    instance: &Instance,
    ifaces: &Interfaces,
    record: &AttachRecord,
) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    // Reverse order, as for clsact: the SNAT program goes last.
    for hook in HOOKS.iter().rev() {
        let link_pin = instance.pin(hook.link_pin);
        if link_pin.exists() {
            errors.extend(unpin_link(&link_pin).err());
        }
    }
    if record.mode == Some(AttachMode::Clsact) {
        errors.extend(detach_clsact(netlink, ifaces, record).await);
    }
    errors
}

/// Why the attachment `config` and `record` describe can no longer carry
/// the traffic (`None`: it still can, as far as can be checked up front).
/// `resolved` holds the interfaces' current indexes.
pub fn defunct_reason(
    instance: &Instance,
    (config, record): (&NatConfig, &DatapathRecord),
    resolved: &Resolved,
) -> Option<String> {
    let recreated = |what: &str, name: &str, was: u32, now: u32| {
        (was != now).then(|| {
            format!(
                "its {what} was interface index {was}, but `{name}` now has index {now} (the interface was re-created)"
            )
        })
    };
    if let Some(reason) = recreated(
        "uplink",
        &resolved.uplink,
        config.uplink_ifindex,
        resolved.uplink_ifindex,
    )
    .or_else(|| {
        recreated(
            "bridge",
            &resolved.bridge,
            config.bridge_ifindex,
            resolved.bridge_ifindex,
        )
    }) {
        return Some(reason);
    }
    let ifaces = Interfaces::resolved(resolved);
    match record.attach_mode() {
        AttachMode::None => Some("its RECORD holds no attachment".to_owned()),
        AttachMode::Tcx => HOOKS
            .iter()
            .find_map(|hook| tcx_hook_defunct(instance, hook, &ifaces.on(hook.side).name)),
        // A missing filter or qdisc shows when `replace` finds nothing to replace.
        AttachMode::Clsact => None,
    }
}

/// A pinned tcx link survives its interface (the link then points nowhere):
/// it is live only if the interface lists the link's program on that hook.
fn tcx_hook_defunct(instance: &Instance, hook: &Hook, iface: &str) -> Option<String> {
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
pub fn replace(
    ebpf: &mut Ebpf,
    instance: &Instance,
    ifaces: &Interfaces,
    record: &AttachRecord,
) -> Result<()> {
    for (hook, filter) in HOOKS.iter().zip(record.filters) {
        let iface = ifaces.on(hook.side).name.as_str();
        let program = classifier(ebpf, hook.program)?;
        match record.mode {
            Some(AttachMode::Tcx) => update_tcx_link(program, &instance.pin(hook.link_pin))
                .with_context(|| format!("swapping in the new {}", hook.program))?,
            Some(AttachMode::Clsact) => {
                replace_filter(program, iface, hook.attach_type, filter)?;
                // The filter now holds the new program; the pin follows it.
                repin_program(program, &instance.pin(hook.program_pin))?;
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
