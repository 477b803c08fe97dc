//! The CNI verbs over bpfmasq's datapath. The plugin runs in the runtime's
//! network namespace (the host side: bridge and uplink are there), so the
//! instance is `PIN_ROOT/<this namespace>/<uplink>/`, the same one
//! `bpfmasq --netns NAME` commands find.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{
    error::{CniError, Code, OrCni as _},
    lock,
    spec::{Attachment, NetConf, PluginOptions, PrevResult},
};
use crate::{
    datapath::{
        attach_fresh, bpffs, detach_instance,
        instance::{Instance, netns_label},
        kernel::Kernel,
        options::{AttachOptions, KnownContainer, LinkType, Resolved},
        pinned,
        pods::{self, raw},
        ports::{self, Port},
    },
    netlink::Netlink,
};

/// ADD: attach (once) and record the container; the result is `prevResult`.
pub async fn add(conf: &NetConf, who: &Attachment) -> Result<serde_json::Value, CniError> {
    let options = conf.options()?;
    let prev = conf.prev_result()?.ok_or_else(|| {
        CniError::new(
            Code::INVALID_CONFIG,
            "no prevResult: bpfmasq-cni is a chained plugin, list it after `bridge` in a conflist",
        )
    })?;
    let netlink = connect()?;
    let uplink = uplink_name(&netlink, &options).await?;
    let host = HostSide::find(&netlink, &prev).await?;
    let ips = prev.container_ipv4(&who.ifname);
    let Some(first) = ips.first() else {
        return Err(CniError::new(
            Code::INVALID_CONFIG,
            format!(
                "prevResult gives interface `{}` no IPv4 address to masquerade",
                who.ifname
            ),
        ));
    };
    let container = KnownContainer {
        id: who.container_id.clone(),
        ifname: who.ifname.clone(),
        host_veth: host.veth.clone(),
        ips: ips.iter().map(Ipv4Net::addr).collect(),
    };
    let record = pods::record(&container, host.veth_ifindex)
        .or_cni(Code::INVALID_ENV, "CNI_CONTAINERID or CNI_IFNAME")?;

    let _lock = lock().or_cni(Code::STATE, "taking bpfmasq's lock")?;
    let options = AttachOptions {
        bridge: host.bridge.clone(),
        uplink,
        // The bridge's subnet, as `attach`; a bridge without an address
        // (`isGateway: false`) gets the container's subnet.
        pod_cidr: match netlink.ipv4_addrs(host.bridge_ifindex).await {
            Ok(addrs) if !addrs.is_empty() => None,
            _ => Some(first.trunc()),
        },
        no_masq: options.no_masq,
        port_range: options.port_range,
        nat_address: options.nat_address,
        ct_max: options.ct_max,
        ct_max_per_pod: options.ct_max_per_pod,
        timeouts: Vec::new(),
        link_type: LinkType::Auto,
        fast_path: options.fast_path,
        takeover: false,
        // This ADD records its own container once attached.
        known_containers: Vec::new(),
    };
    let instance = ensure_attached(&netlink, &options).await?;

    let map = pods::open(&instance).or_cni(Code::STATE, "opening the container records")?;
    let known = pods::containers(&map).or_cni(Code::STATE, "reading the container records")?;
    // An address whose record is another container's (or none) may still
    // carry flows of a container removed without DEL: they must not reach
    // this one.
    let inherited: Vec<u32> = container
        .ips
        .iter()
        .filter(|ip| {
            !known
                .iter()
                .any(|c| c.is(&who.container_id, &who.ifname) && c.ips.contains(ip))
        })
        .map(|ip| raw(*ip))
        .collect();
    pods::remove_flows_of(&instance, &inherited).or_cni(
        Code::STATE,
        "removing flows left on the container's address",
    )?;
    let mode = pinned::read_record(&instance)
        .or_cni(Code::STATE, "reading the datapath's record")?
        .attach_mode();
    ports::record(&instance, mode, &container, &record).or_cni(
        Code::ATTACH_FAILED,
        "recording the container and checking its sources",
    )?;

    let mut result = conf.prev_result.clone().unwrap_or_default();
    if let Some(object) = result.as_object_mut() {
        object.insert("cniVersion".into(), conf.cni_version.clone().into());
    }
    Ok(result)
}

/// DEL: the container's flows and records go, in every datapath of this
/// namespace (the configuration may have changed since ADD); nothing to
/// remove is success.
pub fn del(conf: &NetConf, who: &Attachment) -> Result<(), CniError> {
    // Addresses from prevResult count too: DEL runs before IPAM releases
    // them, so they are still this container's.
    let prev_ips: Vec<u32> = conf
        .prev_result()
        .ok()
        .flatten()
        .map(|prev| prev.container_ipv4(&who.ifname))
        .unwrap_or_default()
        .iter()
        .map(|net| raw(net.addr()))
        .collect();
    let _lock = lock().or_cni(Code::STATE, "taking bpfmasq's lock")?;
    for instance in instances_here()? {
        // A datapath attached by `bpfmasq attach` alone has no records to forget.
        let Ok(map) = pods::open(&instance) else {
            continue;
        };
        let known = pods::containers(&map).or_cni(Code::STATE, "reading the container records")?;
        let mut ips: Vec<u32> = known
            .iter()
            .filter(|c| c.is(&who.container_id, &who.ifname))
            .flat_map(pods::Container::raw_ips)
            .collect();
        let others: Vec<u32> = known
            .iter()
            .filter(|c| !c.is(&who.container_id, &who.ifname))
            .flat_map(pods::Container::raw_ips)
            .collect();
        ips.extend(prev_ips.iter().filter(|ip| !others.contains(ip)));
        ips.sort_unstable();
        ips.dedup();
        let leaving: Vec<&pods::Container> = known
            .iter()
            .filter(|c| c.is(&who.container_id, &who.ifname))
            .collect();
        detach_ports(&instance, &leaving)?;
        pods::remove_flows_of(&instance, &ips)
            .or_cni(Code::STATE, "removing the container's flows")?;
        pods::forget(&map, &ips).or_cni(Code::STATE, "forgetting the container")?;
    }
    Ok(())
}

/// CHECK: the datapath is attached where the configuration says and the
/// container's addresses are recorded.
pub async fn check(conf: &NetConf, who: &Attachment) -> Result<(), CniError> {
    let options = conf.options()?;
    let prev = conf
        .prev_result()?
        .ok_or_else(|| CniError::new(Code::INVALID_CONFIG, "CHECK needs a prevResult"))?;
    let netlink = connect()?;
    let instance = Instance::new(&label()?, &uplink_name(&netlink, &options).await?);
    let host = HostSide::find(&netlink, &prev).await?;
    let config = pinned::read_config(&instance).map_err(|e| {
        CniError::caused(
            Code::NOT_ATTACHED,
            format!("no datapath is attached to uplink `{}`", instance.uplink),
            &e,
        )
    })?;
    if config.bridge_ifindex != host.bridge_ifindex {
        return Err(CniError::new(
            Code::NOT_ATTACHED,
            format!(
                "the datapath on `{}` is not attached to bridge `{}`",
                instance.uplink, host.bridge
            ),
        ));
    }
    let map = pods::open(&instance).or_cni(Code::STATE, "opening the container records")?;
    let known = pods::containers(&map).or_cni(Code::STATE, "reading the container records")?;
    let recorded: Vec<Ipv4Addr> = known
        .iter()
        .filter(|c| c.is(&who.container_id, &who.ifname))
        .flat_map(|c| c.ips.clone())
        .collect();
    for net in prev.container_ipv4(&who.ifname) {
        if !recorded.contains(&net.addr()) {
            return Err(CniError::new(
                Code::NO_RECORD,
                format!(
                    "container {} ({}) has no record for {}",
                    who.container_id,
                    who.ifname,
                    net.addr()
                ),
            ));
        }
    }
    Ok(())
}

/// STATUS: whether an ADD could be served now (code 50 when not).
pub async fn status(conf: &NetConf) -> Result<(), CniError> {
    let options = conf.options()?;
    let unavailable = |msg: String| CniError::new(Code::NOT_AVAILABLE, msg);
    Kernel::probe()
        .check_required()
        .map_err(|e| CniError::caused(Code::NOT_AVAILABLE, "this kernel cannot run bpfmasq", &e))?;
    bpffs::require_mounted()
        .map_err(|e| CniError::caused(Code::NOT_AVAILABLE, "no BPF filesystem", &e))?;
    let netlink = connect()?;
    let uplink = uplink_name(&netlink, &options)
        .await
        .map_err(|e| unavailable(e.msg))?;
    let index = netlink
        .link_index(&uplink)
        .await
        .or_cni(Code::NOT_AVAILABLE, "the uplink is gone")?;
    if options.nat_address.is_none()
        && netlink
            .ipv4_addrs(index)
            .await
            .map_or(true, |addrs| addrs.is_empty())
    {
        return Err(unavailable(format!(
            "uplink `{uplink}` has no IPv4 address to masquerade to"
        )));
    }
    let instance = Instance::new(&label()?, &uplink);
    if instance.dir().exists() {
        pinned::read_config(&instance)
            .or_cni(Code::NOT_AVAILABLE, "the pinned datapath is unreadable")?;
    }
    Ok(())
}

/// GC: records (and flows) of attachments the runtime no longer lists.
pub async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let options = conf.options()?;
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            Code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments (the runtime adds it)",
        )
    })?;
    let netlink = connect()?;
    let instance = Instance::new(&label()?, &uplink_name(&netlink, &options).await?);
    let _lock = lock().or_cni(Code::STATE, "taking bpfmasq's lock")?;
    let Ok(map) = pods::open(&instance) else {
        return Ok(()); // never attached: nothing recorded
    };
    let known = pods::containers(&map).or_cni(Code::STATE, "reading the container records")?;
    let stale_containers: Vec<&pods::Container> = known
        .iter()
        .filter(|c| !valid.iter().any(|v| c.is(&v.container_id, &v.ifname)))
        .collect();
    detach_ports(&instance, &stale_containers)?;
    let stale: Vec<u32> = stale_containers.iter().flat_map(|c| c.raw_ips()).collect();
    pods::remove_flows_of(&instance, &stale)
        .or_cni(Code::STATE, "removing stale containers' flows")?;
    pods::forget(&map, &stale).or_cni(Code::STATE, "forgetting stale containers")
}

/// Takes the source check off the ports of containers about to be forgotten.
fn detach_ports(instance: &Instance, containers: &[&pods::Container]) -> Result<(), CniError> {
    let mode = pinned::read_record(instance)
        .or_cni(Code::STATE, "reading the datapath's record")?
        .attach_mode();
    for c in containers.iter().filter(|c| c.host_ifindex != 0) {
        let port = Port {
            name: &c.host_veth,
            index: c.host_ifindex,
        };
        ports::detach(instance, mode, port).or_cni(Code::STATE, "removing a source check")?;
    }
    Ok(())
}

fn connect() -> Result<Netlink, CniError> {
    Netlink::connect().or_cni(Code::STATE, "opening a netlink socket")
}

fn label() -> Result<String, CniError> {
    netns_label(None).or_cni(Code::STATE, "identifying the network namespace")
}

/// Every datapath attached in this namespace.
fn instances_here() -> Result<Vec<Instance>, CniError> {
    let label = label()?;
    let uplinks = Instance::uplinks_in(&label).or_cni(Code::STATE, "listing datapaths")?;
    Ok(uplinks.iter().map(|u| Instance::new(&label, u)).collect())
}

/// The configured uplink, checked to exist, or the default route's.
async fn uplink_name(netlink: &Netlink, options: &PluginOptions) -> Result<String, CniError> {
    if let Some(uplink) = &options.uplink {
        return match netlink.find_link_index(uplink).await {
            Ok(Some(_)) => Ok(uplink.clone()),
            Ok(None) => Err(CniError::new(
                Code::INVALID_CONFIG,
                format!(
                    "uplink `{uplink}` does not exist in {}",
                    netlink.netns_description()
                ),
            )),
            Err(e) => Err(CniError::caused(Code::STATE, "looking up the uplink", &e)),
        };
    }
    let index = netlink
        .default_route_link()
        .await
        .or_cni(Code::STATE, "reading the routing table")?
        .ok_or_else(|| {
            CniError::new(
                Code::INVALID_CONFIG,
                format!(
                    "no default route in {} to take the uplink from; set `uplink`",
                    netlink.netns_description()
                ),
            )
        })?;
    let links = netlink
        .links()
        .await
        .or_cni(Code::STATE, "listing interfaces")?;
    links
        .into_iter()
        .find(|l| l.index == index)
        .map(|l| l.name)
        .ok_or_else(|| CniError::new(Code::STATE, "the default route's interface vanished"))
}

/// The bridge and the container's host veth, from `prevResult`'s host-side
/// interfaces (the bridge plugin lists both without a sandbox).
struct HostSide {
    bridge: String,
    bridge_ifindex: u32,
    veth: String,
    veth_ifindex: u32,
}

impl HostSide {
    async fn find(netlink: &Netlink, prev: &PrevResult) -> Result<Self, CniError> {
        let links = netlink
            .links()
            .await
            .or_cni(Code::STATE, "listing interfaces")?;
        let named = prev.host_interfaces();
        let on_host = || links.iter().filter(|l| named.contains(&l.name.as_str()));
        let bridge = on_host()
            .find(|l| l.kind.as_deref() == Some("bridge"))
            .ok_or_else(|| {
                CniError::new(
                    Code::INVALID_CONFIG,
                    format!(
                        "prevResult names no bridge of {} (host interfaces: {}); chain bpfmasq-cni after `bridge`",
                        netlink.netns_description(),
                        named.join(", ")
                    ),
                )
            })?;
        let veth = on_host().find(|l| l.master == Some(bridge.index));
        Ok(Self {
            bridge: bridge.name.clone(),
            bridge_ifindex: bridge.index,
            veth: veth.map(|l| l.name.clone()).unwrap_or_default(),
            veth_ifindex: veth.map_or(0, |l| l.index),
        })
    }
}

/// The datapath for (bridge, uplink), attaching it when there is none. One
/// already pinned for another bridge is replaced only when that bridge is
/// gone (the runtime recreated it); a live one makes this ADD fail.
async fn ensure_attached(netlink: &Netlink, options: &AttachOptions) -> Result<Instance, CniError> {
    bpffs::require_mounted().or_cni(Code::ATTACH_FAILED, "pinning the datapath")?;
    let resolved = Resolved::resolve(netlink, options).await.or_cni(
        Code::INVALID_CONFIG,
        "resolving the datapath's configuration",
    )?;
    let instance = Instance::new(&label()?, &resolved.uplink);
    if instance.dir().exists() {
        let pinned = pinned::read_config(&instance).ok();
        let current = pinned.is_some_and(|c| {
            c.bridge_ifindex == resolved.bridge_ifindex
                && c.uplink_ifindex == resolved.uplink_ifindex
        });
        if current {
            return Ok(instance);
        }
        let links = netlink
            .links()
            .await
            .or_cni(Code::STATE, "listing interfaces")?;
        if let Some(other) = pinned.and_then(|c| {
            links
                .iter()
                .find(|l| l.index == c.bridge_ifindex && l.name != resolved.bridge)
        }) {
            return Err(CniError::new(
                Code::UPLINK_BUSY,
                format!(
                    "uplink `{}` already masquerades bridge `{}`; bpfmasq serves one bridge per uplink",
                    resolved.uplink, other.name
                ),
            ));
        }
        detach_instance(netlink, &instance).await.or_cni(
            Code::ATTACH_FAILED,
            "removing a datapath left for a bridge that is gone",
        )?;
    }
    attach_fresh(netlink, &instance, &resolved, options.link_type)
        .await
        .or_cni(Code::ATTACH_FAILED, "attaching the datapath")?;
    Ok(instance)
}
