//! Sending one UDP datagram as IPv4 fragments in a chosen order from a lab
//! node, with scapy over a raw socket (the kernel sends fragments it is
//! handed as they are): how the tests make fragments arrive out of order.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use crate::{
    Datapath, echo,
    lab::Lab,
    process,
    topology::{HOST_UPLINK_ADDR, container, container_addr},
    udp::{self, UdpEchoServer},
};

/// Payload bytes per fragment: what fits a 1500-byte MTU.
pub const FRAGMENT_PAYLOAD: usize = 1480;
/// The UDP header, which the first fragment carries.
const UDP_HEADER_LEN: usize = 8;

/// How long sending may take: starting Python and importing scapy takes
/// over a minute in a software-emulated VM with a cold page cache.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(300);

/// Which fragments of the datagram are sent, in which order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// All of them, the first one last.
    FirstLast,
    /// Only the fragments after the first, in order.
    LaterOnly,
    /// Only the first fragment.
    FirstOnly,
}

impl Order {
    fn as_arg(self) -> &'static str {
        match self {
            Self::FirstLast => "first-last",
            Self::LaterOnly => "later-only",
            Self::FirstOnly => "first-only",
        }
    }
}

/// One UDP datagram, identified on the wire by its IP ID.
#[derive(Clone, Debug)]
pub struct Datagram<'a> {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub ip_id: u16,
    pub payload: &'a [u8],
}

const SEND: &str = r#"
import sys
from scapy.all import IP, UDP, Raw, fragment
from scapy.supersocket import L3RawSocket
src, sport, dst, dport, ip_id, order, size, payload = sys.argv[1:]
datagram = IP(src=src, dst=dst, id=int(ip_id)) / UDP(sport=int(sport), dport=int(dport)) / Raw(bytes.fromhex(payload))
frags = fragment(datagram, fragsize=int(size))
chosen = {"first-last": frags[1:] + frags[:1], "later-only": frags[1:], "first-only": frags[:1]}[order]
sock = L3RawSocket()
for f in chosen:
    sock.send(f)
sock.close()
print(len(chosen))
"#;

const FLOOD: &str = r#"
import sys
from scapy.all import IP, Raw
from scapy.supersocket import L3RawSocket
src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = L3RawSocket()
for ip_id in range(count):
    sock.send(IP(src=src, dst=dst, id=ip_id + 1, proto=17, frag=185) / Raw(b"x" * 64))
sock.close()
"#;

/// Sends, from `node`, one later fragment (never the first) of each of
/// `count` UDP datagrams, with source address `src` (spoofed or not) to
/// `dst`: datagrams whose first fragment never comes.
pub fn flood_later_fragments(lab: &Lab, node: &str, src: Ipv4Addr, dst: Ipv4Addr, count: u32) {
    let args = [
        "/usr/bin/python3".to_owned(),
        "-c".to_owned(),
        FLOOD.to_owned(),
        src.to_string(),
        dst.to_string(),
        count.to_string(),
    ];
    let out = lab.exec_within(node, &args, SEND_TIMEOUT);
    process::success(&out).unwrap_or_else(|e| panic!("flooding fragments from {node}: {e}"));
}

/// Sends `datagram`'s fragments from `node` in `order`; returns how many
/// fragments were sent.
pub fn send(lab: &Lab, node: &str, datagram: &Datagram, order: Order) -> usize {
    let hex: String = datagram
        .payload
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let args = [
        "/usr/bin/python3".to_owned(),
        "-c".to_owned(),
        SEND.to_owned(),
        datagram.from.ip().to_string(),
        datagram.from.port().to_string(),
        datagram.to.ip().to_string(),
        datagram.to.port().to_string(),
        datagram.ip_id.to_string(),
        order.as_arg().to_owned(),
        FRAGMENT_PAYLOAD.to_string(),
        hex,
    ];
    let out = lab.exec_within(node, &args, SEND_TIMEOUT);
    process::success(&out).unwrap_or_else(|e| panic!("sending fragments from {node}: {e}"));
    let sent = String::from_utf8_lossy(&out.stdout);
    sent.trim()
        .parse()
        .unwrap_or_else(|_| panic!("scapy printed {sent:?}, not a fragment count"))
}

/// c1 sends `request`, larger than the MTU, to the echo `server` (tagged
/// `out`) from a socket of its own and asserts the echo comes back whole and
/// the server got the whole datagram from the NAT address; both ways, the
/// datagram's later fragments went through the datapath's fragment path.
pub fn assert_large_round_trip_from_c1(
    lab: &Lab,
    dp: &Datapath<'_>,
    server: UdpEchoServer,
    request: &[u8],
) {
    let socket =
        udp::bind(lab, &container(1), SocketAddrV4::new(container_addr(1), 0)).expect("bind in c1");
    let answer = udp::request(&socket, server.addr(), request).unwrap_or_else(|e| {
        panic!(
            "a {}-byte datagram round trip failed: {e}\n{}",
            request.len(),
            dp.diagnostics()
        )
    });
    assert!(
        answer == echo::reply("out", request),
        "the answer differs from what was sent ({} bytes back)",
        answer.len()
    );
    let requests = server.stop();
    assert!(
        requests
            .iter()
            .all(|r| *r.peer.ip() == HOST_UPLINK_ADDR && r.payload == request),
        "the server must get the whole datagram from the NAT address: {:?}",
        udp::peers(&requests)
    );
    // The later fragments each way went through the datapath's fragment path.
    let later_fragments = (UDP_HEADER_LEN + request.len()).div_ceil(FRAGMENT_PAYLOAD) - 1;
    dp.assert_counter_at_least("translated_fragment", 2 * later_fragments as u64);
}

/// Sends `payload` from a socket of c1 to the echo `server` (tagged `out`)
/// as fragments, the first one last, and asserts that the echo comes back
/// whole within `wait` and that the server got the whole datagram, only from
/// the NAT address (a fragment with a pod source never reassembles with the
/// others). Returns how many fragments were sent.
pub fn assert_first_last_from_c1_is_echoed(
    lab: &Lab,
    dp: &Datapath<'_>,
    server: UdpEchoServer,
    payload: &[u8],
    wait: Duration,
) -> usize {
    // A socket that receives the echo of what scapy sends from its port.
    let socket =
        udp::bind(lab, &container(1), SocketAddrV4::new(container_addr(1), 0)).expect("bind in c1");
    let SocketAddr::V4(local) = socket.local_addr().expect("local address") else {
        unreachable!("bound to IPv4")
    };
    let datagram = Datagram {
        from: local,
        to: server.addr(),
        ip_id: 0x5151,
        payload,
    };
    let sent = send(lab, &container(1), &datagram, Order::FirstLast);
    let (answer, from) = udp::receive(&socket, wait).unwrap_or_else(|| {
        panic!(
            "no echo: the peer never got the whole datagram\nserver saw: {:?}\n{}",
            udp::peers(&server.requests()),
            dp.diagnostics()
        )
    });
    assert_eq!(from, SocketAddr::V4(server.addr()));
    assert!(answer == echo::reply("out", payload), "the echo differs");
    let requests = server.stop();
    assert!(
        requests
            .iter()
            .all(|r| *r.peer.ip() == HOST_UPLINK_ADDR && r.payload == payload),
        "a fragment left with a pod source, or the datagram arrived changed: {:?}",
        udp::peers(&requests)
    );
    sent
}

/// How long a test waits for a datagram that must (not) arrive.
pub const RECEIVE_WAIT: Duration = Duration::from_secs(2);
