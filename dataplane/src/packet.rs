//! Frame parsing: from the raw bytes of a received Ethernet frame to the fields that the
//! classifier and the connection tracker need, and the in-place rewrite of a forwarded frame.
//!
//! Parsing reads through smoltcp's typed views over the buffer (`EthernetFrame`, `Ipv4Packet`,
//! `Ipv6Packet`, IPv6 extension headers, `TcpPacket`, `UdpPacket`, `Icmpv4Packet`,
//! `Icmpv6Packet`); only 802.1Q tags, IPsec AH lengths and SCTP's ports are read by hand. It copies
//! nothing, allocates nothing and never panics: every length is checked before it is used.

use palisade_policy::eval::Flow;
use palisade_policy::model::proto::SCTP as PROTO_SCTP;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6ExtHeader, Ipv6FragmentHeader,
    Ipv6Packet, TcpPacket, UdpPacket, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, IPV6_HEADER_LEN, TCP_HEADER_LEN, UDP_HEADER_LEN,
};
use std::net::IpAddr;

/// TCP flag bits as they appear in [`Packet::tcp_flags`] (the TCP header's flag octet).
pub mod tcp_flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers (connection start).
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push buffered data.
    pub const PSH: u8 = 0x08;
    /// The acknowledgement number is valid.
    pub const ACK: u8 = 0x10;
    /// The urgent pointer is valid.
    pub const URG: u8 = 0x20;
}

const ETHERTYPE_VLAN: u16 = 0x8100;
const VLAN_TAG_LEN: usize = 4;
const SCTP_COMMON_HEADER_LEN: usize = 12;
/// ICMP headers, and the fixed part before the embedded packet of error messages.
const ICMP_HEADER_LEN: usize = 8;
const IPV6_FRAGMENT_HEADER_LEN: usize = 8;

/// Why a frame could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The ethertype is neither IPv4 nor IPv6 (ARP, LLDP, stacked VLAN tags, ...).
    NotIp,
    /// A header, or the IP datagram, is longer than the frame holds.
    Truncated,
    /// A header field is impossible: IP version, IPv4 header length, TCP data offset, UDP length.
    BadHeader,
    /// The IPv4 header checksum is wrong.
    BadChecksum,
}

impl Malformed {
    /// Stable snake_case name, for counters.
    pub fn name(&self) -> &'static str {
        match self {
            Malformed::NotIp => "not_ip",
            Malformed::Truncated => "truncated",
            Malformed::BadHeader => "bad_header",
            Malformed::BadChecksum => "bad_checksum",
        }
    }
}

/// Where a packet stands in IP fragmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// Not a fragment (IPv6 atomic fragments, offset 0 without more fragments, count as none).
    None,
    /// The first fragment (offset 0, more fragments follow): its transport header is parsed.
    First {
        /// Fragment identification (16 bits for IPv4, 32 for IPv6).
        id: u32,
    },
    /// A fragment at a non-zero offset: it has no transport header, so its ports are 0.
    Later {
        /// Fragment identification (16 bits for IPv4, 32 for IPv6).
        id: u32,
    },
}

/// The classes of ICMP and ICMPv6 messages that connection tracking tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    /// Echo request (ping).
    EchoRequest,
    /// Echo reply.
    EchoReply,
    /// An error message, quoting the packet that caused it (see [`Packet::inner`]).
    Error,
    /// Any other message (router and neighbour discovery, timestamps, ...).
    Other,
}

/// The 5-tuple of a packet: what identifies its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Source port; the identifier for ICMP echo; otherwise 0 for protocols without ports.
    pub src_port: u16,
    /// Destination port; the identifier for ICMP echo; otherwise 0 for protocols without ports.
    pub dst_port: u16,
}

/// What [`parse`] found in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// VLAN id of the 802.1Q tag, if the frame has one.
    pub vlan: Option<u16>,
    /// Offset of the IP header in the frame (14, or 18 with a VLAN tag).
    pub l3_offset: usize,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Upper-layer protocol: for IPv6, the header that ends the extension header chain.
    pub protocol: u8,
    /// TCP, UDP or SCTP source port. For ICMP echo request and reply, the echo identifier (so
    /// that connection tracking keys echo flows like ports); 0 otherwise and for later fragments.
    pub src_port: u16,
    /// TCP, UDP or SCTP destination port; the echo identifier as for `src_port`; else 0.
    pub dst_port: u16,
    /// TCP flags (see [`tcp_flags`]); 0 for other protocols.
    pub tcp_flags: u8,
    /// SCTP: type of the first chunk, if the packet has one.
    pub sctp_chunk: Option<u8>,
    /// ICMP or ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
    /// ICMP error messages: the flow of the packet that caused the error, read from the IP
    /// header and first 8 bytes that the message quotes (`None` if the quote is unreadable).
    pub inner: Option<FlowTuple>,
    /// Fragmentation.
    pub fragment: Fragment,
    /// IPv4 TTL, IPv6 hop limit.
    pub ttl: u8,
    /// Length of the whole frame in bytes.
    pub len: usize,
}

impl Packet {
    /// The flow as the policy classifier sees it: ICMP carries its type and code, and no ports.
    pub fn flow(&self) -> Flow {
        let (src_port, dst_port) = if self.icmp.is_some() { (0, 0) } else { (self.src_port, self.dst_port) };
        Flow {
            src: self.src,
            dst: self.dst,
            protocol: self.protocol,
            src_port,
            dst_port,
            icmp_type: self.icmp.map(|(t, _)| t),
            icmp_code: self.icmp.map(|(_, c)| c),
        }
    }

    /// The class of an ICMP or ICMPv6 message; `None` for other protocols and later fragments.
    pub fn icmp_kind(&self) -> Option<IcmpKind> {
        self.icmp.map(|(message, _)| icmp_kind(self.src.is_ipv4(), message))
    }

    /// The packet's 5-tuple, echo identifiers as ports (the connection tracking key).
    pub fn tuple(&self) -> FlowTuple {
        FlowTuple { src: self.src, dst: self.dst, protocol: self.protocol, src_port: self.src_port, dst_port: self.dst_port }
    }
}

/// Parses a frame that starts at its Ethernet header.
pub fn parse(frame: &[u8]) -> Result<Packet, Malformed> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| Malformed::Truncated)?;
    let (vlan, ethertype, l3_offset) = match eth.ethertype() {
        EthernetProtocol::Unknown(ETHERTYPE_VLAN) => {
            let tag = eth.payload().get(..VLAN_TAG_LEN).ok_or(Malformed::Truncated)?;
            let ethertype = EthernetProtocol::from(be16(tag, 2));
            (Some(be16(tag, 0) & 0x0fff), ethertype, ETHERNET_HEADER_LEN + VLAN_TAG_LEN)
        }
        ethertype => (None, ethertype, ETHERNET_HEADER_LEN),
    };
    let l3 = &frame[l3_offset..];
    let mut pkt = Packet {
        vlan,
        l3_offset,
        src: IpAddr::from([0u8; 4]),
        dst: IpAddr::from([0u8; 4]),
        protocol: 0,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        sctp_chunk: None,
        icmp: None,
        inner: None,
        fragment: Fragment::None,
        ttl: 0,
        len: frame.len(),
    };
    let payload = match ethertype {
        EthernetProtocol::Ipv4 => parse_ipv4(l3, &mut pkt)?,
        EthernetProtocol::Ipv6 => parse_ipv6(l3, &mut pkt)?,
        _ => return Err(Malformed::NotIp),
    };
    if !matches!(pkt.fragment, Fragment::Later { .. }) {
        parse_l4(payload, &mut pkt)?;
    }
    Ok(pkt)
}

/// Reads the IPv4 header into `pkt`; returns the IP payload.
fn parse_ipv4<'a>(l3: &'a [u8], pkt: &mut Packet) -> Result<&'a [u8], Malformed> {
    if l3.len() < IPV4_HEADER_LEN {
        return Err(Malformed::Truncated);
    }
    let ip = Ipv4Packet::new_unchecked(l3);
    let header_len = usize::from(ip.header_len());
    if ip.version() != 4 || header_len < IPV4_HEADER_LEN || usize::from(ip.total_len()) < header_len {
        return Err(Malformed::BadHeader);
    }
    // With the fields above sane, what remains to fail is a datagram longer than the buffer.
    let ip = Ipv4Packet::new_checked(l3).map_err(|_| Malformed::Truncated)?;
    if !ip.verify_checksum() {
        return Err(Malformed::BadChecksum);
    }
    let id = u32::from(ip.ident());
    pkt.fragment = if ip.frag_offset() > 0 {
        Fragment::Later { id }
    } else if ip.more_frags() {
        Fragment::First { id }
    } else {
        Fragment::None
    };
    pkt.src = ip.src_addr().into();
    pkt.dst = ip.dst_addr().into();
    pkt.protocol = ip.next_header().into();
    pkt.ttl = ip.hop_limit();
    Ok(ip.payload())
}

/// Reads the IPv6 header and extension headers into `pkt`; returns the upper-layer payload.
fn parse_ipv6<'a>(l3: &'a [u8], pkt: &mut Packet) -> Result<&'a [u8], Malformed> {
    if l3.len() < IPV6_HEADER_LEN {
        return Err(Malformed::Truncated);
    }
    if Ipv6Packet::new_unchecked(l3).version() != 6 {
        return Err(Malformed::BadHeader);
    }
    let ip = Ipv6Packet::new_checked(l3).map_err(|_| Malformed::Truncated)?;
    let (protocol, fragment, payload) = walk_ipv6_extensions(ip.next_header(), ip.payload())?;
    pkt.src = ip.src_addr().into();
    pkt.dst = ip.dst_addr().into();
    pkt.protocol = protocol;
    pkt.fragment = fragment;
    pkt.ttl = ip.hop_limit();
    Ok(payload)
}

/// Follows the IPv6 extension header chain that starts with `next` at `bytes`: returns the
/// upper-layer protocol, the fragmentation and the upper-layer payload (empty for a later
/// fragment, which ends the walk). ESP, "no next header" and unknown headers end it too.
fn walk_ipv6_extensions(mut next: IpProtocol, mut bytes: &[u8]) -> Result<(u8, Fragment, &[u8]), Malformed> {
    let mut fragment = Fragment::None;
    loop {
        let len = match next {
            IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts => {
                let header = Ipv6ExtHeader::new_checked(bytes).map_err(|_| Malformed::Truncated)?;
                next = header.next_header();
                (usize::from(header.header_len()) + 1) * 8
            }
            IpProtocol::Ipv6Frag => {
                // Fixed length: its second octet is reserved, not a length.
                let header = bytes.get(..IPV6_FRAGMENT_HEADER_LEN).ok_or(Malformed::Truncated)?;
                next = Ipv6ExtHeader::new_unchecked(header).next_header();
                let fields = Ipv6FragmentHeader::new_unchecked(&header[2..]);
                let id = fields.ident();
                if fields.frag_offset() > 0 {
                    return Ok((next.into(), Fragment::Later { id }, &[]));
                }
                if fields.more_frags() {
                    fragment = Fragment::First { id };
                }
                IPV6_FRAGMENT_HEADER_LEN
            }
            IpProtocol::IpSecAh => {
                // RFC 4302: the payload length counts 4-octet units, minus 2.
                let header = bytes.get(..2).ok_or(Malformed::Truncated)?;
                next = IpProtocol::from(header[0]);
                (usize::from(header[1]) + 2) * 4
            }
            upper => return Ok((upper.into(), fragment, bytes)),
        };
        bytes = bytes.get(len..).ok_or(Malformed::Truncated)?;
    }
}

/// Reads the transport header at `payload` into `pkt`.
fn parse_l4(payload: &[u8], pkt: &mut Packet) -> Result<(), Malformed> {
    let v4 = pkt.src.is_ipv4();
    match IpProtocol::from(pkt.protocol) {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).map_err(|_| {
                let bad_offset = payload.len() >= TCP_HEADER_LEN && usize::from(TcpPacket::new_unchecked(payload).header_len()) < TCP_HEADER_LEN;
                if bad_offset {
                    Malformed::BadHeader
                } else {
                    Malformed::Truncated
                }
            })?;
            pkt.src_port = tcp.src_port();
            pkt.dst_port = tcp.dst_port();
            let flag = |set: bool, bit: u8| if set { bit } else { 0 };
            pkt.tcp_flags = flag(tcp.fin(), tcp_flags::FIN)
                | flag(tcp.syn(), tcp_flags::SYN)
                | flag(tcp.rst(), tcp_flags::RST)
                | flag(tcp.psh(), tcp_flags::PSH)
                | flag(tcp.ack(), tcp_flags::ACK)
                | flag(tcp.urg(), tcp_flags::URG);
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).map_err(|_| {
                let bad_len = payload.len() >= UDP_HEADER_LEN && usize::from(UdpPacket::new_unchecked(payload).len()) < UDP_HEADER_LEN;
                if bad_len {
                    Malformed::BadHeader
                } else {
                    Malformed::Truncated
                }
            })?;
            pkt.src_port = udp.src_port();
            pkt.dst_port = udp.dst_port();
        }
        IpProtocol::Unknown(PROTO_SCTP) => {
            if payload.len() < SCTP_COMMON_HEADER_LEN {
                return Err(Malformed::Truncated);
            }
            pkt.src_port = be16(payload, 0);
            pkt.dst_port = be16(payload, 2);
            pkt.sctp_chunk = payload.get(SCTP_COMMON_HEADER_LEN).copied();
        }
        IpProtocol::Icmp if v4 => {
            let icmp = Icmpv4Packet::new_checked(payload).map_err(|_| Malformed::Truncated)?;
            let message = icmp.msg_type().into();
            pkt.icmp = Some((message, icmp.msg_code()));
            match icmp_kind(true, message) {
                IcmpKind::EchoRequest | IcmpKind::EchoReply => (pkt.src_port, pkt.dst_port) = (icmp.echo_ident(), icmp.echo_ident()),
                IcmpKind::Error => pkt.inner = inner_ipv4(icmp.data()),
                IcmpKind::Other => {}
            }
        }
        IpProtocol::Icmpv6 if !v4 => {
            if payload.len() < ICMP_HEADER_LEN {
                return Err(Malformed::Truncated);
            }
            // Not `new_checked`: it refuses message types that smoltcp does not know.
            let icmp = Icmpv6Packet::new_unchecked(payload);
            let message = icmp.msg_type().into();
            pkt.icmp = Some((message, icmp.msg_code()));
            match icmp_kind(false, message) {
                IcmpKind::EchoRequest | IcmpKind::EchoReply => (pkt.src_port, pkt.dst_port) = (icmp.echo_ident(), icmp.echo_ident()),
                // Error messages (types 1 to 4) have 8-byte headers: `payload` is the quote.
                IcmpKind::Error => pkt.inner = inner_ipv6(icmp.payload()),
                IcmpKind::Other => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// The class of ICMP (`v4`) or ICMPv6 message type `message`. Errors: destination unreachable,
/// source quench, redirect, time exceeded, parameter problem (ICMPv4: 3, 4, 5, 11, 12);
/// destination unreachable, packet too big, time exceeded, parameter problem (ICMPv6: 1 to 4).
fn icmp_kind(v4: bool, message: u8) -> IcmpKind {
    match (v4, message) {
        (true, 8) | (false, 128) => IcmpKind::EchoRequest,
        (true, 0) | (false, 129) => IcmpKind::EchoReply,
        (true, 3 | 4 | 5 | 11 | 12) | (false, 1..=4) => IcmpKind::Error,
        _ => IcmpKind::Other,
    }
}

/// The flow of the IPv4 packet quoted by an ICMP error. The quote is the IP header and at
/// least 8 bytes of payload, so its total length field is not checked against it.
fn inner_ipv4(quote: &[u8]) -> Option<FlowTuple> {
    if quote.len() < IPV4_HEADER_LEN {
        return None;
    }
    let ip = Ipv4Packet::new_unchecked(quote);
    let header_len = usize::from(ip.header_len());
    if ip.version() != 4 || header_len < IPV4_HEADER_LEN || ip.frag_offset() > 0 {
        return None;
    }
    let protocol = ip.next_header().into();
    let (src_port, dst_port) = inner_ports(protocol, true, quote.get(header_len..)?)?;
    Some(FlowTuple { src: ip.src_addr().into(), dst: ip.dst_addr().into(), protocol, src_port, dst_port })
}

/// The flow of the IPv6 packet quoted by an ICMPv6 error (its extension headers walked).
fn inner_ipv6(quote: &[u8]) -> Option<FlowTuple> {
    if quote.len() < IPV6_HEADER_LEN {
        return None;
    }
    let ip = Ipv6Packet::new_unchecked(quote);
    if ip.version() != 6 {
        return None;
    }
    let (protocol, fragment, l4) = walk_ipv6_extensions(ip.next_header(), &quote[IPV6_HEADER_LEN..]).ok()?;
    if matches!(fragment, Fragment::Later { .. }) {
        return None;
    }
    let (src_port, dst_port) = inner_ports(protocol, false, l4)?;
    Some(FlowTuple { src: ip.src_addr().into(), dst: ip.dst_addr().into(), protocol, src_port, dst_port })
}

/// Ports (or echo identifier) of a quoted packet, from the first bytes of its transport header.
fn inner_ports(protocol: u8, v4: bool, l4: &[u8]) -> Option<(u16, u16)> {
    match IpProtocol::from(protocol) {
        IpProtocol::Tcp | IpProtocol::Udp | IpProtocol::Unknown(PROTO_SCTP) => {
            let ports = l4.get(..4)?;
            Some((be16(ports, 0), be16(ports, 2)))
        }
        IpProtocol::Icmp if v4 => {
            let icmp = Icmpv4Packet::new_checked(l4).ok()?;
            Some(echo_ports(icmp_kind(true, icmp.msg_type().into()), icmp.echo_ident()))
        }
        IpProtocol::Icmpv6 if !v4 => {
            let icmp = Icmpv6Packet::new_unchecked(l4.get(..ICMP_HEADER_LEN)?);
            Some(echo_ports(icmp_kind(false, icmp.msg_type().into()), icmp.echo_ident()))
        }
        _ => Some((0, 0)),
    }
}

/// The ports of a quoted ICMP message: its echo identifier for echo messages, else none.
fn echo_ports(kind: IcmpKind, ident: u16) -> (u16, u16) {
    match kind {
        IcmpKind::EchoRequest | IcmpKind::EchoReply => (ident, ident),
        IcmpKind::Error | IcmpKind::Other => (0, 0),
    }
}

/// Big-endian u16 at `offset`; the caller has checked the length.
fn be16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([bytes[offset], bytes[offset + 1]])
}

/// Why a frame cannot be forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// The TTL or hop limit is 1 or 0: the packet must not be forwarded.
    TtlExceeded,
    /// The frame is shorter than the [`Packet`] it was supposedly parsed into says.
    FrameMismatch,
}

impl ForwardError {
    /// Stable snake_case name, for counters.
    pub fn name(&self) -> &'static str {
        match self {
            ForwardError::TtlExceeded => "ttl_exceeded",
            ForwardError::FrameMismatch => "frame_mismatch",
        }
    }
}

/// Prepares a frame parsed into `pkt` for forwarding: sets its Ethernet source and destination
/// addresses and decrements its IPv4 TTL (updating the header checksum incrementally, RFC 1624)
/// or IPv6 hop limit. A VLAN tag is left as is. On error the frame is untouched.
pub fn rewrite_for_forward(frame: &mut [u8], pkt: &Packet, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Result<(), ForwardError> {
    let min_l3 = if pkt.src.is_ipv4() { IPV4_HEADER_LEN } else { IPV6_HEADER_LEN };
    if pkt.l3_offset < ETHERNET_HEADER_LEN || frame.len() < pkt.l3_offset.saturating_add(min_l3) {
        return Err(ForwardError::FrameMismatch);
    }
    let (link, l3) = frame.split_at_mut(pkt.l3_offset);
    if pkt.src.is_ipv4() {
        let mut ip = Ipv4Packet::new_unchecked(l3);
        let ttl = ip.hop_limit();
        if ttl <= 1 {
            return Err(ForwardError::TtlExceeded);
        }
        // TTL and protocol share one 16-bit word of the header.
        let protocol = u8::from(ip.next_header());
        let old = u16::from_be_bytes([ttl, protocol]);
        let new = u16::from_be_bytes([ttl - 1, protocol]);
        ip.set_hop_limit(ttl - 1);
        ip.set_checksum(checksum_adjust(ip.checksum(), old, new));
    } else {
        let mut ip = Ipv6Packet::new_unchecked(l3);
        let hop_limit = ip.hop_limit();
        if hop_limit <= 1 {
            return Err(ForwardError::TtlExceeded);
        }
        ip.set_hop_limit(hop_limit - 1);
    }
    let mut eth = EthernetFrame::new_unchecked(link);
    eth.set_src_addr(EthernetAddress(src_mac));
    eth.set_dst_addr(EthernetAddress(dst_mac));
    Ok(())
}

/// RFC 1624 equation 3: the checksum `hc` after one 16-bit word of the data changes from `old`
/// to `new`, HC' = ~(~HC + ~m + m'), in one's complement arithmetic.
fn checksum_adjust(hc: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetRepr, Icmpv4DstUnreachable, Icmpv4Repr, Icmpv4TimeExceeded, Icmpv6DstUnreachable, Icmpv6Repr, Ipv4Address, Ipv4Repr, Ipv6Address,
        Ipv6Repr,
    };

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const A4: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const B4: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
    const A6: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const B6: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const TCP: u8 = 6;
    const UDP: u8 = 17;

    fn caps() -> ChecksumCapabilities {
        ChecksumCapabilities::default()
    }

    /// An Ethernet frame around `l3`, with an 802.1Q tag if `vlan`.
    fn eth(vlan: Option<u16>, ethertype: u16, l3: &[u8]) -> Vec<u8> {
        let tag_len = vlan.map_or(0, |_| VLAN_TAG_LEN);
        let mut f = vec![0; ETHERNET_HEADER_LEN + tag_len + l3.len()];
        let outer = if vlan.is_some() { ETHERTYPE_VLAN } else { ethertype };
        EthernetRepr { src_addr: EthernetAddress(MAC_A), dst_addr: EthernetAddress(MAC_B), ethertype: outer.into() }
            .emit(&mut EthernetFrame::new_unchecked(&mut f));
        if let Some(id) = vlan {
            f[14..16].copy_from_slice(&(0x2000 | id).to_be_bytes()); // priority 1
            f[16..18].copy_from_slice(&ethertype.to_be_bytes());
        }
        f[ETHERNET_HEADER_LEN + tag_len..].copy_from_slice(l3);
        f
    }

    fn ipv4_repr(protocol: u8, payload_len: usize) -> Ipv4Repr {
        Ipv4Repr { src_addr: A4, dst_addr: B4, next_header: protocol.into(), payload_len, hop_limit: 64 }
    }

    fn ipv4(protocol: u8, l4: &[u8]) -> Vec<u8> {
        let mut b = vec![0; IPV4_HEADER_LEN + l4.len()];
        ipv4_repr(protocol, l4.len()).emit(&mut Ipv4Packet::new_unchecked(&mut b), &caps());
        b[IPV4_HEADER_LEN..].copy_from_slice(l4);
        b
    }

    fn ipv6_repr(next: u8, payload_len: usize) -> Ipv6Repr {
        Ipv6Repr { src_addr: A6, dst_addr: B6, next_header: next.into(), payload_len, hop_limit: 64 }
    }

    fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0; IPV6_HEADER_LEN + payload.len()];
        ipv6_repr(next, payload.len()).emit(&mut Ipv6Packet::new_unchecked(&mut b));
        b[IPV6_HEADER_LEN..].copy_from_slice(payload);
        b
    }

    fn v4(protocol: u8, l4: &[u8]) -> Vec<u8> {
        eth(None, 0x0800, &ipv4(protocol, l4))
    }

    fn v6(next: u8, payload: &[u8]) -> Vec<u8> {
        eth(None, 0x86dd, &ipv6(next, payload))
    }

    fn tcp(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
        let mut b = vec![0; TCP_HEADER_LEN + 4];
        let mut t = TcpPacket::new_unchecked(&mut b);
        t.set_src_port(src_port);
        t.set_dst_port(dst_port);
        t.set_header_len(TCP_HEADER_LEN as u8);
        t.clear_flags();
        t.set_fin(flags & tcp_flags::FIN != 0);
        t.set_syn(flags & tcp_flags::SYN != 0);
        t.set_rst(flags & tcp_flags::RST != 0);
        t.set_psh(flags & tcp_flags::PSH != 0);
        t.set_ack(flags & tcp_flags::ACK != 0);
        t.set_urg(flags & tcp_flags::URG != 0);
        b
    }

    fn udp(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut b = vec![0; UDP_HEADER_LEN + 4];
        let mut u = UdpPacket::new_unchecked(&mut b);
        u.set_src_port(src_port);
        u.set_dst_port(dst_port);
        u.set_len(12);
        b
    }

    fn icmpv4(repr: Icmpv4Repr) -> Vec<u8> {
        let mut b = vec![0; repr.buffer_len()];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut b[..]), &caps());
        b
    }

    fn icmpv6(repr: Icmpv6Repr) -> Vec<u8> {
        let mut b = vec![0; repr.buffer_len()];
        repr.emit(&A6, &B6, &mut Icmpv6Packet::new_unchecked(&mut b[..]), &caps());
        b
    }

    /// Edits the IPv4 header of a frame without a VLAN tag, then fixes its checksum.
    fn edit_v4(frame: &mut [u8], edit: impl FnOnce(&mut Ipv4Packet<&mut [u8]>)) {
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]);
        edit(&mut ip);
        ip.fill_checksum();
    }

    /// An IPv6 extension header (hop-by-hop, routing, destination options) of 8 bytes.
    fn ext(next: u8) -> Vec<u8> {
        vec![next, 0, 1, 4, 0, 0, 0, 0] // PadN option
    }

    fn fragment_header(next: u8, offset_units: u16, more: bool, id: u32) -> Vec<u8> {
        let mut h = vec![next, 0];
        h.extend_from_slice(&((offset_units << 3) | u16::from(more)).to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn tcp_over_ipv4() {
        let f = v4(TCP, &tcp(40000, 443, tcp_flags::SYN | tcp_flags::ACK));
        let p = parse(&f).unwrap();
        assert_eq!((p.vlan, p.l3_offset, p.len, p.ttl), (None, 14, f.len(), 64));
        assert_eq!((p.src, p.dst, p.protocol), (IpAddr::from(A4), IpAddr::from(B4), TCP));
        assert_eq!((p.src_port, p.dst_port, p.tcp_flags), (40000, 443, tcp_flags::SYN | tcp_flags::ACK));
        assert_eq!((p.fragment, p.icmp, p.icmp_kind(), p.inner, p.sctp_chunk), (Fragment::None, None, None, None, None));
        let flow = p.flow();
        assert_eq!((flow.src_port, flow.dst_port, flow.icmp_type, flow.protocol), (40000, 443, None, TCP));
        assert_eq!(p.tuple(), FlowTuple { src: A4.into(), dst: B4.into(), protocol: TCP, src_port: 40000, dst_port: 443 });
    }

    #[test]
    fn all_tcp_flags() {
        let all = tcp_flags::FIN | tcp_flags::SYN | tcp_flags::RST | tcp_flags::PSH | tcp_flags::ACK | tcp_flags::URG;
        assert_eq!(parse(&v4(TCP, &tcp(1, 2, all))).unwrap().tcp_flags, all);
        assert_eq!(parse(&v4(TCP, &tcp(1, 2, 0))).unwrap().tcp_flags, 0);
    }

    #[test]
    fn vlan_tag() {
        let f = eth(Some(42), 0x0800, &ipv4(UDP, &udp(5353, 53)));
        let p = parse(&f).unwrap();
        assert_eq!((p.vlan, p.l3_offset, p.src_port, p.dst_port), (Some(42), 18, 5353, 53));
        let f = eth(Some(7), 0x86dd, &ipv6(UDP, &udp(1, 2)));
        assert_eq!(parse(&f).unwrap().vlan, Some(7));
    }

    #[test]
    fn not_ip_and_short_frames() {
        assert_eq!(parse(&eth(None, 0x0806, &[0; 28])), Err(Malformed::NotIp)); // ARP
        assert_eq!(parse(&eth(None, 0x88a8, &[0; 28])), Err(Malformed::NotIp)); // 802.1ad
        assert_eq!(parse(&eth(Some(1), 0x8100, &[0; 28])), Err(Malformed::NotIp)); // a second tag
        assert_eq!(parse(&eth(Some(1), 0x0806, &[0; 28])), Err(Malformed::NotIp));
        assert_eq!(parse(&[0; 13]), Err(Malformed::Truncated));
        let tagged = eth(Some(1), 0x0800, &[]);
        assert_eq!(parse(&tagged[..16]), Err(Malformed::Truncated));
        assert_eq!(parse(&eth(None, 0x0800, &[0x45; 19])), Err(Malformed::Truncated));
        assert_eq!(parse(&eth(None, 0x86dd, &[0x60; 39])), Err(Malformed::Truncated));
    }

    #[test]
    fn malformed_names() {
        let all = [Malformed::NotIp, Malformed::Truncated, Malformed::BadHeader, Malformed::BadChecksum];
        assert_eq!(all.map(|m| m.name()), ["not_ip", "truncated", "bad_header", "bad_checksum"]);
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let l4 = tcp(1234, 80, tcp_flags::ACK);
        let mut l3 = vec![0; 24 + l4.len()];
        ipv4_repr(TCP, l4.len() + 4).emit(&mut Ipv4Packet::new_unchecked(&mut l3), &caps());
        l3[20..24].copy_from_slice(&[1, 1, 1, 0]); // NOP options, end of options
        l3[24..].copy_from_slice(&l4);
        let mut ip = Ipv4Packet::new_unchecked(&mut l3);
        ip.set_header_len(24);
        ip.fill_checksum();
        let p = parse(&eth(None, 0x0800, &l3)).unwrap();
        assert_eq!((p.src_port, p.dst_port), (1234, 80));
    }

    #[test]
    fn ipv4_header_errors() {
        let good = v4(UDP, &udp(1, 2));
        let mut f = good.clone();
        edit_v4(&mut f, |ip| ip.set_version(6));
        assert_eq!(parse(&f), Err(Malformed::BadHeader));
        let mut f = good.clone();
        edit_v4(&mut f, |ip| ip.set_header_len(16));
        assert_eq!(parse(&f), Err(Malformed::BadHeader));
        let mut f = good.clone();
        edit_v4(&mut f, |ip| ip.set_total_len(16));
        assert_eq!(parse(&f), Err(Malformed::BadHeader));
        let mut f = good.clone();
        edit_v4(&mut f, |ip| ip.set_total_len(200));
        assert_eq!(parse(&f), Err(Malformed::Truncated));
        assert_eq!(parse(&good[..good.len() - 1]), Err(Malformed::Truncated));
        let mut f = good.clone();
        f[ETHERNET_HEADER_LEN + 10] ^= 1;
        assert_eq!(parse(&f), Err(Malformed::BadChecksum));
        // Ethernet padding after the datagram is fine.
        let mut f = good.clone();
        f.extend_from_slice(&[0; 10]);
        assert_eq!(parse(&f).unwrap().dst_port, 2);
    }

    #[test]
    fn ipv4_fragments() {
        let mut first = v4(UDP, &udp(1, 2));
        edit_v4(&mut first, |ip| {
            ip.set_ident(777);
            ip.set_more_frags(true);
        });
        let p = parse(&first).unwrap();
        assert_eq!((p.fragment, p.src_port, p.dst_port), (Fragment::First { id: 777 }, 1, 2));
        // A later fragment's payload is not a transport header, even if it looks like a bad one.
        for more in [true, false] {
            let mut later = v4(TCP, &[0xff; 8]);
            edit_v4(&mut later, |ip| {
                ip.set_ident(777);
                ip.set_more_frags(more);
                ip.set_frag_offset(1480);
            });
            let p = parse(&later).unwrap();
            assert_eq!((p.fragment, p.protocol, p.src_port, p.dst_port, p.tcp_flags), (Fragment::Later { id: 777 }, TCP, 0, 0, 0));
        }
        // A first fragment too short for its transport header is refused.
        let mut tiny = v4(TCP, &[0; 8]);
        edit_v4(&mut tiny, |ip| ip.set_more_frags(true));
        assert_eq!(parse(&tiny), Err(Malformed::Truncated));
    }

    #[test]
    fn ipv6_extension_headers() {
        let l4 = tcp(1000, 22, tcp_flags::SYN);
        let chain = cat(&[&ext(43), &[60, 0, 0, 0, 0, 0, 0, 0], &ext(TCP), &l4]); // hop-by-hop, routing, destination options
        let p = parse(&v6(0, &chain)).unwrap();
        assert_eq!((p.protocol, p.src_port, p.dst_port, p.tcp_flags, p.ttl), (TCP, 1000, 22, tcp_flags::SYN, 64));
        assert_eq!((p.src, p.dst, p.fragment), (IpAddr::from(A6), IpAddr::from(B6), Fragment::None));
        // A longer header: length 1 is 16 bytes.
        let long = cat(&[&[UDP, 1], &[0; 14], &udp(7, 8)]);
        assert_eq!(parse(&v6(60, &long)).unwrap().dst_port, 8);
        // AH: (length + 2) * 4 bytes.
        let ah = cat(&[&[UDP, 1], &[0; 10], &udp(3, 4)]);
        assert_eq!(parse(&v6(51, &ah)).unwrap().src_port, 3);
        // ESP and "no next header" end the walk; so do unknown headers.
        let p = parse(&v6(0, &cat(&[&ext(50), &[0; 16]]))).unwrap();
        assert_eq!((p.protocol, p.src_port, p.dst_port), (50, 0, 0));
        assert_eq!(parse(&v6(59, &[])).unwrap().protocol, 59);
        assert_eq!(parse(&v6(0, &ext(200))).unwrap().protocol, 200);
        // Truncated chains.
        assert_eq!(parse(&v6(0, &ext(TCP)[..6])), Err(Malformed::Truncated));
        assert_eq!(parse(&v6(60, &[UDP, 1, 0, 0, 0, 0, 0, 0])), Err(Malformed::Truncated));
        assert_eq!(parse(&v6(51, &[UDP, 2, 0, 0, 0, 0, 0, 0])), Err(Malformed::Truncated));
        assert_eq!(parse(&v6(44, &[UDP, 0, 0, 1])), Err(Malformed::Truncated));
        assert_eq!(parse(&v6(0, &ext(TCP))), Err(Malformed::Truncated)); // no TCP header
    }

    #[test]
    fn ipv6_header_errors() {
        let mut f = v6(UDP, &udp(1, 2));
        f[ETHERNET_HEADER_LEN] = 0x40;
        assert_eq!(parse(&f), Err(Malformed::BadHeader));
        let f = v6(UDP, &udp(1, 2));
        assert_eq!(parse(&f[..f.len() - 1]), Err(Malformed::Truncated));
    }

    #[test]
    fn ipv6_fragments() {
        let first = cat(&[&fragment_header(UDP, 0, true, 0xdead_beef), &udp(5, 6)]);
        let p = parse(&v6(44, &first)).unwrap();
        assert_eq!((p.fragment, p.protocol, p.src_port, p.dst_port), (Fragment::First { id: 0xdead_beef }, UDP, 5, 6));
        let later = cat(&[&ext(44), &fragment_header(TCP, 100, false, 9), &[0xff; 3]]);
        let p = parse(&v6(0, &later)).unwrap();
        assert_eq!((p.fragment, p.protocol, p.src_port, p.dst_port), (Fragment::Later { id: 9 }, TCP, 0, 0));
        // An atomic fragment (offset 0, no more fragments) is a whole datagram.
        let atomic = cat(&[&fragment_header(UDP, 0, false, 1), &udp(5, 6)]);
        assert_eq!(parse(&v6(44, &atomic)).unwrap().fragment, Fragment::None);
    }

    #[test]
    fn transport_header_errors() {
        let mut bad_offset = tcp(1, 2, tcp_flags::ACK);
        bad_offset[12] = 4 << 4;
        assert_eq!(parse(&v4(TCP, &bad_offset)), Err(Malformed::BadHeader));
        let mut long_offset = tcp(1, 2, tcp_flags::ACK);
        long_offset[12] = 15 << 4;
        assert_eq!(parse(&v4(TCP, &long_offset)), Err(Malformed::Truncated));
        assert_eq!(parse(&v4(TCP, &[0; 19])), Err(Malformed::Truncated));
        let mut short_len = udp(1, 2);
        short_len[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(parse(&v4(UDP, &short_len)), Err(Malformed::BadHeader));
        let mut long_len = udp(1, 2);
        long_len[4..6].copy_from_slice(&13u16.to_be_bytes());
        assert_eq!(parse(&v6(UDP, &long_len)), Err(Malformed::Truncated));
        assert_eq!(parse(&v4(UDP, &[0; 7])), Err(Malformed::Truncated));
    }

    #[test]
    fn sctp() {
        let mut common = vec![0; 12];
        common[..4].copy_from_slice(&[0x0b, 0xb8, 0x0f, 0xa0]); // 3000 -> 4000
        let p = parse(&v4(PROTO_SCTP, &cat(&[&common, &[1, 0, 0, 20]]))).unwrap();
        assert_eq!((p.protocol, p.src_port, p.dst_port, p.sctp_chunk), (PROTO_SCTP, 3000, 4000, Some(1)));
        let p = parse(&v6(PROTO_SCTP, &common)).unwrap();
        assert_eq!((p.src_port, p.sctp_chunk), (3000, None));
        assert_eq!(parse(&v4(PROTO_SCTP, &common[..11])), Err(Malformed::Truncated));
    }

    #[test]
    fn other_protocols_have_no_ports() {
        let p = parse(&v4(47, &[0xff; 12])).unwrap(); // GRE
        assert_eq!((p.protocol, p.src_port, p.dst_port, p.icmp), (47, 0, 0, None));
        // ICMPv4 inside IPv6 is not ICMPv6.
        assert_eq!(parse(&v6(1, &[0; 2])).unwrap().icmp, None);
    }

    #[test]
    fn icmpv4_echo() {
        let f = v4(1, &icmpv4(Icmpv4Repr::EchoRequest { ident: 0x1234, seq_no: 1, data: b"ping" }));
        let p = parse(&f).unwrap();
        assert_eq!((p.icmp, p.icmp_kind(), p.src_port, p.dst_port), (Some((8, 0)), Some(IcmpKind::EchoRequest), 0x1234, 0x1234));
        let flow = p.flow();
        assert_eq!((flow.src_port, flow.dst_port, flow.icmp_type, flow.icmp_code), (0, 0, Some(8), Some(0)));
        let p = parse(&v4(1, &icmpv4(Icmpv4Repr::EchoReply { ident: 9, seq_no: 1, data: &[] }))).unwrap();
        assert_eq!((p.icmp_kind(), p.src_port), (Some(IcmpKind::EchoReply), 9));
        assert_eq!(parse(&v4(1, &[8, 0, 0, 0, 0, 1, 0])), Err(Malformed::Truncated));
        // Router advertisement: no identifier, no quote.
        let p = parse(&v4(1, &[9, 0, 0, 0, 0, 0, 0, 0])).unwrap();
        assert_eq!((p.icmp_kind(), p.src_port, p.inner), (Some(IcmpKind::Other), 0, None));
    }

    #[test]
    fn icmpv4_errors_quote_the_flow() {
        // What 10.0.0.2 sent to 10.0.0.1 (the quoted packet goes from B to A).
        let quoted = Ipv4Repr { src_addr: B4, dst_addr: A4, next_header: IpProtocol::Udp, payload_len: 100, hop_limit: 1 };
        let quoted_udp = udp(5000, 53);
        let unreachable = Icmpv4Repr::DstUnreachable { reason: Icmpv4DstUnreachable::PortUnreachable, header: quoted, data: &quoted_udp[..8] };
        let p = parse(&v4(1, &icmpv4(unreachable))).unwrap();
        assert_eq!((p.icmp, p.icmp_kind()), (Some((3, 3)), Some(IcmpKind::Error)));
        assert_eq!(p.inner, Some(FlowTuple { src: B4.into(), dst: A4.into(), protocol: UDP, src_port: 5000, dst_port: 53 }));
        assert_eq!(p.flow().icmp_type, Some(3));
        // Time exceeded quoting an echo request: the identifier stands for the ports.
        let echo = icmpv4(Icmpv4Repr::EchoRequest { ident: 77, seq_no: 3, data: &[] });
        let quoted = Ipv4Repr { next_header: IpProtocol::Icmp, ..quoted };
        let exceeded = Icmpv4Repr::TimeExceeded { reason: Icmpv4TimeExceeded::TtlExpired, header: quoted, data: &echo };
        let inner = parse(&v4(1, &icmpv4(exceeded))).unwrap().inner.unwrap();
        assert_eq!((inner.protocol, inner.src_port, inner.dst_port), (1, 77, 77));
        // Too short a quote: no inner flow, but the message itself is fine.
        let short = Icmpv4Repr::DstUnreachable { reason: Icmpv4DstUnreachable::PortUnreachable, header: quoted, data: &[0; 3] };
        let p = parse(&v4(1, &icmpv4(short))).unwrap();
        assert_eq!((p.icmp_kind(), p.inner), (Some(IcmpKind::Error), None));
        // Source quench (4), redirect (5) and parameter problem (12) are errors too.
        for t in [4, 5, 12] {
            let mut m = icmpv4(unreachable);
            m[0] = t;
            assert!(parse(&v4(1, &m)).unwrap().inner.is_some(), "type {t}");
        }
    }

    #[test]
    fn icmpv6_messages() {
        let p = parse(&v6(58, &icmpv6(Icmpv6Repr::EchoRequest { ident: 5, seq_no: 1, data: b"x" }))).unwrap();
        assert_eq!((p.icmp, p.icmp_kind(), p.src_port, p.dst_port), (Some((128, 0)), Some(IcmpKind::EchoRequest), 5, 5));
        let p = parse(&v6(58, &icmpv6(Icmpv6Repr::EchoReply { ident: 5, seq_no: 1, data: &[] }))).unwrap();
        assert_eq!(p.icmp_kind(), Some(IcmpKind::EchoReply));
        // Quoting TCP behind a destination options header.
        let quoted_payload = cat(&[&ext(TCP), &tcp(40000, 80, tcp_flags::SYN)[..8]]);
        let mut quote_header = Ipv6Repr { src_addr: B6, dst_addr: A6, next_header: IpProtocol::Ipv6Opts, payload_len: 100, hop_limit: 1 };
        let unreachable = Icmpv6Repr::DstUnreachable { reason: Icmpv6DstUnreachable::PortUnreachable, header: quote_header, data: &quoted_payload };
        let p = parse(&v6(58, &icmpv6(unreachable))).unwrap();
        assert_eq!((p.icmp, p.icmp_kind()), (Some((1, 4)), Some(IcmpKind::Error)));
        assert_eq!(p.inner, Some(FlowTuple { src: B6.into(), dst: A6.into(), protocol: TCP, src_port: 40000, dst_port: 80 }));
        quote_header.next_header = IpProtocol::Udp;
        let quoted_udp = udp(1, 2);
        let too_big = Icmpv6Repr::PktTooBig { mtu: 1280, header: quote_header, data: &quoted_udp[..8] };
        assert_eq!(parse(&v6(58, &icmpv6(too_big))).unwrap().inner.map(|t| t.dst_port), Some(2));
        // Neighbour solicitation: other, not refused though smoltcp's own check wants 24 bytes.
        let p = parse(&v6(58, &[135, 0, 0, 0, 0, 0, 0, 0])).unwrap();
        assert_eq!((p.icmp, p.icmp_kind(), p.inner), (Some((135, 0)), Some(IcmpKind::Other), None));
        assert_eq!(parse(&v6(58, &[128, 0, 0, 0])), Err(Malformed::Truncated));
    }

    #[test]
    fn forward_ipv4() {
        let mut f = eth(Some(3), 0x0800, &ipv4(TCP, &tcp(1, 2, tcp_flags::ACK)));
        let p = parse(&f).unwrap();
        rewrite_for_forward(&mut f, &p, [1; 6], [2; 6]).unwrap();
        let frame = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!((frame.src_addr(), frame.dst_addr()), (EthernetAddress([1; 6]), EthernetAddress([2; 6])));
        let ip = Ipv4Packet::new_checked(&f[18..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.hop_limit(), 63);
        assert_eq!(parse(&f).unwrap(), Packet { ttl: 63, ..p });
    }

    #[test]
    fn forward_ipv6() {
        let mut f = v6(UDP, &udp(1, 2));
        let p = parse(&f).unwrap();
        rewrite_for_forward(&mut f, &p, [1; 6], [2; 6]).unwrap();
        assert_eq!(Ipv6Packet::new_checked(&f[14..]).unwrap().hop_limit(), 63);
        assert_eq!(&f[..12], &[[2; 6], [1; 6]].concat()[..]);
    }

    #[test]
    fn forward_refuses_expiring_packets() {
        for ttl in [0, 1] {
            let mut f = v4(UDP, &udp(1, 2));
            edit_v4(&mut f, |ip| ip.set_hop_limit(ttl));
            let before = f.clone();
            let p = parse(&f).unwrap();
            assert_eq!(rewrite_for_forward(&mut f, &p, [1; 6], [2; 6]), Err(ForwardError::TtlExceeded));
            assert_eq!(f, before);
            let mut f = v6(UDP, &udp(1, 2));
            f[ETHERNET_HEADER_LEN + 7] = ttl;
            let before = f.clone();
            let p = parse(&f).unwrap();
            assert_eq!(rewrite_for_forward(&mut f, &p, [1; 6], [2; 6]), Err(ForwardError::TtlExceeded));
            assert_eq!(f, before);
        }
        let p = parse(&v6(UDP, &udp(1, 2))).unwrap();
        assert_eq!(rewrite_for_forward(&mut [0; 40], &p, [1; 6], [2; 6]), Err(ForwardError::FrameMismatch));
        assert_eq!([ForwardError::TtlExceeded.name(), ForwardError::FrameMismatch.name()], ["ttl_exceeded", "frame_mismatch"]);
    }

    /// Frames of every kind the parser knows, for mutation.
    fn samples() -> Vec<Vec<u8>> {
        let quoted = Ipv4Repr { src_addr: B4, dst_addr: A4, next_header: IpProtocol::Tcp, payload_len: 20, hop_limit: 1 };
        let mut first = v4(UDP, &udp(1, 2));
        edit_v4(&mut first, |ip| ip.set_more_frags(true));
        vec![
            v4(TCP, &tcp(1, 2, tcp_flags::SYN)),
            eth(Some(5), 0x0800, &ipv4(UDP, &udp(3, 4))),
            v4(PROTO_SCTP, &[0; 16]),
            v4(1, &icmpv4(Icmpv4Repr::EchoRequest { ident: 1, seq_no: 2, data: &[] })),
            v4(1, &icmpv4(Icmpv4Repr::DstUnreachable { reason: Icmpv4DstUnreachable::PortUnreachable, header: quoted, data: &[0; 8] })),
            first,
            v6(0, &cat(&[&ext(44), &fragment_header(TCP, 0, true, 3), &tcp(1, 2, tcp_flags::ACK)])),
            v6(51, &cat(&[&[60, 1], &[0; 10], &ext(UDP), &udp(5, 6)])),
            v6(58, &icmpv6(Icmpv6Repr::EchoReply { ident: 1, seq_no: 2, data: &[] })),
            v6(58, &cat(&[&[1, 4, 0, 0, 0, 0, 0, 0], &ipv6(0, &cat(&[&ext(UDP), &udp(7, 8)]))])),
        ]
    }

    /// Parsing then forwarding must not panic; a forwarded frame parses again into the same
    /// packet one hop older, and a refused one is untouched.
    fn check(frame: &[u8]) {
        let Ok(p) = parse(frame) else { return };
        assert_eq!(p.len, frame.len());
        let mut f = frame.to_vec();
        match rewrite_for_forward(&mut f, &p, [1; 6], [2; 6]) {
            Ok(()) => assert_eq!(parse(&f), Ok(Packet { ttl: p.ttl - 1, ..p })),
            Err(_) => assert_eq!(f, frame),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn random_bytes_never_panic(ethertype in prop::sample::select(vec![0x0800u16, 0x86dd, 0x8100]), bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            check(&bytes);
            check(&eth(None, ethertype, &bytes));
        }

        #[test]
        fn mutated_frames_never_panic(
            which in any::<prop::sample::Index>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in prop::option::of(any::<prop::sample::Index>()),
            fix_checksum in any::<bool>(),
        ) {
            let samples = samples();
            let mut f = which.get(&samples).clone();
            for (at, value) in edits {
                let i = at.index(f.len());
                f[i] = value;
            }
            // Most edits of an IPv4 header would only meet the checksum check: fix it, sometimes.
            let l3 = &mut f[ETHERNET_HEADER_LEN..];
            let header_len = usize::from(l3[0] & 0x0f) * 4;
            if fix_checksum && (IPV4_HEADER_LEN..=l3.len()).contains(&header_len) {
                Ipv4Packet::new_unchecked(l3).fill_checksum();
            }
            if let Some(cut) = cut {
                f.truncate(cut.index(f.len() + 1));
            }
            check(&f);
        }

        #[test]
        fn incremental_checksum_matches_full(header in prop::array::uniform20(any::<u8>()), ttl in 2u8..) {
            // Random identification, flags, addresses; GRE so that no transport header is needed.
            let mut h = header;
            h[..4].copy_from_slice(&[0x45, 0, 0, 20]);
            h[8..10].copy_from_slice(&[ttl, 47]);
            Ipv4Packet::new_unchecked(&mut h[..]).fill_checksum();
            let mut f = eth(None, 0x0800, &h);
            let p = parse(&f).unwrap();
            rewrite_for_forward(&mut f, &p, [1; 6], [2; 6]).unwrap();
            prop_assert!(Ipv4Packet::new_checked(&f[ETHERNET_HEADER_LEN..]).unwrap().verify_checksum());
        }
    }
}
