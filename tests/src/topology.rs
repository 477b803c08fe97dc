//! The lab's fixed topology (ARCHITECTURE.md, "The lab"), as the tests
//! rely on it: addresses, interface names and node names.

use std::net::Ipv4Addr;

/// The host's bridge to the containers (in `NAME-host`).
pub const BRIDGE: &str = "cni0";
/// The host's uplink (in `NAME-host`) and the outside peer's interface (in `NAME-out`).
pub const UPLINK: &str = "eth0";
/// The bridge address, the containers' default gateway.
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 85, 0, 1);
/// The pod network, `10.85.0.0/16`, as network address and prefix length.
pub const POD_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 85, 0, 0), 16);
/// The host's uplink address: the address traffic is masqueraded to.
pub const HOST_UPLINK_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 61, 11);
/// The outside peer, which has no route back to the pod network.
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 61, 12);

/// The far peer (`lab up --far-peer`), one routed hop beyond the outside peer.
pub const FAR_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The far peer's interface (in `NAME-far`).
pub const FAR_IFACE: &str = "eth0";
/// MTU of the link between the outside peer and the far peer, both ends.
pub const FAR_LINK_MTU: u16 = 1280;

/// The lab's host node (`NAME-host`).
pub const HOST: &str = "host";
/// The lab's outside peer node (`NAME-out`).
pub const OUT: &str = "out";
/// The lab's far peer node (`NAME-far`), only with `lab up --far-peer`.
pub const FAR: &str = "far";

/// The node name of container `i` (1-based): `c1`, `c2`, ...
pub fn container(i: u16) -> String {
    assert!(i >= 1, "containers are numbered from 1");
    format!("c{i}")
}

/// The address of container `i` (1-based): `c1` is 10.85.0.2, `c2` 10.85.0.3, ...
pub fn container_addr(i: u16) -> Ipv4Addr {
    assert!((1..=1000).contains(&i), "the lab has containers 1..=1000");
    let host = u32::from(BRIDGE_ADDR) + u32::from(i);
    Ipv4Addr::from(host)
}

/// Whether `addr` is inside the pod network 10.85.0.0/16.
pub fn in_pod_net(addr: Ipv4Addr) -> bool {
    let (net, len) = POD_NET;
    let mask = u32::MAX << (32 - len);
    u32::from(addr) & mask == u32::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_addresses() {
        assert_eq!(container_addr(1), Ipv4Addr::new(10, 85, 0, 2));
        assert_eq!(container_addr(2), Ipv4Addr::new(10, 85, 0, 3));
        assert_eq!(container_addr(300), Ipv4Addr::new(10, 85, 1, 45));
        assert_eq!(container(2), "c2");
    }

    #[test]
    fn pod_net_membership() {
        assert!(in_pod_net(Ipv4Addr::new(10, 85, 0, 2)));
        assert!(in_pod_net(Ipv4Addr::new(10, 85, 255, 255)));
        assert!(!in_pod_net(HOST_UPLINK_ADDR));
        assert!(!in_pod_net(Ipv4Addr::new(10, 86, 0, 1)));
    }
}
