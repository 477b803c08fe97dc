//! The path past the uplink (`lab up --far-peer`): the far peer is one routed
//! hop beyond the outside peer, over a 1280-byte MTU link. From a container,
//! traceroute and tracepath see that hop and TCP discovers the path MTU,
//! because the outside peer's ICMP errors, sent to the NAT address, are
//! translated back to the container (the checks live in `far_path`).

use bpfmasq_e2e::{
    Datapath, Lab,
    far_path::{self, hops, traceroute},
    topology::BRIDGE_ADDR,
};

#[test]
fn udp_traceroute_shows_the_hop_past_the_uplink() {
    let lab = Lab::up_with_far_peer("trudp", 1);
    let dp = Datapath::attach(&lab);
    far_path::assert_udp_traceroute_shows_every_hop(&lab, &dp);
}

#[test]
fn icmp_traceroute_shows_the_hop_past_the_uplink() {
    let lab = Lab::up_with_far_peer("tricmp", 1);
    let dp = Datapath::attach(&lab);
    far_path::assert_icmp_traceroute_shows_every_hop(&lab, &dp);
}

#[test]
fn without_the_datapath_the_hop_past_the_uplink_stays_silent() {
    let lab = Lab::up_with_far_peer("trnodp", 1);
    // Packets leave with the pod source and the outside peer has no route
    // back: only the host's own answer arrives. This is what the tests above
    // would see if the datapath did not translate.
    let output = traceroute(&lab, &["-q", "1", "-w", "1", "-m", "3"]);
    assert_eq!(
        hops(&output),
        [vec![BRIDGE_ADDR], vec![], vec![]],
        "traceroute from c1 without the datapath:\n{output}"
    );
}

#[test]
fn tracepath_finds_the_hops_and_the_path_mtu() {
    let lab = Lab::up_with_far_peer("trpath", 1);
    let dp = Datapath::attach(&lab);
    far_path::assert_tracepath_finds_the_hops_and_the_path_mtu(&lab, &dp);
}

#[test]
fn tcp_to_the_far_peer_discovers_the_path_mtu() {
    let lab = Lab::up_with_far_peer("pmtu", 1);
    let dp = Datapath::attach(&lab);
    far_path::assert_tcp_upload_discovers_the_path_mtu(&lab, &dp);
}
