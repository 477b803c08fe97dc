//! The source check on pods' bridge ports: `pod_port_ingress` on the
//! ingress of each recorded container's host-side veth, so a pod can only
//! send with the addresses `PODS` records for its own port.
//!
//! The program is loaded with the datapath's others and pinned beside them
//! ([`PIN_PROG_POD_PORT`]); whoever records a container (the CNI plugin's
//! ADD, `containers add`, a lab's attach) attaches that pinned program to the
//! container's port. With tcx each port's link is pinned as
//! `link_port_<ifindex>`; with clsact each port has one filter at a fixed
//! priority and handle, so it is found again without a record. Attaching
//! again replaces the program in place (an upgrade adopting the datapath).

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{
            NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle, qdisc_add_clsact,
            qdisc_detach_program,
        },
    },
};
use dataplane_common::{
    config::AttachMode,
    maps,
    pods::{PodRecord, to_field},
};

use super::{instance::Instance, loader::classifier, options::KnownContainer, pods};

/// Pin name of the loaded `pod_port_ingress` program.
pub const PIN_PROG_POD_PORT: &str = "prog_pod_port_ingress";
/// clsact: the port filter's priority (first: nothing before it may pass a
/// spoofed packet on) and handle.
const CLSACT_PRIORITY: u16 = 1;
const CLSACT_HANDLE: u32 = 0xb9a5;
/// The name tc lists the port filter under: the program's, cut to the 15
/// bytes the kernel keeps (BPF_OBJ_NAME_LEN).
const FILTER_NAME: &str = "pod_port_ingres";

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
    let pin = instance.pin(PIN_PROG_POD_PORT);
    match std::fs::remove_file(&pin) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("unpinning {}", pin.display())),
    }
    classifier(ebpf, maps::PROG_POD_PORT_INGRESS)?
        .pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))
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
    if let Ok(link) = PinnedLink::from_pin(&pin) {
        let link: SchedClassifierLink = FdLink::from(link).try_into()?;
        if let Ok(id) = program.attach_to_link(link) {
            drop(program.take_link(id)?);
            return Ok(());
        }
        // A link left from an earlier interface with this index: replaced.
        std::fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
    }
    let id = program.attach_with_options(
        port.name,
        TcAttachType::Ingress,
        TcAttachOptions::TcxOrder(LinkOrder::first()),
    )?;
    let link: FdLink = program
        .take_link(id)?
        .try_into()
        .context("tcx link is not an fd link")?;
    // If pinning fails the link is dropped here, which detaches it.
    link.pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

fn attach_clsact(program: &mut SchedClassifier, port: Port) -> Result<()> {
    match qdisc_add_clsact(port.name) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e).context("adding a clsact qdisc"),
    }
    let existing = SchedClassifierLink::attached(
        port.name,
        TcAttachType::Ingress,
        CLSACT_PRIORITY,
        TcHandle::from(CLSACT_HANDLE),
        None,
    )?;
    // Replacing fails when there is no filter yet: then it is created.
    let id = match program.attach_to_link(existing) {
        Ok(id) => id,
        Err(_) => program.attach_with_options(
            port.name,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(NlOptions {
                priority: CLSACT_PRIORITY,
                handle: TcHandle::from(CLSACT_HANDLE),
                ..NlOptions::default()
            }),
        )?,
    };
    // Dropping a netlink link removes the filter; it must outlive us.
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

/// Takes the source check off `port`. A port that is gone took its check
/// with it; only a tcx link's pin is left to remove then.
pub fn detach(instance: &Instance, mode: AttachMode, port: Port) -> Result<()> {
    let pin = link_pin(instance, port);
    if pin.exists() {
        let link =
            PinnedLink::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        link.unpin()
            .with_context(|| format!("unpinning {}", pin.display()))?;
    }
    if mode == AttachMode::Clsact {
        match qdisc_detach_program(port.name, TcAttachType::Ingress, FILTER_NAME) {
            Ok(()) => {}
            // No such port, or no check on it: nothing to remove.
            Err(TcError::IoError(e))
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("removing the source check from `{}`", port.name));
            }
        }
    }
    Ok(())
}

/// Records each of `containers` (replacing what its addresses had) and
/// puts the source check on its port.
pub fn record_known(
    instance: &Instance,
    mode: AttachMode,
    containers: &[KnownContainer],
) -> Result<()> {
    if containers.is_empty() {
        return Ok(());
    }
    let mut records = pods::open(instance)?;
    for c in containers {
        let index = interface_index(&c.host_veth)
            .ok_or_else(|| anyhow!("container `{}`: no interface `{}`", c.id, c.host_veth))?;
        let record = PodRecord {
            host_ifindex: index,
            container_id: to_field(&c.id)
                .ok_or_else(|| anyhow!("container id `{}` is too long", c.id))?,
            ifname: to_field(&c.ifname)
                .ok_or_else(|| anyhow!("interface name `{}` is too long", c.ifname))?,
            host_veth: to_field(&c.host_veth)
                .ok_or_else(|| anyhow!("interface name `{}` is too long", c.host_veth))?,
        };
        pods::insert(&mut records, &c.ips, &record)?;
        attach(
            instance,
            mode,
            Port {
                name: &c.host_veth,
                index,
            },
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_name_is_the_program_name_as_the_kernel_keeps_it() {
        let kept = &maps::PROG_POD_PORT_INGRESS[..maps::PROG_POD_PORT_INGRESS.len().min(15)];
        assert_eq!(FILTER_NAME, kept);
    }
}
