//! Attacks and leaks a security review found, each closed and shown with
//! real packets (or, where bpfmasq refuses a setup, with the refusal and
//! nothing attached).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    time::Duration,
};

use bpfmasq::datapath::{instance::Instance, pinned};
use bpfmasq_e2e::{
    Datapath, Lab,
    capture::Capture,
    daemon_support::{Daemon, flows},
    datapath::{attach_args, host_json, uplink_verb_args},
    echo,
    frame::{Packet, Seen},
    icmp::ping,
    inject::{Injector, mac_of},
    kernel,
    lab::files_under,
    process::{describe, success},
    product::bpfmasq,
    refusal::assert_refused,
    tcp,
    tcx::{ForeignProgram, Hook, Position, TCX_DROP, TCX_PASS},
    topology::{
        BRIDGE, HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container, container_addr,
    },
    tun,
    udp::{self, UdpEchoServer},
};
use serde_json::Value;

/// An uplink without Ethernet framing (tun here; WireGuard, ipip and ppp
/// alike) would have pod packets parsed as "not IPv4" and passed with their
/// pod source: attach refuses it in one line and attaches nothing.
#[test]
fn an_uplink_without_ethernet_framing_is_refused() {
    let lab = Lab::up("l3uplink", 1);
    tun::create(&lab, HOST, "tun0");
    let host = lab.host_ns();
    let args = [
        "--netns",
        &host,
        "attach",
        "--bridge",
        BRIDGE,
        "--uplink",
        "tun0",
        "--nat-address",
        "192.168.61.11",
    ];
    assert_refused(
        &bpfmasq(args),
        &format!("bpfmasq {}", args.join(" ")),
        &["`tun0` is not an Ethernet device", "link type none"],
    );
    let pins = files_under(&lab.pins_dir().with_file_name("tun0"));
    assert!(pins.is_empty(), "the refused attach left pins: {pins:?}");
}

/// A program already first on the uplink's tcx hooks that passes every
/// packet (TCX_PASS ends the chain) would let pod packets leave with their
/// pod source if bpfmasq ran after it: attach puts bpfmasq first, so the
/// peer still sees only the NAT address and the container its reply.
#[test]
fn a_program_already_on_the_uplink_cannot_let_pod_sources_leave() {
    if !kernel::has_tcx() {
        eprintln!("skipped: this kernel has no tcx links (clsact filters go first by priority)");
        return;
    }
    let lab = Lab::up("hookfirst", 1);
    let _egress = ForeignProgram::attach(
        &lab,
        HOST,
        UPLINK,
        (Hook::Egress, Position::First),
        TCX_PASS,
    );
    let _ingress = ForeignProgram::attach(
        &lab,
        HOST,
        UPLINK,
        (Hook::Ingress, Position::First),
        TCX_PASS,
    );
    let dp = Datapath::attach(&lab);
    let server = UdpEchoServer::spawn(&lab, OUT, udp_service(), "out");
    let hello = b"hello from c1".to_vec();
    let reply = udp::exchange(&lab, &container(1), pod_port(1), udp_service(), &hello)
        .unwrap_or_else(|e| panic!("c1 had no reply: {e}\n{}", dp.diagnostics()));
    assert_eq!(reply, echo::reply("out", &hello));
    let sources: BTreeSet<Ipv4Addr> = server.stop().iter().map(|r| *r.peer.ip()).collect();
    assert_eq!(sources, BTreeSet::from([HOST_UPLINK_ADDR]));
}

/// Traffic bpfmasq leaves alone (the host's own) goes on to the programs
/// attached after it instead of ending the chain: a dropping program after
/// bpfmasq really stops the host's ping, and the ping works again once it
/// is gone.
#[test]
fn programs_after_bpfmasq_still_see_the_traffic_it_leaves_alone() {
    if !kernel::has_tcx() {
        eprintln!("skipped: this kernel has no tcx links");
        return;
    }
    let lab = Lab::up("hooknext", 1);
    let dp = Datapath::attach(&lab);
    assert!(
        success(&ping(&lab, HOST, OUTSIDE_ADDR, 1, 2)).is_ok(),
        "the host cannot ping the peer with bpfmasq attached"
    );
    let dropper =
        ForeignProgram::attach(&lab, HOST, UPLINK, (Hook::Egress, Position::Last), TCX_DROP);
    assert!(
        success(&ping(&lab, HOST, OUTSIDE_ADDR, 1, 1)).is_err(),
        "the host's ping got through although a program after bpfmasq drops everything: \
         bpfmasq ended the chain"
    );
    drop(dropper);
    assert!(success(&ping(&lab, HOST, OUTSIDE_ADDR, 1, 2)).is_ok());
    // bpfmasq saw those pings and left them on their way (to the dropper).
    dp.assert_counter_at_least("passed_not_pod", 3);
}

/// `status` says whether a daemon maintains the datapath: none after a
/// plain attach (and attach says what that means), the daemon's pid while
/// `bpfmasq run` adopts it.
#[test]
fn status_says_when_no_daemon_maintains_the_datapath() {
    let lab = Lab::up("nodaemon", 1);
    let out = bpfmasq(attach_args(&lab, &[]));
    assert!(out.status.success(), "{}", describe(&out));
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("nothing maintains this datapath until `bpfmasq run`"),
        "attach did not say that nothing maintains the table: {note}"
    );
    let status = host_json(&lab, &["status", "--json"]);
    assert_eq!(status["daemon_pid"], Value::Null, "{status}");
    let text = lab_status_text(&lab);
    assert!(text.contains("daemon       none"), "{text}");

    let mut daemon = Daemon::spawn(&lab, &[]);
    daemon.wait_for_started();
    let status = host_json(&lab, &["status", "--json"]);
    assert_eq!(
        status["daemon_pid"].as_u64(),
        Some(u64::from(daemon.pid())),
        "{status}"
    );
}

/// A datapath pinned with another layout version (an upgrade changed a
/// pinned type) is refused by `run` and the inspection verbs with one line,
/// never misread; once the version matches again everything works.
#[test]
fn pins_of_another_layout_version_are_refused_not_misread() {
    let lab = Lab::up("layout", 1);
    let dp = Datapath::attach(&lab);
    let instance = Instance::new(&lab.host_ns(), UPLINK);
    let mut record = pinned::read_record(&instance).expect("the pinned record");
    let current = record.layout_version;
    record.layout_version = current - 1;
    pinned::write_record(&instance, &record).expect("writing the pinned record");

    let run = uplink_verb_args(&lab, "run", &[]);
    let stats = ["--netns", &lab.host_ns(), "stats"];
    for args in [run, stats.map(String::from).to_vec()] {
        assert_refused(
            &bpfmasq(&args),
            &format!("bpfmasq {}", args.join(" ")),
            &[
                "attached by another bpfmasq version",
                &format!("its layout is version {}", current - 1),
            ],
        );
    }

    record.layout_version = current;
    pinned::write_record(&instance, &record).expect("restoring the pinned record");
    let stats = dp.stats();
    assert!(
        stats.is_object(),
        "stats after restoring the version: {stats}"
    );
}

fn udp_service() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, 5301)
}

fn lab_status_text(lab: &Lab) -> String {
    let out = bpfmasq(["--netns", &lab.host_ns(), "status"]);
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An off-path sender spraying RSTs over a live flow's NAT tuple with the
/// server's address and sequence numbers far from the window leaves the
/// flow established: after the close timeout and a sweep, the server's
/// next segment still reaches the container. (Before, any RST marked the
/// flow closed, a sweep removed it, and the host reset the connection.)
#[test]
fn off_path_rsts_do_not_close_a_live_flow() {
    let lab = Lab::up("offpathrst", 1);
    let dp = Datapath::attach_with(&lab, &["--timeout", "tcp-close=1"]);
    let service = SocketAddrV4::new(OUTSIDE_ADDR, 5202);
    let listener = lab
        .run_in(OUT, || TcpListener::bind(service))
        .expect("listening in the peer");
    // The host's uplink receives the peer's SYN-ACK (a capture sees what
    // its interface receives).
    let capture = Capture::start_keeping(&lab, HOST, UPLINK);
    let mut client = tcp::connect(&lab, &container(1), None, service).expect("c1 connecting");
    let (mut server, nat) = listener.accept().expect("the peer accepting");
    let SocketAddr::V4(nat) = nat else {
        panic!("an IPv6 client: {nat}")
    };
    server.write_all(b"hello").expect("the peer writing");
    let mut hello = [0; 5];
    client.read_exact(&mut hello).expect("c1 reading hello");
    let server_isn = capture
        .stop()
        .kept
        .iter()
        .find_map(|frame| syn_ack_seq(frame, service))
        .expect("the peer's SYN-ACK was captured");

    // Half the sequence space away from the server's real position.
    let injector = Injector::open(&lab, OUT, UPLINK);
    let host_mac = mac_of(&lab, HOST, UPLINK);
    for i in 0..64u32 {
        let seq = server_isn.wrapping_add(0x8000_0000).wrapping_add(i * 4096);
        let rst = Packet {
            payload: 0,
            ..Packet::tcp(
                OUTSIDE_ADDR,
                *nat.ip(),
                service.port(),
                nat.port(),
                TCP_RST_ACK,
            )
            .tcp_seq(seq)
        };
        injector.send(&rst.frame(injector.mac, host_mac));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let out = bpfmasq(["--netns", &lab.host_ns(), "gc"]);
    assert!(out.status.success(), "{}", describe(&out));

    server
        .write_all(b"still here")
        .expect("the peer writing again");
    let mut again = [0; 10];
    client
        .read_exact(&mut again)
        .unwrap_or_else(|e| panic!("c1 lost its connection: {e}\n{}", dp.diagnostics()));
    assert_eq!(&again, b"still here");
    dp.assert_counter_at_least("tcp_out_of_window", 64);
}

/// RST with ACK: what a spoofer sends to look like the server.
const TCP_RST_ACK: u8 = 0x14;

/// The sequence number of `server`'s SYN-ACK, if `frame` is one.
fn syn_ack_seq(frame: &[u8], server: SocketAddrV4) -> Option<u32> {
    let seen = Seen::parse(frame)?;
    if seen.src != *server.ip() || seen.ports?.0 != server.port() || seen.tcp_flags? != 0x12 {
        return None;
    }
    let ip = frame.get(14..)?;
    let tcp = ip.get(usize::from(ip[0] & 0x0f) * 4..)?;
    Some(u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?))
}

/// c1 fills the whole table with unanswered UDP flows (to 200 ports of the
/// peer, in a table of 64 flows): c2's new flow still gets in, because a
/// full table drops an unreplied flow to make room (never an answered
/// one), and c2's answer comes back.
#[test]
fn one_pods_unreplied_flood_cannot_lock_the_others_out() {
    let lab = Lab::up("ctflood", 2);
    let dp = Datapath::attach_with(&lab, &["--ct-max", "64"]);
    let server = UdpEchoServer::spawn(&lab, OUT, udp_service(), "out");
    flood_unanswered(&lab, 1, 200);
    let hello = b"hello from c2".to_vec();
    let reply = udp::exchange(&lab, &container(2), pod_port(2), udp_service(), &hello)
        .unwrap_or_else(|e| panic!("c2 was locked out by c1's flood: {e}\n{}", dp.diagnostics()));
    assert_eq!(reply, echo::reply("out", &hello));
    drop(server);
    dp.assert_counter_at_least("flows_early_dropped", 1);
}

/// With `--ct-max-per-pod 10`, c1's flows past ten are refused and
/// counted while c2 still gets its own; once c1's flows expired and a
/// sweep recounted them, c1 may open flows again.
#[test]
fn a_pod_past_its_share_is_refused_while_the_others_get_flows() {
    let lab = Lab::up("podshare", 2);
    let dp = Datapath::attach_with(
        &lab,
        &["--ct-max-per-pod", "10", "--timeout", "udp-unreplied=1"],
    );
    let server = UdpEchoServer::spawn(&lab, OUT, udp_service(), "out");
    flood_unanswered(&lab, 1, 30);
    dp.assert_counter_at_least("drop_pod_flow_limit", 20);
    let hello = b"hello".to_vec();
    udp::exchange(&lab, &container(2), pod_port(2), udp_service(), &hello)
        .unwrap_or_else(|e| panic!("c2 had no flow of its own: {e}\n{}", dp.diagnostics()));
    assert!(
        udp::exchange(&lab, &container(1), pod_port(1), udp_service(), &hello).is_err(),
        "c1 got an eleventh flow"
    );

    std::thread::sleep(Duration::from_millis(1500));
    let out = bpfmasq(["--netns", &lab.host_ns(), "gc"]);
    assert!(out.status.success(), "{}", describe(&out));
    let reply = udp::exchange(&lab, &container(1), pod_port(1), udp_service(), &hello)
        .unwrap_or_else(|e| panic!("c1 is still refused after the sweep: {e}"));
    assert_eq!(reply, echo::reply("out", &hello));
    drop(server);
}

/// As nf_conntrack does, a UDP flow with one request and its answer (DNS)
/// gets the short timeout; one that goes on after its answer is a stream
/// with the long one.
#[test]
fn a_lone_udp_answer_gets_the_short_timeout_and_a_stream_the_long_one() {
    let lab = Lab::up("udpstream", 1);
    let _dp = Datapath::attach(&lab);
    let server = UdpEchoServer::spawn(&lab, OUT, udp_service(), "out");
    let socket = udp::bind(&lab, &container(1), pod_port(1)).expect("binding in c1");
    udp::request(&socket, udp_service(), b"query").expect("the first answer");
    let flow = only_udp_flow(&lab);
    assert_eq!(flow["state"], "REPLIED", "{flow}");
    assert!(flow["expires_in_seconds"].as_u64() <= Some(30), "{flow}");

    udp::request(&socket, udp_service(), b"more").expect("the second answer");
    let flow = only_udp_flow(&lab);
    assert_eq!(flow["state"], "STREAM", "{flow}");
    assert!(flow["expires_in_seconds"].as_u64() > Some(100), "{flow}");
    drop(server);
}

/// The lab's only UDP flow, as `conntrack list --json` shows it.
fn only_udp_flow(lab: &Lab) -> Value {
    let udp: Vec<Value> = flows(lab)
        .into_iter()
        .filter(|f| f["proto"] == "udp")
        .collect();
    assert_eq!(udp.len(), 1, "{udp:?}");
    udp.into_iter().next().expect("one flow")
}

/// Container `c` sends one datagram to each of `count` ports of the peer
/// where nothing listens: `count` flows that are never answered.
fn flood_unanswered(lab: &Lab, c: u16, count: u16) {
    let socket = udp::bind(lab, &container(c), pod_port(c)).expect("binding the flooder");
    for port in 0..count {
        let dst = SocketAddrV4::new(OUTSIDE_ADDR, 20_000 + port);
        socket.send_to(b"anyone?", dst).expect("sending");
    }
    std::thread::sleep(Duration::from_millis(300));
}

fn pod_port(c: u16) -> SocketAddrV4 {
    SocketAddrV4::new(container_addr(c), 0)
}
