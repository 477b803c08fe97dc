//! Wiring shared by the nodes `lab up` builds (the outside peer, the far
//! peer, the containers): one home, so `up` and `far_peer` both use it and
//! neither calls into the other.

use std::net::Ipv4Addr;

use anyhow::Result;
use ipnet::Ipv4Net;

use crate::netlink::Netlink;

/// The inside of a leaf node (outside peer, far peer or container), whose
/// `iface` is a veth peer created from its neighbour: `lo` and `iface` up,
/// `addr` on `iface`, optional default route.
pub(super) async fn configure_leaf(
    node: &Netlink,
    iface: &str,
    addr: Ipv4Net,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    node.set_link_up_by_name("lo").await?;
    let link = node.link_index(iface).await?;
    node.set_link_up(link).await?;
    node.add_ipv4_addr(link, addr).await?;
    if let Some(gateway) = gateway {
        node.add_default_route(gateway).await?;
    }
    Ok(())
}
