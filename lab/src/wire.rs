//! The packets the probes and listeners build and parse: ICMP echo, SCTP INIT and INIT-ACK.

/// CRC32c (Castagnoli), SCTP's checksum (RFC 9260 appendix A).
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// SCTP chunk types.
pub(crate) const INIT: u8 = 1;
pub(crate) const INIT_ACK: u8 = 2;
/// The INIT-ACK parameter carrying the state cookie.
const STATE_COOKIE: u16 = 7;

/// The Internet checksum (RFC 1071) of `data`.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP (or ICMPv6) echo request; the kernel computes ICMPv6 checksums, which cover a pseudo-header.
pub(crate) fn echo_request(ipv6: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![if ipv6 { 128 } else { 8 }, 0, 0, 0];
    p.extend(id.to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.extend(payload);
    if !ipv6 {
        let sum = inet_checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// Whether the ICMP message `icmp` (without IP header) is the echo reply to `request`.
pub(crate) fn is_echo_reply(ipv6: bool, icmp: &[u8], request: &[u8]) -> bool {
    icmp.len() == request.len() && icmp[..2] == [if ipv6 { 129 } else { 0 }, 0] && icmp[4..] == request[4..]
}

/// What the probes look at in an SCTP packet whose first chunk is an INIT or INIT-ACK.
#[derive(Debug, PartialEq)]
pub(crate) struct Sctp {
    pub src_port: u16,
    pub dst_port: u16,
    /// The common header's verification tag.
    pub verification_tag: u32,
    /// INIT or INIT-ACK.
    pub chunk: u8,
    /// The tag the sender asks its peer to use.
    pub initiate_tag: u32,
}

/// Parses an SCTP packet (without IP header) with a correct CRC32c and an INIT or INIT-ACK first chunk.
pub(crate) fn parse_sctp(p: &[u8]) -> Option<Sctp> {
    let be16 = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    if p.len() < 32 || !matches!(p[12], INIT | INIT_ACK) || usize::from(be16(14)) < 20 {
        return None;
    }
    let mut digest = CRC32C.digest();
    digest.update(&p[..8]);
    digest.update(&[0; 4]);
    digest.update(&p[12..]);
    (digest.finalize().to_le_bytes() == p[8..12]).then(|| Sctp {
        src_port: be16(0),
        dst_port: be16(2),
        verification_tag: be32(4),
        chunk: p[12],
        initiate_tag: be32(16),
    })
}

/// An SCTP packet of one INIT chunk, announcing `tag` and the initial TSN `tsn`.
pub(crate) fn sctp_init(src_port: u16, dst_port: u16, tag: u32, tsn: u32) -> Vec<u8> {
    sctp_packet(src_port, dst_port, 0, INIT, tag, tsn, None)
}

/// The INIT-ACK answering `init`: addressed with its initiate tag, announcing `tag`, `tsn` and a state cookie
/// (whose length is a multiple of 4).
pub(crate) fn sctp_init_ack(init: &Sctp, tag: u32, tsn: u32, cookie: &[u8]) -> Vec<u8> {
    sctp_packet(init.dst_port, init.src_port, init.initiate_tag, INIT_ACK, tag, tsn, Some(cookie))
}

/// An SCTP packet of one INIT or INIT-ACK chunk (one stream each way, a 64 KiB window).
fn sctp_packet(src_port: u16, dst_port: u16, vtag: u32, chunk: u8, tag: u32, tsn: u32, cookie: Option<&[u8]>) -> Vec<u8> {
    let chunk_len = 20 + cookie.map_or(0, |c| 4 + c.len());
    let mut p = Vec::with_capacity(12 + chunk_len);
    p.extend(src_port.to_be_bytes());
    p.extend(dst_port.to_be_bytes());
    p.extend(vtag.to_be_bytes());
    p.extend([0; 4]);
    p.extend([chunk, 0]);
    p.extend((chunk_len as u16).to_be_bytes());
    p.extend(tag.to_be_bytes());
    p.extend(65_536u32.to_be_bytes());
    p.extend(1u16.to_be_bytes());
    p.extend(1u16.to_be_bytes());
    p.extend(tsn.to_be_bytes());
    if let Some(cookie) = cookie {
        p.extend(STATE_COOKIE.to_be_bytes());
        p.extend(((4 + cookie.len()) as u16).to_be_bytes());
        p.extend(cookie);
    }
    // Linux stores the CRC32c little-endian (`cpu_to_le32` in sctp_compute_cksum).
    let crc = CRC32C.checksum(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(CRC32C.checksum(&[0; 32]), 0x8a91_36aa);
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn init_ack_answers_init() {
        let init = parse_sctp(&sctp_init(40_000, 9, 0xdead_beef, 7)).unwrap();
        assert_eq!(init, Sctp { src_port: 40_000, dst_port: 9, verification_tag: 0, chunk: INIT, initiate_tag: 0xdead_beef });
        let ack = sctp_init_ack(&init, 0x1234_5678, 1, &[7; 16]);
        assert_eq!(ack.len(), 12 + 20 + 4 + 16);
        let parsed = parse_sctp(&ack).unwrap();
        assert_eq!(parsed, Sctp { src_port: 9, dst_port: 40_000, verification_tag: 0xdead_beef, chunk: INIT_ACK, initiate_tag: 0x1234_5678 });
        let mut corrupt = ack;
        corrupt[20] ^= 1;
        assert_eq!(parse_sctp(&corrupt), None);
    }

    #[test]
    fn echo_checksum_verifies() {
        let request = echo_request(false, 0x1234, 1, b"abcde");
        assert_eq!(inet_checksum(&request), 0);
        let mut reply = request.clone();
        reply[0] = 0;
        assert!(is_echo_reply(false, &reply, &request));
        assert!(!is_echo_reply(false, &request, &request));
    }
}
