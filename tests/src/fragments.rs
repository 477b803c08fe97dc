//! Sending one UDP datagram as IPv4 fragments in a chosen order from a lab
//! node, with scapy over a raw socket (the kernel sends fragments it is
//! handed as they are): how the tests make fragments arrive out of order.

use std::{net::SocketAddrV4, time::Duration};

use crate::{lab::Lab, process};

/// Payload bytes per fragment: what fits a 1500-byte MTU.
pub const FRAGMENT_PAYLOAD: usize = 1480;

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
    let out = lab.exec(node, &args);
    process::success(&out).unwrap_or_else(|e| panic!("sending fragments from {node}: {e}"));
    let sent = String::from_utf8_lossy(&out.stdout);
    sent.trim()
        .parse()
        .unwrap_or_else(|_| panic!("scapy printed {sent:?}, not a fragment count"))
}

/// How long a test waits for a datagram that must (not) arrive.
pub const RECEIVE_WAIT: Duration = Duration::from_secs(2);
