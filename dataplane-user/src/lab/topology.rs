//! The lab's fixed topology (ARCHITECTURE.md, "The lab") and its naming
//! rules. Pure: nothing here touches the system.
//!
//! ```text
//! NAME-c<i>: eth0 10.85.0.(i+1)/16 ──veth── veth-c<i> ─┐
//!            default via 10.85.0.1                      cni0 10.85.0.1/16 (NAME-host)
//! NAME-host: eth0 192.168.61.11/24, ip_forward=1 ──veth── eth0 192.168.61.12/24 (NAME-out)
//!            route 198.51.100.0/24 via 192.168.61.12 (far peer only)
//!
//! With the far peer (`lab up --far-peer`), NAME-out is also a router:
//! NAME-out:  eth1 198.51.100.1/24 mtu 1280, ip_forward=1 ──veth── eth0 198.51.100.2/24 mtu 1280 (NAME-far)
//!            default via 198.51.100.1 advmss 1460
//! ```

use std::{fmt, net::Ipv4Addr, str::FromStr};

use anyhow::{Result, bail};
use ipnet::Ipv4Net;

/// Lab name used when none is given.
pub const DEFAULT_NAME: &str = "lab";
/// The host's bridge to the containers (in `NAME-host`).
pub const BRIDGE: &str = "cni0";
/// The host's uplink (in `NAME-host`); the outside peer's interface has the same name.
pub const UPLINK: &str = "eth0";
/// A container's interface (in `NAME-c<i>`).
pub const CONTAINER_IFACE: &str = "eth0";
/// The bridge address, the containers' default gateway.
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 85, 0, 1);
/// Prefix length of the pod network.
pub const POD_PREFIX_LEN: u8 = 16;
/// The pod network, 10.85.0.0/16.
pub const POD_SUBNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 85, 0, 0), POD_PREFIX_LEN);
/// The host's uplink address: the address traffic is masqueraded to.
pub const HOST_UPLINK_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 61, 11);
/// The outside peer's address; it has no route back to the pod network.
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 61, 12);
/// Prefix length of the host–outside link.
pub const UPLINK_PREFIX_LEN: u8 = 24;
/// The outside peer's interface toward the far peer (in `NAME-out`).
pub const OUT_FAR_IFACE: &str = "eth1";
/// The far peer's only interface (in `NAME-far`).
pub const FAR_IFACE: &str = "eth0";
/// The network between the outside peer and the far peer (TEST-NET-2).
pub const FAR_SUBNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 51, 100, 0), 24);
/// The outside peer's address on the far network: the far peer's gateway.
pub const OUT_FAR_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The far peer's address, one routed hop beyond the outside peer.
pub const FAR_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// MTU of the link to the far peer (both ends): IPv6's minimum, as on many
/// tunnels, so traffic past the outside peer needs path MTU discovery.
pub const FAR_LINK_MTU: u32 = 1280;
/// The TCP MSS the far peer announces, as a server on a 1500-byte network
/// behind a tunnel would. Without it the far peer would announce 1240 (its
/// link's MTU) and TCP toward it would never need path MTU discovery.
pub const FAR_ADVERTISED_MSS: u32 = 1460;
// Segments of that MSS (plus 40 bytes of IPv4 and TCP headers) must not fit the far link.
const _: () = assert!(FAR_ADVERTISED_MSS + 40 > FAR_LINK_MTU);
/// Most containers a lab can have.
pub const MAX_CONTAINERS: u16 = 1000;
/// Longest lab name: keeps `NAME-c1000` and pin paths comfortably short.
pub const MAX_NAME_LEN: usize = 40;

/// A node of a lab: one network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// `NAME-host`: the container host, with the bridge and the uplink.
    Host,
    /// `NAME-out`: the outside peer.
    Out,
    /// `NAME-far`: the far peer, routed through `NAME-out` (`lab up --far-peer`).
    Far,
    /// `NAME-c<i>`, numbered from 1.
    Container(u16),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host => f.write_str("host"),
            Self::Out => f.write_str("out"),
            Self::Far => f.write_str("far"),
            Self::Container(i) => write!(f, "c{i}"),
        }
    }
}

impl FromStr for Node {
    type Err = anyhow::Error;

    /// Accepts exactly what [`Node`]'s `Display` prints (`c1`, never `c01`),
    /// so a node name maps to one namespace name.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "host" => return Ok(Self::Host),
            "out" => return Ok(Self::Out),
            "far" => return Ok(Self::Far),
            _ => {}
        }
        let index = s
            .strip_prefix('c')
            .filter(|digits| !digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u16>().ok());
        match index {
            Some(i) => Ok(Self::Container(i)),
            None => bail!("unknown node `{s}`: use host, out, far or c1, c2, ..."),
        }
    }
}

/// The namespace of `node` in lab `lab`: `LAB-host`, `LAB-out`, `LAB-far`, `LAB-c1`...
/// `node` is a [`Node`] or its name.
pub fn ns_name(lab: &str, node: impl fmt::Display) -> String {
    format!("{lab}-{node}")
}

/// Address of container `i` (from 1): 10.85.0.0 + i + 1, so c1 is 10.85.0.2
/// and c254 is 10.85.1.0 (a valid host address in a /16).
///
/// # Panics
/// If `i` is outside `1..=MAX_CONTAINERS` (a caller bug: counts are
/// validated where users give them).
pub fn container_addr(i: u16) -> Ipv4Addr {
    assert!(
        (1..=MAX_CONTAINERS).contains(&i),
        "container index {i} outside 1..={MAX_CONTAINERS}"
    );
    Ipv4Addr::from(u32::from(POD_SUBNET.network()) + u32::from(i) + 1)
}

/// Host-side veth of container `i`; at most 10 characters (limit: 15).
pub fn container_veth(i: u16) -> String {
    format!("veth-c{i}")
}

/// Checks a lab name: it prefixes namespace names and pin paths.
pub fn validate_lab_name(lab: &str) -> Result<()> {
    let alphabet_ok = lab
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    // A leading `-` would read as an option in `ip netns exec` and friends.
    if lab.is_empty() || lab.len() > MAX_NAME_LEN || !alphabet_ok || lab.starts_with(['.', '-']) {
        bail!(
            "invalid lab name `{lab}`: use 1-{MAX_NAME_LEN} characters of [A-Za-z0-9._-], \
             starting with a letter, digit or `_`"
        );
    }
    Ok(())
}

/// The nodes of `lab` among namespace names `namespaces`, sorted: host, out,
/// far, then containers by number. Names of other labs never match, even ones
/// that share a prefix (`lab-c1-host` belongs to lab `lab-c1`, not `lab`).
pub fn nodes_among<'a>(lab: &str, namespaces: impl IntoIterator<Item = &'a str>) -> Vec<Node> {
    let prefix = format!("{lab}-");
    let mut nodes: Vec<Node> = namespaces
        .into_iter()
        .filter_map(|ns| ns.strip_prefix(&prefix)?.parse().ok())
        .collect();
    nodes.sort();
    nodes
}

/// "host, out, far, c1..c3" for messages about which nodes exist.
pub fn describe_nodes(nodes: &[Node]) -> String {
    let mut parts: Vec<String> = nodes
        .iter()
        .filter(|n| !matches!(n, Node::Container(_)))
        .map(Node::to_string)
        .collect();
    let mut containers: Vec<u16> = nodes
        .iter()
        .filter_map(|n| match n {
            Node::Container(i) => Some(*i),
            _ => None,
        })
        .collect();
    containers.sort_unstable();
    containers.dedup();
    match containers.as_slice() {
        [] => {}
        [only] => parts.push(format!("c{only}")),
        [first, .., last] if usize::from(last - first) + 1 == containers.len() => {
            parts.push(format!("c{first}..c{last}"))
        }
        many => parts.extend(many.iter().map(|i| format!("c{i}"))),
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_addresses_count_up_through_the_subnet() {
        assert_eq!(container_addr(1), Ipv4Addr::new(10, 85, 0, 2));
        assert_eq!(container_addr(2), Ipv4Addr::new(10, 85, 0, 3));
        assert_eq!(container_addr(253), Ipv4Addr::new(10, 85, 0, 254));
        assert_eq!(container_addr(254), Ipv4Addr::new(10, 85, 0, 255));
        assert_eq!(container_addr(255), Ipv4Addr::new(10, 85, 1, 0));
        assert_eq!(container_addr(300), Ipv4Addr::new(10, 85, 1, 45));
        assert_eq!(
            container_addr(MAX_CONTAINERS),
            Ipv4Addr::new(10, 85, 3, 233)
        );
        for i in 1..=MAX_CONTAINERS {
            let addr = container_addr(i);
            assert!(
                POD_SUBNET.contains(&addr) && addr != BRIDGE_ADDR && addr != POD_SUBNET.broadcast()
            );
        }
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn container_zero_is_a_bug() {
        container_addr(0);
    }

    #[test]
    fn node_names_round_trip() {
        for node in [
            Node::Host,
            Node::Out,
            Node::Far,
            Node::Container(1),
            Node::Container(1000),
        ] {
            assert_eq!(node.to_string().parse::<Node>().unwrap(), node);
        }
        assert_eq!(ns_name("lab", Node::Container(7)), "lab-c7");
        assert_eq!(ns_name("lab", "host"), "lab-host");
    }

    #[test]
    fn bad_node_names_are_rejected() {
        for bad in [
            "", "c", "c01", "c-1", "c+1", "c1x", "C1", "hosts", "x1", "c70000", " c1", "Far",
        ] {
            assert!(bad.parse::<Node>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn veth_names_fit_ifnamsiz() {
        assert!(container_veth(MAX_CONTAINERS).len() <= 15);
    }

    #[test]
    fn lab_names_are_validated() {
        for good in [
            "lab",
            "t1",
            "e2e-nat-1234",
            "a.b_c",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            assert!(validate_lab_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a/b",
            "a b",
            "ü",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(validate_lab_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nodes_are_found_only_for_their_lab() {
        let namespaces = [
            "t1-c10",
            "t1-host",
            "t1-c2",
            "t1-out",
            "t1-far",
            "t1-c1",
            "t1-c01",
            "t1-c0",
            "t1-c1-host",
            "t1-cx",
            "t10-host",
            "other",
            "t1-",
        ];
        let nodes = nodes_among("t1", namespaces);
        use Node::*;
        assert_eq!(
            nodes,
            [Host, Out, Far, Container(1), Container(2), Container(10)]
        );
        assert_eq!(nodes_among("t1-c1", namespaces), [Host]);
        assert!(nodes_among("t", namespaces).is_empty());
    }

    #[test]
    fn node_lists_read_well() {
        use Node::*;
        assert_eq!(
            describe_nodes(&[Host, Out, Container(1), Container(2), Container(3)]),
            "host, out, c1..c3"
        );
        assert_eq!(
            describe_nodes(&[Host, Container(1), Container(3)]),
            "host, c1, c3"
        );
        assert_eq!(describe_nodes(&[Out, Container(4)]), "out, c4");
        assert_eq!(
            describe_nodes(&[Host, Out, Far, Container(1)]),
            "host, out, far, c1"
        );
        assert_eq!(describe_nodes(&[]), "none");
    }

    #[test]
    fn far_network_is_routed_apart_from_the_others() {
        assert!(FAR_SUBNET.contains(&OUT_FAR_ADDR) && FAR_SUBNET.contains(&FAR_ADDR));
        assert_ne!(OUT_FAR_ADDR, FAR_ADDR);
        let uplink_net = Ipv4Net::new_assert(HOST_UPLINK_ADDR, UPLINK_PREFIX_LEN).trunc();
        for other in [POD_SUBNET, uplink_net] {
            assert!(
                !FAR_SUBNET.contains(&other.network()) && !other.contains(&FAR_SUBNET.network()),
                "{other} overlaps {FAR_SUBNET}"
            );
        }
    }
}
