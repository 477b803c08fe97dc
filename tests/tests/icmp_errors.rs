//! ICMP errors for masqueraded flows reach the container they concern: a
//! UDP send to a closed port of the outside peer is refused, as without NAT.

use std::{net::SocketAddrV4, time::Duration};

use bpfmasq_e2e::{
    Datapath, Lab, icmp,
    topology::{OUTSIDE_ADDR, container},
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
