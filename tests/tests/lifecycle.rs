//! The datapath's lifecycle seen from the wire and from the CLI: detach
//! brings the unmasqueraded failure back (ARCHITECTURE.md, "The lab"), the clsact link type cleans up after
//! itself, refused commands fail in one line and leave nothing attached,
//! and the lab itself goes away completely.

use std::{io, net::SocketAddrV4, path::Path};

use bpfmasq::netns::NetNs;
use bpfmasq_e2e::{
    Datapath, Lab, attachments,
    datapath::{attach_args, try_attach},
    echo::{self, show},
    icmp::ping,
    lab::{PIN_ROOT, files_under},
    process::describe,
    product::bpfmasq,
    refusal::assert_refused,
    tcp::{self, TcpServer},
    topology::{BRIDGE, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container, container_addr},
    udp::{self, UdpEchoServer},
};

const TCP_PORT: u16 = 5201;
const UDP_PORT: u16 = 5301;
const REQUEST: &[u8] = b"hello from c1";

fn out_udp() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, UDP_PORT)
}

fn out_tcp() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, TCP_PORT)
}

/// One UDP request from c1 to the outside peer's echo server.
fn udp_from_c1(lab: &Lab) -> io::Result<Vec<u8>> {
    udp::exchange(
        lab,
        &container(1),
        SocketAddrV4::new(container_addr(1), 0),
        out_udp(),
        REQUEST,
    )
}

/// Asserts that c1's UDP request to the outside peer gets no answer.
fn assert_no_udp_answer(lab: &Lab, when: &str) {
    match udp_from_c1(lab) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        Err(e) => panic!("{when}: c1's UDP request failed in an unexpected way: {e}"),
        Ok(reply) => panic!(
            "{when}: c1 received {} from the outside peer, which has no route back",
            show(&reply)
        ),
    }
}

/// Asserts that c1's UDP request to the outside peer is answered correctly.
fn assert_udp_answer(lab: &Lab, dp: &Datapath<'_>, when: &str) {
    let reply = udp_from_c1(lab).unwrap_or_else(|e| panic!("{when}: {e}\n{}", dp.diagnostics()));
    assert_eq!(
        reply,
        echo::reply("out", REQUEST),
        "{when}: c1 received {}",
        show(&reply)
    );
}

#[test]
fn detach_brings_back_the_unmasqueraded_failure() {
    let lab = Lab::up("detach", 1);
    let server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    assert_no_udp_answer(&lab, "before attach");
    let before = udp::peers(&server.requests());
    assert!(
        before.iter().map(|p| *p.ip()).eq([container_addr(1)]),
        "before attach the outside peer should get c1's request from {} (and be unable to answer), saw {before:?}",
        container_addr(1)
    );

    let dp = Datapath::attach(&lab);
    assert!(
        lab.pins_dir().is_dir(),
        "attach pinned nothing in {}",
        lab.pins_dir().display()
    );
    assert_udp_answer(&lab, &dp, "attached");
    let out = ping(&lab, &container(1), OUTSIDE_ADDR, 2, 2);
    assert!(
        out.status.success(),
        "attached: ping from c1 failed: {}\n{}",
        describe(&out),
        dp.diagnostics()
    );
    let answered_before_detach = server.requests().len();

    dp.detach();
    assert!(
        !lab.pins_dir().exists(),
        "detach left {} behind",
        lab.pins_dir().display()
    );
    assert_no_udp_answer(&lab, "after detach");
    let out = ping(&lab, &container(1), OUTSIDE_ADDR, 2, 1);
    assert!(
        !out.status.success(),
        "after detach, ping from c1 still got replies: {}",
        describe(&out)
    );

    let requests = server.stop();
    let after: Vec<_> = requests[answered_before_detach..]
        .iter()
        .map(|r| r.peer)
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|p| *p.ip() == container_addr(1)),
        "after detach the outside peer should see c1's own address {} again, saw {after:?}",
        container_addr(1)
    );
    let while_attached: Vec<_> = requests
        .iter()
        .filter(|r| *r.peer.ip() == HOST_UPLINK_ADDR)
        .collect();
    assert!(
        !while_attached.is_empty(),
        "the outside peer never saw {HOST_UPLINK_ADDR}: {requests:?}"
    );
}

#[test]
fn clsact_link_type_works_and_detach_removes_the_qdisc() {
    let lab = Lab::up("clsact", 1);
    let dp = Datapath::attach_with(&lab, &["--link-type", "clsact"]);
    let qdiscs = attachments::qdiscs(&lab, UPLINK);
    assert!(
        qdiscs.contains("clsact"),
        "attach --link-type clsact created no clsact qdisc on {UPLINK}: {qdiscs}"
    );

    let udp_server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    assert_udp_answer(&lab, &dp, "clsact");
    let tcp_server = TcpServer::spawn(&lab, OUT, out_tcp(), 1, tcp::echo_tagged("out"));
    let reply = tcp::exchange(&lab, &container(1), None, out_tcp(), REQUEST)
        .unwrap_or_else(|e| panic!("clsact: {e}\n{}", dp.diagnostics()));
    assert_eq!(
        reply,
        echo::reply("out", REQUEST),
        "clsact: c1 received {} over TCP",
        show(&reply)
    );
    let peers: Vec<_> = tcp_server.join().iter().map(|conn| conn.peer).collect();
    let udp_peers = udp::peers(&udp_server.stop());
    assert!(
        peers
            .iter()
            .chain(&udp_peers)
            .all(|p| *p.ip() == HOST_UPLINK_ADDR),
        "clsact: the outside peer saw TCP {peers:?} and UDP {udp_peers:?}, expected only {HOST_UPLINK_ADDR}"
    );

    dp.detach();
    let qdiscs = attachments::qdiscs(&lab, UPLINK);
    assert!(
        !qdiscs.contains("clsact"),
        "detach left a clsact qdisc on {UPLINK}: {qdiscs}"
    );
    assert!(
        !lab.pins_dir().exists(),
        "detach left {} behind",
        lab.pins_dir().display()
    );
}

#[test]
fn attaching_twice_fails_cleanly_and_keeps_the_first_datapath() {
    let lab = Lab::up("twice", 1);
    let dp = Datapath::attach(&lab);
    let again = try_attach(&lab, &[]);
    let shown = format!("bpfmasq {}", attach_args(&lab, &[]).join(" "));
    assert_refused(&again, &shown, &[UPLINK]);

    let server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    assert_udp_answer(&lab, &dp, "after the refused second attach");
    let peers = udp::peers(&server.stop());
    assert!(
        peers.iter().all(|p| *p.ip() == HOST_UPLINK_ADDR),
        "the outside peer saw {peers:?}"
    );
    assert!(
        lab.pins_dir().is_dir(),
        "the refused second attach removed the first one's pins"
    );
}

#[test]
fn bad_input_is_refused_in_one_line_and_attaches_nothing() {
    let lab = Lab::up("badin", 1);
    let missing_ns = format!("e2e-nosuch-{}", std::process::id());
    let host = lab.host_ns();
    // (namespace, uplink, further arguments, what the error must name)
    let cases: [(&str, &str, &[&str], &str); 4] = [
        (&host, "nosuch", &[], "nosuch"),
        (&host, UPLINK, &["--port-range", "10-1"], "10-1"),
        (&host, UPLINK, &["--pod-cidr", "10.0.0.0/33"], "10.0.0.0/33"),
        (&missing_ns, UPLINK, &[], &missing_ns),
    ];
    for (netns, uplink, extra, culprit) in cases {
        let mut args = vec![
            "--netns", netns, "attach", "--bridge", BRIDGE, "--uplink", uplink,
        ];
        args.extend_from_slice(extra);
        let out = bpfmasq(&args);
        assert_refused(&out, &format!("bpfmasq {}", args.join(" ")), &[culprit]);
    }

    assert!(
        !NetNs::exists(&missing_ns),
        "a refused --netns {missing_ns} created that namespace"
    );
    assert!(
        !Path::new(PIN_ROOT).join(&missing_ns).exists(),
        "a refused --netns {missing_ns} left pins in {PIN_ROOT}"
    );
    let pinned = files_under(&Path::new(PIN_ROOT).join(&host));
    assert!(
        pinned.is_empty(),
        "refused attaches left pins behind: {pinned:?}"
    );
    let qdiscs = attachments::qdiscs(&lab, UPLINK);
    assert!(
        !qdiscs.contains("clsact"),
        "refused attaches left a clsact qdisc on {UPLINK}: {qdiscs}"
    );
    let _server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    assert_no_udp_answer(
        &lab,
        "after the refused attaches (nothing should masquerade)",
    );
}

#[test]
fn lab_down_removes_everything_and_is_idempotent() {
    let lab = Lab::up("down", 2);
    let attached = try_attach(&lab, &[]);
    assert!(
        attached.status.success(),
        "attach failed: {}",
        describe(&attached)
    );
    assert_eq!(
        lab.namespaces().len(),
        4,
        "lab up should create host, out, c1, c2: {:?}",
        lab.namespaces()
    );
    for round in 1..=2 {
        let out = bpfmasq(["lab", "down", "--name", lab.name()]);
        assert!(
            out.status.success(),
            "`lab down` (round {round}) failed: {}",
            describe(&out)
        );
        assert!(
            lab.namespaces().is_empty(),
            "`lab down` (round {round}) left {:?}",
            lab.namespaces()
        );
        let pins = Path::new(PIN_ROOT).join(lab.host_ns());
        assert!(
            !pins.exists(),
            "`lab down` (round {round}) left {}",
            pins.display()
        );
    }
}
