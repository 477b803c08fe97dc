//! A stateful host firewall beside the datapath: the lab host carries
//! kube-proxy's `iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP`,
//! which drops every forwarded packet nf_conntrack cannot place. With the
//! fast path on, nf_conntrack never sees a fast-pathed flow, so the packets
//! of such a flow the host still forwards (ICMP errors about it, either way)
//! would be INVALID: every one of them must take the fast path too. The
//! same checks as `path.rs` and `icmp_errors.rs` must pass in both modes.
//!
//! Also the host's martian rules: a pod's packet to an address the host
//! never forwards must not leave through the fast path either.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use bpfmasq_e2e::{
    Datapath, Lab,
    capture::Capture,
    datapath::fast_path_mode,
    far_path, fragments,
    frame::{IPPROTO_UDP, Packet, Seen},
    inject::{Injector, mac_of},
    netfilter::{drop_invalid_forwarded, invalid_forwarded_dropped},
    outgoing_errors, pattern,
    topology::{
        BRIDGE, HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container, container_addr,
    },
    udp::UdpEchoServer,
};

/// The far-peer lab (`path.rs`) with the INVALID rule in its host.
fn lab_with_stateful_firewall(id: &str) -> Lab {
    let lab = Lab::up_with_far_peer(id, 1);
    drop_invalid_forwarded(&lab, HOST);
    lab
}

/// The rule never had anything to drop: every packet the host forwarded
/// belonged to a connection nf_conntrack knew or could start.
fn assert_nothing_was_invalid(lab: &Lab, dp: &Datapath<'_>) {
    let dropped = invalid_forwarded_dropped(lab, HOST);
    assert_eq!(
        dropped,
        0,
        "the INVALID rule dropped packets\n{}",
        dp.diagnostics()
    );
}

#[test]
fn udp_traceroute_through_a_stateful_firewall_shows_every_hop() {
    let lab = lab_with_stateful_firewall("fwtrudp");
    let dp = Datapath::attach(&lab);
    far_path::assert_udp_traceroute_shows_every_hop(&lab, &dp);
    assert_nothing_was_invalid(&lab, &dp);
}

#[test]
fn icmp_traceroute_through_a_stateful_firewall_shows_every_hop() {
    let lab = lab_with_stateful_firewall("fwtricmp");
    let dp = Datapath::attach(&lab);
    far_path::assert_icmp_traceroute_shows_every_hop(&lab, &dp);
    assert_nothing_was_invalid(&lab, &dp);
}

#[test]
fn tracepath_through_a_stateful_firewall_finds_the_path_mtu() {
    let lab = lab_with_stateful_firewall("fwtrpath");
    let dp = Datapath::attach(&lab);
    far_path::assert_tracepath_finds_the_hops_and_the_path_mtu(&lab, &dp);
    assert_nothing_was_invalid(&lab, &dp);
}

#[test]
fn tcp_upload_through_a_stateful_firewall_discovers_the_path_mtu() {
    let lab = lab_with_stateful_firewall("fwpmtu");
    let dp = Datapath::attach(&lab);
    far_path::assert_tcp_upload_discovers_the_path_mtu(&lab, &dp);
    assert_nothing_was_invalid(&lab, &dp);
}

/// Fragments are left to the host both ways (its conntrack reassembles
/// them and sees a new or known UDP flow, never an INVALID one).
#[test]
fn large_datagrams_cross_a_stateful_firewall_both_ways() {
    let lab = lab_with_stateful_firewall("fwfrag");
    let dp = Datapath::attach(&lab);
    let server = UdpEchoServer::spawn(&lab, OUT, SocketAddrV4::new(OUTSIDE_ADDR, 5300), "out");
    fragments::assert_large_round_trip_from_c1(&lab, &dp, server, &pattern::bytes(7, 8000));
    assert_nothing_was_invalid(&lab, &dp);
}

#[test]
fn a_pods_port_unreachable_passes_a_stateful_firewall_translated() {
    let lab = lab_with_stateful_firewall("fwunrch");
    let dp = Datapath::attach(&lab);
    outgoing_errors::assert_pods_port_unreachable_reaches_the_peer(&lab, &dp);
    assert_nothing_was_invalid(&lab, &dp);
}

/// Destinations the host drops as martians (Linux since 5.3 routes the
/// rest of 0.0.0.0/8 as unicast), which a pod's packet would otherwise
/// reach through the default route.
const MARTIANS: [Ipv4Addr; 2] = [Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(127, 1, 2, 3)];
/// Destinations the host decides about by rules of its own, left to it too.
const LEFT_TO_THE_HOST: [Ipv4Addr; 2] = [Ipv4Addr::new(0, 1, 2, 3), Ipv4Addr::new(240, 1, 2, 3)];
const MARTIAN_PORT: u16 = 5402;

#[test]
fn a_pods_packets_to_martian_destinations_never_leave() {
    let lab = Lab::up("martian", 1);
    // Everything not on a link goes to the outside peer, as on a host with a
    // default route.
    lab.exec_ok(
        HOST,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &OUTSIDE_ADDR.to_string(),
        ],
    );
    let dp = Datapath::attach(&lab);
    let capture = Capture::start_keeping(&lab, OUT, UPLINK);
    // Hand-built frames: c1's own stack keeps these destinations to itself.
    let from_c1 = Injector::open(&lab, &container(1), UPLINK);
    let bridge = mac_of(&lab, HOST, BRIDGE);
    // The last one, to the outside peer, shows the capture sees what leaves.
    for dst in MARTIANS
        .into_iter()
        .chain(LEFT_TO_THE_HOST)
        .chain([OUTSIDE_ADDR])
    {
        let datagram = Packet::udp(container_addr(1), dst, 40_000, MARTIAN_PORT);
        from_c1.send(&datagram.frame(from_c1.mac, bridge));
    }
    std::thread::sleep(Duration::from_millis(500));
    let arrived: Vec<Seen> = capture
        .stop()
        .kept
        .iter()
        .filter_map(|frame| Seen::parse(frame))
        .filter(|seen| seen.proto == IPPROTO_UDP && seen.ports.is_some_and(|p| p.1 == MARTIAN_PORT))
        .collect();
    let shown: Vec<String> = arrived.iter().map(Seen::to_string).collect();
    assert!(
        arrived
            .iter()
            .any(|seen| seen.dst == OUTSIDE_ADDR && seen.src == HOST_UPLINK_ADDR),
        "the datagram to the outside peer never arrived: {shown:?}\n{}",
        dp.diagnostics()
    );
    assert!(
        arrived.iter().all(|seen| !MARTIANS.contains(&seen.dst)),
        "martian destinations left the host: {shown:?}\n{}",
        dp.diagnostics()
    );
    if fast_path_mode().as_deref() == Some("on") {
        let declined = MARTIANS.len() + LEFT_TO_THE_HOST.len();
        dp.assert_counter_at_least("fallback_martian", declined as u64);
    }
}
