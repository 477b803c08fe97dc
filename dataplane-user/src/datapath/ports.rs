//! The source check on pods' bridge ports: `pod_port_ingress` on the
//! ingress of each recorded container's host-side veth, so a pod can only
//! send with the addresses `PODS` records for its own port.
//!
//! The program is loaded with the datapath's others and pinned beside them
//! ([`PIN_PROG_POD_PORT`]); whoever records a container (the CNI plugin's
//! ADD, a lab's `attach` or `run`) attaches that pinned program to the
//! container's port. With tcx each port's link is pinned as
//! `link_port_<ifindex>`; with clsact each port has one filter at a fixed
//! priority and handle, so it is found again without a record. Attaching
//! again replaces the program in place (an upgrade adopting the datapath).

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        tc::{NlOptions, TcError, TcHandle, qdisc_add_clsact},
    },
};
use dataplane_common::{config::AttachMode, maps, pods::PodRecord};

use super::{
    instance::Instance,
    loader::classifier,
    options::KnownContainer,
    pods,
    tc::{
        add_filter, attach_tcx_first, detach_filter, repin_program, replace_filter, unpin_link,
        update_tcx_link,
    },
};

/// Pin name of the loaded `pod_port_ingress` program.
pub const PIN_PROG_POD_PORT: &str = "prog_pod_port_ingress";
/// clsact: the port filter's priority (first: nothing before it may pass a
/// spoofed packet on) and handle, the same on every port.
const CLSACT_FILTER: (u16, u32) = (1, 0xb9a5);

/// A container's bridge port.
#[derive(Clone, Copy, Debug)]
pub struct Port<'a> {
    /// The host-side veth's name and index.
    pub name: &'a str,
    pub index: u32,
}

/// Pins the loaded `pod_port_ingress` in `instance`'s folder (replacing an
/// earlier one: ports attached later get this one).
pub fn pin_program(ebpf: &mut Ebpf, instance: &Instance) -> Result<()> {
    let program = classifier(ebpf, maps::PROG_POD_PORT_INGRESS)?;
    repin_program(program, &instance.pin(PIN_PROG_POD_PORT))
}

fn link_pin(instance: &Instance, port: Port) -> PathBuf {
    instance.pin(&format!("link_port_{}", port.index))
}

/// Puts the source check on `port` (or swaps the pinned program in where
/// it is already attached).
pub fn attach(instance: &Instance, mode: AttachMode, port: Port) -> Result<()> {
    let pin = instance.pin(PIN_PROG_POD_PORT);
    let mut program = SchedClassifier::from_pin(&pin).with_context(|| {
        format!(
            "opening the source check {} (a datapath attached by an older bpfmasq: restart `bpfmasq run` to adopt it)",
            pin.display()
        )
    })?;
    let attached = match mode {
        AttachMode::Tcx => attach_tcx(instance, &mut program, port),
        AttachMode::Clsact => attach_clsact(&mut program, port),
        AttachMode::None => Err(anyhow!("the pinned datapath records no attachment")),
    };
    attached.with_context(|| format!("checking the sources sent from `{}`", port.name))
}

fn attach_tcx(instance: &Instance, program: &mut SchedClassifier, port: Port) -> Result<()> {
    let pin = link_pin(instance, port);
    if pin.exists() {
        if update_tcx_link(program, &pin).is_ok() {
            return Ok(());
        }
        // A link left from an earlier interface with this index: replaced.
        unpin_link(&pin)?;
    }
    attach_tcx_first(program, port.name, TcAttachType::Ingress, &pin)
}

fn attach_clsact(program: &mut SchedClassifier, port: Port) -> Result<()> {
    match qdisc_add_clsact(port.name) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e).context("adding a clsact qdisc"),
    }
    // Replacing fails when there is no filter yet: then it is created.
    if replace_filter(program, port.name, TcAttachType::Ingress, CLSACT_FILTER).is_err() {
        let (priority, handle) = CLSACT_FILTER;
        let options = NlOptions {
            priority,
            handle: TcHandle::from(handle),
            ..NlOptions::default()
        };
        add_filter(program, port.name, TcAttachType::Ingress, options)?;
    }
    Ok(())
}

/// Takes the source check off `port`. A port that is gone took its check
/// with it; only a tcx link's pin is left to remove then.
pub fn detach(instance: &Instance, mode: AttachMode, port: Port) -> Result<()> {
    let pin = link_pin(instance, port);
    if pin.exists() {
        unpin_link(&pin)?;
    }
    if mode == AttachMode::Clsact
        && let Err(e) = detach_filter(port.name, TcAttachType::Ingress, CLSACT_FILTER)
        && !already_gone(&e)
    {
        return Err(e);
    }
    Ok(())
}

/// Whether removing a port's filter failed only because there is nothing
/// to remove: no such interface, or no such filter on it.
fn already_gone(error: &anyhow::Error) -> bool {
    let gone = |code| matches!(code, Some(libc::ENODEV | libc::ENOENT));
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| gone(e.raw_os_error()))
        || matches!(
            error.downcast_ref::<ProgramError>(),
            Some(ProgramError::NetlinkError(e)) if gone(e.raw_os_error())
        )
}

/// Records `container`'s addresses (replacing what they had) as `record`
/// says and puts the source check on its port, when it has one.
pub fn record(
    instance: &Instance,
    mode: AttachMode,
    container: &KnownContainer,
    record: &PodRecord,
) -> Result<()> {
    pods::insert(&mut pods::open(instance)?, &container.ips, record)?;
    if record.host_ifindex == 0 {
        return Ok(());
    }
    let port = Port {
        name: &container.host_veth,
        index: record.host_ifindex,
    };
    attach(instance, mode, port)
}

/// Records each of `containers`, found by their host veth's name, and puts
/// the source check on its port.
pub fn record_known(
    instance: &Instance,
    mode: AttachMode,
    containers: &[KnownContainer],
) -> Result<()> {
    for c in containers {
        let index = interface_index(&c.host_veth)
            .ok_or_else(|| anyhow!("container `{}`: no interface `{}`", c.id, c.host_veth))?;
        record(instance, mode, c, &pods::record(c, index)?)?;
    }
    Ok(())
}

/// The ports of every recorded container that has one.
fn recorded_ports(instance: &Instance) -> Result<Vec<(String, u32)>> {
    let pods = pods::open(instance)?;
    Ok(pods::containers(&pods)?
        .into_iter()
        .filter(|c| c.host_ifindex != 0)
        .map(|c| (c.host_veth, c.host_ifindex))
        .collect())
}

/// The recorded containers' ports that still exist (a port that vanished
/// belongs to a container removed without DEL).
pub fn live_ports(instance: &Instance) -> Result<Vec<(String, u32)>> {
    Ok(recorded_ports(instance)?
        .into_iter()
        .filter(|(name, index)| interface_index(name) == Some(*index))
        .collect())
}

/// Puts the source check (the pinned program) on every recorded
/// container's port that still exists.
pub fn attach_recorded(instance: &Instance, mode: AttachMode) -> Result<()> {
    for (name, index) in live_ports(instance)? {
        attach(instance, mode, Port { name: &name, index })?;
    }
    Ok(())
}

/// Takes the source check off every recorded container's port; keeps
/// going past failures and returns them all.
pub fn detach_recorded(instance: &Instance, mode: AttachMode) -> Vec<anyhow::Error> {
    match recorded_ports(instance) {
        Ok(ports) => ports
            .iter()
            .filter_map(|(name, index)| {
                detach(
                    instance,
                    mode,
                    Port {
                        name,
                        index: *index,
                    },
                )
                .err()
            })
            .collect(),
        Err(e) => vec![e],
    }
}

fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: plain libc call with a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}
