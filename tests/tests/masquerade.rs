//! Masquerade end to end: with the datapath attached, containers reach the
//! outside peer by ICMP, UDP and TCP; the peer only ever sees the host's
//! uplink address; containers talk to each other with their own addresses;
//! and no netfilter NAT rule is involved. Each test builds its own lab.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    thread,
};

use bpfmasq_e2e::{
    Datapath, Lab,
    capture::Capture,
    datapath::counter,
    echo::{self, show},
    icmp::ping,
    netfilter,
    process::{describe, success},
    tcp::{self, TcpServer},
    topology::{HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container, container_addr},
    udp::{self, UdpEchoServer},
};

const TCP_PORT: u16 = 5201;
const UDP_PORT: u16 = 5301;
/// At least 50 MB, and not a multiple of any buffer size.
const TRANSFER_BYTES: u64 = 50 * 1024 * 1024 + 4321;
/// Both containers' clients bind this source port in the collision test.
const SHARED_SOURCE_PORT: u16 = 40000;

fn out_tcp() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, TCP_PORT)
}

fn out_udp() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, UDP_PORT)
}

/// Container `c`'s address with any port: where its UDP clients bind.
fn any_port(c: u16) -> SocketAddrV4 {
    SocketAddrV4::new(container_addr(c), 0)
}

/// The request container `c` sends, unique to it.
fn hello(c: u16) -> Vec<u8> {
    format!("hello from c{c} ({})", container_addr(c)).into_bytes()
}

#[test]
fn icmp_echo_from_two_containers_reaches_the_outside_peer() {
    let lab = Lab::up("icmp", 2);
    let dp = Datapath::attach(&lab);
    let lab = &lab;
    let results: Vec<_> = thread::scope(|s| {
        let pings: Vec<_> = (1..=2)
            .map(|c| s.spawn(move || (c, ping(lab, &container(c), OUTSIDE_ADDR, 3, 2))))
            .collect();
        pings
            .into_iter()
            .map(|p| p.join().expect("ping thread"))
            .collect()
    });
    for (c, out) in results {
        assert!(
            out.status.success(),
            "`ping -c 3 -W 2 {OUTSIDE_ADDR}` from c{c} ({}) got no replies: {}\n{}",
            container_addr(c),
            describe(&out),
            dp.diagnostics()
        );
    }
}

#[test]
fn tcp_transfer_of_50_mb_from_two_containers_arrives_byte_for_byte() {
    let lab = Lab::up("tcp", 2);
    let dp = Datapath::attach(&lab);
    let server = TcpServer::spawn(&lab, OUT, out_tcp(), 2, tcp::verify_stream);
    let seed = |c: u16| 0x6270_666d_6173_7100 + u64::from(c);
    let sent: Vec<_> = thread::scope(|s| {
        let clients: Vec<_> = (1..=2)
            .map(|c| {
                let lab = &lab;
                s.spawn(move || {
                    let result =
                        tcp::connect(lab, &container(c), None, out_tcp()).and_then(|mut stream| {
                            tcp::send_stream(&mut stream, seed(c), TRANSFER_BYTES)
                        });
                    (c, result)
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    for (c, result) in sent {
        let check =
            result.unwrap_or_else(|e| panic!("TCP transfer from c{c}: {e}\n{}", dp.diagnostics()));
        assert!(
            check.intact(),
            "the outside peer received {} of {} bytes from c{c}, first differing byte at {:?}",
            check.received,
            check.expected,
            check.first_mismatch
        );
    }
    let served = server.join();
    assert_eq!(
        served.len(),
        2,
        "the outside peer handled {} connections, expected 2: {served:?}",
        served.len()
    );
    let mut seeds = BTreeSet::new();
    for conn in &served {
        assert_eq!(
            *conn.peer.ip(),
            HOST_UPLINK_ADDR,
            "the outside peer saw a connection from {}, not from the host's uplink",
            conn.peer
        );
        let check = conn
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("the outside peer, connection from {}: {e}", conn.peer));
        assert!(
            check.intact(),
            "the outside peer's view of the stream from {}: {check:?}",
            conn.peer
        );
        seeds.insert(check.seed);
    }
    assert_eq!(
        seeds,
        BTreeSet::from([seed(1), seed(2)]),
        "the outside peer did not get one stream from each container"
    );
    let stats = dp.stats();
    for name in ["translated_out", "translated_in"] {
        assert!(
            counter(&stats, name).is_some_and(|v| v > 0),
            "stats counter {name} is not positive after 100 MB: {stats}"
        );
    }
}

#[test]
fn udp_request_response_from_two_containers() {
    let lab = Lab::up("udp", 2);
    let dp = Datapath::attach(&lab);
    let server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    for c in 1..=2 {
        let reply = udp::exchange(&lab, &container(c), any_port(c), out_udp(), &hello(c))
            .unwrap_or_else(|e| panic!("c{c}: {e}\n{}", dp.diagnostics()));
        assert_eq!(
            reply,
            echo::reply("out", &hello(c)),
            "c{c} received {}",
            show(&reply)
        );
    }
    let requests = server.stop();
    for c in 1..=2 {
        let seen: BTreeSet<Ipv4Addr> = requests
            .iter()
            .filter(|r| r.payload == hello(c))
            .map(|r| *r.peer.ip())
            .collect();
        assert_eq!(
            seen,
            BTreeSet::from([HOST_UPLINK_ADDR]),
            "the outside peer saw c{c}'s request from {seen:?}; all requests: {requests:?}"
        );
    }
    let flows = dp.conntrack().to_string();
    for c in 1..=2 {
        assert!(
            flows.contains(&container_addr(c).to_string()),
            "conntrack list has no flow of c{c}: {flows}"
        );
    }
}

#[test]
fn two_containers_with_the_same_source_port_each_get_their_own_replies() {
    let lab = Lab::up("sport", 2);
    let dp = Datapath::attach(&lab);
    let bound = |c: u16| SocketAddrV4::new(container_addr(c), SHARED_SOURCE_PORT);

    // UDP: both sockets live at once; c1 asks again after c2 to show its mapping survived.
    let server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    let sockets: Vec<_> = (1..=2)
        .map(|c| udp::bind(&lab, &container(c), bound(c)).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for c in [1u16, 2, 1] {
        let reply = udp::request(&sockets[usize::from(c) - 1], out_udp(), &hello(c))
            .unwrap_or_else(|e| panic!("c{c}: {e}\n{}", dp.diagnostics()));
        assert_eq!(
            reply,
            echo::reply("out", &hello(c)),
            "UDP: c{c} received {}",
            show(&reply)
        );
    }
    let requests = server.stop();
    let peers = udp::peers(&requests);
    assert_two_distinct_uplink_peers(
        "UDP",
        &peers.iter().copied().collect::<Vec<_>>(),
        &format!("{requests:?}"),
    );
    for c in 1..=2 {
        let from: BTreeSet<_> = requests
            .iter()
            .filter(|r| r.payload == hello(c))
            .map(|r| r.peer)
            .collect();
        assert_eq!(
            from.len(),
            1,
            "UDP: c{c}'s requests reached the outside peer from {from:?}, expected one address:port"
        );
    }

    // TCP: both connections open at once, then one request on each.
    let server = TcpServer::spawn(&lab, OUT, out_tcp(), 2, tcp::echo_tagged("out"));
    let mut streams: Vec<_> = (1..=2)
        .map(|c| {
            tcp::connect(&lab, &container(c), Some(bound(c)), out_tcp())
                .unwrap_or_else(|e| panic!("{e}\n{}", dp.diagnostics()))
        })
        .collect();
    for (c, stream) in (1u16..).zip(streams.iter_mut()) {
        let reply = tcp::request(stream, &hello(c))
            .unwrap_or_else(|e| panic!("c{c}: {e}\n{}", dp.diagnostics()));
        assert_eq!(
            reply,
            echo::reply("out", &hello(c)),
            "TCP: c{c} received {}",
            show(&reply)
        );
    }
    let served = server.join();
    let peers: Vec<_> = served.iter().map(|conn| conn.peer).collect();
    assert_two_distinct_uplink_peers("TCP", &peers, &format!("{served:?}"));
}

fn assert_two_distinct_uplink_peers(proto: &str, peers: &[SocketAddrV4], seen: &str) {
    let ports: BTreeSet<u16> = peers.iter().map(SocketAddrV4::port).collect();
    assert!(
        peers.iter().all(|p| *p.ip() == HOST_UPLINK_ADDR) && peers.len() == 2 && ports.len() == 2,
        "{proto}: the outside peer should see two distinct source ports from {HOST_UPLINK_ADDR}, saw {peers:?}: {seen}"
    );
}

#[test]
fn container_to_container_traffic_keeps_its_source() {
    let lab = Lab::up("c2c", 2);
    let dp = Datapath::attach(&lab);
    let (c1, c2) = (container_addr(1), container_addr(2));
    let udp_server =
        UdpEchoServer::spawn(&lab, &container(2), SocketAddrV4::new(c2, UDP_PORT), "c2");
    let tcp_server = TcpServer::spawn(
        &lab,
        &container(2),
        SocketAddrV4::new(c2, TCP_PORT),
        1,
        tcp::echo_tagged("c2"),
    );

    let reply = udp::exchange(
        &lab,
        &container(1),
        any_port(1),
        udp_server.addr(),
        &hello(1),
    )
    .unwrap_or_else(|e| panic!("c1 to c2: {e}\n{}", dp.diagnostics()));
    assert_eq!(
        reply,
        echo::reply("c2", &hello(1)),
        "UDP: c1 received {}",
        show(&reply)
    );
    let reply = tcp::exchange(&lab, &container(1), None, tcp_server.addr(), &hello(1))
        .unwrap_or_else(|e| panic!("c1 to c2: {e}\n{}", dp.diagnostics()));
    assert_eq!(
        reply,
        echo::reply("c2", &hello(1)),
        "TCP: c1 received {}",
        show(&reply)
    );

    let udp_peers = udp::peers(&udp_server.stop());
    assert!(
        !udp_peers.is_empty() && udp_peers.iter().all(|p| *p.ip() == c1),
        "UDP: c2 should see c1's own address {c1}, saw {udp_peers:?}"
    );
    let tcp_peers: Vec<_> = tcp_server.join().iter().map(|conn| conn.peer).collect();
    assert!(
        tcp_peers.len() == 1 && *tcp_peers[0].ip() == c1,
        "TCP: c2 should see c1's own address {c1}, saw {tcp_peers:?}"
    );
}

#[test]
fn the_outside_peer_only_ever_sees_the_uplink_address() {
    let lab = Lab::up("capture", 2);
    let dp = Datapath::attach(&lab);
    let udp_server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    let tcp_server = TcpServer::spawn(&lab, OUT, out_tcp(), 2, tcp::echo_tagged("out"));
    let capture = Capture::start(&lab, OUT, UPLINK);

    // Collect every outcome first: a leak shows best in the capture, so that is asserted first.
    let mut outcomes = Vec::new();
    for c in 1..=2 {
        let node = container(c);
        let pinged = ping(&lab, &node, OUTSIDE_ADDR, 2, 2);
        outcomes.push((format!("ping from c{c}"), success(&pinged)));
        let udp = udp::exchange(&lab, &node, any_port(c), out_udp(), &hello(c));
        outcomes.push((format!("UDP from c{c}"), check_reply(udp, &hello(c))));
        let tcp = tcp::exchange(&lab, &node, None, out_tcp(), &hello(c));
        outcomes.push((format!("TCP from c{c}"), check_reply(tcp, &hello(c))));
    }
    let captured = capture.stop();

    let leaked = captured.pod_sources();
    assert!(
        leaked.is_empty(),
        "the outside peer received frames from pod addresses {leaked:?} (all IPv4 sources with frame counts: {:?})\n{}",
        captured.ipv4_sources,
        dp.diagnostics()
    );
    assert!(
        captured.ipv4_sources.contains_key(&HOST_UPLINK_ADDR),
        "the outside peer received no frame from {HOST_UPLINK_ADDR}; IPv4 sources seen: {:?} in {} frames",
        captured.ipv4_sources,
        captured.frames
    );
    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|(what, r)| r.as_ref().err().map(|e| format!("{what}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "traffic failed:\n{}\n{}",
        failed.join("\n"),
        dp.diagnostics()
    );
    let _ = (udp_server.stop(), tcp_server.join());
}

fn check_reply(reply: std::io::Result<Vec<u8>>, request: &[u8]) -> Result<(), String> {
    match reply {
        Ok(reply) if reply == echo::reply("out", request) => Ok(()),
        Ok(reply) => Err(format!("received {}", show(&reply))),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn no_netfilter_nat_rule_is_needed() {
    let lab = Lab::up("nonat", 1);
    let dp = Datapath::attach(&lab);
    let out = ping(&lab, &container(1), OUTSIDE_ADDR, 2, 2);
    assert!(
        out.status.success(),
        "ping from c1 to the outside peer failed: {}\n{}",
        describe(&out),
        dp.diagnostics()
    );
    let scan = netfilter::scan(&lab, HOST);
    assert!(
        scan.nat_lines.is_empty(),
        "the host namespace has NAT in netfilter while bpfmasq masquerades:\n{}\nfull listings: {:#?}",
        scan.nat_lines.join("\n"),
        scan.listings
    );
}

#[test]
fn port_range_limits_the_translated_source_ports() {
    const RANGE: std::ops::RangeInclusive<u16> = 40000..=40009;
    const FLOWS: u16 = 5; // half the range: allocation never has to hunt for the last free port
    let lab = Lab::up("prange", 1);
    let dp = Datapath::attach_with(&lab, &["--port-range", "40000-40009"]);
    let server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    let sockets: Vec<_> = (0..FLOWS)
        .map(|_| udp::bind(&lab, &container(1), any_port(1)).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for (i, socket) in sockets.iter().enumerate() {
        let request = format!("flow {i} from c1").into_bytes();
        let reply = udp::request(socket, out_udp(), &request)
            .unwrap_or_else(|e| panic!("flow {i}: {e}\n{}", dp.diagnostics()));
        assert_eq!(
            reply,
            echo::reply("out", &request),
            "flow {i} from c1 received {}",
            show(&reply)
        );
    }
    let peers = udp::peers(&server.stop());
    assert!(
        peers.len() == usize::from(FLOWS)
            && peers
                .iter()
                .all(|p| *p.ip() == HOST_UPLINK_ADDR && RANGE.contains(&p.port())),
        "the outside peer should see {FLOWS} distinct sources {HOST_UPLINK_ADDR}:{RANGE:?}, saw {peers:?}"
    );
}
