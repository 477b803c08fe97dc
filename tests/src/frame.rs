//! Hand-built Ethernet + IPv4 frames, well-formed or deliberately broken
//! (wrong lengths, truncated headers, odd options, flags and protocols), and
//! reading frames back: field by field with their checksums checked, or as
//! a one-line description of a captured frame for test logs.
//!
//! A [`Packet`] is a `const` description, so that a test's table of cases
//! reads as data; [`Packet::frame`] turns it into bytes with every checksum
//! right unless the description asks otherwise. [`Ipv4View`] reads the
//! fields of an IPv4 packet (or of the one an ICMP error quotes) and checks
//! its checksums; [`Seen`] is the summary of one captured frame.

use std::{fmt::Write as _, net::Ipv4Addr};

pub const ETHERTYPE_IPV4: u16 = 0x0800;
const ETH_HEADER_LEN: usize = 14;
const IPV4_HEADER_LEN: usize = 20;
const TCP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
/// The code of a destination unreachable: port unreachable.
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// The IPv4 "more fragments" flag, in the flags and fragment offset field.
const MORE_FRAGMENTS: u16 = 0x2000;

/// TCP flag bits, FIN (0x01) to CWR (0x80).
pub const TCP_FLAG_NAMES: [char; 8] = ['F', 'S', 'R', 'P', 'A', 'U', 'E', 'C'];
pub const TCP_SYN: u8 = 0x02;

/// An Ethernet address.
pub type Mac = [u8; 6];

/// What follows the IPv4 header.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        /// The data offset field, in 32-bit words (5 for a plain header);
        /// the header built is 20 bytes whatever it says.
        data_offset: u8,
        /// The sequence number.
        seq: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
        /// The length field; `None`: the real length.
        length: Option<u16>,
        /// Send checksum 0 ("no checksum") instead of the real one.
        no_checksum: bool,
    },
    Icmp {
        icmp_type: u8,
        code: u8,
        /// The four "rest of header" bytes: identifier and sequence for
        /// echo, unused (or the next-hop MTU) for errors.
        rest: [u8; 4],
        /// For errors: the packet quoted and how many of its bytes.
        quote: Option<(&'static Packet, usize)>,
    },
    /// Any other IP protocol: the payload follows the IPv4 header directly.
    Other { proto: u8 },
}

/// The IPv4 total length field.
#[derive(Clone, Copy, Debug)]
pub enum TotalLength {
    /// The length of the packet as built (before any [`Packet::cut_to`]).
    Right,
    /// The right length plus this many bytes (negative: fewer).
    Off(i32),
    /// Exactly this value.
    Is(u16),
}

/// An IPv4 packet to build; see the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub l4: L4,
    /// Bytes after the transport header.
    pub payload: usize,
    /// IP options, padded with end-of-options to a multiple of 4 bytes.
    pub options: &'static [u8],
    /// The version nibble (4 unless testing a lie).
    pub version: u8,
    /// The IHL field in 32-bit words; `None`: the real header length.
    pub ihl: Option<u8>,
    pub total_length: TotalLength,
    /// The IPv4 header checksum is off by one.
    pub bad_ip_checksum: bool,
    /// Time to live.
    pub ttl: u8,
    /// The identification field.
    pub ip_id: u16,
    /// Where this fragment's data start in the datagram, in bytes (a
    /// multiple of 8); 0 for a whole packet or a first fragment.
    pub fragment_offset: u16,
    /// The "more fragments" flag: fragments of the datagram follow.
    pub more_fragments: bool,
    /// Cut the IPv4 packet to this many bytes after building it
    /// (checksums and lengths still describe the whole packet).
    pub cut_to: Option<usize>,
}

impl Packet {
    const fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            src,
            dst,
            l4,
            payload: 16,
            options: &[],
            version: 4,
            ihl: None,
            total_length: TotalLength::Right,
            bad_ip_checksum: false,
            ttl: 64,
            ip_id: 0x4242,
            fragment_offset: 0,
            more_fragments: false,
            cut_to: None,
        }
    }

    pub const fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Self {
        Self::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
                data_offset: 5,
                seq: 0x1000_0000,
            },
        )
    }

    pub const fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Self {
        Self::new(
            src,
            dst,
            L4::Udp {
                sport,
                dport,
                length: None,
                no_checksum: false,
            },
        )
    }

    /// An ICMP message of `icmp_type`/`code` with `rest` as its identifier
    /// and sequence (or unused) bytes.
    pub const fn icmp(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        rest: [u8; 4],
    ) -> Self {
        Self::new(
            src,
            dst,
            L4::Icmp {
                icmp_type,
                code,
                rest,
                quote: None,
            },
        )
    }

    /// An echo request ([`ICMP_ECHO_REQUEST`]) or reply ([`ICMP_ECHO_REPLY`])
    /// with identifier `id` and sequence number 1.
    pub const fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, id: u16) -> Self {
        let [id_high, id_low] = id.to_be_bytes();
        Self::icmp(src, dst, icmp_type, 0, [id_high, id_low, 0, 1])
    }

    /// An ICMP error quoting the first `bytes` bytes of `quoted` (all of it
    /// when `bytes` is larger) and nothing else.
    pub const fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        quoted: &'static Packet,
        bytes: usize,
    ) -> Self {
        Self::new(
            src,
            dst,
            L4::Icmp {
                icmp_type,
                code,
                rest: [0; 4],
                quote: Some((quoted, bytes)),
            },
        )
        .payload(0)
    }

    /// Protocol `proto` with an opaque payload.
    pub const fn other(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self::new(src, dst, L4::Other { proto })
    }

    pub const fn payload(mut self, bytes: usize) -> Self {
        self.payload = bytes;
        self
    }

    pub const fn options(mut self, options: &'static [u8]) -> Self {
        self.options = options;
        self
    }

    pub const fn version(mut self, version: u8) -> Self {
        self.version = version;
        self
    }

    pub const fn ihl(mut self, words: u8) -> Self {
        self.ihl = Some(words);
        self
    }

    pub const fn total_length(mut self, length: TotalLength) -> Self {
        self.total_length = length;
        self
    }

    pub const fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub const fn ip_id(mut self, id: u16) -> Self {
        self.ip_id = id;
        self
    }

    /// The first fragment of a datagram: offset 0, more fragments follow.
    /// Its transport header and checksum are built as for a whole packet.
    pub const fn first_fragment(mut self) -> Self {
        self.fragment_offset = 0;
        self.more_fragments = true;
        self
    }

    /// The last fragment of a datagram, its data at `offset` bytes (a
    /// multiple of 8). Use it with [`Packet::other`] and the protocol: a
    /// later fragment carries no transport header.
    pub const fn last_fragment(mut self, offset: u16) -> Self {
        self.fragment_offset = offset;
        self.more_fragments = false;
        self
    }

    pub const fn bad_ip_checksum(mut self) -> Self {
        self.bad_ip_checksum = true;
        self
    }

    pub const fn cut_to(mut self, bytes: usize) -> Self {
        self.cut_to = Some(bytes);
        self
    }

    /// Keeps only the first `bytes` bytes after the IPv4 header, with a
    /// total length that says so: a consistent IPv4 packet whose transport
    /// header is cut short. Set options before this.
    pub const fn transport_cut_to(self, bytes: usize) -> Self {
        let header_len = IPV4_HEADER_LEN + self.options.len().next_multiple_of(4);
        let total = header_len + bytes;
        self.total_length(TotalLength::Is(total as u16))
            .cut_to(total)
    }

    /// A TCP packet's data offset field; other protocols are left alone.
    pub const fn tcp_data_offset(mut self, words: u8) -> Self {
        if let L4::Tcp { data_offset, .. } = &mut self.l4 {
            *data_offset = words;
        }
        self
    }

    /// A TCP packet's sequence number; other protocols are left alone.
    pub const fn tcp_seq(mut self, new: u32) -> Self {
        if let L4::Tcp { seq, .. } = &mut self.l4 {
            *seq = new;
        }
        self
    }

    /// A TCP packet's flags; other protocols are left alone.
    pub const fn tcp_flags(mut self, new: u8) -> Self {
        if let L4::Tcp { flags, .. } = &mut self.l4 {
            *flags = new;
        }
        self
    }

    /// A UDP packet's length field; other protocols are left alone.
    pub const fn udp_length(mut self, new: u16) -> Self {
        if let L4::Udp { length, .. } = &mut self.l4 {
            *length = Some(new);
        }
        self
    }

    /// A UDP packet sent without checksum; other protocols are left alone.
    pub const fn udp_no_checksum(mut self) -> Self {
        if let L4::Udp { no_checksum, .. } = &mut self.l4 {
            *no_checksum = true;
        }
        self
    }

    /// The IP protocol number.
    pub const fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::Icmp { .. } => IPPROTO_ICMP,
            L4::Other { proto } => proto,
        }
    }

    /// The IPv4 packet (no Ethernet header).
    pub fn ipv4(&self) -> Vec<u8> {
        let mut options = self.options.to_vec();
        options.resize(options.len().next_multiple_of(4), 0);
        let header_len = IPV4_HEADER_LEN + options.len();
        let l4 = self.transport();
        let right = header_len + l4.len();
        let total = match self.total_length {
            TotalLength::Right => right as u16,
            TotalLength::Off(delta) => (right as i32 + delta) as u16,
            TotalLength::Is(value) => value,
        };
        let ihl = self.ihl.unwrap_or((header_len / 4) as u8);
        let mut ip = Vec::with_capacity(right);
        ip.push(self.version << 4 | (ihl & 0x0f));
        ip.push(0); // DSCP/ECN
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        let more = if self.more_fragments {
            MORE_FRAGMENTS
        } else {
            0
        };
        ip.extend_from_slice(&(more | (self.fragment_offset / 8)).to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto());
        ip.extend_from_slice(&[0, 0]); // checksum, below
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&options);
        let mut check = checksum(&[&ip]);
        if self.bad_ip_checksum {
            check = check.wrapping_add(1);
        }
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        ip.extend_from_slice(&l4);
        if let Some(cut) = self.cut_to {
            ip.truncate(cut);
        }
        ip
    }

    /// The Ethernet frame carrying [`Packet::ipv4`] from `src` to `dst`.
    pub fn frame(&self, src: Mac, dst: Mac) -> Vec<u8> {
        let mut frame = Vec::with_capacity(ETH_HEADER_LEN + 64);
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        frame.extend_from_slice(&self.ipv4());
        frame
    }

    /// The transport header and payload, checksummed.
    fn transport(&self) -> Vec<u8> {
        let payload: Vec<u8> = (0..self.payload).map(|i| b'a' + (i % 26) as u8).collect();
        let pseudo = |len: usize| pseudo_header(self.src, self.dst, self.proto(), len);
        match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                data_offset,
                seq,
            } => {
                let mut tcp = Vec::with_capacity(TCP_HEADER_LEN + payload.len());
                tcp.extend_from_slice(&sport.to_be_bytes());
                tcp.extend_from_slice(&dport.to_be_bytes());
                tcp.extend_from_slice(&seq.to_be_bytes());
                let ack: u32 = if flags & 0x10 != 0 { 0x2000_0000 } else { 0 };
                tcp.extend_from_slice(&ack.to_be_bytes());
                tcp.push(data_offset << 4);
                tcp.push(flags);
                tcp.extend_from_slice(&64240u16.to_be_bytes()); // window
                tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                tcp.extend_from_slice(&payload);
                let check = checksum(&[&pseudo(tcp.len()), &tcp]);
                tcp[16..18].copy_from_slice(&check.to_be_bytes());
                tcp
            }
            L4::Udp {
                sport,
                dport,
                length,
                no_checksum,
            } => {
                let real = (UDP_HEADER_LEN + payload.len()) as u16;
                let mut udp = Vec::with_capacity(real as usize);
                udp.extend_from_slice(&sport.to_be_bytes());
                udp.extend_from_slice(&dport.to_be_bytes());
                udp.extend_from_slice(&length.unwrap_or(real).to_be_bytes());
                udp.extend_from_slice(&[0, 0]);
                udp.extend_from_slice(&payload);
                if !no_checksum {
                    let check = match checksum(&[&pseudo(udp.len()), &udp]) {
                        0 => 0xffff, // 0 means "no checksum" in UDP
                        c => c,
                    };
                    udp[6..8].copy_from_slice(&check.to_be_bytes());
                }
                udp
            }
            L4::Icmp {
                icmp_type,
                code,
                rest,
                quote,
            } => {
                let mut icmp = Vec::with_capacity(ICMP_HEADER_LEN + payload.len());
                icmp.extend_from_slice(&[icmp_type, code, 0, 0]);
                icmp.extend_from_slice(&rest);
                if let Some((quoted, bytes)) = quote {
                    let inner = quoted.ipv4();
                    icmp.extend_from_slice(&inner[..bytes.min(inner.len())]);
                }
                icmp.extend_from_slice(&payload);
                let check = checksum(&[&icmp]);
                icmp[2..4].copy_from_slice(&check.to_be_bytes());
                icmp
            }
            L4::Other { .. } => payload,
        }
    }
}

/// The same packet once with each of the 256 TCP flag combinations.
pub const fn every_tcp_flag_combination(base: Packet) -> [Packet; 256] {
    let mut all = [base; 256];
    let mut flags = 0;
    while flags < 256 {
        all[flags] = base.tcp_flags(flags as u8);
        flags += 1;
    }
    all
}

/// The Internet checksum of the concatenation of `parts` (each of even
/// length except the last).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 pseudo-header TCP and UDP checksums cover.
fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> [u8; 12] {
    let mut pseudo = [0; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = proto;
    pseudo[10..].copy_from_slice(&(len as u16).to_be_bytes());
    pseudo
}

/// An IPv4 packet read back field by field: at least a 20-byte header, the
/// rest as far as it goes (the transport is what follows the header up to
/// the end of the bytes, whatever the total length field says).
#[derive(Clone, Copy, Debug)]
pub struct Ipv4View<'a> {
    ip: &'a [u8],
}

impl<'a> Ipv4View<'a> {
    /// The IPv4 packet of an untagged Ethernet frame; `None` if it is not
    /// IPv4 or shorter than an IPv4 header.
    pub fn of_frame(frame: &'a [u8]) -> Option<Self> {
        let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
        if ethertype != ETHERTYPE_IPV4 {
            return None;
        }
        Self::of_packet(frame.get(ETH_HEADER_LEN..)?)
    }

    /// `ip` as an IPv4 packet; `None` if it is not one or too short.
    pub fn of_packet(ip: &'a [u8]) -> Option<Self> {
        (ip.len() >= IPV4_HEADER_LEN && ip[0] >> 4 == 4).then_some(Self { ip })
    }

    fn addr(&self, at: usize) -> Ipv4Addr {
        Ipv4Addr::new(
            self.ip[at],
            self.ip[at + 1],
            self.ip[at + 2],
            self.ip[at + 3],
        )
    }

    pub fn src(&self) -> Ipv4Addr {
        self.addr(12)
    }

    pub fn dst(&self) -> Ipv4Addr {
        self.addr(16)
    }

    pub fn proto(&self) -> u8 {
        self.ip[9]
    }

    /// The IPv4 header, options included (as far as the bytes go).
    pub fn header(&self) -> &'a [u8] {
        &self.ip[..self.header_len().min(self.ip.len())]
    }

    fn header_len(&self) -> usize {
        usize::from(self.ip[0] & 0x0f) * 4
    }

    /// The bytes after the header: the transport header and payload, or a
    /// later fragment's data.
    pub fn transport(&self) -> &'a [u8] {
        self.ip.get(self.header_len()..).unwrap_or(&[])
    }

    fn transport_word(&self, at: usize) -> Option<u16> {
        let bytes = self.transport().get(at..at + 2)?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// Whether this is a later fragment, which has no transport header.
    fn is_later_fragment(&self) -> bool {
        u16::from_be_bytes([self.ip[6], self.ip[7]]) & 0x1fff != 0
    }

    /// TCP or UDP source and destination ports.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.proto() {
            IPPROTO_TCP | IPPROTO_UDP => self.transport_word(0).zip(self.transport_word(2)),
            _ => None,
        }
    }

    /// An ICMP message's type and code.
    pub fn icmp_type_code(&self) -> Option<(u8, u8)> {
        let icmp = self.transport().get(..2)?;
        (self.proto() == IPPROTO_ICMP).then_some((icmp[0], icmp[1]))
    }

    /// An ICMP echo request's or reply's identifier.
    pub fn echo_id(&self) -> Option<u16> {
        match self.icmp_type_code()? {
            (ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY, 0) => self.transport_word(4),
            _ => None,
        }
    }

    /// A UDP header's checksum field (0: none).
    pub fn udp_checksum(&self) -> Option<u16> {
        (self.proto() == IPPROTO_UDP)
            .then(|| self.transport_word(6))
            .flatten()
    }

    /// A TCP header's flags.
    pub fn tcp_flags(&self) -> Option<u8> {
        (self.proto() == IPPROTO_TCP)
            .then(|| self.transport().get(13).copied())
            .flatten()
    }

    /// The packet an ICMP error quotes, after its 8-byte ICMP header.
    pub fn quoted(&self) -> Option<Self> {
        self.icmp_type_code()?;
        Self::of_packet(self.transport().get(ICMP_HEADER_LEN..)?)
    }

    /// Whether the IPv4 header checksum holds.
    pub fn header_checksum_holds(&self) -> bool {
        checksum(&[self.header()]) == 0
    }

    /// Whether the TCP, UDP or ICMP checksum holds over the transport bytes
    /// there are (a UDP checksum of 0, "none", holds); `None` for other
    /// protocols and for later fragments, which have no transport header.
    pub fn transport_checksum_holds(&self) -> Option<bool> {
        if self.is_later_fragment() {
            return None;
        }
        let transport = self.transport();
        let with_pseudo_header = || {
            let pseudo = pseudo_header(self.src(), self.dst(), self.proto(), transport.len());
            checksum(&[&pseudo, transport]) == 0
        };
        match self.proto() {
            IPPROTO_ICMP => Some(checksum(&[transport]) == 0),
            IPPROTO_UDP if self.udp_checksum() == Some(0) => Some(true),
            IPPROTO_TCP | IPPROTO_UDP => Some(with_pseudo_header()),
            _ => None,
        }
    }
}

/// A captured Ethernet frame's IPv4 packet, as far as it can be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// TCP/UDP ports, or the ICMP type and code.
    pub ports: Option<(u16, u16)>,
    pub tcp_flags: Option<u8>,
}

impl Seen {
    /// Reads an untagged Ethernet frame; `None` if it is not IPv4.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let ip = Ipv4View::of_frame(frame)?;
        let ports = ip.ports().or_else(|| {
            let (icmp_type, code) = ip.icmp_type_code()?;
            Some((u16::from(icmp_type), u16::from(code)))
        });
        Some(Self {
            src: ip.src(),
            dst: ip.dst(),
            proto: ip.proto(),
            ports,
            tcp_flags: ip.tcp_flags(),
        })
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, ports) = match (self.proto, self.ports) {
            (IPPROTO_TCP, Some((s, d))) => ("TCP".to_owned(), format!(" {s}>{d}")),
            (IPPROTO_UDP, Some((s, d))) => ("UDP".to_owned(), format!(" {s}>{d}")),
            (IPPROTO_ICMP, Some((t, c))) => ("ICMP".to_owned(), format!(" type {t}/{c}")),
            (proto, _) => (format!("proto {proto}"), String::new()),
        };
        write!(f, "{}>{} {name}{ports}", self.src, self.dst)?;
        if let Some(flags) = self.tcp_flags {
            write!(f, " [{}]", flag_names(flags))?;
        }
        Ok(())
    }
}

/// `SA` for SYN+ACK, `.` for none.
pub fn flag_names(flags: u8) -> String {
    let mut names = String::new();
    for (bit, name) in TCP_FLAG_NAMES.iter().enumerate() {
        if flags & (1 << bit) != 0 {
            let _ = write!(names, "{name}");
        }
    }
    if names.is_empty() {
        names.push('.');
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 85, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 61, 12);

    fn frame(packet: &Packet) -> Vec<u8> {
        packet.frame([2; 6], [4; 6])
    }

    #[test]
    fn well_formed_packets_have_right_lengths_and_checksums() {
        let udp = Packet::udp(A, B, 1000, 53).payload(5).ipv4();
        assert_eq!(udp.len(), 20 + 8 + 5);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 33);
        assert_eq!(checksum(&[&udp[..20]]), 0, "IPv4 header checksum");
        let pseudo = [A.octets(), B.octets(), [0, IPPROTO_UDP, 0, 13]].concat();
        assert_eq!(checksum(&[&pseudo, &udp[20..]]), 0, "UDP checksum");
        let view = Ipv4View::of_packet(&udp).unwrap();
        assert!(view.header_checksum_holds());
        assert_eq!(view.transport_checksum_holds(), Some(true));

        let seen = Seen::parse(&frame(&Packet::tcp(A, B, 40000, 80, TCP_SYN))).unwrap();
        assert_eq!(seen.to_string(), "10.85.0.2>192.168.61.12 TCP 40000>80 [S]");
    }

    #[test]
    fn broken_packets_are_broken_as_described() {
        let p = Packet::udp(A, B, 1, 2)
            .options(&[1, 1, 1])
            .total_length(TotalLength::Off(10))
            .cut_to(22);
        let ip = p.ipv4();
        assert_eq!(ip.len(), 22);
        assert_eq!(ip[0], 0x46, "one word of options");
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 24 + 8 + 16 + 10);
        let lying = Packet::udp(A, B, 1, 2)
            .ihl(15)
            .version(6)
            .bad_ip_checksum()
            .ipv4();
        assert_eq!(lying[0], 0x6f);
        assert_ne!(checksum(&[&lying[..20]]), 0);
        let all = every_tcp_flag_combination(Packet::tcp(A, B, 1, 2, 0));
        assert_eq!(all[0x12].l4_flags(), Some(0x12));
        assert_eq!(flag_names(0x12), "SA");
    }

    #[test]
    fn icmp_errors_quote_the_packet() {
        const QUOTED: Packet = Packet::udp(B, A, 7, 9);
        let error = Packet::icmp_error(A, B, 3, 3, &QUOTED, 28).ipv4();
        assert_eq!(error.len(), 20 + 8 + 28);
        assert_eq!(&error[28..56], &QUOTED.ipv4()[..28]);
        assert_eq!(checksum(&[&error[20..]]), 0, "ICMP checksum");
    }

    #[test]
    fn views_read_back_what_packets_describe() {
        const QUOTED: Packet = Packet::udp(B, A, 7, 9).payload(3);
        let error = Packet::icmp_error(A, B, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, &QUOTED, 99)
            .frame([2; 6], [4; 6]);
        let outer = Ipv4View::of_frame(&error).unwrap();
        assert_eq!((outer.src(), outer.dst()), (A, B));
        assert_eq!(outer.icmp_type_code(), Some((3, 3)));
        assert_eq!(outer.transport_checksum_holds(), Some(true));
        let quoted = outer.quoted().unwrap();
        assert_eq!((quoted.src(), quoted.ports()), (B, Some((7, 9))));
        assert!(quoted.header_checksum_holds(), "quoted whole");
        assert_eq!(quoted.transport_checksum_holds(), Some(true));

        let echo = Packet::icmp_echo(A, B, ICMP_ECHO_REQUEST, 77).ttl(1).ipv4();
        let view = Ipv4View::of_packet(&echo).unwrap();
        assert_eq!((view.echo_id(), echo[8]), (Some(77), 1));
        assert_eq!(
            view.quoted().map(|q| q.src()),
            None,
            "an echo quotes nothing"
        );

        let later = Packet::other(A, B, IPPROTO_UDP)
            .ip_id(0x4321)
            .last_fragment(1480)
            .ipv4();
        assert_eq!(&later[4..8], &[0x43, 0x21, 0, 185]);
        let view = Ipv4View::of_packet(&later).unwrap();
        assert!(view.header_checksum_holds());
        assert_eq!(view.transport_checksum_holds(), None, "no transport header");
        let first = Packet::udp(A, B, 1, 2).first_fragment().ipv4();
        assert_eq!(&first[6..8], &[0x20, 0]);
        let unchecked = Packet::udp(A, B, 1, 2).udp_no_checksum().ipv4();
        let view = Ipv4View::of_packet(&unchecked).unwrap();
        assert_eq!(view.udp_checksum(), Some(0));
        assert_eq!(view.transport_checksum_holds(), Some(true));

        let broken = Packet::udp(A, B, 1, 2).bad_ip_checksum().ipv4();
        assert!(
            !Ipv4View::of_packet(&broken)
                .unwrap()
                .header_checksum_holds()
        );
        let mut corrupted = Packet::tcp(A, B, 1, 2, TCP_SYN).ipv4();
        corrupted[30] ^= 1;
        let view = Ipv4View::of_packet(&corrupted).unwrap();
        assert_eq!(view.transport_checksum_holds(), Some(false));
    }

    impl Packet {
        fn l4_flags(&self) -> Option<u8> {
            match self.l4 {
                L4::Tcp { flags, .. } => Some(flags),
                _ => None,
            }
        }
    }
}
