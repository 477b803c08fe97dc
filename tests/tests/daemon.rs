//! `bpfmasq run`, the daemon, seen from the wire: it survives SIGKILL in the
//! middle of a transfer and a new run adopts the pinned datapath; only one
//! run per instance; GC expires idle flows and keeps active ones; a full
//! table drops new flows only; MASQUERADE follows the uplink's address; and
//! `--detach-on-exit` leaves nothing behind. Plus a 1M-entry GC sweep, timed.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use bpfmasq::datapath::{
    flows::{monotonic_ns, snapshot},
    instance::Instance,
    pinned,
};
use bpfmasq_e2e::{
    Datapath, Lab,
    attachments::Attachments,
    capture::Capture,
    daemon_support::{
        DAEMON_TIMEOUT, Daemon, ShapedTransfer, addr_of, eventually, flows, host_json, port_of,
        run_args, sigkill_mid_transfer_then_adopt,
    },
    datapath::counter,
    echo::{self, show},
    product::bpfmasq,
    refusal::assert_refused,
    topology::{HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container, container_addr},
    udp::{self, UdpEchoServer},
};
use dataplane_common::flow::{FlowEntry, FlowKey, IPPROTO_UDP, nat_flow_pair};
use serde_json::Value;

const TCP_PORT: u16 = 5201;
const UDP_PORT: u16 = 5301;
/// Where `bpfmasq run` keeps its per-instance lock files.
const LOCK_ROOT: &str = "/run/bpfmasq";

fn out_udp() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, UDP_PORT)
}

/// A UDP socket in c1 on any port.
fn c1_socket(lab: &Lab) -> UdpSocket {
    udp::bind(lab, &container(1), SocketAddrV4::new(container_addr(1), 0))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn local_port(socket: &UdpSocket) -> u16 {
    socket.local_addr().expect("bound socket").port()
}

/// Sends `payload` from `socket` to the outside echo server and asserts the right answer.
fn assert_answered(socket: &UdpSocket, payload: &str, daemon: &Daemon, lab: &Lab) {
    let reply = udp::request(socket, out_udp(), payload.as_bytes()).unwrap_or_else(|e| {
        panic!(
            "{e}\ndaemon output:\n{}\nflows: {:?}",
            daemon.output(),
            flows(lab)
        )
    });
    assert_eq!(
        reply,
        echo::reply("out", payload.as_bytes()),
        "c1 received {}",
        show(&reply)
    );
}

/// The tracked flow whose pod side uses source port `port`.
fn flow_from_port(flows: &[Value], port: u16) -> Option<&Value> {
    flows
        .iter()
        .find(|f| port_of(&f["src"]) == Some(u64::from(port)))
}

#[test]
fn sigkill_mid_transfer_then_a_new_run_adopts_and_the_transfer_completes() {
    let lab = Lab::up("kill", 1);
    // 200 MB at 100 Mbit/s take about 16 s: the kill and the restart happen
    // while the transfer runs even on a loaded machine, where loading the
    // programs again takes seconds (checked, not assumed).
    sigkill_mid_transfer_then_adopt(
        &lab,
        &ShapedTransfer {
            bytes: 200 * 1024 * 1024,
            seed: 0x5eed_da3e,
            port: TCP_PORT,
            rate: "100mbit",
            kill_after: 10 << 20,
            kill_within: Duration::from_secs(30),
        },
    );
}

#[test]
fn a_second_run_is_refused_until_the_first_dies() {
    let lab = Lab::up("lock", 1);
    let _server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    let (mut first, _) = Daemon::start(&lab, &[]);

    let args = run_args(&lab, &[]);
    // Refused at once: bpfmasq's command timeout would fail a run that waits.
    let out = bpfmasq(&args);
    assert_refused(
        &out,
        &format!("bpfmasq {}", args.join(" ")),
        &[
            "already running",
            UPLINK,
            &lab.host_ns(),
            &format!("pid {}", first.pid()),
        ],
    );
    let socket = c1_socket(&lab);
    assert_answered(&socket, "still served", &first, &lab);

    first.kill();
    // The kernel released the SIGKILLed holder's lock.
    let (second, line) = Daemon::start(&lab, &[]);
    assert!(line.contains("adopted"), "the new run: {line}");
    assert_answered(&socket, "served again", &second, &lab);
    // Stopped cleanly (SIGTERM), the daemon takes its lock file with it.
    drop(second);
    let locks = Path::new(LOCK_ROOT).join(lab.host_ns());
    assert!(!locks.exists(), "{} is left behind", locks.display());
}

#[test]
fn gc_expires_an_idle_udp_flow_and_keeps_an_active_one() {
    const UDP_REPLIED: u64 = 3;
    let lab = Lab::up("gc", 1);
    let _server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    let (daemon, _) = Daemon::start(
        &lab,
        &[
            "--timeout",
            "udp-unreplied=2",
            "--timeout",
            &format!("udp-replied={UDP_REPLIED}"),
            "--gc-interval",
            "1",
        ],
    );
    let idle = c1_socket(&lab);
    let active = c1_socket(&lab);
    let (idle_port, active_port) = (local_port(&idle), local_port(&active));
    assert_answered(&idle, "idle", &daemon, &lab);

    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let sender = scope.spawn(|| -> io::Result<u32> {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                let reply = udp::request(&active, out_udp(), b"active")?;
                if reply != echo::reply("out", b"active") {
                    return Err(io::Error::other(format!("wrong answer {}", show(&reply))));
                }
                sent += 1;
                thread::sleep(Duration::from_millis(500));
            }
            Ok(sent)
        });
        // The active flow must be there at every look, never re-created
        // (its age never goes back), until it has outlived the timeout
        // several times over and the idle one is gone.
        let mut last_age = 0;
        eventually(
            "the idle flow expires while the active one stays",
            Duration::from_secs(30),
            || {
                let flows = flows(&lab);
                let age =
                    flow_from_port(&flows, active_port).and_then(|f| f["age_seconds"].as_u64());
                if let Some(age) = age {
                    assert!(
                        age >= last_age,
                        "the active flow was removed and re-created (age {last_age} s, then {age} s): {flows:?}"
                    );
                    last_age = age;
                } else {
                    assert!(
                        last_age == 0,
                        "the active flow disappeared after {last_age} s: {flows:?}\n{}",
                        daemon.output()
                    );
                }
                let idle_gone = flow_from_port(&flows, idle_port).is_none();
                (idle_gone && last_age > 2 * UDP_REPLIED).then_some(())
            },
            || format!("flows: {:?}\n{}", flows(&lab), daemon.output()),
        );
        stop.store(true, Ordering::Relaxed);
        let sent = sender
            .join()
            .expect("sender thread")
            .unwrap_or_else(|e| panic!("the active flow lost an answer: {e}"));
        assert!(sent > 2, "only {sent} requests on the active flow");
    });
    assert!(
        daemon.output().contains("expired"),
        "the daemon did not log the expiry:\n{}",
        daemon.output()
    );
}

#[test]
fn a_full_table_drops_new_flows_and_keeps_established_ones() {
    const CT_MAX: usize = 16;
    const EXTRA: usize = 4;
    let lab = Lab::up("full", 1);
    let server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    let capture = Capture::start(&lab, OUT, UPLINK);
    let (daemon, _) = Daemon::start(&lab, &["--ct-max", &CT_MAX.to_string()]);

    let established: Vec<UdpSocket> = (0..CT_MAX).map(|_| c1_socket(&lab)).collect();
    for (i, socket) in established.iter().enumerate() {
        assert_answered(socket, &format!("first {i}"), &daemon, &lab);
    }
    let tracked = flows(&lab);
    assert_eq!(tracked.len(), CT_MAX, "flows: {tracked:?}");

    // Each new flow waits for its (missing) answer: in parallel.
    let refused: Vec<UdpSocket> = (0..EXTRA).map(|_| c1_socket(&lab)).collect();
    thread::scope(|scope| {
        let attempts: Vec<_> = refused
            .iter()
            .enumerate()
            .map(|(i, socket)| {
                scope
                    .spawn(move || udp::request(socket, out_udp(), format!("extra {i}").as_bytes()))
            })
            .collect();
        for attempt in attempts {
            match attempt.join().expect("request thread") {
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                other => {
                    panic!("a flow beyond --ct-max {CT_MAX} should get no answer, got {other:?}")
                }
            }
        }
    });
    let dropped = counter(&host_json(&lab, &["stats", "--json"]), "drop_table_full");
    assert!(
        dropped.is_some_and(|n| n > 0),
        "drop_table_full is {dropped:?}"
    );
    for (i, socket) in established.iter().enumerate() {
        assert_answered(socket, &format!("again {i}"), &daemon, &lab);
    }

    let seen = capture.stop();
    let leaked = seen.pod_sources();
    assert!(
        leaked.is_empty(),
        "packets with pod sources reached the outside peer: {leaked:?} (all: {seen:?})"
    );
    let requests = server.stop();
    assert!(
        !requests.iter().any(|r| r.payload.starts_with(b"extra")),
        "a flow beyond the table reached the outside peer: {requests:?}"
    );
}

#[test]
fn masquerade_follows_the_uplink_address() {
    const NEW_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 61, 21);
    let lab = Lab::up("addr", 1);
    let server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    let (mut daemon, _) = Daemon::start(&lab, &[]);
    let old = c1_socket(&lab);
    assert_answered(&old, "before", &daemon, &lab);
    assert_eq!(
        flow_from_port(&flows(&lab), local_port(&old)).and_then(|f| addr_of(&f["translated"])),
        Some(HOST_UPLINK_ADDR)
    );

    // The new address comes in as a secondary of the same subnet; promoted
    // when the old primary goes, instead of going with it.
    lab.exec_ok(
        HOST,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{UPLINK}.promote_secondaries=1"),
        ],
    );
    lab.exec_ok(
        HOST,
        &[
            "ip",
            "addr",
            "add",
            &format!("{NEW_ADDR}/24"),
            "dev",
            UPLINK,
        ],
    );
    lab.exec_ok(
        HOST,
        &[
            "ip",
            "addr",
            "del",
            &format!("{HOST_UPLINK_ADDR}/24"),
            "dev",
            UPLINK,
        ],
    );
    daemon.wait_for(
        &format!("changed from {HOST_UPLINK_ADDR} to {NEW_ADDR}"),
        DAEMON_TIMEOUT,
    );
    eventually(
        "flows bound to the old address are flushed",
        Duration::from_secs(10),
        || {
            (!flows(&lab)
                .iter()
                .any(|f| addr_of(&f["translated"]) == Some(HOST_UPLINK_ADDR)))
            .then_some(())
        },
        || format!("flows: {:?}", flows(&lab)),
    );

    let new = c1_socket(&lab);
    assert_answered(&new, "new flow", &daemon, &lab);
    assert_answered(&old, "old socket again", &daemon, &lab);
    let requests = server.stop();
    for payload in [b"new flow".as_slice(), b"old socket again"] {
        let sources: Vec<Ipv4Addr> = requests
            .iter()
            .filter(|r| r.payload == payload)
            .map(|r| *r.peer.ip())
            .collect();
        assert!(
            !sources.is_empty() && sources.iter().all(|ip| *ip == NEW_ADDR),
            "{} should arrive from {NEW_ADDR}, came from {sources:?}",
            show(payload)
        );
    }
}

/// `run --detach-on-exit`, SIGTERM: afterwards no pin, link, qdisc, filter or lock is left.
fn detach_on_exit_leaves_nothing(id: &str, link_type: &str) {
    let lab = Lab::up(id, 1);
    let _server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    let (mut daemon, line) = Daemon::start(&lab, &["--detach-on-exit", "--link-type", link_type]);
    assert!(line.contains(&format!("({link_type},")), "started: {line}");
    let socket = c1_socket(&lab);
    assert_answered(&socket, "attached", &daemon, &lab);

    daemon.signal(libc::SIGTERM);
    let status = daemon.wait(DAEMON_TIMEOUT);
    assert!(
        status.success(),
        "the daemon exited with {status}:\n{}",
        daemon.output()
    );
    assert!(
        daemon.output().contains(&format!("detached from {UPLINK}")),
        "the daemon did not say it detached:\n{}",
        daemon.output()
    );

    let left = Attachments::of(&lab);
    assert!(
        left.is_empty(),
        "the daemon's detach left something behind:\n{left}"
    );
    let lock = Path::new(LOCK_ROOT).join(lab.host_ns());
    assert!(!lock.exists(), "{} is left behind", lock.display());
    match udp::request(&socket, out_udp(), b"detached") {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("after detaching, c1 should get no answer, got {other:?}"),
    }
}

#[test]
fn detach_on_exit_tcx_leaves_nothing() {
    detach_on_exit_leaves_nothing("dxtcx", "tcx");
}

#[test]
fn detach_on_exit_clsact_leaves_nothing() {
    detach_on_exit_leaves_nothing("dxcls", "clsact");
}

/// One synthetic flow `i` of the table filled below: its two entries.
/// Every flow has its own reply key (destination and NAT port vary).
fn synthetic_flow(i: u32, nat: u32, last_seen_ns: u64, replied: bool) -> [(FlowKey, FlowEntry); 2] {
    let pod = u32::from_ne_bytes(Ipv4Addr::new(10, 85, (i >> 8) as u8, i as u8).octets());
    let pod_port = (10_000 + (i >> 16) as u16).to_be();
    // 198.18.0.0/15: benchmarking addresses, never routed anywhere.
    let peer =
        u32::from_ne_bytes((Ipv4Addr::new(198, 18, 0, 0).to_bits() + (i >> 15)).to_be_bytes());
    let nat_port = (1024 + (i & 0x7fff) as u16).to_be();
    let key = FlowKey::new(pod, peer, pod_port, 53u16.to_be(), IPPROTO_UDP);
    let [mut reply, mut original] = nat_flow_pair(key, nat, nat_port, 0, 0, last_seen_ns);
    original.1.packets = 1;
    reply.1.packets = u64::from(replied);
    [original, reply]
}

/// Not a benchmark with a threshold: it measures one sweep over a million
/// entries and prints it, and checks the sweep's result.
#[test]
fn gc_sweeps_a_million_entries() {
    const FLOWS: u32 = 500_000;
    const NS: u64 = 1_000_000_000;
    // Older than any UDP timeout (unreplied 30 s, replied 120 s).
    const STALE_NS: u64 = 600 * NS;
    let lab = Lab::up("gc1m", 1);
    let _dp = Datapath::attach_with(&lab, &["--ct-max", "600000"]);
    let instance = Instance::new(&lab.host_ns(), UPLINK);
    let mut table = pinned::conntrack(&instance).unwrap_or_else(|e| panic!("{e:#}"));
    let now = monotonic_ns();
    assert!(
        now > STALE_NS,
        "this test needs 10 minutes of uptime to date flows in the past"
    );
    let nat = u32::from_ne_bytes(HOST_UPLINK_ADDR.octets());

    // Odd flows went quiet long ago (unreplied: expired); even ones are live (replied, just now).
    let filling = Instant::now();
    for i in 0..FLOWS {
        let live = i % 2 == 0;
        let last_seen = if live { now } else { now - STALE_NS };
        for (key, entry) in synthetic_flow(i, nat, last_seen, live) {
            table
                .insert(key, entry, 0)
                .unwrap_or_else(|e| panic!("inserting synthetic flow {i}: {e}"));
        }
    }
    eprintln!("filled {} entries in {:.2?}", 2 * FLOWS, filling.elapsed());

    let report = host_json(&lab, &["gc", "--json"]);
    eprintln!(
        "GC sweep over {} entries ({} flows, {} expired) took {} s",
        report["entries"], report["flows"], report["expired"], report["duration"]
    );
    assert_eq!(report["entries"], 2 * FLOWS, "{report}");
    assert_eq!(report["flows"], FLOWS, "{report}");
    assert_eq!(report["expired"], FLOWS / 2, "{report}");
    assert_eq!(report["rebound"], 0, "{report}");
    assert_eq!(report["orphans"], 0, "{report}");

    let left = snapshot(&table).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        left.orphan_replies.is_empty(),
        "{} reply halves without their original are left",
        left.orphan_replies.len()
    );
    assert_eq!(left.entries, FLOWS as usize, "entries left");
    assert_eq!(left.flows.len(), FLOWS as usize / 2, "flows left");
    let expired_left = left
        .flows
        .iter()
        .filter(|f| f.original.last_seen_ns < now || f.reply.is_none())
        .count();
    assert_eq!(expired_left, 0, "expired or half flows are left");
}
