//! Exhaustion and collisions: more flows than translated ports to one
//! destination, and ports the host itself uses on the NAT address.
//!
//! With more UDP flows than ports, every accepted flow keeps working and only
//! ever gets its own answers, the rest are dropped and counted, and no pod
//! address leaks. Ports of the host's own sockets on the NAT address are
//! never handed to a container flow, and replies to the host's connections
//! stay with the host.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{Shutdown, SocketAddrV4, TcpStream, UdpSocket},
    ops::RangeInclusive,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use bpfmasq_e2e::{
    Datapath, Lab,
    capture::Capture,
    datapath::{counter, host_json},
    echo::{self, show},
    tcp::{self, TcpServer},
    topology::{HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container, container_addr},
    udp::{self, UdpEchoServer},
    udp_flows::{self, FlowAnswers, Pacing},
    udp_flows_process::{FlowsProcess, FlowsSpec},
};
use dataplane_common::ports::{DEFAULT_PORT_MAX, DEFAULT_PORT_MIN};

// ---------------------------------------------------------------------------
// More UDP flows than ports to one server:port
// ---------------------------------------------------------------------------

const FLOOD_CONTAINERS: u16 = 4;
const FLOWS_PER_CONTAINER: u16 = 17_500;
/// Every container binds its flows to the same source ports, from here up:
/// the first owner of a port keeps it, the others collide and get another.
const FIRST_SOURCE_PORT: u16 = 20_000;
const FLOOD_PORT: u16 = 7000;
/// The child process holding one container's flows (a process may not hold them all).
const FLOWS_BIN: &str = env!("CARGO_BIN_EXE_udp_flows");
/// Room for every flow (two entries each) with plenty to spare: the port
/// range, not the table, must be what runs out.
const FLOOD_CT_MAX: &str = "131072";
const FLOOD_SERVER_BUFFER: libc::c_int = 64 << 20;
const FLOOD_SERVER_LIFETIME: Duration = Duration::from_secs(600);
const FLOOD_PACING: Pacing = Pacing {
    batch: 500,
    attempts: 4,
    quiet: Duration::from_millis(300),
};
/// Accepted flows asked again at the end, per container: every n-th.
const RECHECK_EVERY: usize = 500;
/// Candidate ports are the original one and 31 random ones, so refusals
/// start before the range is completely full; this many must get through.
const MIN_ACCEPTED: usize = 55_000;

fn flood_server() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, FLOOD_PORT)
}

/// One container's flows and what each got back.
struct ContainerFlows {
    c: u16,
    flows: FlowsProcess,
    answers: Vec<FlowAnswers>,
}

impl ContainerFlows {
    fn accepted(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.flows.len()).filter(|&i| self.answers[i].answered())
    }

    fn token(&self, flow: usize) -> Vec<u8> {
        udp_flows::token(self.flows.local(flow))
    }
}

/// Starts `flows`' exchange in every container, then collects the answers.
fn exchange_everywhere(
    containers: &mut [ContainerFlows],
    flows: impl Fn(&ContainerFlows) -> Option<Vec<usize>>,
) -> Vec<Vec<FlowAnswers>> {
    for each in containers.iter_mut() {
        let which = flows(each);
        each.flows
            .start_exchange(which.as_deref())
            .unwrap_or_else(|e| panic!("c{}: {e}", each.c));
    }
    containers
        .iter_mut()
        .map(|each| {
            each.flows
                .answers()
                .unwrap_or_else(|e| panic!("c{}: {e}", each.c))
        })
        .collect()
}

#[test]
fn seventy_thousand_udp_flows_to_one_server_port() {
    let total_flows = usize::from(FLOOD_CONTAINERS) * usize::from(FLOWS_PER_CONTAINER);
    let port_span = usize::from(DEFAULT_PORT_MAX - DEFAULT_PORT_MIN) + 1;
    let started = Instant::now();
    let lab = Lab::up("flood", FLOOD_CONTAINERS);
    let dp = Datapath::attach_with(&lab, &["--ct-max", FLOOD_CT_MAX]);
    let server = UdpEchoServer::spawn_for_many_flows(
        &lab,
        OUT,
        flood_server(),
        "out",
        FLOOD_SERVER_BUFFER,
        FLOOD_SERVER_LIFETIME,
    );
    let capture = Capture::start(&lab, OUT, UPLINK);
    let mut containers: Vec<ContainerFlows> = (1..=FLOOD_CONTAINERS)
        .map(|c| {
            let spec = FlowsSpec {
                netns: lab.ns(&container(c)),
                addr: container_addr(c),
                ports: FIRST_SOURCE_PORT..FIRST_SOURCE_PORT + FLOWS_PER_CONTAINER,
                server: flood_server(),
                tag: "out".to_owned(),
                pacing: FLOOD_PACING,
            };
            let flows = FlowsProcess::spawn(Path::new(FLOWS_BIN), &lab, &container(c), &spec)
                .unwrap_or_else(|e| panic!("c{c}: {e}"));
            ContainerFlows {
                c,
                flows,
                answers: Vec::new(),
            }
        })
        .collect();
    eprintln!(
        "lab, datapath and {total_flows} sockets ready after {:.1?}",
        started.elapsed()
    );

    let sending = Instant::now();
    let answers = exchange_everywhere(&mut containers, |_| None);
    for (each, answers) in containers.iter_mut().zip(answers) {
        each.answers = answers;
    }
    let accepted: usize = containers.iter().map(|each| each.accepted().count()).sum();
    let refused = total_flows - accepted;
    eprintln!(
        "{total_flows} flows sent in {:.1?}: {accepted} answered, {refused} unanswered",
        sending.elapsed()
    );

    // Zero cross-talk: every socket only ever received its own token, from one translated source.
    let mut crossed = Vec::new();
    let mut unstable = Vec::new();
    for each in &containers {
        for (i, answers) in each.answers.iter().enumerate() {
            let local = each.flows.local(i);
            for (from, datagram) in &answers.foreign {
                crossed.push(format!(
                    "c{} flow {local} received {} from {from}",
                    each.c,
                    show(datagram)
                ));
            }
            if answers.seen.len() > 1 {
                unstable.push(format!(
                    "c{} flow {local} was seen from {:?}",
                    each.c, answers.seen
                ));
            }
        }
    }
    assert!(
        crossed.is_empty(),
        "{} datagrams reached a flow they were not meant for, e.g.:\n{}",
        crossed.len(),
        first_lines(&crossed)
    );
    assert!(
        unstable.is_empty(),
        "{} flows were translated to more than one source, e.g.:\n{}",
        unstable.len(),
        first_lines(&unstable)
    );

    // Nothing leaks, and no two flows share a translated source.
    let requests = server.requests();
    let leaked: BTreeSet<SocketAddrV4> = requests
        .iter()
        .map(|r| r.peer)
        .filter(|peer| *peer.ip() != HOST_UPLINK_ADDR)
        .collect();
    assert!(
        leaked.is_empty(),
        "the outside peer received requests from sources other than {HOST_UPLINK_ADDR}: {:?}",
        leaked.iter().take(20).collect::<Vec<_>>()
    );
    let mut sources_of_token: BTreeMap<&[u8], BTreeSet<SocketAddrV4>> = BTreeMap::new();
    let mut tokens_of_source: BTreeMap<SocketAddrV4, BTreeSet<&[u8]>> = BTreeMap::new();
    for r in &requests {
        sources_of_token
            .entry(&r.payload)
            .or_default()
            .insert(r.peer);
        tokens_of_source
            .entry(r.peer)
            .or_default()
            .insert(&r.payload);
    }
    let shared: Vec<String> = tokens_of_source
        .iter()
        .filter(|(_, tokens)| tokens.len() > 1)
        .map(|(source, tokens)| {
            let tokens: Vec<String> = tokens.iter().map(|t| show(t)).collect();
            format!("{source} carried {}", tokens.join(", "))
        })
        .collect();
    assert!(
        shared.is_empty(),
        "{} translated sources were shared by several flows, e.g.:\n{}",
        shared.len(),
        first_lines(&shared)
    );
    let mut mismatched = Vec::new();
    for each in &containers {
        for i in each.accepted() {
            let server_saw = sources_of_token.get(each.token(i).as_slice());
            if server_saw != Some(&BTreeSet::from([each.answers[i].seen[0]])) {
                mismatched.push(format!(
                    "c{} flow {}: answer reports {:?}, server recorded {server_saw:?}",
                    each.c,
                    each.flows.local(i),
                    each.answers[i].seen
                ));
            }
        }
    }
    assert!(
        mismatched.is_empty(),
        "{} answered flows disagree with the server's record of their source, e.g.:\n{}",
        mismatched.len(),
        first_lines(&mismatched)
    );

    // Accepted flows fit the range, the rest were refused for want of a port.
    let stats = dp.stats();
    let count = |name: &str| counter(&stats, name).unwrap_or(0);
    eprintln!(
        "flows_created {}, drop_no_port {}, drop_table_full {}, {} tokens reached the server",
        count("flows_created"),
        count("drop_no_port"),
        count("drop_table_full"),
        sources_of_token.len()
    );
    assert!(
        accepted <= port_span && accepted > MIN_ACCEPTED,
        "{accepted} of {total_flows} flows were answered: expected more than {MIN_ACCEPTED} \
         and at most the {port_span} ports of the range\n{stats}"
    );
    assert!(
        refused > 0 && count("drop_no_port") >= refused as u64,
        "{refused} flows went unanswered; drop_no_port should count at least one drop for each: {stats}"
    );
    assert_eq!(
        count("flows_created"),
        accepted as u64,
        "flows_created should equal the {accepted} answered flows: {stats}"
    );
    assert_eq!(
        count("drop_table_full"),
        0,
        "the table must not fill before the ports do: {stats}"
    );
    let in_table = counter(&host_json(&lab, &["conntrack", "count", "--json"]), "flows");
    assert_eq!(
        in_table,
        Some(accepted as u64),
        "`conntrack count` should show the {accepted} answered flows"
    );

    // Accepted flows still work, with the same translation, after the range ran out.
    let rechecking = Instant::now();
    let samples: Vec<Vec<usize>> = containers
        .iter()
        .map(|each| each.accepted().step_by(RECHECK_EVERY).collect())
        .collect();
    let again = exchange_everywhere(&mut containers, |each| {
        Some(samples[usize::from(each.c) - 1].clone())
    });
    let mut broken = Vec::new();
    for ((each, sample), again) in containers.iter().zip(&samples).zip(&again) {
        for (&i, answers) in sample.iter().zip(again) {
            if answers.seen != each.answers[i].seen || !answers.foreign.is_empty() {
                broken.push(format!(
                    "c{} flow {}: first seen from {:?}, now {answers:?}",
                    each.c,
                    each.flows.local(i),
                    each.answers[i].seen
                ));
            }
        }
    }
    eprintln!(
        "rechecked {} accepted flows in {:.1?}",
        samples.iter().map(Vec::len).sum::<usize>(),
        rechecking.elapsed()
    );
    assert!(
        broken.is_empty(),
        "{} accepted flows no longer work as before:\n{}",
        broken.len(),
        first_lines(&broken)
    );

    let captured = capture.stop();
    let pod_sources = captured.pod_sources();
    assert!(
        pod_sources.is_empty(),
        "the outside peer received frames from pod addresses {pod_sources:?}: {:?}",
        captured.ipv4_sources
    );
    drop(server);
    eprintln!("done in {:.1?}", started.elapsed());
}

/// The first few of `lines`, one per line.
fn first_lines(lines: &[String]) -> String {
    lines
        .iter()
        .take(20)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// The host's own sockets on the NAT address
// ---------------------------------------------------------------------------

const HOST_RANGE: RangeInclusive<u16> = 40_000..=40_009;
const HOST_RANGE_ARG: &str = "40000-40009";
/// The host listens on this port of the NAT address (TCP).
const HOST_LISTEN_PORT: u16 = 40_002;
/// The host's own TCP connection to the outside server leaves from this port.
const HOST_TCP_PORT: u16 = 40_005;
/// The host's own UDP socket to the outside server is bound to this port.
const HOST_UDP_PORT: u16 = 40_007;
const SERVER_TCP_PORT: u16 = 5201;
const SERVER_UDP_PORT: u16 = 5301;
/// The outside TCP server waits this long for the next line of the host's
/// own connection, which stays idle while the containers' flows run.
const HOST_CONNECTION_IDLE: Duration = Duration::from_secs(90);
const HOST_TCP_BEFORE: &[u8] = b"host TCP before the containers\n";
const HOST_TCP_AFTER: &[u8] = b"host TCP after the containers\n";
/// Container source ports: c1 covers the whole range (so some flows would
/// keep a host port if it were free), c2 the start of it again (collisions).
const C1_SOURCE_PORTS: RangeInclusive<u16> = HOST_RANGE;
const C2_SOURCE_PORTS: RangeInclusive<u16> = 40_000..=40_004;
/// c1's flows from these ports go first, while plenty of ports are free.
const HOST_PORTS: [u16; 3] = [HOST_LISTEN_PORT, HOST_TCP_PORT, HOST_UDP_PORT];

fn nat(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(HOST_UPLINK_ADDR, port)
}

fn out_tcp() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, SERVER_TCP_PORT)
}

fn out_udp() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, SERVER_UDP_PORT)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The NAT ports a container flow of this protocol must never get: those
    /// of the host's sockets that would receive its replies.
    fn host_ports(self) -> &'static [u16] {
        match self {
            Proto::Tcp => &[HOST_LISTEN_PORT, HOST_TCP_PORT],
            Proto::Udp => &[HOST_UDP_PORT],
        }
    }
}

/// One container flow to the outside server of its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ContainerFlow {
    proto: Proto,
    c: u16,
    source_port: u16,
}

impl ContainerFlow {
    fn token(self) -> Vec<u8> {
        // One line: the outside TCP server answers line by line.
        format!(
            "{:?} c{} from port {}\n",
            self.proto, self.c, self.source_port
        )
        .into_bytes()
    }

    fn bind(self) -> SocketAddrV4 {
        SocketAddrV4::new(container_addr(self.c), self.source_port)
    }

    /// The request/response; `Ok(answer)` or the client's error.
    fn run(self, lab: &Lab) -> io::Result<Vec<u8>> {
        let node = container(self.c);
        match self.proto {
            Proto::Tcp => tcp::exchange(lab, &node, Some(self.bind()), out_tcp(), &self.token()),
            Proto::Udp => udp::exchange(lab, &node, self.bind(), out_udp(), &self.token()),
        }
    }
}

/// The container flows of the first round (c1's from the host's ports) or
/// of the second (all the others).
fn container_flows(first_round: bool) -> Vec<ContainerFlow> {
    let mut flows = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        for (c, ports) in [(1, C1_SOURCE_PORTS), (2, C2_SOURCE_PORTS)] {
            for source_port in ports {
                let from_host_port = c == 1 && HOST_PORTS.contains(&source_port);
                if from_host_port == first_round {
                    flows.push(ContainerFlow {
                        proto,
                        c,
                        source_port,
                    });
                }
            }
        }
    }
    flows
}

/// The host's own sockets on the NAT address, made before the containers' flows.
struct HostSockets {
    listener: TcpServer<Vec<u8>>,
    tcp: TcpStream,
    udp: UdpSocket,
}

impl HostSockets {
    fn open(lab: &Lab) -> Self {
        let listener = TcpServer::spawn(
            lab,
            HOST,
            nat(HOST_LISTEN_PORT),
            4,
            tcp::echo_tagged("host"),
        );
        let mut tcp = tcp::connect(lab, HOST, Some(nat(HOST_TCP_PORT)), out_tcp())
            .unwrap_or_else(|e| panic!("the host's own TCP connection: {e}"));
        let answer = tcp::ask_line(&mut tcp, HOST_TCP_BEFORE)
            .unwrap_or_else(|e| panic!("the host's own TCP connection, before attaching: {e}"));
        assert_eq!(
            answer,
            echo::reply("out", HOST_TCP_BEFORE),
            "host TCP before: {}",
            show(&answer)
        );
        let udp = udp::bind(lab, HOST, nat(HOST_UDP_PORT))
            .and_then(|socket| socket.connect(out_udp()).map(|()| socket))
            .unwrap_or_else(|e| panic!("the host's own UDP socket: {e}"));
        let before = b"host UDP before the containers";
        let answer = udp::request(&udp, out_udp(), before)
            .unwrap_or_else(|e| panic!("the host's own UDP socket, before attaching: {e}"));
        assert_eq!(
            answer,
            echo::reply("out", before),
            "host UDP before: {}",
            show(&answer)
        );
        Self { listener, tcp, udp }
    }
}

#[test]
fn host_ports_on_the_nat_address_are_never_handed_out() {
    let lab = Lab::up("hostport", 2);
    let tcp_server = TcpServer::spawn(
        &lab,
        OUT,
        out_tcp(),
        64,
        tcp::echo_lines("out", HOST_CONNECTION_IDLE),
    );
    let udp_server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    let mut host = HostSockets::open(&lab);
    let dp = Datapath::attach_with(&lab, &["--port-range", HOST_RANGE_ARG]);

    // c1's flows from the host's ports first (ports are plentiful), then everything else at once.
    let mut outcomes: BTreeMap<ContainerFlow, io::Result<Vec<u8>>> = BTreeMap::new();
    for round in [container_flows(true), container_flows(false)] {
        let lab = &lab;
        let results: Vec<_> = thread::scope(|s| {
            let clients: Vec<_> = round
                .into_iter()
                .map(|flow| s.spawn(move || (flow, flow.run(lab))))
                .collect();
            clients
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect()
        });
        outcomes.extend(results);
    }

    // The host's sockets afterwards: its connection and UDP socket both ways, its listener from outside.
    let mut problems = Vec::new();
    match tcp::ask_line(&mut host.tcp, HOST_TCP_AFTER) {
        Ok(answer) if answer == echo::reply("out", HOST_TCP_AFTER) => {}
        Ok(answer) => problems.push(format!(
            "the host's own TCP connection from {} got {} back",
            nat(HOST_TCP_PORT),
            show(&answer)
        )),
        Err(e) => problems.push(format!(
            "the host's own TCP connection from {} no longer works: {e}",
            nat(HOST_TCP_PORT)
        )),
    }
    // Ends the server's side of it.
    let _ = host.tcp.shutdown(Shutdown::Write);
    let after_udp = b"host UDP after the containers";
    match udp::request(&host.udp, out_udp(), after_udp) {
        Ok(answer) if answer == echo::reply("out", after_udp) => {}
        Ok(answer) => problems.push(format!(
            "the host's own UDP socket on {} got {} back",
            nat(HOST_UDP_PORT),
            show(&answer)
        )),
        Err(e) => problems.push(format!(
            "the host's own UDP socket on {} no longer gets answers: {e}",
            nat(HOST_UDP_PORT)
        )),
    }
    let to_listener = b"outside to the host's listener";
    match tcp::exchange(&lab, OUT, None, nat(HOST_LISTEN_PORT), to_listener) {
        Ok(answer) if answer == echo::reply("host", to_listener) => {}
        Ok(answer) => problems.push(format!(
            "the outside peer's connection to the host's listener got {}",
            show(&answer)
        )),
        Err(e) => problems.push(format!(
            "the outside peer cannot reach the host's listener on {}: {e}",
            nat(HOST_LISTEN_PORT)
        )),
    }

    // What the outside servers saw: which NAT source each container flow arrived from.
    let served = tcp_server.join();
    let requests = udp_server.stop();
    let mut arrived: BTreeMap<ContainerFlow, BTreeSet<SocketAddrV4>> = BTreeMap::new();
    for flow in outcomes.keys() {
        let sources: BTreeSet<SocketAddrV4> = match flow.proto {
            Proto::Tcp => served
                .iter()
                .filter(|conn| conn.result.as_ref().is_ok_and(|r| *r == flow.token()))
                .map(|conn| conn.peer)
                .collect(),
            Proto::Udp => requests
                .iter()
                .filter(|r| r.payload == flow.token())
                .map(|r| r.peer)
                .collect(),
        };
        arrived.insert(*flow, sources);
    }
    let host_connections: Vec<_> = served
        .iter()
        .filter(|conn| {
            conn.result
                .as_ref()
                .is_ok_and(|r| r.starts_with(HOST_TCP_BEFORE))
        })
        .map(|conn| conn.peer)
        .collect();
    if host_connections != [nat(HOST_TCP_PORT)] {
        problems.push(format!(
            "the outside peer saw the host's own TCP connection from {host_connections:?}"
        ));
    }

    let mut accepted: BTreeMap<Proto, BTreeSet<u16>> = BTreeMap::new();
    let mut refused: BTreeMap<Proto, usize> = BTreeMap::new();
    for (flow, outcome) in &outcomes {
        let sources = &arrived[flow];
        for source in sources {
            if *source.ip() != HOST_UPLINK_ADDR || !HOST_RANGE.contains(&source.port()) {
                problems.push(format!(
                    "{flow:?} reached the outside peer from {source}, outside {HOST_UPLINK_ADDR}:{HOST_RANGE:?}"
                ));
            }
            if flow.proto.host_ports().contains(&source.port()) {
                problems.push(format!(
                    "{flow:?} reached the outside peer from {source}, a port the host's own {:?} socket uses",
                    flow.proto
                ));
            }
        }
        match outcome {
            Ok(answer) if *answer == echo::reply("out", &flow.token()) => {
                if let [source] = sources.iter().collect::<Vec<_>>()[..] {
                    accepted
                        .entry(flow.proto)
                        .or_default()
                        .insert(source.port());
                } else {
                    problems.push(format!(
                        "{flow:?} was answered, but the outside peer saw it from {sources:?}"
                    ));
                }
            }
            Ok(answer) => problems.push(format!(
                "{flow:?} got someone else's answer {}",
                show(answer)
            )),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                *refused.entry(flow.proto).or_default() += 1;
                if !sources.is_empty() {
                    problems.push(format!(
                        "{flow:?} got no answer, yet the outside peer saw it from {sources:?}"
                    ));
                }
            }
            Err(e) => problems.push(format!("{flow:?} failed other than by a timeout: {e}")),
        }
    }
    // c1's flows from the host's ports were made while ports were free: they must get through.
    for flow in container_flows(true) {
        if !matches!(&outcomes[&flow], Ok(answer) if *answer == echo::reply("out", &flow.token())) {
            problems.push(format!(
                "{flow:?}, made while the range had free ports, was not answered: {:?}",
                outcomes[&flow].as_ref().map(|a| show(a))
            ));
        }
    }
    for proto in [Proto::Tcp, Proto::Udp] {
        let flows = outcomes.keys().filter(|f| f.proto == proto).count();
        let usable = HOST_RANGE.count() - proto.host_ports().len();
        let got = accepted.get(&proto).map_or(0, BTreeSet::len);
        let answered = outcomes
            .iter()
            .filter(|(f, o)| {
                f.proto == proto
                    && o.as_ref()
                        .is_ok_and(|a| *a == echo::reply("out", &f.token()))
            })
            .count();
        if answered != got {
            problems.push(format!(
                "{proto:?}: {answered} flows answered but only {got} distinct NAT ports seen: {accepted:?}"
            ));
        }
        if got > usable || refused.get(&proto).copied().unwrap_or(0) < flows - usable {
            problems.push(format!(
                "{proto:?}: {got} of {flows} flows accepted (ports {:?}) and {} refused, \
                 with {usable} ports usable",
                accepted.get(&proto),
                refused.get(&proto).copied().unwrap_or(0)
            ));
        }
    }

    let stats = dp.stats();
    let count = |name: &str| counter(&stats, name).unwrap_or(0);
    if count("drop_no_port") == 0 {
        problems.push("drop_no_port did not count the refused flows".to_owned());
    }
    if count("port_skipped_host_socket") == 0 {
        problems.push("port_skipped_host_socket never counted a skipped host port".to_owned());
    }
    eprintln!(
        "accepted NAT ports {accepted:?}, refused {refused:?}; port_skipped_host_socket {}, \
         drop_no_port {}",
        count("port_skipped_host_socket"),
        count("drop_no_port")
    );
    let _ = host.listener.join();
    assert!(
        problems.is_empty(),
        "host ports on the NAT address were not respected:\n{}\n{}",
        problems.join("\n"),
        dp.diagnostics()
    );
}

/// The other order: a container's flow holds NAT port P towards the server,
/// then a process of the host opens its own socket on P towards the same
/// server. The host's tuple wins (as nf_nat keeps it unique): the flow is
/// removed and the server's answers reach the host, not the container.
#[test]
fn a_host_connection_takes_over_a_flows_tuple() {
    const PORT: u16 = 41_000;
    let lab = Lab::up("hostwins", 1);
    let server = UdpEchoServer::spawn(&lab, OUT, out_udp(), "out");
    let port = PORT.to_string();
    let dp = Datapath::attach_with(&lab, &["--port-range", &format!("{port}-{port}")]);
    let pod = udp::bind(
        &lab,
        &container(1),
        SocketAddrV4::new(container_addr(1), PORT),
    )
    .expect("bind in c1");
    udp::request(&pod, out_udp(), b"container first").expect("the container's flow works");
    assert_eq!(
        server.requests().last().map(|r| r.peer),
        Some(nat(PORT)),
        "the container's flow should hold NAT port {PORT}"
    );

    let host = udp::bind(&lab, HOST, nat(PORT)).expect("bind in the host");
    let answer = udp::request(&host, out_udp(), b"host second").unwrap_or_else(|e| {
        panic!(
            "the host's own socket got no answer: {e}\n{}",
            dp.diagnostics()
        )
    });
    assert_eq!(answer, echo::reply("out", b"host second"));
    assert!(
        counter(&dp.stats(), "flow_yielded_to_host") >= Some(1),
        "{}",
        dp.diagnostics()
    );
    // The container's next packet starts a new flow, which finds the only
    // port taken by the host: refused, never mixed with the host's traffic.
    pod.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    let _ = pod.send_to(b"container again", out_udp());
    assert!(
        pod.recv_from(&mut [0; 64]).is_err(),
        "the container must not receive the host's answers"
    );
}
