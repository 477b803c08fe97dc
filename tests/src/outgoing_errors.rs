//! ICMP errors about a masqueraded flow that leave through the uplink (the
//! host's own, or a pod's), seen from the outside peer: a UDP flow from c1
//! the peer answers, and the check that such an error arrives translated, as
//! MASQUERADE translates RELATED packets. `tests/icmp_errors.rs` runs them
//! on a plain lab host, `tests/stateful_firewall.rs` with a stateful FORWARD
//! rule in it.

use std::{
    io,
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use crate::{
    Datapath, Lab,
    capture::{Capture, Captured},
    topology::{HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container, container_addr},
    udp,
};

/// The peer's service the flows below answer from.
const PEER_PORT: u16 = 5301;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// c1 sends a datagram to the peer; the peer receives it on a socket of
/// its own and returns that socket, connected back to the NAT address and
/// port it saw (the container's masqueraded source), with `c1`'s socket.
pub fn datagram_from_c1(lab: &Lab) -> (UdpSocket, UdpSocket, SocketAddrV4) {
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
pub fn assert_translated_errors(captured: &Captured, kind: u8, nat: SocketAddrV4, dp: &Datapath) {
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

/// c1 closes its socket before the peer's answer arrives: c1's own port
/// unreachable goes out translated (outer source and quoted destination
/// the NAT address and port), and the peer's socket is refused, as it
/// would be talking to the host itself.
pub fn assert_pods_port_unreachable_reaches_the_peer(lab: &Lab, dp: &Datapath<'_>) {
    let (peer, c1, nat) = datagram_from_c1(lab);
    drop(c1);
    let capture = Capture::start_keeping(lab, OUT, UPLINK);
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
    assert_translated_errors(&captured, ICMP_DEST_UNREACH, nat, dp);
}
