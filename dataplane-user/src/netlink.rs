//! rtnetlink helpers: one [`Netlink`] handle per network namespace, with the
//! few link, address and route operations bpfmasq and its lab need.
//!
//! A netlink socket acts on the namespace it was created in, whatever thread
//! later uses it; [`Netlink::connect_in`] relies on that to configure another
//! namespace from the caller's thread.

use std::{
    collections::BTreeMap,
    fmt, fs,
    net::{IpAddr, Ipv4Addr},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};
use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::{
    LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
        link::{
            InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
        },
        route::{RouteAttribute, RouteMessage, RouteMetric},
    },
};

use crate::netns::NetNs;

/// Interface name buffer size, including the terminating NUL.
const IFNAMSIZ: usize = 16;

/// A netlink route socket bound to one network namespace.
pub struct Netlink {
    pub handle: rtnetlink::Handle,
    /// Which namespace the socket lives in, for error messages.
    origin: Origin,
}

/// Where a [`Netlink`] socket was created.
#[derive(Clone, Debug)]
enum Origin {
    Named(String),
    /// The caller's namespace at connect time, as the (device, inode) of its
    /// nsfs file; named lazily (only error paths need the name).
    Current {
        dev: u64,
        ino: u64,
    },
}

/// One network interface, as `ip link` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSummary {
    pub index: u32,
    pub name: String,
    /// Link kind (`veth`, `bridge`...); `None` for physical devices and `lo`.
    pub kind: Option<String>,
    /// Operational state as the kernel reports it: `UP`, `DOWN`, `UNKNOWN`...
    pub oper_state: String,
    /// Administratively up (`ip link set up`).
    pub admin_up: bool,
    /// ifindex of the bridge (or other controller) this link is enslaved to.
    pub master: Option<u32>,
}

/// A veth pair to create with [`Netlink::add_veth`]. The local end comes up;
/// the peer stays down (the kernel cannot open it while the pair is still
/// being created): bring it up from its own namespace.
#[derive(Clone, Copy, Debug)]
pub struct VethPair<'a> {
    /// Name of the end that stays in this handle's namespace.
    pub name: &'a str,
    /// Name of the other end, in `peer_netns` (or here).
    pub peer_name: &'a str,
    /// Create the peer directly inside this namespace: no temporary name and
    /// no separate move, so the peer name only has to be unique there.
    pub peer_netns: Option<&'a NetNs>,
    /// Enslave the local end to this bridge (ifindex).
    pub master: Option<u32>,
}

impl Netlink {
    /// Netlink socket in the calling thread's current network namespace;
    /// spawns the connection task on the current tokio runtime.
    pub fn connect() -> Result<Self> {
        let runtime = current_runtime()?;
        let ns = fs::metadata("/proc/thread-self/ns/net")
            .context("identifying the current network namespace")?;
        let (connection, handle, _) =
            rtnetlink::new_connection().context("opening a netlink route socket")?;
        runtime.spawn(connection);
        Ok(Self {
            handle,
            origin: Origin::Current {
                dev: ns.dev(),
                ino: ns.ino(),
            },
        })
    }

    /// Netlink socket inside `ns`: created on a thread that entered `ns`,
    /// then driven by the current runtime (the socket keeps its namespace).
    pub fn connect_in(ns: &NetNs) -> Result<Self> {
        let runtime = current_runtime()?;
        let (connection, handle, _) = ns
            .run(|| {
                // Registering the socket with the reactor needs the runtime's
                // context, which a fresh thread does not have.
                let _context = runtime.enter();
                rtnetlink::new_connection()
            })?
            .with_context(|| {
                format!(
                    "opening a netlink socket in network namespace `{}`",
                    ns.name()
                )
            })?;
        runtime.spawn(connection);
        Ok(Self {
            handle,
            origin: Origin::Named(ns.name().to_owned()),
        })
    }

    /// Describes the socket's namespace for messages: "network namespace `x`".
    pub fn netns_description(&self) -> String {
        match &self.origin {
            Origin::Named(name) => format!("network namespace `{name}`"),
            Origin::Current { dev, ino } => describe_netns(*dev, *ino),
        }
    }

    /// ifindex of interface `name`, or `None` if there is no such interface.
    pub async fn find_link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.find_link(name).await?.map(|link| link.header.index))
    }

    /// Interface `name` as the kernel describes it, or `None` if there is none.
    async fn find_link(&self, name: &str) -> Result<Option<LinkMessage>> {
        // The kernel rejects over-long names (ERANGE) rather than not finding them.
        if name.is_empty() || name.len() >= IFNAMSIZ {
            return Ok(None);
        }
        let mut request = std::pin::pin!(self.handle.link().get().match_name(name).execute());
        match request.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(self.failed(e, format_args!("looking up interface `{name}`"))),
        }
    }

    /// ifindex of interface `name`, refusing one without Ethernet framing
    /// (tun, WireGuard, ipip, ppp: their packets start at the IP header).
    pub async fn ethernet_link_index(&self, name: &str) -> Result<u32> {
        let link = self
            .find_link(name)
            .await?
            .ok_or_else(|| self.missing_link(name))?;
        match link.header.link_layer_type {
            LinkLayerType::Ether => Ok(link.header.index),
            other => Err(anyhow!(
                "interface `{name}` is not an Ethernet device (link type {}): bpfmasq \
                 translates Ethernet frames only",
                format!("{other:?}").to_lowercase()
            )),
        }
    }

    /// ifindex of interface `name`; a clear error naming the namespace when missing.
    pub async fn link_index(&self, name: &str) -> Result<u32> {
        self.find_link_index(name)
            .await?
            .ok_or_else(|| self.missing_link(name))
    }

    fn missing_link(&self, name: &str) -> anyhow::Error {
        anyhow!("no interface `{name}` in {}", self.netns_description())
    }

    /// Every interface of the namespace, in ifindex order.
    pub async fn links(&self) -> Result<Vec<LinkSummary>> {
        let mut links: Vec<LinkSummary> = self
            .handle
            .link()
            .get()
            .execute()
            .map_ok(summarize_link)
            .try_collect()
            .await
            .map_err(|e| self.failed(e, format_args!("listing interfaces")))?;
        links.sort_by_key(|link| link.index);
        Ok(links)
    }

    /// IPv4 addresses of `ifindex`: primary (non-secondary) first, then
    /// secondaries, each group in kernel order.
    pub async fn ipv4_addrs(&self, ifindex: u32) -> Result<Vec<Ipv4Net>> {
        Ok(self
            .ipv4_addrs_by_link()
            .await?
            .remove(&ifindex)
            .unwrap_or_default())
    }

    /// IPv4 addresses of every interface (ifindex → addresses, ordered as in
    /// [`Self::ipv4_addrs`]), with one dump.
    pub async fn ipv4_addrs_by_link(&self) -> Result<BTreeMap<u32, Vec<Ipv4Net>>> {
        let mut request = self.handle.address().get();
        // The kernel then dumps only IPv4 addresses.
        request.message_mut().header.family = AddressFamily::Inet;
        let messages: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.failed(e, format_args!("listing IPv4 addresses")))?;
        let mut by_link: BTreeMap<u32, Vec<(bool, Ipv4Net)>> = BTreeMap::new();
        for message in &messages {
            if let Some(net) = ipv4_net_of(message) {
                by_link
                    .entry(message.header.index)
                    .or_default()
                    .push((is_secondary(message), net));
            }
        }
        Ok(by_link
            .into_iter()
            .map(|(index, mut addrs)| {
                // Stable: kernel order is kept within each group.
                addrs.sort_by_key(|(secondary, _)| *secondary);
                (index, addrs.into_iter().map(|(_, net)| net).collect())
            })
            .collect())
    }

    /// ifindex of the interface the main table's IPv4 default route leaves
    /// through (the lowest-metric one), if there is a default route.
    pub async fn default_route_link(&self) -> Result<Option<u32>> {
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.failed(e, format_args!("listing IPv4 routes")))?;
        let mut defaults: Vec<(u32, u32)> = routes
            .iter()
            .filter(|route| route.header.destination_prefix_length == 0)
            .filter(|route| route.header.table == libc::RT_TABLE_MAIN)
            .filter_map(|route| {
                let mut oif = None;
                let mut metric = 0;
                for attribute in &route.attributes {
                    match attribute {
                        RouteAttribute::Oif(index) => oif = Some(*index),
                        RouteAttribute::Priority(priority) => metric = *priority,
                        _ => {}
                    }
                }
                Some((metric, oif?))
            })
            .collect();
        defaults.sort_unstable();
        Ok(defaults.first().map(|&(_, oif)| oif))
    }

    /// Sets interface `ifindex` administratively up.
    pub async fn set_link_up(&self, ifindex: u32) -> Result<()> {
        self.set_link(
            LinkUnspec::new_with_index(ifindex).up().build(),
            format_args!("bringing up interface {ifindex}"),
        )
        .await
    }

    /// Sets interface `name` administratively up.
    pub async fn set_link_up_by_name(&self, name: &str) -> Result<()> {
        self.set_link(
            LinkUnspec::new_with_name(name).up().build(),
            format_args!("bringing up interface `{name}`"),
        )
        .await
    }

    /// Enslaves interface `ifindex` to the bridge `master`.
    pub async fn set_link_master(&self, ifindex: u32, master: u32) -> Result<()> {
        let message = LinkUnspec::new_with_index(ifindex)
            .controller(master)
            .build();
        self.set_link(
            message,
            format_args!("attaching interface {ifindex} to bridge {master}"),
        )
        .await
    }

    /// Creates bridge `name`, up, and returns its ifindex.
    pub async fn add_bridge(&self, name: &str) -> Result<u32> {
        self.add_link(
            LinkBridge::new(name).build(),
            format_args!("creating bridge `{name}`"),
        )
        .await?;
        self.link_index(name).await
    }

    /// Creates a veth pair (see [`VethPair`]); the local end is up.
    pub async fn add_veth(&self, pair: VethPair<'_>) -> Result<()> {
        let mut peer = LinkUnspec::new_with_name(pair.peer_name);
        if let Some(netns) = pair.peer_netns {
            // The fd is read while the kernel handles the request, which
            // happens synchronously inside our send: it only has to outlive it.
            peer = peer.setns_by_fd(netns.fd().as_raw_fd());
        }
        let mut local = LinkVeth::new(pair.name, pair.peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .up();
        if let Some(master) = pair.master {
            local = local.controller(master);
        }
        let peer_place = pair
            .peer_netns
            .map(|ns| format!(" in network namespace `{}`", ns.name()))
            .unwrap_or_default();
        let what = format_args!(
            "creating veth `{}` (peer `{}`{peer_place})",
            pair.name, pair.peer_name
        );
        self.add_link(local.build(), what).await
    }

    /// Deletes interface `ifindex` (a veth takes its peer with it).
    pub async fn delete_link(&self, ifindex: u32) -> Result<()> {
        self.handle
            .link()
            .del(ifindex)
            .execute()
            .await
            .map_err(|e| self.failed(e, format_args!("deleting interface {ifindex}")))
    }

    /// Adds `addr` (address and prefix) to interface `ifindex`.
    pub async fn add_ipv4_addr(&self, ifindex: u32, addr: Ipv4Net) -> Result<()> {
        self.handle
            .address()
            .add(ifindex, IpAddr::V4(addr.addr()), addr.prefix_len())
            .execute()
            .await
            .map_err(|e| {
                self.failed(
                    e,
                    format_args!("adding address {addr} to interface {ifindex}"),
                )
            })
    }

    /// Adds a default route via `gateway` to the main table.
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        self.add_route(Route {
            destination: None,
            gateway,
            advmss: None,
        })
        .await
    }

    /// Adds `route` to the main table.
    pub async fn add_route(&self, route: Route) -> Result<()> {
        self.handle
            .route()
            .add(route.message())
            .execute()
            .await
            .map_err(|e| self.failed(e, format_args!("adding the {route}")))
    }

    /// Removes `route` from the main table.
    pub async fn delete_route(&self, route: Route) -> Result<()> {
        self.handle
            .route()
            .del(route.message())
            .execute()
            .await
            .map_err(|e| self.failed(e, format_args!("deleting the {route}")))
    }

    /// Sets the MTU of interface `ifindex`.
    pub async fn set_mtu(&self, ifindex: u32, mtu: u32) -> Result<()> {
        self.set_link(
            LinkUnspec::new_with_index(ifindex).mtu(mtu).build(),
            format_args!("setting MTU {mtu} on interface {ifindex}"),
        )
        .await
    }

    async fn add_link(&self, message: LinkMessage, what: fmt::Arguments<'_>) -> Result<()> {
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| self.failed(e, what))
    }

    async fn set_link(&self, message: LinkMessage, what: fmt::Arguments<'_>) -> Result<()> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| self.failed(e, what))
    }

    /// "WHAT in network namespace `x`: REASON", with the kernel's errno as
    /// the reason (rtnetlink's own wording hides it behind a prefix).
    fn failed(&self, error: rtnetlink::Error, what: fmt::Arguments<'_>) -> anyhow::Error {
        let reason = match &error {
            rtnetlink::Error::NetlinkError(message) => message.to_io().to_string(),
            other => other.to_string(),
        };
        anyhow!("{what} in {}: {reason}", self.netns_description())
    }
}

fn current_runtime() -> Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().context("netlink needs a tokio runtime (internal error)")
}

/// The positive errno of a kernel error reply, if `error` is one.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}

fn summarize_link(message: LinkMessage) -> LinkSummary {
    let mut link = LinkSummary {
        index: message.header.index,
        name: String::new(),
        kind: None,
        oper_state: "UNKNOWN".to_owned(),
        admin_up: message.header.flags.contains(LinkFlags::Up),
        master: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::OperState(state) => link.oper_state = state.to_string(),
            LinkAttribute::Controller(master) if master != 0 => link.master = Some(master),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.into_iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

/// The interface's own address and prefix. IFA_LOCAL is the local address;
/// IFA_ADDRESS differs from it only on point-to-point links (the peer).
fn ipv4_net_of(message: &AddressMessage) -> Option<Ipv4Net> {
    let ipv4 = |attribute: &AddressAttribute| match attribute {
        AddressAttribute::Local(IpAddr::V4(addr)) => Some((true, *addr)),
        AddressAttribute::Address(IpAddr::V4(addr)) => Some((false, *addr)),
        _ => None,
    };
    let mut candidates = message
        .attributes
        .iter()
        .filter_map(ipv4)
        .collect::<Vec<_>>();
    candidates.sort_by_key(|(local, _)| !local);
    let (_, addr) = candidates.first()?;
    Ipv4Net::new(*addr, message.header.prefix_len).ok()
}

fn is_secondary(message: &AddressMessage) -> bool {
    message.header.flags.contains(AddressHeaderFlags::Secondary)
        || message.attributes.iter().any(
            |attribute| matches!(attribute, AddressAttribute::Flags(flags) if flags.contains(AddressFlags::Secondary)),
        )
}

/// Names the namespace with nsfs identity (`dev`, `ino`), like `ip netns identify`.
/// An IPv4 unicast route in the main table.
pub struct Route {
    /// `None`: the default route.
    pub destination: Option<Ipv4Net>,
    pub gateway: Ipv4Addr,
    /// The MSS TCP announces to peers reached through this route.
    pub advmss: Option<u32>,
}

impl Route {
    fn message(&self) -> RouteMessage {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new().gateway(self.gateway);
        if let Some(net) = self.destination {
            builder = builder.destination_prefix(net.network(), net.prefix_len());
        }
        let mut message = builder.build();
        if let Some(mss) = self.advmss {
            message
                .attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Advmss(mss)]));
        }
        message
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.destination {
            Some(net) => write!(f, "route to {net}")?,
            None => f.write_str("default route")?,
        }
        write!(f, " via {}", self.gateway)?;
        if let Some(mss) = self.advmss {
            write!(f, " advmss {mss}")?;
        }
        Ok(())
    }
}

fn describe_netns(dev: u64, ino: u64) -> String {
    let same = |path: &Path| fs::metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino);
    match crate::netns::name_of(dev, ino) {
        Some(name) => format!("network namespace `{name}`"),
        None if same(Path::new("/proc/1/ns/net")) => "the initial network namespace".to_owned(),
        None => "the current network namespace".to_owned(),
    }
}
