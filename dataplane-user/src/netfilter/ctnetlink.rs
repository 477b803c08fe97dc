//! nf_conntrack through ctnetlink (NETLINK_NETFILTER, the conntrack
//! subsystem): the source-NAT entries of a pod network dumped, deleted one
//! by one, and created with a source-NAT binding. Messages are
//! `netlink-packet-netfilter`'s; the source-NAT range of a create
//! (`CTA_NAT_SRC`), which that crate does not model, is encoded here.
//!
//! Everything acts on the calling thread's network namespace: the CLI runs
//! inside `--netns`, the tests inside a lab's host namespace.

use std::net::{IpAddr, SocketAddrV4};

use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::Ipv4Net;
use netlink_packet_core::{
    DefaultNla, Emitable as _, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
        Protocol, Status, TCPFlags, Tuple,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// `CTA_NAT_SRC` and its nested attributes (linux/netfilter/nfnetlink_conntrack.h).
const CTA_NAT_SRC: u16 = 6;
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;
const NLA_F_NESTED: u16 = 1 << 15;
/// `IP_CT_TCP_FLAG_BE_LIBERAL`: skip TCP window tracking for this direction.
/// An entry created mid-connection knows neither side's window scale, so
/// strict tracking would call in-window segments invalid, and an invalid
/// segment is not NATed: it would leave with the pod's address.
const IP_CT_TCP_FLAG_BE_LIBERAL: u8 = 0x08;
/// A ctnetlink message type the kernel does not know, sent instead of the
/// dump when [`TEST_FAIL_ENV`] is set: a real error from the real kernel,
/// to test that a failed dump changes nothing.
const UNKNOWN_MESSAGE_TYPE: u8 = 0x0f;
/// Makes [`Ctnetlink::dump_snat`] fail (tests only).
pub const TEST_FAIL_ENV: &str = "BPFMASQ_TEST_CTNETLINK_FAIL";
/// Receive buffer for dumps: the kernel fills it with as many entries as fit.
const RECV_BUFFER: usize = 1 << 20;

/// nf_conntrack's TCP states (`enum tcp_conntrack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
    /// Simultaneous open, or a value this code does not know.
    Other(u8),
}

impl TcpState {
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::SynSent,
            2 => Self::SynRecv,
            3 => Self::Established,
            4 => Self::FinWait,
            5 => Self::CloseWait,
            6 => Self::LastAck,
            7 => Self::TimeWait,
            8 => Self::Close,
            other => Self::Other(other),
        }
    }

    pub fn raw(self) -> u8 {
        match self {
            Self::SynSent => 1,
            Self::SynRecv => 2,
            Self::Established => 3,
            Self::FinWait => 4,
            Self::CloseWait => 5,
            Self::LastAck => 6,
            Self::TimeWait => 7,
            Self::Close => 8,
            Self::Other(raw) => raw,
        }
    }
}

/// One source-NAT connection as nf_conntrack holds it: the pod's tuple
/// (original direction) and the address and port it leaves with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnatEntry {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub pod: SocketAddrV4,
    pub peer: SocketAddrV4,
    /// The source the peer sees (the reply tuple's destination).
    pub nat: SocketAddrV4,
    /// TCP only.
    pub tcp_state: Option<TcpState>,
    /// A reply was seen (`IPS_SEEN_REPLY`).
    pub replied: bool,
    /// Seconds left before nf_conntrack expires it.
    pub timeout: u32,
}

/// What a dump found: the pod network's source-NAT entries, and how many
/// other entries of the pod network it passed over (and why).
#[derive(Debug, Default)]
pub struct SnatDump {
    pub entries: Vec<SnatEntry>,
    /// From the pod network, source-NATed, but neither TCP nor UDP (ICMP echo...).
    pub other_protocols: usize,
}

/// A ctnetlink socket in the calling thread's network namespace.
pub struct Ctnetlink {
    socket: Socket,
    seq: u32,
    buffer: Vec<u8>,
}

impl Ctnetlink {
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER).context("opening a ctnetlink socket")?;
        socket.bind_auto().context("binding the ctnetlink socket")?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context("connecting the ctnetlink socket")?;
        // Best effort: a bigger buffer only saves round trips in large dumps.
        let _ = socket.set_rx_buf_sz(RECV_BUFFER);
        Ok(Self {
            socket,
            seq: 0,
            buffer: vec![0; RECV_BUFFER],
        })
    }

    /// Every IPv4 entry nf_conntrack source-NATed for a source in `pod_cidr`
    /// (`IPS_SRC_NAT`: the original source is a pod, the reply goes to the
    /// address netfilter chose).
    pub fn dump_snat(&mut self, pod_cidr: Ipv4Net) -> Result<SnatDump> {
        let message = if std::env::var_os(TEST_FAIL_ENV).is_some() {
            ConntrackMessage::Other {
                message_type: UNKNOWN_MESSAGE_TYPE,
                attributes: Vec::new(),
            }
        } else {
            ConntrackMessage::Get(Vec::new())
        };
        let mut dump = SnatDump::default();
        self.request(message, NLM_F_DUMP, |attributes| {
            let Some(entry) = Entry::parse(attributes) else {
                return;
            };
            if !entry.status.contains(Status::SrcNat) || !pod_cidr.contains(entry.orig.src.ip()) {
                return;
            }
            match entry.snat() {
                Some(snat) => dump.entries.push(snat),
                None => dump.other_protocols += 1,
            }
        })
        .context("dumping nf_conntrack's entries through ctnetlink")?;
        Ok(dump)
    }

    /// Deletes the entry whose original tuple is `entry`'s; false if there
    /// was none (it expired meanwhile).
    pub fn delete(&mut self, entry: &SnatEntry) -> Result<bool> {
        let message = ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple(
            entry.proto,
            entry.pod,
            entry.peer,
        ))]);
        match self.request(message, NLM_F_ACK, |_| {}) {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("deleting nf_conntrack's entry {entry}")),
        }
    }

    /// Deletes every IPv4 entry (what `conntrack -F` does, one message).
    pub fn flush(&mut self) -> Result<()> {
        self.request(ConntrackMessage::Delete(Vec::new()), NLM_F_ACK, |_| {})
            .context("flushing nf_conntrack through ctnetlink")
    }

    /// Creates an entry for `entry`'s connection, source-NATed to
    /// `entry.nat`, as confirmed and (when it was answered) assured, TCP in
    /// `entry.tcp_state` with window tracking relaxed.
    pub fn create_snat(&mut self, entry: &SnatEntry) -> Result<()> {
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        // Kernels since 5.19 mark the new entry confirmed before applying
        // CTA_STATUS, and refuse a status without that bit (EBUSY); older
        // ones refuse it with the bit. Ask the newer way first.
        let result = self.request(
            ConntrackMessage::New(create_attributes(entry, true)),
            flags,
            |_| {},
        );
        let result = match result {
            Err(e) if errno(&e) == Some(libc::EBUSY) => self.request(
                ConntrackMessage::New(create_attributes(entry, false)),
                flags,
                |_| {},
            ),
            other => other,
        };
        result.with_context(|| format!("creating nf_conntrack's entry {entry}"))
    }

    /// Sends one request and reads the answers up to its ack (or the end of
    /// a dump), handing each conntrack message's attributes to `each`.
    fn request(
        &mut self,
        message: ConntrackMessage,
        flags: u16,
        mut each: impl FnMut(&[ConntrackAttribute]),
    ) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = encode(message, flags, seq);
        self.socket
            .send(&bytes, 0)
            .context("sending a ctnetlink request")?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        loop {
            let size = self
                .socket
                .recv(&mut &mut self.buffer[..], 0)
                .context("reading ctnetlink's answer")?;
            let mut offset = 0;
            while offset < size {
                let message =
                    NetlinkMessage::<NetfilterMessage>::deserialize(&self.buffer[offset..size])
                        .map_err(|e| anyhow!("undecodable ctnetlink answer: {e}"))?;
                let length = message.header.length as usize;
                if message.header.sequence_number == seq {
                    match message.payload {
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::Error(error) => match error.code {
                            None => return Ok(()),
                            Some(_) => return Err(error.to_io().into()),
                        },
                        NetlinkPayload::InnerMessage(NetfilterMessage {
                            inner: NetfilterMessageInner::Conntrack(conntrack),
                            ..
                        }) => each(attributes_of(&conntrack)),
                        _ => {}
                    }
                    if !dump && length == 0 {
                        bail!("empty ctnetlink answer");
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// Encodes `message` as one netlink request with `flags` (plus
/// NLM_F_REQUEST), IPv4.
fn encode(message: ConntrackMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            message,
        )),
    );
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

fn attributes_of(message: &ConntrackMessage) -> &[ConntrackAttribute] {
    match message {
        ConntrackMessage::New(a) | ConntrackMessage::Get(a) | ConntrackMessage::Delete(a) => a,
        _ => &[],
    }
}

fn errno(error: &anyhow::Error) -> Option<i32> {
    error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::raw_os_error)
}

fn protocol(proto: u8) -> Protocol {
    match proto {
        libc_proto::TCP => Protocol::Tcp,
        libc_proto::UDP => Protocol::Udp,
        other => Protocol::Other(other),
    }
}

mod libc_proto {
    pub const TCP: u8 = libc::IPPROTO_TCP as u8;
    pub const UDP: u8 = libc::IPPROTO_UDP as u8;
}

/// A conntrack tuple: addresses, then protocol and ports.
fn tuple(proto: u8, src: SocketAddrV4, dst: SocketAddrV4) -> Vec<Tuple> {
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(IpAddr::V4(*src.ip())),
            IPTuple::DestinationAddress(IpAddr::V4(*dst.ip())),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(protocol(proto)),
            ProtoTuple::SourcePort(src.port()),
            ProtoTuple::DestinationPort(dst.port()),
        ]),
    ]
}

/// The attributes of a create: the original tuple, its reply *before* NAT
/// (the kernel computes the translated one from the NAT range, which is
/// what sets `IPS_SRC_NAT`), the single-address, single-port source-NAT
/// range, the timeout, the status bits (with `IPS_CONFIRMED` when
/// `confirmed`), and TCP's state.
fn create_attributes(entry: &SnatEntry, confirmed: bool) -> Vec<ConntrackAttribute> {
    let mut attributes = vec![
        ConntrackAttribute::CtaTupleOrig(tuple(entry.proto, entry.pod, entry.peer)),
        ConntrackAttribute::CtaTupleReply(tuple(entry.proto, entry.peer, entry.pod)),
        ConntrackAttribute::Other(snat_range(entry.nat)),
        ConntrackAttribute::CtaTimeout(entry.timeout.max(1)),
    ];
    let mut status = if confirmed {
        Status::Confirmed
    } else {
        Status::empty()
    };
    if entry.replied {
        status |= Status::SeenReply | Status::Assured;
    }
    if !status.is_empty() {
        attributes.push(ConntrackAttribute::CtaStatus(status));
    }
    if let Some(state) = entry.tcp_state {
        // struct nf_ct_tcp_flags { flags, mask }.
        let liberal = TCPFlags::parse(&[IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL])
            .expect("two bytes");
        attributes.push(ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(
            vec![
                ProtoInfoTCP::State(state.raw()),
                ProtoInfoTCP::OriginalFlags(liberal.clone()),
                ProtoInfoTCP::ReplyFlags(liberal),
            ],
        )]));
    }
    attributes
}

/// `CTA_NAT_SRC` for exactly `nat`: address range and port range of one.
fn snat_range(nat: SocketAddrV4) -> DefaultNla {
    let addr = nat.ip().octets().to_vec();
    let port = nat.port().to_be_bytes().to_vec();
    let ports = nested(&[
        DefaultNla::new(CTA_PROTONAT_PORT_MIN, port.clone()),
        DefaultNla::new(CTA_PROTONAT_PORT_MAX, port),
    ]);
    DefaultNla::new(
        CTA_NAT_SRC | NLA_F_NESTED,
        nested(&[
            DefaultNla::new(CTA_NAT_V4_MINIP, addr.clone()),
            DefaultNla::new(CTA_NAT_V4_MAXIP, addr),
            DefaultNla::new(CTA_NAT_PROTO | NLA_F_NESTED, ports),
        ]),
    )
}

fn nested(attributes: &[DefaultNla]) -> Vec<u8> {
    let mut bytes = vec![0; attributes.buffer_len()];
    attributes.emit(&mut bytes);
    bytes
}

/// The parts of a dumped entry the import needs.
struct Entry {
    orig: TupleView,
    reply: TupleView,
    status: Status,
    tcp_state: Option<TcpState>,
    timeout: u32,
}

struct TupleView {
    proto: u8,
    src: SocketAddrV4,
    dst: SocketAddrV4,
}

impl Entry {
    /// None for anything not IPv4 with both tuples.
    fn parse(attributes: &[ConntrackAttribute]) -> Option<Self> {
        let mut orig = None;
        let mut reply = None;
        let mut status = Status::empty();
        let mut tcp_state = None;
        let mut timeout = 0;
        for attribute in attributes {
            match attribute {
                ConntrackAttribute::CtaTupleOrig(t) => orig = TupleView::parse(t),
                ConntrackAttribute::CtaTupleReply(t) => reply = TupleView::parse(t),
                ConntrackAttribute::CtaStatus(s) => status = *s,
                ConntrackAttribute::CtaTimeout(t) => timeout = *t,
                ConntrackAttribute::CtaProtoInfo(infos) => {
                    for info in infos {
                        if let ProtoInfo::TCP(tcp) = info {
                            for item in tcp {
                                if let ProtoInfoTCP::State(raw) = item {
                                    tcp_state = Some(TcpState::from_raw(*raw));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Some(Self {
            orig: orig?,
            reply: reply?,
            status,
            tcp_state,
            timeout,
        })
    }

    /// The source-NAT view of the entry; None unless TCP or UDP.
    fn snat(&self) -> Option<SnatEntry> {
        if !matches!(self.orig.proto, libc_proto::TCP | libc_proto::UDP) {
            return None;
        }
        Some(SnatEntry {
            proto: self.orig.proto,
            pod: self.orig.src,
            peer: self.orig.dst,
            nat: self.reply.dst,
            tcp_state: (self.orig.proto == libc_proto::TCP)
                .then_some(self.tcp_state.unwrap_or(TcpState::Established)),
            replied: self.status.contains(Status::SeenReply),
            timeout: self.timeout,
        })
    }
}

impl TupleView {
    fn parse(tuple: &[Tuple]) -> Option<Self> {
        let (mut src, mut dst, mut proto) = (None, None, None);
        let (mut sport, mut dport) = (0, 0);
        for part in tuple {
            match part {
                Tuple::Ip(ips) => {
                    for ip in ips {
                        match ip {
                            IPTuple::SourceAddress(IpAddr::V4(a)) => src = Some(*a),
                            IPTuple::DestinationAddress(IpAddr::V4(a)) => dst = Some(*a),
                            _ => {}
                        }
                    }
                }
                Tuple::Proto(items) => {
                    for item in items {
                        match item {
                            ProtoTuple::Protocol(p) => proto = Some(u8::from(*p)),
                            ProtoTuple::SourcePort(p) => sport = *p,
                            ProtoTuple::DestinationPort(p) => dport = *p,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(Self {
            proto: proto?,
            src: SocketAddrV4::new(src?, sport),
            dst: SocketAddrV4::new(dst?, dport),
        })
    }
}

impl std::fmt::Display for SnatEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            libc_proto::TCP => "tcp",
            libc_proto::UDP => "udp",
            _ => "other",
        };
        write!(f, "{proto} {} -> {} as {}", self.pod, self.peer, self.nat)
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NLMSG_DONE, ParseableParametrized as _};

    use super::*;

    fn sample() -> SnatEntry {
        SnatEntry {
            proto: libc_proto::TCP,
            pod: "10.85.0.3:40000".parse().unwrap(),
            peer: "192.168.61.12:8080".parse().unwrap(),
            nat: "192.168.61.11:41000".parse().unwrap(),
            tcp_state: Some(TcpState::Established),
            replied: true,
            timeout: 300,
        }
    }

    #[test]
    fn a_create_carries_the_snat_range_as_nested_attributes() {
        let range = snat_range("192.168.61.11:41000".parse().unwrap());
        let mut bytes = vec![0; range.buffer_len()];
        range.emit(&mut bytes);
        assert_eq!(
            bytes,
            [
                40, 0, 6, 0x80, // CTA_NAT_SRC, nested
                8, 0, 1, 0, 192, 168, 61, 11, // MINIP
                8, 0, 2, 0, 192, 168, 61, 11, // MAXIP
                20, 0, 3, 0x80, // CTA_NAT_PROTO, nested
                6, 0, 1, 0, 0xa0, 0x28, 0, 0, // PORT_MIN 41000, padded
                6, 0, 2, 0, 0xa0, 0x28, 0, 0, // PORT_MAX
            ]
        );
    }

    #[test]
    fn a_create_gives_the_unnated_reply_and_relaxed_tcp_tracking() {
        let attributes = create_attributes(&sample(), true);
        let ConntrackAttribute::CtaTupleReply(reply) = &attributes[1] else {
            panic!("{attributes:?}")
        };
        let reply = TupleView::parse(reply).unwrap();
        assert_eq!(reply.src, sample().peer);
        assert_eq!(reply.dst, sample().pod, "the kernel translates it");
        assert!(attributes.contains(&ConntrackAttribute::CtaTimeout(300)));
        assert!(attributes.iter().any(|a| matches!(a,
            ConntrackAttribute::CtaProtoInfo(p) if format!("{p:?}").contains("State(3)")
                && format!("{p:?}").contains("flags: 8, mask: 8"))));
        let udp = SnatEntry {
            proto: libc_proto::UDP,
            tcp_state: None,
            replied: false,
            timeout: 0,
            ..sample()
        };
        assert!(attributes.contains(&ConntrackAttribute::CtaStatus(
            Status::Confirmed | Status::SeenReply | Status::Assured
        )));
        let attributes = create_attributes(&udp, false);
        assert!(attributes.contains(&ConntrackAttribute::CtaTimeout(1)));
        assert!(!attributes.iter().any(|a| matches!(
            a,
            ConntrackAttribute::CtaProtoInfo(_) | ConntrackAttribute::CtaStatus(_)
        )));
    }

    #[test]
    fn a_dumped_snat_entry_decodes_to_pod_peer_and_nat() {
        let entry = sample();
        let attributes = vec![
            ConntrackAttribute::CtaTupleOrig(tuple(entry.proto, entry.pod, entry.peer)),
            ConntrackAttribute::CtaTupleReply(tuple(entry.proto, entry.peer, entry.nat)),
            ConntrackAttribute::CtaStatus(
                Status::SrcNat | Status::SrcNatDone | Status::SeenReply | Status::Confirmed,
            ),
            ConntrackAttribute::CtaTimeout(300),
            ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![ProtoInfoTCP::State(3)])]),
        ];
        // Through the wire format and back, as a dump delivers it.
        let bytes = encode(ConntrackMessage::New(attributes), 0, 7);
        let message = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes).unwrap();
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(conntrack),
            ..
        }) = message.payload
        else {
            panic!("{message:?}")
        };
        let parsed = Entry::parse(attributes_of(&conntrack)).unwrap();
        assert!(parsed.status.contains(Status::SrcNat));
        assert_eq!(parsed.snat(), Some(entry));
    }

    #[test]
    fn the_test_failure_is_an_unknown_message_type() {
        let bytes = encode(
            ConntrackMessage::Other {
                message_type: UNKNOWN_MESSAGE_TYPE,
                attributes: Vec::new(),
            },
            NLM_F_DUMP,
            1,
        );
        // nlmsg_type: subsystem 1 (ctnetlink) << 8 | type.
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 0x010f);
        assert_ne!(u16::from(UNKNOWN_MESSAGE_TYPE), NLMSG_DONE);
        let _ = NetfilterMessage::parse_with_param(&bytes[16..], 0x0100);
    }

    #[test]
    fn tcp_states_round_trip() {
        for raw in 0..12 {
            assert_eq!(TcpState::from_raw(raw).raw(), raw);
        }
    }
}
