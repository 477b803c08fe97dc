//! `lab up --far-peer`: a second outside peer, `NAME-far`, one routed hop
//! beyond `NAME-out` over a 1280-byte MTU link, so that traceroute shows a
//! hop past the uplink and TCP toward it needs path MTU discovery. Both
//! depend on ICMP errors that `NAME-out` sends to the NAT address reaching
//! the container.

use anyhow::Result;
use ipnet::Ipv4Net;

use super::{
    topology::{
        FAR_ADDR, FAR_ADVERTISED_MSS, FAR_IFACE, FAR_LINK_MTU, FAR_SUBNET, OUT_FAR_ADDR,
        OUT_FAR_IFACE, OUTSIDE_ADDR,
    },
    wiring::configure_leaf,
};
use crate::{
    netlink::{Netlink, Route, VethPair},
    netns::NetNs,
};

/// Wires the far peer in `far_ns` to the outside peer (`out`, which must
/// already forward) and routes the host (`host`) to it through the outside
/// peer. The outside peer still gets no route to the pod network.
pub(super) async fn build(host: &Netlink, out: &Netlink, far_ns: &NetNs) -> Result<()> {
    let link = VethPair {
        name: OUT_FAR_IFACE,
        peer_name: FAR_IFACE,
        peer_netns: Some(far_ns),
        master: None,
    };
    out.add_veth(link).await?;
    let out_far = out.link_index(OUT_FAR_IFACE).await?;
    out.set_mtu(out_far, FAR_LINK_MTU).await?;
    let out_far_addr = Ipv4Net::new_assert(OUT_FAR_ADDR, FAR_SUBNET.prefix_len());
    out.add_ipv4_addr(out_far, out_far_addr).await?;

    let far = Netlink::connect_in(far_ns)?;
    far.set_mtu(far.link_index(FAR_IFACE).await?, FAR_LINK_MTU)
        .await?;
    let far_addr = Ipv4Net::new_assert(FAR_ADDR, FAR_SUBNET.prefix_len());
    configure_leaf(&far, FAR_IFACE, far_addr, None).await?;
    let default_route = Route {
        destination: None,
        gateway: OUT_FAR_ADDR,
        advmss: Some(FAR_ADVERTISED_MSS),
    };
    far.add_route(default_route).await?;

    let to_far = Route {
        destination: Some(FAR_SUBNET),
        gateway: OUTSIDE_ADDR,
        advmss: None,
    };
    host.add_route(to_far).await
}
