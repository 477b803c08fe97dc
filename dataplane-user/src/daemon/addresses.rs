//! Following the uplink's primary IPv4 address, as MASQUERADE does: an
//! rtnetlink subscription to IPv4 address notifications (RTNLGRP_IPV4_IFADDR)
//! tells the daemon when to look the address up again.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, channel::mpsc::UnboundedReceiver};
use rtnetlink::{
    MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
    sys::SocketAddr,
};
use tokio::task::JoinHandle;

use crate::netlink::Netlink;

type Notifications = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// A live subscription to IPv4 address changes in the daemon's namespace.
pub struct AddressWatch {
    notifications: Notifications,
    connection: JoinHandle<()>,
    /// The connection shuts down once no handle and no receiver is left.
    _handle: rtnetlink::Handle,
}

impl AddressWatch {
    pub fn subscribe() -> Result<Self> {
        let (connection, handle, notifications) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Ifaddr])
                .context("subscribing to IPv4 address notifications (rtnetlink)")?;
        Ok(Self {
            notifications,
            connection: tokio::spawn(connection),
            _handle: handle,
        })
    }

    /// Waits for a notification that may concern interface `ifindex`'s
    /// addresses. When the subscription ends (its socket overflowed, say),
    /// notifications may have been lost: it subscribes again and returns, so
    /// the caller looks again.
    pub async fn changed(&mut self, ifindex: u32) -> Result<()> {
        loop {
            match self.notifications.next().await {
                Some((message, _)) if may_concern(&message, ifindex) => return Ok(()),
                Some(_) => {}
                None => {
                    *self = Self::subscribe()?;
                    return Ok(());
                }
            }
        }
    }
}

impl Drop for AddressWatch {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Address messages of other interfaces are the only ones safe to ignore;
/// anything else (an overrun report, say) may hide a change.
fn may_concern(message: &NetlinkMessage<RouteNetlinkMessage>, ifindex: u32) -> bool {
    match &message.payload {
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewAddress(address) | RouteNetlinkMessage::DelAddress(address),
        ) => address.header.index == ifindex,
        _ => true,
    }
}

/// The interface's primary IPv4 address now (`None`: it has none).
pub async fn primary_ipv4(netlink: &Netlink, ifindex: u32) -> Result<Option<Ipv4Addr>> {
    Ok(netlink
        .ipv4_addrs(ifindex)
        .await?
        .first()
        .map(|net| net.addr()))
}
