//! ICMP errors for masqueraded flows reach the container they concern: a
//! UDP send to a closed port of the outside peer is refused, as without NAT.
//! The other way, an error about a pod's flow that leaves through the uplink
//! (the host's own, or the pod's) reaches the peer translated, as
//! MASQUERADE translates RELATED packets: no pod address leaves quoted.

use std::{
    io,
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use bpfmasq_e2e::{
    Datapath, Lab,
    capture::{Capture, Captured},
    icmp,
    topology::{HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container, container_addr},
    udp,
};

/// The peer's service the tests below answer from.
const PEER_PORT: u16 = 5301;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

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

/// c1 sends a datagram to the peer; the peer receives it on a socket of
/// its own and returns that socket, connected back to the NAT address and
/// port it saw (the container's masqueraded source), with `c1`'s socket.
fn datagram_from_c1(lab: &Lab) -> (UdpSocket, UdpSocket, SocketAddrV4) {
    let service = SocketAddrV4::new(OUTSIDE_ADDR, PEER_PORT);
    let peer = udp::bind(lab, OUT, service).expect("binding the peer's socket");
    let c1 = udp::bind(lab, &container(1), SocketAddrV4::new(container_addr(1), 0))
        .expect("binding c1's socket");
    c1.send_to(b"hello", service).expect("c1 sending");
    let (_, seen) =
        udp::receive(&peer, Duration::from_secs(5)).expect("the peer never received c1's datagram");
    let SocketAddr::V4(seen) = seen else {
        panic!("an IPv6 peer address: {seen}")
    };
    assert_eq!(*seen.ip(), HOST_UPLINK_ADDR, "c1 was not masqueraded");
    peer.connect(seen).expect("connecting the peer's socket");
    (peer, c1, seen)
}

/// The ICMP errors of `kind` the peer captured, each checked to quote the
/// NAT address and port `nat` (never a pod), with nothing naming a pod.
fn assert_translated_errors(captured: &Captured, kind: u8, nat: SocketAddrV4, dp: &Datapath) {
    let leaks = captured.frames_naming_pods();
    assert!(leaks.is_empty(), "pod addresses left the uplink: {leaks:?}");
    let errors: Vec<_> = captured
        .icmp_errors()
        .into_iter()
        .filter(|e| e.icmp_type == kind)
        .collect();
    assert!(
        !errors.is_empty(),
        "the peer received no ICMP error of type {kind}: {:?}\n{}",
        captured.icmp_errors(),
        dp.diagnostics()
    );
    for error in errors {
        assert_eq!(error.source, HOST_UPLINK_ADDR, "{error:?}");
        assert_eq!(error.quoted_destination, nat, "{error:?}");
        assert_eq!(
            error.quoted_source,
            SocketAddrV4::new(OUTSIDE_ADDR, PEER_PORT),
            "{error:?}"
        );
    }
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
    let (peer, c1, nat) = datagram_from_c1(&lab);
    drop(c1);
    let capture = Capture::start_keeping(&lab, OUT, UPLINK);
    peer.send(b"nobody listens any more")
        .expect("the peer answering");
    peer.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("setting a timeout");
    let refused = (0..3).any(|_| {
        let _ = peer.send(b"again");
        matches!(peer.recv(&mut [0; 64]), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
    });
    let captured = capture.stop();
    assert!(
        refused,
        "the peer's socket was never refused: c1's port unreachable did not arrive \
         ({:?})\n{}",
        captured.icmp_errors(),
        dp.diagnostics()
    );
    assert_translated_errors(&captured, ICMP_DEST_UNREACH, nat, &dp);
}
