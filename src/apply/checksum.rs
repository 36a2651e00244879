//! The Internet checksum (RFC 1071), for the packets portcullis writes itself: the health
//! checker's half-open SYNs and the failover kick's probes and ICMP messages. Pure.

use std::net::Ipv4Addr;

const PROTO_TCP: u8 = 6;

/// The checksum of the concatenated `parts`: each part but the last of even length (an odd
/// part is padded with a zero byte, as the last one must be). Over data that carries its
/// own correct checksum, the result is 0 — how a receiver verifies.
pub fn internet(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP checksum of `segment` between `src` and `dst` (the IPv4 pseudo-header first).
pub fn tcp_v4(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    // A segment is at most an IP packet's 65,535 bytes: the length fits the 16-bit field.
    let len = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = PROTO_TCP;
    pseudo[10..12].copy_from_slice(&len.to_be_bytes());
    internet(&[&pseudo, segment])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_1071_example_sums_as_the_rfc_says() {
        // RFC 1071 §3: the words 0x0001 0xf203 0xf4f5 0xf6f7 sum to 0xddf2 (ones'
        // complement of it is the checksum).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet(&[&data]), !0xddf2);
        // Split anywhere on an even boundary, the same.
        assert_eq!(internet(&[&data[..2], &data[2..]]), !0xddf2);
    }
}
