//! What a container sees of the path to the far peer (`lab up --far-peer`):
//! traceroute, tracepath and a TCP upload that must discover the 1280-byte
//! hop, each run from c1 and checked on what c1 and the far peer received.
//! `tests/path.rs` runs them on a plain lab host, `tests/stateful_firewall.rs`
//! with a stateful FORWARD rule in it.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::{
    Datapath, Lab,
    capture::{Capture, Captured},
    frame::{IPPROTO_ICMP, IPPROTO_TCP, Seen},
    process::describe,
    tcp::{self, TcpServer},
    topology::{
        BRIDGE_ADDR, FAR, FAR_ADDR, FAR_IFACE, FAR_LINK_MTU, HOST, HOST_UPLINK_ADDR, OUTSIDE_ADDR,
        UPLINK, container,
    },
};

/// Who answers at each hop from a container to the far peer: the host, the
/// outside peer (whose errors go to the NAT address), the far peer.
pub const HOPS: [Ipv4Addr; 3] = [BRIDGE_ADDR, OUTSIDE_ADDR, FAR_ADDR];
/// ICMP destination unreachable, "fragmentation needed and DF set".
const FRAG_NEEDED: (u16, u16) = (3, 4);
const TRANSFER_PORT: u16 = 5201;
const TRANSFER_BYTES: u64 = 4 << 20;
const TRANSFER_SEED: u64 = 1280;

/// `traceroute` (UDP probes) from c1 names every hop, the ones past the
/// uplink through the datapath's ICMP error translation.
pub fn assert_udp_traceroute_shows_every_hop(lab: &Lab, dp: &Datapath<'_>) {
    let output = traceroute(lab, &[]);
    assert_eq!(
        hops(&output),
        HOPS.map(|hop| vec![hop]),
        "traceroute from c1:\n{output}\n{}",
        dp.diagnostics()
    );
    // The outside peer's time-exceeded and the far peer's port-unreachable.
    assert!(
        dp.counter("translated_icmp_error") >= 2,
        "the answers did not go through the ICMP error translation\n{}",
        dp.diagnostics()
    );
}

/// `traceroute -I` (echo requests) from c1 names every hop.
pub fn assert_icmp_traceroute_shows_every_hop(lab: &Lab, dp: &Datapath<'_>) {
    let output = traceroute(lab, &["-I"]);
    assert_eq!(
        hops(&output),
        HOPS.map(|hop| vec![hop]),
        "traceroute -I from c1:\n{output}\n{}",
        dp.diagnostics()
    );
    // The outside peer's time-exceeded quoting an echo request; the far
    // peer's echo reply is ordinary reply traffic.
    assert!(
        dp.counter("translated_icmp_error") >= 1,
        "the outside peer's time-exceeded did not go through the ICMP error translation\n{}",
        dp.diagnostics()
    );
}

/// `tracepath` from c1 names every hop and finds the 1280-byte path MTU.
pub fn assert_tracepath_finds_the_hops_and_the_path_mtu(lab: &Lab, dp: &Datapath<'_>) {
    let far = FAR_ADDR.to_string();
    let out = lab.exec(&container(1), &["tracepath", "-n", "-m", "5", &far]);
    let output = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "tracepath from c1: {}\n{}",
        describe(&out),
        dp.diagnostics()
    );
    assert!(out.status.success(), "{context}");
    let lines = tracepath_hops(&output);
    let mut answered: Vec<Ipv4Addr> = lines.iter().map(|line| line.addr).collect();
    answered.dedup();
    assert_eq!(answered, HOPS, "{context}");
    // The outside peer's frag-needed, translated, told c1 the path MTU.
    assert!(
        lines
            .iter()
            .any(|line| line.addr == OUTSIDE_ADDR && line.text.contains("pmtu 1280")),
        "{context}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.addr == FAR_ADDR && line.text.contains("reached")),
        "{context}"
    );
    assert!(
        output.contains(&format!("Resume: pmtu {FAR_LINK_MTU} hops 3")),
        "{context}"
    );
    assert!(dp.counter("translated_icmp_error") >= 1, "{context}");
}

/// A TCP upload from c1 to the far peer completes intact in full-size
/// segments of the path MTU: the far peer announces MSS 1460, so c1 starts
/// with 1500-byte packets that the outside peer cannot forward, and only its
/// frag-needed, translated back to c1, lets the transfer complete.
pub fn assert_tcp_upload_discovers_the_path_mtu(lab: &Lab, dp: &Datapath<'_>) {
    let at_far = Capture::start_sizing(lab, FAR, FAR_IFACE);
    let at_host_uplink = Capture::start_keeping(lab, HOST, UPLINK);
    let server = TcpServer::spawn(
        lab,
        FAR,
        SocketAddrV4::new(FAR_ADDR, TRANSFER_PORT),
        1,
        tcp::verify_stream,
    );
    let sent = tcp::connect(lab, &container(1), None, server.addr())
        .and_then(|mut stream| tcp::send_stream(&mut stream, TRANSFER_SEED, TRANSFER_BYTES));
    let served = server.join();
    let (at_far, at_host_uplink) = (at_far.stop(), at_host_uplink.stop());
    let sent = sent.unwrap_or_else(|e| panic!("transfer from c1: {e}\n{}", dp.diagnostics()));
    assert!(sent.intact(), "c1 was told {sent:?}\n{}", dp.diagnostics());
    assert!(
        matches!(served.as_slice(), [one] if *one.peer.ip() == HOST_UPLINK_ADDR
            && one.result.as_ref().is_ok_and(tcp::StreamCheck::intact)),
        "the far peer served {served:?}"
    );

    let frag_needed = icmp_seen(&at_host_uplink, OUTSIDE_ADDR, FRAG_NEEDED);
    assert!(
        frag_needed > 0,
        "no frag-needed from the outside peer to {HOST_UPLINK_ADDR} arrived at the host"
    );
    let (largest, without_df) = tcp_sizes_from(&at_far, HOST_UPLINK_ADDR);
    assert_eq!(
        largest,
        Some(FAR_LINK_MTU),
        "the far peer should get full-size segments of the path MTU"
    );
    assert_eq!(without_df, 0, "every segment must have DF set");
    let pod_sources = at_far.pod_sources();
    assert!(
        pod_sources.is_empty(),
        "pod addresses reached the far peer: {pod_sources:?}"
    );

    let route = route_to_far(lab);
    assert!(
        route.contains(&format!("mtu {FAR_LINK_MTU}")),
        "c1 did not learn the path MTU: `ip route get {FAR_ADDR}` says {route}"
    );
    assert!(
        dp.counter("translated_icmp_error") >= 1,
        "the frag-needed did not go through the ICMP error translation\n{}",
        dp.diagnostics()
    );
}

/// `traceroute -n` from c1 to the far peer with `extra` options (later
/// ones win); its output. Three probes per hop, up to two seconds each.
pub fn traceroute(lab: &Lab, extra: &[&str]) -> String {
    let far = FAR_ADDR.to_string();
    let mut args = vec!["traceroute", "-n", "-q", "3", "-w", "2", "-m", "5"];
    args.extend_from_slice(extra);
    args.push(&far);
    let out = lab.exec(&container(1), &args);
    assert!(
        out.status.success(),
        "`{}` in c1: {}",
        args.join(" "),
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The addresses that answered at each hop of `traceroute -n`'s output
/// (none for a hop of `*`), each once, in hop order.
pub fn hops(output: &str) -> Vec<Vec<Ipv4Addr>> {
    output
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|hop| hop.parse::<u8>().is_ok())
        })
        .map(|line| {
            let mut answered: Vec<Ipv4Addr> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|word| word.parse().ok())
                .collect();
            answered.dedup();
            answered
        })
        .collect()
}

/// One answered line of `tracepath -n`: ` 3:  192.168.61.12  0.033ms pmtu 1280`.
#[derive(Debug)]
struct TracepathLine<'a> {
    addr: Ipv4Addr,
    text: &'a str,
}

/// The lines of `tracepath -n`'s output where a node answered, in order.
fn tracepath_hops(output: &str) -> Vec<TracepathLine<'_>> {
    output
        .lines()
        .filter_map(|text| {
            let mut words = text.split_whitespace();
            let hop = words.next()?.strip_suffix(':')?;
            hop.trim_end_matches('?').parse::<u8>().ok()?;
            let addr = words.next()?.parse().ok()?;
            Some(TracepathLine { addr, text })
        })
        .collect()
}

/// ICMP messages of `(type, code)` from `source` to the NAT address in a capture.
fn icmp_seen(captured: &Captured, source: Ipv4Addr, type_and_code: (u16, u16)) -> usize {
    captured
        .kept
        .iter()
        .filter_map(|frame| Seen::parse(frame))
        .filter(|seen| {
            seen.src == source
                && seen.dst == HOST_UPLINK_ADDR
                && seen.proto == IPPROTO_ICMP
                && seen.ports == Some(type_and_code)
        })
        .count()
}

/// The largest TCP packet on the wire (IPv4 total length) from `source` in a
/// sizing capture, and how many of its TCP packets lacked DF.
fn tcp_sizes_from(captured: &Captured, source: Ipv4Addr) -> (Option<u16>, usize) {
    let tcp = || {
        captured
            .sized
            .iter()
            .filter(|packet| packet.source == source && packet.protocol == IPPROTO_TCP)
    };
    let largest = tcp().map(|packet| packet.largest).max();
    let without_df = tcp().filter(|packet| !packet.dont_fragment).count();
    (largest, without_df)
}

/// `ip route get FAR_ADDR` in c1: shows `mtu 1280` once c1 learned the path MTU.
fn route_to_far(lab: &Lab) -> String {
    let out = lab.exec(
        &container(1),
        &["ip", "route", "get", &FAR_ADDR.to_string()],
    );
    assert!(out.status.success(), "ip route get: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceroute_and_tracepath_output_is_read() {
        let traceroute = "traceroute to 198.51.100.2 (198.51.100.2), 5 hops max, 60 byte packets\n \
                          1  10.85.0.1  0.665 ms  0.541 ms  0.518 ms\n \
                          2  192.168.61.12  0.496 ms *  0.364 ms\n \
                          3  * * *\n \
                          4  198.51.100.2  0.3 ms 198.51.100.9  0.2 ms  0.257 ms\n";
        assert_eq!(
            hops(traceroute),
            [
                vec![BRIDGE_ADDR],
                vec![OUTSIDE_ADDR],
                vec![],
                vec![FAR_ADDR, Ipv4Addr::new(198, 51, 100, 9)]
            ]
        );
        let tracepath = " 1?: [LOCALHOST]                      pmtu 1500\n \
                         1:  10.85.0.1                                             0.086ms\n \
                         2:  no reply\n \
                         3:  192.168.61.12                                         0.033ms pmtu 1280\n \
                         3:  198.51.100.2                                          0.029ms reached\n     \
                         Resume: pmtu 1280 hops 3 back 3\n";
        let lines = tracepath_hops(tracepath);
        let answered: Vec<Ipv4Addr> = lines.iter().map(|line| line.addr).collect();
        assert_eq!(answered, HOPS);
        assert!(lines[1].text.ends_with("pmtu 1280"));
    }
}
