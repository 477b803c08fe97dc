//! ICMP errors for masqueraded flows reach the container they concern: a
//! UDP send to a closed port of the outside peer is refused, as without NAT.

use std::{io::ErrorKind, net::SocketAddrV4, time::Duration};

use bpfmasq_e2e::{
    Datapath, Lab, icmp,
    topology::{OUTSIDE_ADDR, container, container_addr},
    udp,
};

/// Nothing listens here in the outside peer.
const CLOSED_PORT: u16 = 9;

#[test]
fn udp_to_a_closed_port_is_refused_inside_the_container() {
    let lab = Lab::up("icmperr", 1);
    let dp = Datapath::attach(&lab);
    let socket = udp::bind(&lab, &container(1), SocketAddrV4::new(container_addr(1), 0))
        .expect("bind in c1");
    socket
        .connect(SocketAddrV4::new(OUTSIDE_ADDR, CLOSED_PORT))
        .expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    // The first send provokes the port-unreachable; the refusal is reported
    // on the next socket call once the translated error reached c1.
    let mut refused = false;
    for _ in 0..3 {
        let _ = socket.send(b"anyone there?");
        match socket.recv(&mut [0u8; 64]) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            other => panic!(
                "c1 expected ECONNREFUSED, got {other:?}\n{}",
                dp.diagnostics()
            ),
        }
    }
    assert!(
        refused,
        "c1 never saw ECONNREFUSED: the ICMP error did not come back\n{}",
        dp.diagnostics()
    );
    // The error went through the datapath's ICMP translation.
    dp.assert_counter_at_least("translated_icmp_error", 1);
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
