//! Switching a live host between the CNI plugin's masquerade and bpfmasq
//! (`attach --takeover`, `detach --handback`) while connections run.
//!
//! The "before" state is built the way a container host has it: the
//! plugin's rules (iptables `CNI-*` chains, or its nftables table) loaded
//! into the lab's host with the real `iptables-restore`/`nft`, and
//! connections NATed by netfilter. Every check is on what really crossed:
//! transfers complete byte for byte, the servers saw the same NAT source
//! before and after, nf_conntrack (read with ctnetlink inside the lab's
//! host) holds what it should.

use std::{
    net::{SocketAddrV4, TcpStream},
    process::{Command, Output},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use bpfmasq::{
    lab::POD_SUBNET,
    netfilter::{
        MasqBackend,
        cni::{self, Container},
        ctnetlink::{Ctnetlink, SnatEntry},
        iptables::Iptables,
        nftables::Nftables,
    },
};
use bpfmasq_e2e::{
    Datapath,
    daemon_support::{Daemon, addr_of, flows, port_of},
    datapath::{attach_args, try_attach},
    echo,
    lab::Lab,
    process::{self, describe},
    product,
    tcp::{self, TcpServer},
    topology::{HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, container, container_addr},
    udp::{self, UdpEchoServer},
};
use serde_json::Value;

/// The uploads' server port, and the source port both containers use for them.
const UPLOAD_PORT: u16 = 5301;
const UPLOAD_SOURCE_PORT: u16 = 40_000;
/// The idle connection's server port and source port.
const IDLE_PORT: u16 = 5302;
const IDLE_SOURCE_PORT: u16 = 40_001;
/// The UDP request/response stream's server port and source port.
const UDP_PORT: u16 = 5303;
const UDP_SOURCE_PORT: u16 = 40_002;
/// Each upload's size, and the uplink's rate: together some seconds, so the
/// switch happens in the middle.
const UPLOAD_BYTES: u64 = 12 * 1024 * 1024;
const UPLINK_RATE: &str = "40mbit";
/// How long the uploads run before the switch.
const BEFORE_SWITCH: Duration = Duration::from_millis(1500);

/// Which of the plugin's masquerade shapes the host starts with.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Iptables,
    Nftables,
}

impl Shape {
    fn backend(self) -> &'static dyn MasqBackend {
        match self {
            Self::Iptables => &Iptables,
            Self::Nftables => &Nftables,
        }
    }

    /// Loads the plugin's rules for the lab's containers into its host.
    fn install(self, lab: &Lab) {
        let containers: Vec<Container> = (1..=lab.containers())
            .map(|i| {
                Container::new(
                    container_addr(i),
                    &cni::id_from(&format!("{}-c{i}", lab.name())),
                )
            })
            .collect();
        let text = match self {
            Self::Iptables => cni::iptables_restore_input(POD_SUBNET, &containers),
            Self::Nftables => cni::nft_input(POD_SUBNET, &containers),
        };
        lab.run_in(HOST, || self.backend().restore(&text))
            .unwrap_or_else(|e| panic!("loading the plugin's {self:?} rules: {e:#}"));
        assert!(
            self.rules(lab).is_some(),
            "the {self:?} rules just loaded are not found"
        );
    }

    /// The pod network's masquerade rules in the lab's host, if any.
    fn rules(self, lab: &Lab) -> Option<String> {
        lab.run_in(HOST, || self.backend().find(POD_SUBNET))
            .unwrap_or_else(|e| panic!("looking for {self:?} rules: {e:#}"))
    }
}

/// nf_conntrack's source-NAT entries of the pod network in the lab's host.
fn nf_snat(lab: &Lab) -> Vec<SnatEntry> {
    lab.run_in(HOST, || Ctnetlink::open()?.dump_snat(POD_SUBNET))
        .unwrap_or_else(|e| panic!("dumping the lab host's conntrack: {e:#}"))
        .entries
}

/// The NAT source nf_conntrack gave `pod` toward `peer`.
fn nf_nat_of(entries: &[SnatEntry], pod: SocketAddrV4, peer: SocketAddrV4) -> Option<SocketAddrV4> {
    entries
        .iter()
        .find(|e| e.pod == pod && e.peer == peer)
        .map(|e| e.nat)
}

/// `attach --takeover` with the suite's fast-path mode; the guard and stdout.
fn takeover(lab: &Lab) -> (Datapath<'_>, String) {
    let out = try_attach(lab, &["--takeover"]);
    let guard = Datapath::adopt(lab);
    assert!(
        out.status.success(),
        "`bpfmasq {}` failed: {}",
        attach_args(lab, &["--takeover"]).join(" "),
        describe(&out)
    );
    (guard, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `bpfmasq --netns HOST detach --handback`, with `env` added.
fn handback(lab: &Lab, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(product::bin());
    command.args(["--netns", &lab.host_ns(), "detach", "--handback"]);
    for (name, value) in env {
        command.env(name, value);
    }
    process::run(&mut command, product::COMMAND_TIMEOUT)
}

/// The bpfmasq flow from `pod` to `peer` (`conntrack list --json`).
fn flow_of(lab: &Lab, pod: SocketAddrV4, peer: SocketAddrV4) -> Option<Value> {
    flows(lab).into_iter().find(|f| {
        addr_of(&f["src"]) == Some(*pod.ip())
            && port_of(&f["src"]) == Some(u64::from(pod.port()))
            && addr_of(&f["dst"]) == Some(*peer.ip())
            && port_of(&f["dst"]) == Some(u64::from(peer.port()))
    })
}

fn translated(flow: &Value) -> SocketAddrV4 {
    SocketAddrV4::new(
        addr_of(&flow["translated"]).expect("translated address"),
        port_of(&flow["translated"]).expect("translated port") as u16,
    )
}

/// Two containers upload from the same source port to one server (netfilter
/// remaps one of them), c1 holds an idle TCP connection and c2 runs a UDP
/// request/response stream; `attach --takeover` in the middle. Everything
/// completes intact with the NAT sources the servers saw before, the
/// plugin's rules are gone, the flows are listed as imported, and a new
/// connection never gets a port an imported flow holds.
fn takeover_mid_transfer(id: &str, shape: Shape) {
    let lab = Lab::up(id, 2);
    shape.install(&lab);
    lab.limit_uplink(UPLINK_RATE);
    let upload_server = SocketAddrV4::new(OUTSIDE_ADDR, UPLOAD_PORT);
    let idle_server = SocketAddrV4::new(OUTSIDE_ADDR, IDLE_PORT);
    let udp_server = SocketAddrV4::new(OUTSIDE_ADDR, UDP_PORT);
    let uploads = TcpServer::spawn(&lab, OUT, upload_server, 2, tcp::verify_stream);
    let idle = TcpServer::spawn(
        &lab,
        OUT,
        idle_server,
        2,
        tcp::echo_lines("idle", Duration::from_secs(60)),
    );
    let udp_echo = UdpEchoServer::spawn(&lab, OUT, udp_server, "udp");
    let pod = |i: u16, port: u16| SocketAddrV4::new(container_addr(i), port);

    let mut idle_stream = tcp::connect(
        &lab,
        &container(1),
        Some(pod(1, IDLE_SOURCE_PORT)),
        idle_server,
    )
    .expect("idle connection");
    let answer = tcp::ask_line(&mut idle_stream, b"before\n").expect("idle connection, before");
    assert_eq!(answer, echo::reply("idle", b"before\n"));
    let udp_socket = udp::bind(&lab, &container(2), pod(2, UDP_SOURCE_PORT)).expect("UDP socket");
    let stop_udp = AtomicBool::new(false);

    thread::scope(|scope| {
        let upload = |i: u16| {
            let lab = &lab;
            scope.spawn(move || {
                let mut stream = tcp::connect(
                    lab,
                    &container(i),
                    Some(pod(i, UPLOAD_SOURCE_PORT)),
                    upload_server,
                )?;
                tcp::send_stream(&mut stream, u64::from(i), UPLOAD_BYTES)
            })
        };
        let clients = [upload(1), upload(2)];
        let udp_stream = scope.spawn(|| {
            let mut answered = 0u32;
            while !stop_udp.load(Ordering::Relaxed) {
                let payload = format!("request {answered}");
                let answer = udp::request(&udp_socket, udp_server, payload.as_bytes())
                    .unwrap_or_else(|e| {
                        panic!("the UDP stream broke after {answered} answers: {e}")
                    });
                assert_eq!(answer, echo::reply("udp", payload.as_bytes()));
                answered += 1;
                thread::sleep(Duration::from_millis(50));
            }
            answered
        });

        thread::sleep(BEFORE_SWITCH);
        let before = nf_snat(&lab);
        let nat_before = |i: u16, port: u16, peer: SocketAddrV4| {
            nf_nat_of(&before, pod(i, port), peer)
                .unwrap_or_else(|| panic!("nf_conntrack has no NAT for c{i}:{port}: {before:?}"))
        };
        let upload_nats = [
            nat_before(1, UPLOAD_SOURCE_PORT, upload_server),
            nat_before(2, UPLOAD_SOURCE_PORT, upload_server),
        ];
        assert_ne!(
            upload_nats[0], upload_nats[1],
            "netfilter should have remapped one of the two uploads"
        );
        let idle_nat = nat_before(1, IDLE_SOURCE_PORT, idle_server);
        let udp_nat = nat_before(2, UDP_SOURCE_PORT, udp_server);

        let (dp, said) = takeover(&lab);
        eprintln!("{said}");
        assert!(
            clients.iter().all(|c| !c.is_finished()),
            "an upload ended before the takeover: the test proves nothing (shaping too weak?)"
        );
        assert!(
            said.contains("took over: imported 4 connection(s)"),
            "{said}\nbefore: {before:?}\nafter: {:?}\n{}",
            nf_snat(&lab),
            dp.diagnostics()
        );
        assert!(
            said.contains(&format!(
                "removed the CNI masquerade rules ({})",
                shape.backend().name()
            )),
            "{said}"
        );
        assert_eq!(
            shape.rules(&lab),
            None,
            "the plugin's rules are still there"
        );
        assert!(
            nf_snat(&lab).is_empty(),
            "nf_conntrack still NATs the imported connections: {:?}",
            nf_snat(&lab)
        );
        for (i, port, peer, nat) in [
            (1, UPLOAD_SOURCE_PORT, upload_server, upload_nats[0]),
            (2, UPLOAD_SOURCE_PORT, upload_server, upload_nats[1]),
            (1, IDLE_SOURCE_PORT, idle_server, idle_nat),
            (2, UDP_SOURCE_PORT, udp_server, udp_nat),
        ] {
            let flow = flow_of(&lab, pod(i, port), peer)
                .unwrap_or_else(|| panic!("no bpfmasq flow for c{i}:{port}: {:?}", flows(&lab)));
            assert_eq!(translated(&flow), nat, "{flow}");
            assert_eq!(flow["imported"], true, "{flow}");
        }
        let listing = lab_listing(&lab);
        assert_eq!(listing.matches("[IMPORTED]").count(), 4, "{listing}");

        // A new connection that would keep an imported flow's port (same
        // source port, same server) gets another one.
        let mut newcomer = tcp::connect(
            &lab,
            &container(2),
            Some(pod(2, IDLE_SOURCE_PORT)),
            idle_server,
        )
        .expect("a new connection after the takeover");
        let answer = tcp::ask_line(&mut newcomer, b"new\n").expect("new connection");
        assert_eq!(answer, echo::reply("idle", b"new\n"));
        let new_nat = translated(
            &flow_of(&lab, pod(2, IDLE_SOURCE_PORT), idle_server)
                .expect("the new connection's flow"),
        );
        assert_ne!(
            new_nat, idle_nat,
            "a new flow got the port an imported flow holds"
        );
        let answer = tcp::ask_line(&mut idle_stream, b"after\n").expect("idle connection, after");
        assert_eq!(answer, echo::reply("idle", b"after\n"));
        close(newcomer);
        close(idle_stream);

        for (i, client) in clients.into_iter().enumerate() {
            let check = client.join().expect("upload thread").unwrap_or_else(|e| {
                panic!("upload from c{} failed: {e}\n{}", i + 1, dp.diagnostics())
            });
            assert!(check.intact(), "upload from c{}: {check:?}", i + 1);
        }
        stop_udp.store(true, Ordering::Relaxed);
        let answered = udp_stream.join().expect("UDP stream thread");
        assert!(answered > 10, "the UDP stream got {answered} answers");

        let served = uploads.join();
        let mut seen: Vec<SocketAddrV4> = served.iter().map(|s| s.peer).collect();
        seen.sort();
        let mut expected = upload_nats.to_vec();
        expected.sort();
        assert_eq!(seen, expected, "the upload server saw {served:?}");
        for s in &served {
            let check = s
                .result
                .as_ref()
                .unwrap_or_else(|e| panic!("server side: {e}"));
            assert!(
                check.intact(),
                "the server received {check:?} from {}",
                s.peer
            );
        }
        let idle_served = idle.join();
        assert_eq!(idle_served[0].peer, idle_nat, "{idle_served:?}");
        let udp_peers = udp::peers(&udp_echo.stop());
        assert_eq!(
            udp_peers.into_iter().collect::<Vec<_>>(),
            [udp_nat],
            "the UDP server saw the stream from more than its NAT source"
        );
        drop(dp);
    });
}

/// Shuts a connection down cleanly (the server's handler then returns).
fn close(stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// `conntrack list` as a person reads it.
fn lab_listing(lab: &Lab) -> String {
    let out = product::bpfmasq(["--netns", &lab.host_ns(), "conntrack", "list"]);
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn takeover_mid_transfer_keeps_every_connection_and_its_nat_port() {
    takeover_mid_transfer("tkipt", Shape::Iptables);
}

#[test]
fn takeover_from_nftables_mid_transfer_keeps_every_connection_and_its_nat_port() {
    takeover_mid_transfer("tknft", Shape::Nftables);
}

/// After a takeover, an upload through bpfmasq; `detach --handback` in the
/// middle: the upload completes through netfilter, the rules are back and
/// nf_conntrack holds the flow with bpfmasq's NAT port.
fn handback_mid_transfer(id: &str, shape: Shape) {
    let lab = Lab::up(id, 1);
    shape.install(&lab);
    lab.limit_uplink(UPLINK_RATE);
    let (dp, said) = takeover(&lab);
    assert!(said.contains("nothing imported"), "{said}");
    assert_eq!(shape.rules(&lab), None);

    let server_addr = SocketAddrV4::new(OUTSIDE_ADDR, UPLOAD_PORT);
    let server = TcpServer::spawn(&lab, OUT, server_addr, 1, tcp::verify_stream);
    let pod = SocketAddrV4::new(container_addr(1), UPLOAD_SOURCE_PORT);
    thread::scope(|scope| {
        let client = scope.spawn(|| {
            let mut stream = tcp::connect(&lab, &container(1), Some(pod), server_addr)?;
            // Alone on the uplink: twice the bytes for the same duration.
            tcp::send_stream(&mut stream, 7, 2 * UPLOAD_BYTES)
        });
        thread::sleep(BEFORE_SWITCH);
        let flow = flow_of(&lab, pod, server_addr)
            .unwrap_or_else(|| panic!("no bpfmasq flow for the upload: {:?}", flows(&lab)));
        let nat = translated(&flow);
        assert_eq!(*nat.ip(), HOST_UPLINK_ADDR);

        let out = handback(&lab, &[]);
        assert!(out.status.success(), "handback failed: {}", describe(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("handed back: 1 connection(s)"),
            "{}",
            describe(&out)
        );
        assert!(said.contains("masquerade rules restored"), "{said}");
        dp.forget();
        assert!(
            !lab.pins_dir().exists(),
            "still attached after the handback"
        );
        if client.is_finished() {
            panic!(
                "the upload ended before the handback ({:?}): the test proves nothing",
                client.join()
            );
        }
        assert!(
            shape.rules(&lab).is_some(),
            "the plugin's rules are not back"
        );
        assert_eq!(
            nf_nat_of(&nf_snat(&lab), pod, server_addr),
            Some(nat),
            "nf_conntrack does not hold the upload with bpfmasq's port"
        );
        let check = client
            .join()
            .expect("upload thread")
            .unwrap_or_else(|e| panic!("the upload failed after the handback: {e}"));
        assert!(check.intact(), "{check:?}");
        let served = server.join();
        assert_eq!(served.len(), 1, "{served:?}");
        assert_eq!(served[0].peer, nat, "the server saw {served:?}");
        assert!(
            served[0]
                .result
                .as_ref()
                .is_ok_and(tcp::StreamCheck::intact),
            "{served:?}"
        );
    });
    // The rules are the plugin's again: remove them, as its DEL would.
    remove_rules(&lab, shape);
}

fn remove_rules(lab: &Lab, shape: Shape) {
    if let Some(rules) = shape.rules(lab) {
        lab.run_in(HOST, || shape.backend().remove(&rules))
            .unwrap_or_else(|e| panic!("removing the {shape:?} rules: {e:#}"));
    }
}

#[test]
fn handback_mid_transfer_continues_through_iptables_with_the_same_port() {
    handback_mid_transfer("hbipt", Shape::Iptables);
}

#[test]
fn handback_mid_transfer_continues_through_nftables_with_the_same_port() {
    handback_mid_transfer("hbnft", Shape::Nftables);
}

#[test]
fn takeover_without_masquerade_rules_attaches_and_says_nothing_was_imported() {
    let lab = Lab::up("tknone", 1);
    let (dp, said) = takeover(&lab);
    assert!(said.contains("nothing imported"), "{said}");
    assert!(said.contains("no CNI masquerade rules found"), "{said}");
    let server = SocketAddrV4::new(OUTSIDE_ADDR, UPLOAD_PORT);
    let seen = tcp::transfer_checked(&lab, &dp, &container(1), (OUT, server), 3, 64 * 1024);
    assert_eq!(*seen.seen_by_server.ip(), HOST_UPLINK_ADDR);
}

/// An idle connection from c1 to an echo server in the peer, masqueraded
/// by the plugin's iptables rules (installed first).
struct IdleConnection {
    server: TcpServer<Vec<u8>>,
    server_addr: SocketAddrV4,
    pod: SocketAddrV4,
    stream: TcpStream,
    /// The NAT address and port netfilter gave it.
    nat: SocketAddrV4,
}

impl IdleConnection {
    fn open_through_iptables(lab: &Lab) -> Self {
        Shape::Iptables.install(lab);
        let server_addr = SocketAddrV4::new(OUTSIDE_ADDR, IDLE_PORT);
        let server = TcpServer::spawn(
            lab,
            OUT,
            server_addr,
            1,
            tcp::echo_lines("idle", Duration::from_secs(30)),
        );
        let pod = SocketAddrV4::new(container_addr(1), IDLE_SOURCE_PORT);
        let mut stream =
            tcp::connect(lab, &container(1), Some(pod), server_addr).expect("connection");
        tcp::ask_line(&mut stream, b"before\n").expect("before");
        let nat =
            nf_nat_of(&nf_snat(lab), pod, server_addr).expect("netfilter NATs the connection");
        Self {
            server,
            server_addr,
            pod,
            stream,
            nat,
        }
    }

    /// The server still answers (the connection survived), then both ends
    /// close.
    fn still_answers(mut self) {
        let answer =
            tcp::ask_line(&mut self.stream, b"after\n").expect("the connection still works");
        assert_eq!(answer, echo::reply("idle", b"after\n"));
        close(self.stream);
        drop(self.server.join());
    }
}

#[test]
fn run_takeover_moves_a_live_connection_into_the_daemons_datapath() {
    let lab = Lab::up("tkrun", 1);
    let conn = IdleConnection::open_through_iptables(&lab);

    let (daemon, line) = Daemon::start(&lab, &["--takeover"]);
    assert!(line.contains("attached to"), "{line}");
    assert!(
        daemon
            .output()
            .contains("bpfmasq run: took over: imported 1 connection(s)"),
        "{}",
        daemon.output()
    );
    assert_eq!(
        Shape::Iptables.rules(&lab),
        None,
        "the plugin's rules are still there"
    );
    let flow = flow_of(&lab, conn.pod, conn.server_addr).expect("the imported flow");
    assert_eq!(translated(&flow), conn.nat, "{flow}");
    conn.still_answers();
}

#[test]
fn a_failed_conntrack_dump_changes_nothing() {
    let lab = Lab::up("tkfail", 1);
    let conn = IdleConnection::open_through_iptables(&lab);

    let args = attach_args(&lab, &["--takeover"]);
    let mut command = Command::new(product::bin());
    command.args(&args).env("BPFMASQ_TEST_CTNETLINK_FAIL", "1");
    let out = process::run(&mut command, product::COMMAND_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the takeover should fail: {}",
        describe(&out)
    );
    assert!(
        stderr.contains("nothing was changed") && stderr.lines().count() == 1,
        "{}",
        describe(&out)
    );
    assert!(!lab.pins_dir().exists(), "something was attached");
    assert!(Shape::Iptables.rules(&lab).is_some(), "a rule was removed");
    assert_eq!(
        nf_nat_of(&nf_snat(&lab), conn.pod, conn.server_addr),
        Some(conn.nat)
    );
    conn.still_answers();
    remove_rules(&lab, Shape::Iptables);
}

#[test]
fn handback_without_the_netfilter_tools_fails_before_detaching() {
    let lab = Lab::up("hbtools", 1);
    Shape::Iptables.install(&lab);
    let (dp, _) = takeover(&lab);
    let out = handback(&lab, &[("PATH", "/nonexistent")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr.contains("`iptables-save` is not installed")
            && stderr.contains("bpfmasq stays attached"),
        "{}",
        describe(&out)
    );
    assert!(lab.pins_dir().exists(), "the datapath was detached");
    let server = SocketAddrV4::new(OUTSIDE_ADDR, UPLOAD_PORT);
    let seen = tcp::transfer_checked(&lab, &dp, &container(1), (OUT, server), 5, 64 * 1024);
    assert_eq!(*seen.seen_by_server.ip(), HOST_UPLINK_ADDR);
    // With the tools back, the handback works.
    let out = handback(&lab, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    dp.forget();
    assert!(Shape::Iptables.rules(&lab).is_some());
    remove_rules(&lab, Shape::Iptables);
}

/// Not a test with a threshold: how long `attach --takeover` takes with
/// none, 10,000 and 100,000 live source-NAT entries in nf_conntrack (created
/// through ctnetlink: established TCP connections of pods in 10.85.0.0/16 to
/// peers in 198.18.0.0/15, masqueraded to the uplink's address). Prints the
/// figures BENCHMARKS.md quotes; checks every entry was imported.
/// `cargo test --release -p bpfmasq-e2e --test takeover -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement (minutes), run on demand"]
fn takeover_time_with_many_live_connections() {
    for count in [0u32, 10_000, 100_000] {
        let lab = Lab::up("tktime", 1);
        Shape::Iptables.install(&lab);
        let created = std::time::Instant::now();
        lab.run_in(HOST, || -> anyhow::Result<()> {
            let mut ct = Ctnetlink::open()?;
            for i in 0..count {
                ct.create_snat(&synthetic_entry(i))?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("creating {count} nf_conntrack entries: {e:#}"));
        eprintln!("created {count} entries in {:.2?}", created.elapsed());
        let ct_max = (2 * count).max(1024).to_string();
        let started = std::time::Instant::now();
        let (dp, said) = {
            let out = try_attach(&lab, &["--takeover", "--ct-max", &ct_max]);
            let guard = Datapath::adopt(&lab);
            assert!(out.status.success(), "{}", describe(&out));
            (guard, String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let wall = started.elapsed();
        eprintln!(
            "{count} live connections: `attach --takeover` took {wall:.2?} in all; it said: {said}"
        );
        let expected = if count == 0 {
            "nothing imported".to_owned()
        } else {
            format!("imported {count} connection(s)")
        };
        assert!(said.contains(&expected), "{said}");
        assert!(nf_snat(&lab).is_empty(), "entries left in nf_conntrack");
        drop(dp);
    }
}

/// Synthetic connection `i`: pod 10.85.x.y:40000 to 198.18.0.0/15 port 443,
/// masqueraded to the uplink's address with a port of its own.
fn synthetic_entry(i: u32) -> SnatEntry {
    let pod = u32::from(container_addr(1)) + (i % 60_000);
    let peer = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i;
    SnatEntry {
        proto: 6,
        pod: SocketAddrV4::new(pod.into(), 40_000),
        peer: SocketAddrV4::new(peer.into(), 443),
        nat: SocketAddrV4::new(HOST_UPLINK_ADDR, 1024 + (i % 60_000) as u16),
        tcp_state: Some(bpfmasq::netfilter::ctnetlink::TcpState::Established),
        replied: true,
        timeout: 3600,
    }
}
