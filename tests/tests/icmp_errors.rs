//! ICMP errors for masqueraded flows reach the container they concern: a
//! UDP send to a closed port of the outside peer is refused, as without NAT.
//! The other way, an error about a pod's flow that leaves through the uplink
//! (the host's own, or the pod's) reaches the peer translated, as
//! MASQUERADE translates RELATED packets: no pod address leaves quoted.

use std::{net::SocketAddrV4, time::Duration};

use bpfmasq_e2e::{
    Datapath, Lab,
    capture::Capture,
    icmp,
    outgoing_errors::{self, ICMP_TIME_EXCEEDED, assert_translated_errors, datagram_from_c1},
    topology::{OUT, OUTSIDE_ADDR, UPLINK, container},
    udp,
};

/// Nothing listens here in the outside peer.
const CLOSED_PORT: u16 = 9;

#[test]
fn udp_to_a_closed_port_is_refused_inside_the_container() {
    let lab = Lab::up("icmperr", 1);
    let dp = Datapath::attach(&lab);
    // The first send provokes the port-unreachable; the refusal is reported
    // on the next socket call once the translated error reached c1.
    let closed = SocketAddrV4::new(OUTSIDE_ADDR, CLOSED_PORT);
    udp::assert_c1_refused(&lab, &dp, closed, 3, Duration::from_secs(2));
}

#[test]
fn the_hosts_own_time_exceeded_reaches_the_container() {
    let lab = Lab::up("ttl", 1);
    let dp = Datapath::attach(&lab);
    // TTL 1 expires at the host (hop 1), which answers the pod directly.
    let text = icmp::ping_expiring_at_first_hop(&lab, &container(1), OUTSIDE_ADDR);
    assert!(
        text.contains("Time to live exceeded") && text.contains("10.85.0.1"),
        "c1 did not get the host's time-exceeded: {text}\n{}",
        dp.diagnostics()
    );
}

/// The peer answers a live flow with TTL 1: the host translates it back to
/// the pod, cannot forward it to the bridge and answers with a time
/// exceeded. That error quotes the answer after translation (to the pod),
/// so it leaves translated: the peer sees the NAT address and port quoted.
#[test]
fn the_hosts_time_exceeded_about_a_reply_quotes_the_nat_address() {
    let lab = Lab::up("ttlreply", 1);
    let dp = Datapath::attach(&lab);
    let (peer, _c1, nat) = datagram_from_c1(&lab);
    let capture = Capture::start_keeping(&lab, OUT, UPLINK);
    peer.set_ttl(1).expect("setting the reply's TTL");
    peer.send(b"expires at the host")
        .expect("the peer answering");
    std::thread::sleep(Duration::from_millis(500));
    assert_translated_errors(&capture.stop(), ICMP_TIME_EXCEEDED, nat, &dp);
    dp.assert_counter_at_least("translated_icmp_error_out", 1);
}

/// c1 closes its socket before the peer's answer arrives: c1's own port
/// unreachable goes out translated (outer source and quoted destination
/// the NAT address and port), and the peer's socket is refused, as it
/// would be talking to the host itself.
#[test]
fn a_pods_port_unreachable_reaches_the_peer_translated() {
    let lab = Lab::up("podunreach", 1);
    let dp = Datapath::attach(&lab);
    outgoing_errors::assert_pods_port_unreachable_reaches_the_peer(&lab, &dp);
}
