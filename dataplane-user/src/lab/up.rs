//! `lab up`: create the namespaces, then wire them with one netlink socket
//! per namespace. All or nothing: a failure (or Ctrl-C) removes every
//! namespace this run created.

use std::{fs, io, path::Path, time::Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::Ipv4Net;

use super::{
    LabSpec, far_peer,
    topology::{
        BRIDGE, BRIDGE_ADDR, CONTAINER_IFACE, FAR_ADDR, FAR_LINK_MTU, HOST_UPLINK_ADDR,
        MAX_CONTAINERS, Node, OUTSIDE_ADDR, POD_PREFIX_LEN, UPLINK, UPLINK_PREFIX_LEN,
        container_addr, container_veth, ns_name, validate_lab_name,
    },
    wiring::configure_leaf,
};
use crate::{
    netlink::{Netlink, VethPair},
    netns::NetNs,
    privileges::require_root,
};

/// Above this many containers, `up` reports progress.
const PROGRESS_ABOVE: u16 = 20;

/// The lab is IPv4-only. With IPv6 on, each new container's neighbour
/// discovery and MLD multicast is flooded to every bridge port: quadratic
/// work that made 1000 containers take ~3x longer, and chatter on the
/// uplink that would show in datapath counters.
const IPV6_OFF: [Sysctl; 2] = [
    Sysctl::optional("net/ipv6/conf/all/disable_ipv6", "1"),
    Sysctl::optional("net/ipv6/conf/default/disable_ipv6", "1"),
];
/// The host routes between the bridge and the uplink (and the outside peer
/// between the uplink and the far peer).
const IP_FORWARD: Sysctl = Sysctl::required("net/ipv4/ip_forward", "1");

pub(super) async fn up(lab: &str, spec: LabSpec) -> Result<()> {
    require_root("bpfmasq lab up")?;
    validate_lab_name(lab)?;
    let containers = spec.containers;
    if !(1..=MAX_CONTAINERS).contains(&containers) {
        bail!("a lab has 1 to {MAX_CONTAINERS} containers, not {containers}");
    }
    if !super::existing_nodes(lab)?.is_empty() {
        bail!("lab `{lab}` already exists; run `bpfmasq lab down --name {lab}` first");
    }
    let started = Instant::now();
    let mut created = CreatedNamespaces::new(lab);
    let built = tokio::select! {
        built = build(&mut created, spec) => built,
        () = interrupted() => Err(anyhow!("interrupted")),
    };
    if let Err(error) = built {
        return Err(match created.remove_all() {
            Ok(()) => error.context(format!(
                "creating lab `{lab}` failed; removed what was created"
            )),
            Err(cleanup) => error.context(format!(
                "creating lab `{lab}` failed, and so did removing it ({cleanup:#}); \
                 run `bpfmasq lab down --name {lab}`"
            )),
        });
    }
    created.keep();
    let far_peer = if spec.far_peer {
        format!(
            ", {} ({FAR_ADDR}, through {}, MTU {FAR_LINK_MTU})",
            ns_name(lab, Node::Far),
            ns_name(lab, Node::Out)
        )
    } else {
        String::new()
    };
    eprintln!(
        "lab `{lab}` is up: {} (bridge {BRIDGE} {BRIDGE_ADDR}, uplink {UPLINK} {HOST_UPLINK_ADDR}), \
         {} ({OUTSIDE_ADDR}){far_peer}, containers {}..{}; took {:.1?}",
        ns_name(lab, Node::Host),
        ns_name(lab, Node::Out),
        ns_name(lab, Node::Container(1)),
        ns_name(lab, Node::Container(containers)),
        started.elapsed(),
    );
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT). Never resolves if SIGINT cannot be watched:
/// the build then simply runs without that escape hatch.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn build(created: &mut CreatedNamespaces, spec: LabSpec) -> Result<()> {
    let host_ns = created.create(Node::Host, true)?;
    let out_ns = created.create(Node::Out, spec.far_peer)?;
    let host = Netlink::connect_in(&host_ns)?;
    let bridge = build_host(&host, &out_ns).await?;
    let outside = Netlink::connect_in(&out_ns)?;
    let outside_addr = Ipv4Net::new_assert(OUTSIDE_ADDR, UPLINK_PREFIX_LEN);
    configure_leaf(&outside, UPLINK, outside_addr, None).await?;
    if spec.far_peer {
        let far_ns = created.create(Node::Far, false)?;
        far_peer::build(&host, &outside, &far_ns)
            .await
            .context("setting up the far peer")?;
    }
    drop(outside);

    let containers = spec.containers;
    let progress = Progress::new(containers);
    for i in 1..=containers {
        let ns = created.create(Node::Container(i), false)?;
        add_container(&host, bridge, &ns, i)
            .await
            .with_context(|| format!("setting up container c{i}"))?;
        progress.report(i);
    }
    Ok(())
}

/// Bridge and uplink in the host; the uplink's peer is created directly as
/// `eth0` in the outside namespace. Returns the bridge's ifindex.
async fn build_host(host: &Netlink, out_ns: &NetNs) -> Result<u32> {
    host.set_link_up_by_name("lo").await?;
    let bridge = host.add_bridge(BRIDGE).await?;
    let bridge_addr = Ipv4Net::new_assert(BRIDGE_ADDR, POD_PREFIX_LEN);
    host.add_ipv4_addr(bridge, bridge_addr).await?;
    let uplink_pair = VethPair {
        name: UPLINK,
        peer_name: UPLINK,
        peer_netns: Some(out_ns),
        master: None,
    };
    host.add_veth(uplink_pair).await?;
    let uplink = host.link_index(UPLINK).await?;
    let uplink_addr = Ipv4Net::new_assert(HOST_UPLINK_ADDR, UPLINK_PREFIX_LEN);
    host.add_ipv4_addr(uplink, uplink_addr).await?;
    Ok(bridge)
}

/// Container `i`: a veth from the bridge whose peer is created directly as
/// `eth0` inside the container, then the container's own address and route.
async fn add_container(host: &Netlink, bridge: u32, ns: &NetNs, i: u16) -> Result<()> {
    let veth = container_veth(i);
    let pair = VethPair {
        name: &veth,
        peer_name: CONTAINER_IFACE,
        peer_netns: Some(ns),
        master: Some(bridge),
    };
    host.add_veth(pair).await?;
    let container = Netlink::connect_in(ns)?;
    let addr = Ipv4Net::new_assert(container_addr(i), POD_PREFIX_LEN);
    configure_leaf(&container, CONTAINER_IFACE, addr, Some(BRIDGE_ADDR)).await
}

/// The namespaces this `up` created, removed again on failure (also when
/// dropped without [`Self::keep`], e.g. on a panic).
struct CreatedNamespaces {
    lab: String,
    names: Vec<String>,
}

impl CreatedNamespaces {
    fn new(lab: &str) -> Self {
        Self {
            lab: lab.to_owned(),
            names: Vec::new(),
        }
    }

    /// Creates the namespace of `node` and sets its sysctls (IP forwarding
    /// if it `routes`), before any interface exists so that new interfaces
    /// inherit the `default` values.
    fn create(&mut self, node: Node, routes: bool) -> Result<NetNs> {
        let name = ns_name(&self.lab, node);
        let ns = NetNs::create(&name)?;
        self.names.push(name);
        let forwarding = routes.then_some(IP_FORWARD);
        // Net sysctls belong to the namespace of the thread that opens them.
        ns.run(|| {
            IPV6_OFF
                .iter()
                .chain(&forwarding)
                .try_for_each(Sysctl::write)
        })?
        .with_context(|| format!("setting sysctls in network namespace `{}`", ns.name()))?;
        Ok(ns)
    }

    /// The lab is complete: nothing to roll back.
    fn keep(mut self) {
        self.names.clear();
    }

    /// Deletes every namespace created so far (newest first); tries all and
    /// reports the first failure.
    fn remove_all(&mut self) -> Result<()> {
        let mut first_error = None;
        while let Some(name) = self.names.pop() {
            if let Err(e) = NetNs::delete(&name) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for CreatedNamespaces {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            eprintln!("bpfmasq: removing half-built lab `{}`: {e:#}", self.lab);
        }
    }
}

/// A value for a file under /proc/sys.
struct Sysctl {
    key: &'static str,
    value: &'static str,
    /// May be missing (IPv6 not built into the kernel): then nothing to do.
    optional: bool,
}

impl Sysctl {
    const fn required(key: &'static str, value: &'static str) -> Self {
        Self {
            key,
            value,
            optional: false,
        }
    }

    const fn optional(key: &'static str, value: &'static str) -> Self {
        Self {
            key,
            value,
            optional: true,
        }
    }

    fn write(&self) -> Result<()> {
        let path = Path::new("/proc/sys").join(self.key);
        match fs::write(&path, self.value) {
            Err(e) if self.optional && e.kind() == io::ErrorKind::NotFound => Ok(()),
            written => {
                written.with_context(|| format!("writing {} to {}", self.value, path.display()))
            }
        }
    }
}

/// Prints "created 100/1000 containers" about ten times for big labs.
struct Progress {
    total: u16,
    step: u16,
}

impl Progress {
    fn new(total: u16) -> Self {
        Self {
            total,
            step: total.div_ceil(10).max(1),
        }
    }

    fn report(&self, done: u16) {
        if self.total > PROGRESS_ABOVE && (done.is_multiple_of(self.step) || done == self.total) {
            eprintln!("created {done}/{} containers", self.total);
        }
    }
}
