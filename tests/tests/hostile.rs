//! Hostile and odd packets (issue 5): hand-built frames injected from a
//! container and from the outside peer, one case after another, with the
//! datapath attached. [`CASES`] lists every case tried and the outcome
//! expected of it: the counters that must move (the datapath's, or the host
//! kernel's own when its IP stack drops the packet before the datapath sees
//! it) and where the packet may arrive. The test prints the table with what
//! really happened (counter deltas, what the peer and the containers
//! received), then asserts, per case: the counters moved; nothing reached
//! the peer with a pod source address; nothing reached a container that no
//! flow invited. After all cases: the whole run's captures hold no pod
//! source on the uplink's far side and nothing uninvited in the containers,
//! and a normal ping and UDP exchange still work through the datapath.
//!
//! IP fragments are left to the fragment tests.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use bpfmasq_e2e::{
    Datapath, Lab,
    capture::{Capture, Captured},
    datapath::counter,
    frame::{
        ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PORT_UNREACH, Mac, Packet,
        Seen, TCP_SYN, TotalLength, every_tcp_flag_combination,
    },
    icmp::ping,
    inject::{Injector, mac_of},
    process::describe,
    snmp,
    topology::{
        BRIDGE, BRIDGE_ADDR, HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, UPLINK, container,
        container_addr, in_pod_net,
    },
    udp::{self, UdpEchoServer},
};
use serde_json::Value;

const C1: Ipv4Addr = Ipv4Addr::new(10, 85, 0, 2);
const C2: Ipv4Addr = Ipv4Addr::new(10, 85, 0, 3);
const NAT: Ipv4Addr = HOST_UPLINK_ADDR;
const PEER: Ipv4Addr = OUTSIDE_ADDR;
const POD_NET_LAST: Ipv4Addr = Ipv4Addr::new(10, 85, 255, 255);
/// Nothing listens on this port, neither in the peer nor in the host.
const CLOSED: u16 = 9;
/// c1's UDP flow, opened before the cases: c1 sends from `FLOW_PORT` (kept
/// by the NAT, checked) to the peer's `PEER_PORT`. The only flow from which
/// the outside may send anything to a container.
const FLOW_PORT: u16 = 47_001;
const PEER_PORT: u16 = 47_002;
/// Source ports of the hand-built pod packets that get translated.
const POD_PORT: u16 = 46_001;
/// The peer's source port for packets that match no flow.
const STRAY_PORT: u16 = 45_001;

const GRE: u8 = 47;
const SCTP: u8 = 132;
const ESP: u8 = 50;
const IPIP: u8 = 4;
const IPV6_IN_IPV4: u8 = 41;
const UDP_LITE: u8 = 136;
const IGMP: u8 = 2;
const RESERVED_PROTO: u8 = 255;

const ICMP_REDIRECT: u8 = 5;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMP_TIMESTAMP: u8 = 13;
const ICMP_ADDRESS_MASK: u8 = 17;
const ICMP_EXTENDED_ECHO: u8 = 42;
/// Identifier and sequence of hand-built echoes.
const ECHO_ID: [u8; 4] = [0x4e, 0x21, 0, 1];

/// Four no-operation options: IHL 6.
const NOP_OPTIONS: &[u8] = &[1, 1, 1, 1];
/// Record route with room for nine addresses: IHL 15, the longest header.
const RECORD_ROUTE: &[u8] = &[
    7, 39, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0,
];
/// A record-route option claiming a length of 1 (the minimum is 2): malformed.
const BROKEN_OPTION: &[u8] = &[7, 1, 0, 0];
/// Twelve bytes of no-operation options: IHL 8.
const LONG_NOP_OPTIONS: &[u8] = &[1; 12];

/// c1's flow's packet as it left the uplink: what the peer's ICMP errors quote.
const FLOW_AS_SENT: Packet = Packet::udp(NAT, PEER, FLOW_PORT, PEER_PORT);
/// The peer's answer on c1's flow.
const FLOW_REPLY: Packet = Packet::udp(PEER, NAT, PEER_PORT, FLOW_PORT);
/// A packet of no flow, as quoted by an error.
const STRAY_AS_SENT: Packet = Packet::udp(NAT, PEER, STRAY_PORT, CLOSED);

const POD_TCP: Packet = Packet::tcp(C1, PEER, POD_PORT, CLOSED, TCP_SYN);
const POD_UDP: Packet = Packet::udp(C1, PEER, POD_PORT, CLOSED);
const POD_PING: Packet = Packet::icmp(C1, PEER, ICMP_ECHO_REQUEST, 0, ECHO_ID);
const STRAY_TCP: Packet = Packet::tcp(PEER, NAT, STRAY_PORT, CLOSED, TCP_SYN);
const STRAY_UDP: Packet = Packet::udp(PEER, NAT, STRAY_PORT, CLOSED);

static POD_EVERY_TCP_FLAG: [Packet; 256] = every_tcp_flag_combination(POD_TCP);
static STRAY_EVERY_TCP_FLAG: [Packet; 256] = every_tcp_flag_combination(STRAY_TCP);

/// Where a case's packets are injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// From c1, to the host's bridge (`cni0`): through the bridge's ingress
    /// (the fast path, when on) or the host's IP stack to the uplink's egress.
    Pod,
    /// From the outside peer, to the host's uplink: its ingress first.
    Outside,
}

/// A counter that must move by one per packet of the case.
#[derive(Clone, Copy, Debug)]
enum Counted {
    /// `bpfmasq stats` (dataplane-common/src/counters.rs).
    Datapath(&'static str),
    /// The host kernel's `/proc/net/snmp` or `netstat` (`Group:Field`).
    Kernel(&'static str),
}
/// Where a case's packets may arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    /// At no container, and (from a pod) not at the peer either.
    Nowhere,
    /// At the peer, with the NAT address as source (from a pod).
    PeerTranslated,
    /// At c1: they belong to c1's flow (from outside).
    C1,
}

/// One row of the table.
struct Case {
    name: &'static str,
    from: Origin,
    packets: &'static [Packet],
    counts: &'static [Counted],
    arrival: Arrival,
}

const fn case(
    name: &'static str,
    from: Origin,
    packets: &'static [Packet],
    counts: &'static [Counted],
    arrival: Arrival,
) -> Case {
    Case {
        name,
        from,
        packets,
        counts,
        arrival,
    }
}

use Arrival::{C1 as AtC1, Nowhere, PeerTranslated};
use Counted::{Datapath as Dp, Kernel};
use Origin::{Outside, Pod};

/// Every case tried, in order.
#[rustfmt::skip]
const CASES: &[Case] = &[
    // From a pod: the host's ip_rcv checks the IPv4 header before routing,
    // so a broken one never reaches the uplink.
    case("IPv4 header cut to 10 bytes", Pod, &[POD_UDP.cut_to(10)], &[Kernel("Ip:InHdrErrors")], Nowhere),
    case("IHL 4 (below the minimum)", Pod, &[POD_UDP.ihl(4)], &[Kernel("Ip:InHdrErrors")], Nowhere),
    case("IHL 15, packet shorter than that", Pod, &[POD_UDP.payload(0).ihl(15)], &[Kernel("Ip:InHdrErrors")], Nowhere),
    case("version 6 inside an IPv4 frame", Pod, &[POD_UDP.version(6)], &[Kernel("Ip:InHdrErrors")], Nowhere),
    case("bad IPv4 header checksum", Pod, &[POD_UDP.bad_ip_checksum()], &[Kernel("IpExt:InCsumErrors")], Nowhere),
    case("total length 100 beyond the frame", Pod, &[POD_UDP.total_length(TotalLength::Off(100))], &[Kernel("IpExt:InTruncatedPkts")], Nowhere),
    case("total length 12, below the IPv4 header", Pod, &[POD_UDP.total_length(TotalLength::Is(12))], &[Kernel("Ip:InHdrErrors")], Nowhere),
    case("malformed IP option (length 1)", Pod, &[POD_UDP.options(BROKEN_OPTION)], &[Kernel("Ip:InHdrErrors")], Nowhere),
    // The host trims the frame to the total length and forwards it.
    case("total length 16 short of the frame", Pod, &[POD_UDP.payload(32).total_length(TotalLength::Off(-16))], &[Dp("translated_out")], PeerTranslated),
    // Transport headers cut short (the IPv4 total length agrees).
    case("TCP header of 8 bytes", Pod, &[POD_TCP.payload(0).transport_cut_to(8)], &[Dp("drop_malformed")], Nowhere),
    case("TCP header of 16 bytes (no checksum field)", Pod, &[POD_TCP.payload(0).transport_cut_to(16)], &[Dp("drop_malformed")], Nowhere),
    case("UDP header of 4 bytes", Pod, &[POD_UDP.payload(0).transport_cut_to(4)], &[Dp("drop_malformed")], Nowhere),
    case("UDP header of 6 bytes (no checksum field)", Pod, &[POD_UDP.payload(0).transport_cut_to(6)], &[Dp("drop_malformed")], Nowhere),
    case("ICMP echo of 4 bytes", Pod, &[POD_PING.payload(0).transport_cut_to(4)], &[Dp("drop_malformed")], Nowhere),
    // Odd but translatable: the datapath needs only ports and checksum.
    case("TCP data offset 2 (inside the header)", Pod, &[POD_TCP.tcp_data_offset(2)], &[Dp("translated_out")], PeerTranslated),
    case("TCP data offset 15 (past the packet)", Pod, &[POD_TCP.tcp_data_offset(15)], &[Dp("translated_out")], PeerTranslated),
    case("TCP, all 256 flag combinations", Pod, &POD_EVERY_TCP_FLAG, &[Dp("translated_out")], PeerTranslated),
    case("UDP length 0", Pod, &[POD_UDP.udp_length(0)], &[Dp("translated_out")], PeerTranslated),
    case("UDP length 0, no checksum", Pod, &[POD_UDP.udp_length(0).udp_no_checksum()], &[Dp("translated_out")], PeerTranslated),
    case("UDP length 500, beyond the datagram", Pod, &[POD_UDP.udp_length(500)], &[Dp("translated_out")], PeerTranslated),
    case("IP options: 4 NOPs (IHL 6)", Pod, &[POD_UDP.options(NOP_OPTIONS)], &[Dp("translated_out")], PeerTranslated),
    case("IP options: record route (IHL 15)", Pod, &[POD_TCP.options(RECORD_ROUTE)], &[Dp("translated_out")], PeerTranslated),
    // Nothing but TCP, UDP and ICMP echo requests is translated from a pod
    // (and ICMP errors about its own flows: one about no flow is dropped).
    case("ICMP echo reply", Pod, &[Packet::icmp(C1, PEER, ICMP_ECHO_REPLY, 0, ECHO_ID)], &[Dp("drop_unsupported")], Nowhere),
    case("ICMP port unreachable quoting nothing", Pod, &[Packet::icmp(C1, PEER, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, [0; 4])], &[Dp("drop_icmp_error_no_flow")], Nowhere),
    case("ICMP port unreachable quoting a peer packet", Pod, &[Packet::icmp_error(C1, PEER, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, &Packet::udp(PEER, C1, PEER_PORT, CLOSED), 28)], &[Dp("drop_icmp_error_no_flow")], Nowhere),
    case("ICMP redirect", Pod, &[Packet::icmp(C1, PEER, ICMP_REDIRECT, 1, [10, 85, 0, 9])], &[Dp("drop_unsupported")], Nowhere),
    case("ICMP time exceeded", Pod, &[Packet::icmp(C1, PEER, ICMP_TIME_EXCEEDED, 0, [0; 4])], &[Dp("drop_icmp_error_no_flow")], Nowhere),
    case("ICMP parameter problem", Pod, &[Packet::icmp(C1, PEER, ICMP_PARAMETER_PROBLEM, 0, [0; 4])], &[Dp("drop_icmp_error_no_flow")], Nowhere),
    case("ICMP timestamp request", Pod, &[Packet::icmp(C1, PEER, ICMP_TIMESTAMP, 0, ECHO_ID)], &[Dp("drop_unsupported")], Nowhere),
    case("ICMP address mask request", Pod, &[Packet::icmp(C1, PEER, ICMP_ADDRESS_MASK, 0, ECHO_ID)], &[Dp("drop_unsupported")], Nowhere),
    case("ICMP extended echo request", Pod, &[Packet::icmp(C1, PEER, ICMP_EXTENDED_ECHO, 0, ECHO_ID)], &[Dp("drop_unsupported")], Nowhere),
    case("ICMP type 255", Pod, &[Packet::icmp(C1, PEER, 255, 0, ECHO_ID)], &[Dp("drop_unsupported")], Nowhere),
    case("GRE", Pod, &[Packet::other(C1, PEER, GRE)], &[Dp("drop_unsupported")], Nowhere),
    case("SCTP", Pod, &[Packet::other(C1, PEER, SCTP)], &[Dp("drop_unsupported")], Nowhere),
    case("ESP", Pod, &[Packet::other(C1, PEER, ESP)], &[Dp("drop_unsupported")], Nowhere),
    case("IP in IP", Pod, &[Packet::other(C1, PEER, IPIP)], &[Dp("drop_unsupported")], Nowhere),
    case("IPv6 in IPv4", Pod, &[Packet::other(C1, PEER, IPV6_IN_IPV4)], &[Dp("drop_unsupported")], Nowhere),
    case("UDP-Lite", Pod, &[Packet::other(C1, PEER, UDP_LITE)], &[Dp("drop_unsupported")], Nowhere),
    case("IGMP to a unicast peer", Pod, &[Packet::other(C1, PEER, IGMP)], &[Dp("drop_unsupported")], Nowhere),
    case("protocol 255", Pod, &[Packet::other(C1, PEER, RESERVED_PROTO)], &[Dp("drop_unsupported")], Nowhere),
    // From outside: the ingress program sees the frame before the host's
    // IP stack; what it cannot parse it leaves to the host, which drops it.
    case("IPv4 header cut to 10 bytes", Outside, &[STRAY_UDP.cut_to(10)], &[Dp("passed_malformed"), Kernel("Ip:InHdrErrors")], Nowhere),
    case("IHL 4 (below the minimum)", Outside, &[STRAY_UDP.ihl(4)], &[Dp("passed_malformed"), Kernel("Ip:InHdrErrors")], Nowhere),
    case("version 6 inside an IPv4 frame", Outside, &[STRAY_UDP.version(6)], &[Dp("passed_malformed"), Kernel("Ip:InHdrErrors")], Nowhere),
    case("IHL 15, packet shorter than that", Outside, &[STRAY_UDP.payload(0).ihl(15)], &[Dp("passed_malformed"), Kernel("Ip:InHdrErrors")], Nowhere),
    case("TCP header of 8 bytes", Outside, &[STRAY_TCP.payload(0).transport_cut_to(8)], &[Dp("passed_malformed")], Nowhere),
    case("UDP header of 4 bytes", Outside, &[STRAY_UDP.payload(0).transport_cut_to(4)], &[Dp("passed_malformed")], Nowhere),
    case("ICMP of 4 bytes", Outside, &[Packet::icmp(PEER, NAT, ICMP_ECHO_REQUEST, 0, ECHO_ID).payload(0).transport_cut_to(4)], &[Dp("passed_malformed")], Nowhere),
    case("UDP header of 4 bytes on c1's flow", Outside, &[FLOW_REPLY.payload(0).transport_cut_to(4)], &[Dp("passed_malformed")], Nowhere),
    case("bad IPv4 header checksum", Outside, &[STRAY_UDP.bad_ip_checksum()], &[Dp("passed_no_flow"), Kernel("IpExt:InCsumErrors")], Nowhere),
    case("total length 100 beyond the frame", Outside, &[STRAY_UDP.total_length(TotalLength::Off(100))], &[Dp("passed_malformed"), Kernel("IpExt:InTruncatedPkts")], Nowhere),
    case("total length 12, below the IPv4 header", Outside, &[STRAY_UDP.total_length(TotalLength::Is(12))], &[Dp("passed_malformed"), Kernel("Ip:InHdrErrors")], Nowhere),
    case("total length 16 short of the frame", Outside, &[STRAY_UDP.payload(32).total_length(TotalLength::Off(-16))], &[Dp("passed_no_flow")], Nowhere),
    // To the NAT address, matching no flow: for the host (which answers).
    case("TCP SYN to a port with no flow", Outside, &[STRAY_TCP], &[Dp("passed_no_flow")], Nowhere),
    case("UDP to a port with no flow", Outside, &[STRAY_UDP], &[Dp("passed_no_flow")], Nowhere),
    case("TCP, all 256 flag combinations, no flow", Outside, &STRAY_EVERY_TCP_FLAG, &[Dp("passed_no_flow")], Nowhere),
    case("UDP length 0", Outside, &[STRAY_UDP.udp_length(0)], &[Dp("passed_no_flow")], Nowhere),
    case("IP options: 12 NOPs (IHL 8), no flow", Outside, &[STRAY_UDP.options(LONG_NOP_OPTIONS)], &[Dp("passed_no_flow")], Nowhere),
    case("TCP to c1's UDP flow's port", Outside, &[Packet::tcp(PEER, NAT, PEER_PORT, FLOW_PORT, TCP_SYN)], &[Dp("passed_no_flow")], Nowhere),
    case("UDP to c1's flow's port from another port", Outside, &[Packet::udp(PEER, NAT, STRAY_PORT, FLOW_PORT)], &[Dp("passed_no_flow")], Nowhere),
    case("GRE", Outside, &[Packet::other(PEER, NAT, GRE)], &[Dp("passed_no_flow")], Nowhere),
    case("SCTP", Outside, &[Packet::other(PEER, NAT, SCTP)], &[Dp("passed_no_flow")], Nowhere),
    case("ICMP echo request to the host", Outside, &[Packet::icmp(PEER, NAT, ICMP_ECHO_REQUEST, 0, ECHO_ID)], &[Dp("passed_no_flow")], Nowhere),
    case("ICMP echo reply, unknown identifier", Outside, &[Packet::icmp(PEER, NAT, ICMP_ECHO_REPLY, 0, ECHO_ID)], &[Dp("passed_no_flow")], Nowhere),
    case("ICMP timestamp request", Outside, &[Packet::icmp(PEER, NAT, ICMP_TIMESTAMP, 0, ECHO_ID)], &[Dp("passed_no_flow")], Nowhere),
    case("ICMP redirect", Outside, &[Packet::icmp(PEER, NAT, ICMP_REDIRECT, 1, [192, 168, 61, 99])], &[Dp("passed_no_flow")], Nowhere),
    case("ICMP error quoting no flow", Outside, &[Packet::icmp_error(PEER, NAT, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, &STRAY_AS_SENT, 28)], &[Dp("passed_no_flow")], Nowhere),
    case("ICMP error quoting c1's flow, quote cut to 24 bytes", Outside, &[Packet::icmp_error(PEER, NAT, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, &FLOW_AS_SENT, 24)], &[Dp("passed_no_flow")], Nowhere),
    // On c1's flow: invited, translated back to c1.
    case("ICMP error quoting c1's flow", Outside, &[Packet::icmp_error(PEER, NAT, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, &FLOW_AS_SENT, 28)], &[Dp("translated_icmp_error")], AtC1),
    case("UDP on c1's flow with IP options (IHL 8)", Outside, &[FLOW_REPLY.options(LONG_NOP_OPTIONS)], &[Dp("translated_in")], AtC1),
    case("UDP on c1's flow, total length beyond the frame", Outside, &[FLOW_REPLY.total_length(TotalLength::Off(100))], &[Dp("passed_malformed"), Kernel("IpExt:InTruncatedPkts")], Nowhere),
    // Sources inside the pod network never arrive through the uplink.
    case("spoofed source c1, to c2", Outside, &[Packet::udp(C1, C2, STRAY_PORT, CLOSED)], &[Dp("drop_spoofed_pod_source")], Nowhere),
    case("spoofed source c2, to the NAT address on c1's flow", Outside, &[Packet::udp(C2, NAT, PEER_PORT, FLOW_PORT)], &[Dp("drop_spoofed_pod_source")], Nowhere),
    case("spoofed source 10.85.0.1 (the bridge), to the NAT address", Outside, &[Packet::tcp(BRIDGE_ADDR, NAT, STRAY_PORT, CLOSED, TCP_SYN)], &[Dp("drop_spoofed_pod_source")], Nowhere),
    case("spoofed source 10.85.255.255, TCP SYN to c1", Outside, &[Packet::tcp(POD_NET_LAST, C1, STRAY_PORT, FLOW_PORT, TCP_SYN)], &[Dp("drop_spoofed_pod_source")], Nowhere),
    // Not NAT at all: the peer routes straight to a pod address through the host.
    case("UDP from the peer straight to c2's address", Outside, &[Packet::udp(PEER, C2, STRAY_PORT, CLOSED)], &[Dp("drop_uninvited_to_pod")], Nowhere),
];

/// After the counters moved: time for answers (and leaks) to reach the captures.
const SETTLE: Duration = Duration::from_millis(200);
/// How long a case's counters may take to move.
const COUNTER_DEADLINE: Duration = Duration::from_secs(10);
/// How long the expected counters may lag behind others that moved.
const GRACE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);

/// The kernel counters shown in the table (besides those a case expects).
const KERNEL_SHOWN: &[&str] = &[
    "Ip:InHdrErrors",
    "Ip:InAddrErrors",
    "Ip:InUnknownProtos",
    "Ip:InDiscards",
    "Ip:ForwDatagrams",
    "IpExt:InTruncatedPkts",
    "IpExt:InCsumErrors",
    "Icmp:OutMsgs",
    "Udp:InErrors",
    "Udp:NoPorts",
    "Tcp:OutRsts",
];

/// Everything a case's injection moved or produced.
#[derive(Default)]
struct Observed {
    datapath: BTreeMap<String, u64>,
    kernel: BTreeMap<String, u64>,
    peer: Vec<Seen>,
    c1: Vec<Seen>,
    c2: Vec<Seen>,
    problems: Vec<String>,
}

/// The lab's pieces a case needs.
struct Bench<'a> {
    lab: &'a Lab,
    dp: &'a Datapath<'a>,
    from_pod: Injector,
    to_bridge: Mac,
    from_outside: Injector,
    to_uplink: Mac,
}

impl Bench<'_> {
    fn counters(&self) -> (Value, snmp::Mib) {
        (self.dp.stats(), snmp::read(self.lab, HOST))
    }

    fn run(&self, case: &Case) -> Observed {
        let before = self.counters();
        let captures = [
            Capture::start_keeping(self.lab, OUT, UPLINK),
            Capture::start_keeping(self.lab, &container(1), UPLINK),
            Capture::start_keeping(self.lab, &container(2), UPLINK),
        ];
        let (injector, dst) = match case.from {
            Origin::Pod => (&self.from_pod, self.to_bridge),
            Origin::Outside => (&self.from_outside, self.to_uplink),
        };
        for packet in case.packets {
            injector.send(&packet.frame(injector.mac, dst));
        }
        let sent = case.packets.len() as u64;
        let deadline = Instant::now() + COUNTER_DEADLINE;
        // When other counters moved but not the expected ones, the packets
        // were handled otherwise: waiting any longer only slows the test.
        let mut handled_otherwise: Option<Instant> = None;
        let after = loop {
            let now = self.counters();
            if case.counts.iter().all(|c| delta(c, &before, &now) >= sent)
                || Instant::now() >= deadline
                || handled_otherwise.is_some_and(|at| at.elapsed() >= GRACE)
            {
                break now;
            }
            if handled_otherwise.is_none() && moved_at_all(case, &before, &now) {
                handled_otherwise = Some(Instant::now());
            }
            thread::sleep(POLL);
        };
        thread::sleep(SETTLE);
        let [peer, c1, c2] = captures.map(|c| seen(&c.stop()));
        let mut observed = Observed {
            datapath: datapath_deltas(&before.0, &after.0),
            kernel: kernel_deltas(case, &before.1, &after.1),
            peer,
            c1,
            c2,
            problems: Vec::new(),
        };
        observed.problems = check(case, &before, &after, &observed);
        observed
    }
}

/// Whether any counter but `passed_not_ipv4` (ARP and the like) moved.
fn moved_at_all(case: &Case, before: &(Value, snmp::Mib), now: &(Value, snmp::Mib)) -> bool {
    let datapath = datapath_deltas(&before.0, &now.0);
    datapath.keys().any(|name| name != "passed_not_ipv4")
        || !kernel_deltas(case, &before.1, &now.1).is_empty()
}

fn delta(counted: &Counted, (dp0, k0): &(Value, snmp::Mib), (dp1, k1): &(Value, snmp::Mib)) -> u64 {
    match counted {
        Counted::Datapath(name) => {
            let at = |v| counter(v, name).unwrap_or(0);
            at(dp1).saturating_sub(at(dp0))
        }
        Counted::Kernel(name) => {
            let at = |m: &snmp::Mib| m.get(*name).copied().unwrap_or(0);
            at(k1).saturating_sub(at(k0))
        }
    }
}

/// Every datapath counter that moved, by how much.
fn datapath_deltas(before: &Value, after: &Value) -> BTreeMap<String, u64> {
    let names = after
        .as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>());
    names
        .unwrap_or_default()
        .into_iter()
        .filter_map(|name| {
            let d = counter(after, &name)?.saturating_sub(counter(before, &name).unwrap_or(0));
            (d > 0).then_some((name, d))
        })
        .collect()
}

/// The shown and expected kernel counters that moved, by how much.
fn kernel_deltas(case: &Case, before: &snmp::Mib, after: &snmp::Mib) -> BTreeMap<String, u64> {
    let expected = case.counts.iter().filter_map(|c| match c {
        Counted::Kernel(name) => Some(*name),
        Counted::Datapath(_) => None,
    });
    KERNEL_SHOWN
        .iter()
        .copied()
        .chain(expected)
        .filter_map(|name| {
            let at = |m: &snmp::Mib| m.get(name).copied().unwrap_or(0);
            let d = at(after).saturating_sub(at(before));
            (d > 0).then(|| (name.to_owned(), d))
        })
        .collect()
}

/// The IPv4 packets of a capture, less the host's own IGMP membership
/// reports: the bridge sends them to every port now and then on its own,
/// whatever a case does.
fn seen(captured: &Captured) -> Vec<Seen> {
    const IPPROTO_IGMP: u8 = 2;
    captured
        .kept
        .iter()
        .filter_map(|f| Seen::parse(f))
        .filter(|s| !(s.src == BRIDGE_ADDR && s.proto == IPPROTO_IGMP))
        .collect()
}

/// What is wrong with a case's outcome; empty when it went as the table says.
fn check(
    case: &Case,
    before: &(Value, snmp::Mib),
    after: &(Value, snmp::Mib),
    observed: &Observed,
) -> Vec<String> {
    let sent = case.packets.len() as u64;
    let proto = case.packets[0].proto();
    let mut problems = Vec::new();
    for counted in case.counts {
        let moved = delta(counted, before, after);
        if moved < sent {
            problems.push(format!("{counted:?} moved by {moved}, expected {sent}"));
        }
    }
    let leaked: Vec<_> = observed.peer.iter().filter(|s| in_pod_net(s.src)).collect();
    if !leaked.is_empty() {
        problems.push(format!(
            "LEAK: the peer received pod sources: {}",
            list(&leaked)
        ));
    }
    if !observed.c2.is_empty() {
        problems.push(format!(
            "c2 received uninvited packets: {}",
            list(&observed.c2)
        ));
    }
    let from_c1_peers: Vec<_> = match case.from {
        // c1 sent something: answers from the peer (translated back) or its gateway are invited.
        Origin::Pod => observed
            .c1
            .iter()
            .filter(|s| s.src != PEER && s.src != BRIDGE_ADDR)
            .collect(),
        Origin::Outside if case.arrival == Arrival::C1 => {
            observed.c1.iter().filter(|s| s.src != PEER).collect()
        }
        Origin::Outside => observed.c1.iter().collect(),
    };
    if !from_c1_peers.is_empty() {
        problems.push(format!(
            "c1 received uninvited packets: {}",
            list(&from_c1_peers)
        ));
    }
    match (case.arrival, case.from) {
        (Arrival::PeerTranslated, _) => {
            let arrived = observed
                .peer
                .iter()
                .filter(|s| s.src == NAT && s.proto == proto)
                .count() as u64;
            if arrived < sent {
                problems.push(format!(
                    "the peer received {arrived} translated packets of protocol {proto}, expected {sent}"
                ));
            }
        }
        (Arrival::C1, _) => {
            let arrived = observed
                .c1
                .iter()
                .filter(|s| s.src == PEER && s.dst == C1 && s.proto == proto)
                .count() as u64;
            if arrived < sent {
                problems.push(format!(
                    "c1 received {arrived} packets of protocol {proto} from the peer, expected {sent}"
                ));
            }
        }
        (Arrival::Nowhere, Origin::Pod) if !observed.peer.is_empty() => {
            problems.push(format!("the peer received {}", list(&observed.peer)));
        }
        (Arrival::Nowhere, _) => {}
    }
    problems
}

/// At most a few of `seen`, one per line's worth.
fn list<S: std::borrow::Borrow<Seen>>(seen: &[S]) -> String {
    const SHOWN: usize = 3;
    let mut text = seen
        .iter()
        .take(SHOWN)
        .map(|s| s.borrow().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if seen.len() > SHOWN {
        let _ = write!(text, " (+{} more)", seen.len() - SHOWN);
    }
    if text.is_empty() {
        text.push('-');
    }
    text
}

fn show_counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "-".to_owned();
    }
    counts
        .iter()
        .map(|(name, d)| format!("{name} +{d}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_expected(case: &Case) -> String {
    let counts = case.counts.iter().map(|c| match c {
        Counted::Datapath(name) => (*name).to_owned(),
        Counted::Kernel(name) => format!("kernel {name}"),
    });
    let mut text = counts.collect::<Vec<_>>().join(" + ");
    let _ = write!(text, "; arrives {:?}", case.arrival);
    text
}

/// The table, one block per case, as the test log documents it.
fn table(results: &[(&Case, Observed)]) -> String {
    let mut text = String::from("\nhostile packets: what the datapath did\n");
    for (i, (case, seen)) in results.iter().enumerate() {
        let verdict = if seen.problems.is_empty() {
            "ok".to_owned()
        } else {
            format!("FAILED: {}", seen.problems.join("; "))
        };
        let _ = write!(
            text,
            "{:>2}. [{:?}] {} (x{})\n    expected: {}\n    datapath: {}\n    host kernel: {}\n    peer saw: {}\n    c1 saw: {}\n    c2 saw: {}\n    => {verdict}\n",
            i + 1,
            case.from,
            case.name,
            case.packets.len(),
            show_expected(case),
            show_counts(&seen.datapath),
            show_counts(&seen.kernel),
            list(&seen.peer),
            list(&seen.c1),
            list(&seen.c2),
        );
    }
    text
}

/// c1's UDP flow to the peer, whose NAT port must be c1's own port (the
/// cases address it by that port). The returned sockets keep it answerable.
fn open_flow(lab: &Lab, dp: &Datapath) -> (UdpSocket, UdpSocket) {
    let peer = udp::bind(lab, OUT, SocketAddrV4::new(PEER, PEER_PORT)).expect("bind in the peer");
    let pod = udp::bind(lab, &container(1), SocketAddrV4::new(C1, FLOW_PORT)).expect("bind in c1");
    pod.send_to(b"open the flow", SocketAddrV4::new(PEER, PEER_PORT))
        .expect("send from c1");
    peer.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0; 64];
    let (_, from) = peer.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "c1's flow did not reach the peer: {e}\n{}",
            dp.diagnostics()
        )
    });
    assert_eq!(
        from.to_string(),
        SocketAddrV4::new(NAT, FLOW_PORT).to_string(),
        "the NAT did not keep c1's port; the cases address the flow by it\n{}",
        dp.diagnostics()
    );
    (pod, peer)
}

/// A ping and a UDP echo from c1 still cross the datapath both ways.
fn assert_normal_traffic_still_flows(lab: &Lab, dp: &Datapath) {
    let before = dp.stats();
    let pinged = ping(lab, &container(1), PEER, 2, 2);
    assert!(
        pinged.status.success(),
        "ping from c1 after the hostile packets got no reply: {}\n{}",
        describe(&pinged),
        dp.diagnostics()
    );
    let server = UdpEchoServer::spawn(lab, OUT, SocketAddrV4::new(PEER, 5301), "peer");
    let answer = udp::exchange(
        lab,
        &container(1),
        SocketAddrV4::new(container_addr(1), 0),
        server.addr(),
        b"still alive?",
    );
    let requests = server.stop();
    assert!(
        answer.is_ok(),
        "UDP echo from c1 after the hostile packets: {answer:?}\n{}",
        dp.diagnostics()
    );
    assert!(
        requests.iter().all(|r| *r.peer.ip() == NAT),
        "the peer's echo server saw {:?}, not the NAT address",
        udp::peers(&requests)
    );
    let after = dp.stats();
    for name in ["translated_out", "translated_in"] {
        let moved = counter(&after, name).unwrap_or(0) - counter(&before, name).unwrap_or(0);
        assert!(
            moved >= 2,
            "{name} moved by {moved} for a ping and a UDP exchange: is the datapath still attached?\n{}",
            dp.diagnostics()
        );
    }
}

#[test]
fn hostile_and_odd_packets_are_translated_or_dropped_and_counted_never_leaked() {
    assert_eq!((C1, C2), (container_addr(1), container_addr(2)));
    let lab = Lab::up("hostile", 2);
    let dp = Datapath::attach(&lab);
    let _flow = open_flow(&lab, &dp);
    let bench = Bench {
        lab: &lab,
        dp: &dp,
        from_pod: Injector::open(&lab, &container(1), UPLINK),
        to_bridge: mac_of(&lab, HOST, BRIDGE),
        from_outside: Injector::open(&lab, OUT, UPLINK),
        to_uplink: mac_of(&lab, HOST, UPLINK),
    };
    let whole_run = [
        Capture::start(&lab, OUT, UPLINK),
        Capture::start(&lab, &container(1), UPLINK),
        Capture::start_keeping(&lab, &container(2), UPLINK),
    ];

    let results: Vec<_> = CASES.iter().map(|case| (case, bench.run(case))).collect();

    thread::sleep(SETTLE);
    let [peer, c1, c2] = whole_run.map(Capture::stop);
    println!("{}", table(&results));
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, seen)| !seen.problems.is_empty())
        .map(|(case, seen)| {
            let problems = seen.problems.join("; ");
            format!("[{:?}] {}: {problems}", case.from, case.name)
        })
        .collect();
    let pod_sources = peer.pod_sources();
    assert!(
        pod_sources.is_empty(),
        "LEAK: the peer received packets from pod addresses {pod_sources:?} during the run\n{}",
        dp.diagnostics()
    );
    let to_c2 = seen(&c2);
    assert!(
        to_c2.is_empty(),
        "c2 never asked for anything, yet received {}",
        list(&to_c2)
    );
    let uninvited: Vec<_> = c1
        .ipv4_sources
        .keys()
        .filter(|a| ![PEER, BRIDGE_ADDR].contains(a))
        .collect();
    assert!(
        uninvited.is_empty(),
        "c1 received IPv4 from {uninvited:?}, which nothing it sent invited"
    );
    assert!(
        failed.is_empty(),
        "{} of {} cases did not go as the table says:\n  {}\n{}",
        failed.len(),
        results.len(),
        failed.join("\n  "),
        dp.diagnostics()
    );
    assert_normal_traffic_still_flows(&lab, &dp);
}
