//! Large UDP datagrams cross the NAT as IPv4 fragments, both ways, also when
//! the first fragment arrives last; fragments held for a datagram whose
//! first fragment never comes are bounded and expire; a fragmented datagram
//! for the host itself still reaches the host.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    thread,
    time::Duration,
};

use bpfmasq_e2e::{
    Datapath, Lab,
    datapath::counter,
    fragments::{self, Datagram, FRAGMENT_PAYLOAD, Order, RECEIVE_WAIT},
    pattern,
    topology::{HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, container, container_addr},
    udp::{self, UdpEchoServer},
};

/// Bigger than the 1500-byte MTU: six fragments.
const LARGE: usize = 8000;
const SERVER_PORT: u16 = 5300;
const UDP_HEADER: usize = 8;
/// How long the datapath trusts a fragmented datagram's state
/// (`dataplane_common::fragments::DATAGRAM_TIMEOUT_NS`).
const DATAGRAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Most fragments held for one datagram (`MAX_PARKED_PER_DATAGRAM`).
const MAX_PARKED_PER_DATAGRAM: u64 = 16;
/// Most incoming datagrams tracked per source and window
/// (`MAX_DATAGRAMS_PER_SOURCE`).
const MAX_DATAGRAMS_PER_SOURCE: u64 = 64;

fn server(lab: &Lab) -> UdpEchoServer {
    UdpEchoServer::spawn(
        lab,
        OUT,
        SocketAddrV4::new(OUTSIDE_ADDR, SERVER_PORT),
        "out",
    )
}

fn server_addr() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, SERVER_PORT)
}

/// The next datagram `socket` receives within [`RECEIVE_WAIT`], if any.
fn receive(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    udp::receive(socket, RECEIVE_WAIT)
}

/// A socket in c1 with a flow through the NAT to the echo server; returns
/// it and the NAT address and port the server saw it as.
fn flow_to_server(lab: &Lab, server: &UdpEchoServer) -> (UdpSocket, SocketAddrV4) {
    let socket =
        udp::bind(lab, &container(1), SocketAddrV4::new(container_addr(1), 0)).expect("bind in c1");
    udp::request(&socket, server.addr(), b"hello").expect("a small datagram crosses the NAT");
    let seen = server.requests().last().expect("the server got it").peer;
    assert_eq!(*seen.ip(), HOST_UPLINK_ADDR, "the flow was not masqueraded");
    (socket, seen)
}

#[test]
fn large_datagrams_cross_both_ways_in_order() {
    let lab = Lab::up("frag-order", 1);
    let dp = Datapath::attach(&lab);
    fragments::assert_large_round_trip_from_c1(&lab, &dp, server(&lab), &pattern::bytes(1, LARGE));
}

#[test]
fn a_container_datagram_whose_first_fragment_leaves_last_arrives_intact() {
    let lab = Lab::up("frag-out", 1);
    let dp = Datapath::attach(&lab);
    let server = server(&lab);
    let request = pattern::bytes(2, LARGE);
    let sent =
        fragments::assert_first_last_from_c1_is_echoed(&lab, &dp, server, &request, RECEIVE_WAIT);
    assert_eq!(sent, (UDP_HEADER + LARGE).div_ceil(FRAGMENT_PAYLOAD));
}

#[test]
fn an_answer_whose_first_fragment_arrives_last_reaches_the_container_intact() {
    let lab = Lab::up("frag-in", 1);
    let dp = Datapath::attach(&lab);
    let server = server(&lab);
    let (socket, nat_side) = flow_to_server(&lab, &server);
    let answer = pattern::bytes(3, LARGE);
    let sent = fragments::send(
        &lab,
        OUT,
        &Datagram {
            from: server_addr(),
            to: nat_side,
            ip_id: 0x6161,
            payload: &answer,
        },
        Order::FirstLast,
    );
    let (received, from) = receive(&socket).unwrap_or_else(|| {
        panic!(
            "c1 never got the {LARGE}-byte answer sent first-fragment-last\n{}",
            dp.diagnostics()
        )
    });
    assert_eq!(from, SocketAddr::V4(server_addr()));
    assert!(received == answer, "the answer arrived changed");
    let held = sent as u64 - 1;
    dp.assert_counter_at_least("parked_fragment", held);
    dp.assert_counter_at_least("released_fragment", held);
}

/// One sender (here a spoofed address) sends later fragments of 300
/// datagrams whose first fragments never come: the datapath tracks and holds
/// at most its share of 64, leaves the rest to the host, and another
/// sender's answer, first fragment last, still reaches the container whole.
#[test]
fn one_senders_fragment_flood_is_bounded_and_others_still_get_through() {
    let lab = Lab::up("frag-flood", 1);
    let dp = Datapath::attach(&lab);
    let server = server(&lab);
    let (socket, nat_side) = flow_to_server(&lab, &server);
    let spoofed = Ipv4Addr::new(203, 0, 113, 7);
    fragments::flood_later_fragments(&lab, OUT, spoofed, *nat_side.ip(), 300);
    let stats = dp.stats();
    assert_eq!(
        counter(&stats, "parked_fragment"),
        Some(MAX_DATAGRAMS_PER_SOURCE),
        "one source's held datagrams are bounded\n{}",
        dp.diagnostics()
    );
    assert!(counter(&stats, "passed_fragment_not_held") >= Some(300 - MAX_DATAGRAMS_PER_SOURCE));

    let answer = pattern::bytes(5, LARGE);
    let datagram = Datagram {
        from: server_addr(),
        to: nat_side,
        ip_id: 0x5151,
        payload: &answer,
    };
    fragments::send(&lab, OUT, &datagram, Order::FirstLast);
    let (received, _) = receive(&socket).unwrap_or_else(|| {
        panic!(
            "the real server's answer was lost to the flood\n{}",
            dp.diagnostics()
        )
    });
    assert!(received == answer, "the answer arrived changed");
}

#[test]
fn held_fragments_are_bounded_and_expire() {
    let lab = Lab::up("frag-held", 1);
    let dp = Datapath::attach(&lab);
    let server = server(&lab);
    let (socket, nat_side) = flow_to_server(&lab, &server);
    // Twenty later fragments whose first fragment is not sent yet.
    let answer = pattern::bytes(4, 21 * FRAGMENT_PAYLOAD - UDP_HEADER);
    let datagram = Datagram {
        from: server_addr(),
        to: nat_side,
        ip_id: 0x7171,
        payload: &answer,
    };
    let sent = fragments::send(&lab, OUT, &datagram, Order::LaterOnly) as u64;
    assert_eq!(sent, 20);
    let stats = dp.stats();
    assert_eq!(
        counter(&stats, "parked_fragment"),
        Some(MAX_PARKED_PER_DATAGRAM),
        "held fragments per datagram are bounded\n{}",
        dp.diagnostics()
    );
    assert_eq!(
        counter(&stats, "passed_fragment_not_held"),
        Some(sent - MAX_PARKED_PER_DATAGRAM)
    );
    // Once the datagram's state expired, its first fragment releases nothing.
    thread::sleep(DATAGRAM_TIMEOUT + Duration::from_millis(500));
    fragments::send(&lab, OUT, &datagram, Order::FirstOnly);
    assert_eq!(
        receive(&socket),
        None,
        "an expired datagram must not be delivered"
    );
    assert_eq!(counter(&dp.stats(), "released_fragment"), Some(0));
}

#[test]
fn a_fragmented_datagram_for_the_host_itself_still_reaches_the_host() {
    let lab = Lab::up("frag-host", 1);
    let dp = Datapath::attach(&lab);
    let host_socket =
        udp::bind(&lab, HOST, SocketAddrV4::new(HOST_UPLINK_ADDR, 5400)).expect("bind in the host");
    let message = pattern::bytes(5, LARGE);
    fragments::send(
        &lab,
        OUT,
        &Datagram {
            from: SocketAddrV4::new(OUTSIDE_ADDR, 5401),
            to: SocketAddrV4::new(HOST_UPLINK_ADDR, 5400),
            ip_id: 0x8181,
            payload: &message,
        },
        Order::FirstLast,
    );
    let (received, _) = receive(&host_socket).unwrap_or_else(|| {
        panic!(
            "the host's own socket never got its datagram: held fragments must go back to the host\n{}",
            dp.diagnostics()
        )
    });
    assert!(received == message, "the host's datagram arrived changed");
}
