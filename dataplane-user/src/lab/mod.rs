//! The lab: a container host's topology (ARCHITECTURE.md, "The lab")
//! rebuilt in named network namespaces, so bpfmasq can be tried and tested
//! without touching the machine's own network.
//!
//! A lab `NAME` is the namespaces `NAME-host`, `NAME-out` and `NAME-c1`..,
//! plus `NAME-far` routed through `NAME-out` when asked for ([`LabSpec`]);
//! see [`topology`] for addresses and names. Everything is configured through
//! netlink sockets opened inside those namespaces: the caller's namespace is
//! never read or changed.

mod down;
mod exec;
mod far_peer;
mod status;
pub mod topology;
mod up;
mod wiring;

use std::path::PathBuf;

use anyhow::{Result, bail};

pub use self::{
    exec::exec,
    status::{InterfaceStatus, LabStatus, NamespaceStatus, inspect},
    topology::{
        BRIDGE, BRIDGE_ADDR, CONTAINER_IFACE, DEFAULT_NAME, FAR_ADDR, FAR_IFACE, FAR_LINK_MTU,
        FAR_SUBNET, HOST_UPLINK_ADDR, MAX_CONTAINERS, MAX_NAME_LEN, Node, OUT_FAR_ADDR,
        OUT_FAR_IFACE, OUTSIDE_ADDR, POD_PREFIX_LEN, POD_SUBNET, UPLINK, UPLINK_PREFIX_LEN,
        container_addr, container_veth, ns_name,
    },
};
use crate::{datapath::options::KnownContainer, netns::NetNs};

/// Where `attach` pins datapaths, one folder per namespace.
const PIN_ROOT: &str = "/sys/fs/bpf/bpfmasq";

/// What `lab up` builds besides the host and the outside peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// Containers `NAME-c1..NAME-cN`.
    pub containers: u16,
    /// Also `NAME-far`, one routed hop beyond `NAME-out` over a 1280-byte MTU link.
    pub far_peer: bool,
}

/// `bpfmasq lab up`: builds lab `name` with `containers` containers; on any
/// failure removes what it created and returns the error.
pub async fn up(name: &str, containers: u16) -> Result<()> {
    up_with(
        name,
        LabSpec {
            containers,
            far_peer: false,
        },
    )
    .await
}

/// Like [`up`], with every choice of [`LabSpec`].
pub async fn up_with(name: &str, spec: LabSpec) -> Result<()> {
    up::up(name, spec).await
}

/// `bpfmasq lab down`: removes every namespace of lab `name` and the
/// datapath pinned for its host. A lab that does not exist is not an error.
pub async fn down(name: &str) -> Result<()> {
    down::down(name).await
}

/// `bpfmasq lab status`: prints the lab's namespaces and interfaces, as a
/// table or (`json`) as a [`LabStatus`].
pub async fn status(name: &str, json: bool) -> Result<()> {
    status::status(name, json).await
}

/// The nodes of lab `lab` whose namespaces exist, sorted (host, out, far, c1, c2...).
pub fn existing_nodes(lab: &str) -> Result<Vec<Node>> {
    let namespaces = NetNs::list()?;
    Ok(topology::nodes_among(
        lab,
        namespaces.iter().map(String::as_str),
    ))
}

/// The containers of the lab whose host is network namespace `netns`, as
/// `attach` and `run` record them there (none: `netns` is no lab's host).
pub fn containers_of_host(netns: &str) -> Result<Vec<KnownContainer>> {
    let Some(lab) = netns.strip_suffix(&format!("-{}", Node::Host)) else {
        return Ok(Vec::new());
    };
    Ok(existing_nodes(lab)?
        .into_iter()
        .filter_map(|node| match node {
            Node::Container(i) => Some(KnownContainer {
                id: ns_name(lab, node),
                ifname: CONTAINER_IFACE.to_owned(),
                host_veth: container_veth(i),
                ips: vec![container_addr(i)],
            }),
            _ => None,
        })
        .collect())
}

/// The folder holding the datapath pins of lab `lab`'s host.
pub fn pin_dir(lab: &str) -> PathBuf {
    PathBuf::from(PIN_ROOT).join(ns_name(lab, Node::Host))
}

/// The existing nodes of lab `lab`, or the error every verb but `up` and
/// `down` gives for a lab that does not exist.
fn require_existing(lab: &str) -> Result<Vec<Node>> {
    let nodes = existing_nodes(lab)?;
    if nodes.is_empty() {
        bail!(
            "lab `{lab}` does not exist (no namespace `{}`); create it with `bpfmasq lab up --name {lab}`",
            ns_name(lab, Node::Host)
        );
    }
    Ok(nodes)
}
