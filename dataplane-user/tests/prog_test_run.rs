//! The TC programs run on crafted frames with BPF_PROG_TEST_RUN (aya's
//! `TestRun`): the
//! simplest exact check of header rewriting and checksums, without a
//! network. Each test loads its own copy with maps pinned in a folder of its
//! own, removed afterwards. Needs root (CI runs it through `cargo xtask test`).

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions},
};
use bpfmasq::datapath::{
    instance::Instance,
    kernel::Kernel,
    loader,
    options::{PortRange, Resolved, builtin_no_masq},
};
use dataplane_common::{counters::Counter, maps};
use ipnet::Ipv4Net;

/// What a program returns for a packet that goes on: TC_ACT_UNSPEC (tcx's
/// TCX_NEXT, -1), so programs after bpfmasq on the hook still see it.
const GOES_ON: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;
const POD1: Ipv4Addr = Ipv4Addr::new(10, 85, 0, 2);
const POD2: Ipv4Addr = Ipv4Addr::new(10, 85, 0, 3);
const NAT: Ipv4Addr = Ipv4Addr::new(192, 168, 61, 11);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 61, 12);

/// A loaded, configured, unattached copy of the programs. Fields drop in
/// order: the programs and maps go, then their pins.
struct Programs {
    ebpf: Ebpf,
    _pins: Pins,
}

/// A test instance's pin folder, removed when dropped: also when loading
/// the programs panicked half-way.
struct Pins(Instance);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.0.remove_pins();
    }
}

impl Programs {
    fn load(name: &str, ports: PortRange) -> Self {
        Self::load_with(name, ports, false)
    }

    fn load_with(name: &str, ports: PortRange, fast_path: bool) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "BPF_PROG_TEST_RUN tests need root"
        );
        bpfmasq::datapath::bpffs::ensure_mounted().expect("bpffs");
        let pins = Pins(Instance::new(
            &format!("test-run-{}", std::process::id()),
            name,
        ));
        let instance = &pins.0;
        let _ = instance.remove_pins();
        std::fs::create_dir_all(instance.dir()).expect("pin dir");
        let pod_cidr: Ipv4Net = "10.85.0.0/16".parse().unwrap();
        let mut no_masq = vec![pod_cidr];
        no_masq.extend(builtin_no_masq());
        let resolved = Resolved {
            bridge: "cni0".into(),
            bridge_ifindex: 0,
            uplink: name.into(),
            uplink_ifindex: 0,
            pod_cidr,
            nat_addr: NAT,
            no_masq,
            ports,
            ct_max: 1024,
            ct_max_per_pod: 0,
            timeouts: Default::default(),
            fast_path,
            kernel: Kernel::probe(),
            known_containers: Vec::new(),
        };
        let mut ebpf = loader::load(instance, &resolved).expect("load");
        loader::configure(&mut ebpf, &resolved.nat_config(), &resolved).expect("configure");
        Self { ebpf, _pins: pins }
    }

    /// Runs `program` on `frame`; returns the verdict and the frame after it.
    fn run(&mut self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog = loader::classifier(&mut self.ebpf, program).unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program} failed: {e}"));
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn counter(&self, counter: Counter) -> u64 {
        let map: PerCpuArray<&MapData, u64> =
            self.ebpf.map(maps::COUNTERS).unwrap().try_into().unwrap();
        map.get(&(counter as u32), 0).unwrap().iter().sum()
    }
}

// ---- frame crafting and checking ----

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend([0, proto]);
    p.extend((len as u16).to_be_bytes());
    p
}

/// An Ethernet + IPv4 frame around `l4`, checksums filled in (the UDP one
/// left at zero when `udp_zero_checksum`).
fn frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    mut l4: Vec<u8>,
    frag: u16,
    udp_zero_checksum: bool,
) -> Vec<u8> {
    let check_off = match proto {
        6 => Some(16),
        17 if !udp_zero_checksum => Some(6),
        1 => Some(2),
        _ => None,
    };
    if let Some(off) = check_off {
        l4[off..off + 2].fill(0);
        let sum = if proto == 1 {
            checksum(&l4)
        } else {
            let mut covered = pseudo_header(src, dst, proto, l4.len());
            covered.extend(&l4);
            checksum(&covered)
        };
        l4[off..off + 2].copy_from_slice(&sum.to_be_bytes());
    }
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((IP_LEN + l4.len()) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend(ip);
    f.extend(l4);
    f
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(sport.to_be_bytes());
    l4.extend(dport.to_be_bytes());
    l4.extend(((8 + payload.len()) as u16).to_be_bytes());
    l4.extend([0, 0]);
    l4.extend(payload);
    l4
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(sport.to_be_bytes());
    l4.extend(dport.to_be_bytes());
    l4.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    l4
}

fn icmp_echo(kind: u8, id: u16) -> Vec<u8> {
    let mut l4 = vec![kind, 0, 0, 0];
    l4.extend(id.to_be_bytes());
    l4.extend([0, 1, b'p', b'i', b'n', b'g']);
    l4
}

struct Parsed {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    icmp_id: u16,
}

/// Parses `f` and asserts every checksum in it is valid.
fn parse_and_verify(f: &[u8]) -> Parsed {
    let ip = &f[ETH_LEN..ETH_LEN + IP_LEN];
    assert_eq!(checksum(ip), 0, "IPv4 header checksum invalid");
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &f[ETH_LEN + IP_LEN..];
    match ip[9] {
        1 => assert_eq!(checksum(l4), 0, "ICMP checksum invalid"),
        17 if l4[6..8] == [0, 0] => {}
        proto => {
            let mut covered = pseudo_header(src, dst, proto, l4.len());
            covered.extend(l4);
            assert_eq!(checksum(&covered), 0, "L4 checksum invalid (proto {proto})");
        }
    }
    Parsed {
        src,
        dst,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        icmp_id: u16::from_be_bytes([l4[4], l4[5]]),
    }
}

const FULL_RANGE: PortRange = PortRange {
    min: 1024,
    max: 65535,
};

#[test]
fn udp_is_masqueraded_and_reversed_with_valid_checksums() {
    let mut p = Programs::load("udp", FULL_RANGE);
    let (verdict, out) = p.run(
        maps::PROG_UPLINK_EGRESS,
        &frame(POD1, PEER, 17, udp(40000, 53, b"query"), 0, false),
    );
    assert_eq!(verdict, GOES_ON);
    let out = parse_and_verify(&out);
    assert_eq!(
        (out.src, out.sport, out.dst, out.dport),
        (NAT, 40000, PEER, 53),
        "source port kept when free"
    );

    let (verdict, back) = p.run(
        maps::PROG_UPLINK_INGRESS,
        &frame(PEER, NAT, 17, udp(53, 40000, b"answer"), 0, false),
    );
    assert_eq!(verdict, GOES_ON);
    let back = parse_and_verify(&back);
    assert_eq!((back.src, back.dst, back.dport), (PEER, POD1, 40000));
    assert_eq!(p.counter(Counter::TranslatedOut), 1);
    assert_eq!(p.counter(Counter::TranslatedIn), 1);
}

#[test]
fn udp_zero_checksum_stays_zero() {
    let mut p = Programs::load("udp0", FULL_RANGE);
    let (verdict, out) = p.run(
        maps::PROG_UPLINK_EGRESS,
        &frame(POD1, PEER, 17, udp(40001, 9, b"x"), 0, true),
    );
    assert_eq!(verdict, GOES_ON);
    assert_eq!(
        out[ETH_LEN + IP_LEN + 6..ETH_LEN + IP_LEN + 8],
        [0, 0],
        "a zero UDP checksum means none"
    );
    assert_eq!(parse_and_verify(&out).src, NAT);
}

#[test]
fn second_pod_with_same_port_gets_another_port() {
    let mut p = Programs::load("tcp", FULL_RANGE);
    let (_, first) = p.run(
        maps::PROG_UPLINK_EGRESS,
        &frame(POD1, PEER, 6, tcp_syn(45000, 80), 0, false),
    );
    let (verdict, second) = p.run(
        maps::PROG_UPLINK_EGRESS,
        &frame(POD2, PEER, 6, tcp_syn(45000, 80), 0, false),
    );
    assert_eq!(verdict, GOES_ON);
    let (first, second) = (parse_and_verify(&first), parse_and_verify(&second));
    assert_eq!((first.src, first.sport), (NAT, 45000));
    assert_eq!(second.src, NAT);
    assert_ne!(
        second.sport, 45000,
        "the NAT tuple was taken: a new port is needed"
    );

    let (_, back) = p.run(
        maps::PROG_UPLINK_INGRESS,
        &frame(PEER, NAT, 6, tcp_syn(80, second.sport), 0, false),
    );
    let back = parse_and_verify(&back);
    assert_eq!(
        (back.dst, back.dport),
        (POD2, 45000),
        "reply reaches the second pod"
    );
}

#[test]
fn icmp_echo_identifier_is_translated_both_ways() {
    let mut p = Programs::load(
        "icmp",
        PortRange {
            min: 2000,
            max: 2000,
        },
    );
    let (_, out) = p.run(
        maps::PROG_UPLINK_EGRESS,
        &frame(POD1, PEER, 1, icmp_echo(8, 77), 0, false),
    );
    let out = parse_and_verify(&out);
    assert_eq!((out.src, out.icmp_id), (NAT, 2000));
    let (_, back) = p.run(
        maps::PROG_UPLINK_INGRESS,
        &frame(PEER, NAT, 1, icmp_echo(0, 2000), 0, false),
    );
    let back = parse_and_verify(&back);
    assert_eq!((back.dst, back.icmp_id), (POD1, 77));
}

#[test]
fn exhausted_range_drops_instead_of_leaking() {
    let mut p = Programs::load(
        "exhaust",
        PortRange {
            min: 3000,
            max: 3000,
        },
    );
    let (verdict, _) = p.run(
        maps::PROG_UPLINK_EGRESS,
        &frame(POD1, PEER, 17, udp(5000, 53, b"a"), 0, false),
    );
    assert_eq!(verdict, GOES_ON);
    let (verdict, _) = p.run(
        maps::PROG_UPLINK_EGRESS,
        &frame(POD2, PEER, 17, udp(5000, 53, b"b"), 0, false),
    );
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "no port left: the packet must be dropped, not sent with its pod source"
    );
    assert_eq!(p.counter(Counter::DropNoPort), 1);
}

#[test]
fn untranslatable_pod_packets_are_dropped_and_counted() {
    let mut p = Programs::load("drops", FULL_RANGE);
    let gre = frame(POD1, PEER, 47, vec![0; 8], 0, false);
    assert_eq!(p.run(maps::PROG_UPLINK_EGRESS, &gre).0, TC_ACT_SHOT);
    let gre_fragment = frame(POD1, PEER, 47, vec![0; 8], 0x2000, false);
    assert_eq!(
        p.run(maps::PROG_UPLINK_EGRESS, &gre_fragment).0,
        TC_ACT_SHOT
    );
    assert_eq!(p.counter(Counter::DropUnsupported), 2);
}

/// Fragment field of the last fragment of a 1500-byte-MTU datagram.
const LATER_FRAGMENT: u16 = 185;
/// Fragment field of a first fragment: offset 0, more fragments.
const FIRST_FRAGMENT: u16 = 0x2000;

#[test]
fn fragments_are_translated_whatever_their_order() {
    let mut p = Programs::load("frags", FULL_RANGE);
    // Outgoing, the later fragment first: it carries no ports, only its
    // source address changes.
    let later = frame(POD1, PEER, 17, vec![7; 16], LATER_FRAGMENT, true);
    let (verdict, out) = p.run(maps::PROG_UPLINK_EGRESS, &later);
    assert_eq!(verdict, GOES_ON);
    assert_eq!(ip_addresses(&out), (NAT, PEER));
    assert_eq!(out[ETH_LEN + IP_LEN..], later[ETH_LEN + IP_LEN..]);
    let first = frame(
        POD1,
        PEER,
        17,
        udp(4000, 53, &[1; 32]),
        FIRST_FRAGMENT,
        false,
    );
    let (verdict, out) = p.run(maps::PROG_UPLINK_EGRESS, &first);
    assert_eq!(verdict, GOES_ON);
    let out = parse_and_verify(&out);
    assert_eq!((out.src, out.sport), (NAT, 4000));
    // Another pod's datagram with the same IP ID to the same peer would
    // merge with this one at the peer: dropped instead.
    let clash = frame(POD2, PEER, 17, vec![7; 16], LATER_FRAGMENT, true);
    assert_eq!(p.run(maps::PROG_UPLINK_EGRESS, &clash).0, TC_ACT_SHOT);
    assert_eq!(p.counter(Counter::DropFragment), 1);

    // Incoming, in order: the first fragment tells where the later ones go.
    let reply_first = frame(
        PEER,
        NAT,
        17,
        udp(53, 4000, &[2; 32]),
        FIRST_FRAGMENT,
        false,
    );
    let (verdict, back) = p.run(maps::PROG_UPLINK_INGRESS, &reply_first);
    assert_eq!(verdict, GOES_ON);
    let back = parse_and_verify(&back);
    assert_eq!((back.dst, back.dport), (POD1, 4000));
    let reply_later = frame(PEER, NAT, 17, vec![9; 16], LATER_FRAGMENT, true);
    let (verdict, back) = p.run(maps::PROG_UPLINK_INGRESS, &reply_later);
    assert_eq!(verdict, GOES_ON);
    assert_eq!(ip_addresses(&back), (PEER, POD1));
    assert_eq!(p.counter(Counter::TranslatedFragment), 2);

    // A later fragment of another datagram, before its first one: held
    // (released by the first fragment: covered end to end, as releasing
    // re-enters a real interface).
    let early = with_ip_id(
        frame(PEER, NAT, 17, vec![9; 16], LATER_FRAGMENT, true),
        0x4321,
    );
    assert_eq!(p.run(maps::PROG_UPLINK_INGRESS, &early).0, TC_ACT_SHOT);
    assert_eq!(p.counter(Counter::ParkedFragment), 1);
}

/// `f`'s IPv4 source and destination, asserting the header checksum.
fn ip_addresses(f: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let ip = &f[ETH_LEN..ETH_LEN + IP_LEN];
    assert_eq!(checksum(ip), 0, "IPv4 header checksum invalid");
    (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    )
}

/// `f` with IP identification `id` (header checksum kept valid).
fn with_ip_id(mut f: Vec<u8>, id: u16) -> Vec<u8> {
    let ip = &mut f[ETH_LEN..ETH_LEN + IP_LEN];
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[10..12].fill(0);
    let sum = checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f
}

#[test]
fn host_and_excluded_traffic_pass_untouched() {
    let mut p = Programs::load("pass", FULL_RANGE);
    let host = frame(NAT, PEER, 17, udp(1234, 53, b"host"), 0, false);
    assert_eq!(
        p.run(maps::PROG_UPLINK_EGRESS, &host),
        (GOES_ON, host.clone())
    );
    let multicast = frame(
        POD1,
        Ipv4Addr::new(239, 1, 1, 1),
        17,
        udp(1234, 5353, b"m"),
        0,
        false,
    );
    assert_eq!(
        p.run(maps::PROG_UPLINK_EGRESS, &multicast),
        (GOES_ON, multicast.clone())
    );
    let stray = frame(PEER, NAT, 17, udp(53, 9999, b"nobody asked"), 0, false);
    assert_eq!(
        p.run(maps::PROG_UPLINK_INGRESS, &stray),
        (GOES_ON, stray.clone())
    );
    assert_eq!(p.counter(Counter::PassedNotPod), 1);
    assert_eq!(p.counter(Counter::PassedExcluded), 1);
    assert_eq!(p.counter(Counter::PassedNoFlow), 1);
}

#[test]
fn icmp_error_quoting_a_masqueraded_packet_goes_back_to_the_pod() {
    let mut p = Programs::load(
        "icmperr",
        PortRange {
            min: 2000,
            max: 2000,
        },
    );
    let (_, out) = p.run(
        maps::PROG_UPLINK_EGRESS,
        &frame(POD1, PEER, 17, udp(40000, 53, b"query"), 0, false),
    );
    let out = parse_and_verify(&out);
    assert_eq!((out.src, out.sport), (NAT, 2000));

    // What left the uplink, quoted whole by a port-unreachable from the peer.
    let quoted = frame(NAT, PEER, 17, udp(2000, 53, b"query"), 0, false)[ETH_LEN..].to_vec();
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend(&quoted);
    let (verdict, back) = p.run(
        maps::PROG_UPLINK_INGRESS,
        &frame(PEER, NAT, 1, icmp, 0, false),
    );
    assert_eq!(verdict, GOES_ON);
    let outer = parse_and_verify(&back);
    assert_eq!(outer.dst, POD1, "outer destination back to the pod");

    let inner = &back[ETH_LEN + IP_LEN + 8..];
    assert_eq!(
        checksum(&inner[..IP_LEN]),
        0,
        "quoted IPv4 header checksum invalid"
    );
    let inner = parse_and_verify(&[&back[..ETH_LEN], inner].concat());
    assert_eq!(
        (inner.src, inner.sport, inner.dst, inner.dport),
        (POD1, 40000, PEER, 53),
        "quoted packet as the pod sent it"
    );
    assert_eq!(p.counter(Counter::TranslatedIcmpError), 1);

    // An error quoting nothing of ours is left to the host, untouched.
    let stranger = frame(NAT, PEER, 17, udp(2001, 53, b"other"), 0, false)[ETH_LEN..].to_vec();
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend(&stranger);
    let unrelated = frame(PEER, NAT, 1, icmp, 0, false);
    assert_eq!(
        p.run(maps::PROG_UPLINK_INGRESS, &unrelated),
        (GOES_ON, unrelated.clone())
    );
}

/// `f` addressed to the MAC of the test run's device (lo: all zeroes), as a
/// frame routed through the host is: only those are the fast path's.
fn to_this_host(mut f: Vec<u8>) -> Vec<u8> {
    f[..6].fill(0);
    f
}

/// `f` with 4 bytes of IPv4 options (NOPs).
fn with_ip_options(mut f: Vec<u8>) -> Vec<u8> {
    let ip = ETH_LEN;
    f.splice(ip + IP_LEN..ip + IP_LEN, [1, 1, 1, 1]);
    f[ip] = 0x46;
    let total = u16::from_be_bytes([f[ip + 2], f[ip + 3]]) + 4;
    f[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    f[ip + 10..ip + 12].fill(0);
    let sum = checksum(&f[ip..ip + IP_LEN + 4]);
    f[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
    f
}

#[test]
fn the_fast_path_leaves_what_it_cannot_forward_untouched_and_says_why() {
    let mut p = Programs::load_with("fastpath", FULL_RANGE, true);
    let packet = |dst| to_this_host(frame(POD1, dst, 17, udp(5000, 53, b"q"), 0, false));
    let mut ttl_one = packet(PEER);
    ttl_one[ETH_LEN + 8] = 1;
    let ttl_sum = {
        ttl_one[ETH_LEN + 10..ETH_LEN + 12].fill(0);
        checksum(&ttl_one[ETH_LEN..ETH_LEN + IP_LEN])
    };
    ttl_one[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&ttl_sum.to_be_bytes());
    let cases = [
        (ttl_one, Counter::FallbackTtl),
        (with_ip_options(packet(PEER)), Counter::FallbackIpOptions),
        (
            to_this_host(frame(POD1, PEER, 17, udp(5000, 53, b"q"), 0x2000, false)),
            Counter::FallbackFragment,
        ),
        (packet(POD2), Counter::FallbackExcluded),
        (
            to_this_host(frame(POD1, PEER, 47, vec![0; 8], 0, false)),
            Counter::FallbackUnsupported,
        ),
        (
            to_this_host(frame(POD1, PEER, 1, icmp_echo(0, 7), 0, false)),
            Counter::FallbackUnsupported,
        ),
        // The route lookup skips the host's martian rules.
        (packet(Ipv4Addr::UNSPECIFIED), Counter::FallbackMartian),
        (packet(Ipv4Addr::new(0, 1, 2, 3)), Counter::FallbackMartian),
        (
            packet(Ipv4Addr::new(127, 0, 0, 1)),
            Counter::FallbackMartian,
        ),
        (
            packet(Ipv4Addr::new(240, 1, 2, 3)),
            Counter::FallbackMartian,
        ),
    ];
    for (n, (f, reason)) in cases.iter().enumerate() {
        let (verdict, out) = p.run(maps::PROG_BRIDGE_INGRESS, f);
        assert_eq!(verdict, GOES_ON, "{reason:?}: to the host stack");
        assert_eq!(&out, f, "{reason:?}: the frame must be left as it was");
        assert!(p.counter(*reason) >= 1, "{reason:?} not counted (case {n})");
    }
    assert_eq!(p.counter(Counter::FastPathOut), 0);
}

#[test]
fn with_the_fast_path_off_the_bridge_program_passes_everything() {
    let mut p = Programs::load("fastoff", FULL_RANGE);
    let f = to_this_host(frame(POD1, PEER, 17, udp(5000, 53, b"q"), 0, false));
    let (verdict, out) = p.run(maps::PROG_BRIDGE_INGRESS, &f);
    assert_eq!((verdict, out), (GOES_ON, f));
    let counted: u64 = Counter::ALL.iter().map(|&c| p.counter(c)).sum();
    assert_eq!(counted, 0, "the dormant program counted something");
}
