//! The segments of a half-open TCP check, as bytes: the SYN the prober sends from its raw
//! socket and the two answers it reads back — SYN-ACK (something listens) and RST (refused).
//! IPv4 only: the kernel writes the IP header of what a raw `IPPROTO_TCP` socket sends, but
//! the TCP checksum covers the addresses (RFC 793's pseudo-header), so it is computed here.

use std::net::{Ipv4Addr, SocketAddrV4};

/// A TCP header without options.
pub const TCP_HEADER: usize = 20;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const PROTO_TCP: u8 = 6;

/// What the server answered a probe's SYN with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// SYN-ACK: a socket listens (the kernel resets the half-open connection for us).
    Listening,
    /// RST: nothing listens on that port.
    Refused,
}

/// One answer read off the raw socket: who sent it, to which of our ports, acknowledging
/// which sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub from: SocketAddrV4,
    pub to_port: u16,
    /// The acknowledgement number: the probe's sequence number + 1.
    pub ack: u32,
    pub answer: Answer,
}

/// The SYN from `src:src_port` to `dst`, with sequence number `seq`.
pub fn syn(src: Ipv4Addr, src_port: u16, dst: SocketAddrV4, seq: u32) -> [u8; TCP_HEADER] {
    let mut s = [0u8; TCP_HEADER];
    s[0..2].copy_from_slice(&src_port.to_be_bytes());
    s[2..4].copy_from_slice(&dst.port().to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    // Acknowledgement number 0; data offset 5 words, no options.
    s[12] = (TCP_HEADER as u8 / 4) << 4;
    s[13] = SYN;
    s[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
    let sum = checksum(src, *dst.ip(), &s);
    s[16..18].copy_from_slice(&sum.to_be_bytes());
    s
}

/// The TCP checksum of `segment` (its checksum field zero, or the sum it carries when
/// verifying: a correct segment then sums to 0) between `src` and `dst`.
pub use crate::apply::checksum::tcp_v4 as checksum;

/// Reads an IPv4 packet as a raw TCP socket receives it (IP header first) and returns the
/// answer it is, if it is one: SYN-ACK, or RST with ACK (the refusal of a SYN). Anything
/// else — other flags, fragments, short or non-TCP packets — is `None`.
pub fn parse_ipv4(packet: &[u8]) -> Option<Reply> {
    let version_ihl = *packet.first()?;
    let header = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header < 20 || *packet.get(9)? != PROTO_TCP {
        return None;
    }
    // A fragment's TCP header may be elsewhere; answers to a SYN are never fragmented.
    let fragment = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]);
    if fragment & 0x3fff != 0 {
        return None;
    }
    let tcp = packet.get(header..header + TCP_HEADER)?;
    let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    let src = Ipv4Addr::from(src);
    let flags = tcp[13];
    let answer = if flags & (SYN | ACK | RST) == SYN | ACK {
        Answer::Listening
    } else if flags & (SYN | ACK | RST) == RST | ACK {
        Answer::Refused
    } else {
        return None;
    };
    Some(Reply {
        from: SocketAddrV4::new(src, u16::from_be_bytes([tcp[0], tcp[1]])),
        to_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 76, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

    /// The same SYN as Python's `struct.pack("!HHIIBBHHH", 40000, 9000, 0x12345678, 0, 5 << 4,
    /// 2, 64240, 0, 0)` with the checksum summed over `inet_aton` addresses in Python: an
    /// encoder independent of this module's.
    const PYTHON_SYN: [u8; 20] = [
        0x9c, 0x40, 0x23, 0x28, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0x78,
        0x42, 0, 0,
    ];

    #[test]
    fn the_syn_matches_an_independent_encoding_and_verifies() {
        let s = syn(SRC, 40000, SocketAddrV4::new(DST, 9000), 0x1234_5678);
        assert_eq!(s, PYTHON_SYN);
        // The receiver's check: the whole segment, checksum included, sums to zero.
        assert_eq!(checksum(SRC, DST, &s), 0);
        // Any other source address fails it, which is why the prober asks the routing
        // table which one the kernel will write.
        assert_ne!(checksum(Ipv4Addr::new(10, 76, 0, 2), DST, &s), 0);
    }

    /// An IPv4 packet from DST:9000 to SRC:40000 with `flags` and acknowledgement `ack`.
    fn packet(flags: u8, ack: u32) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0];
        p.extend_from_slice(&DST.octets());
        p.extend_from_slice(&SRC.octets());
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&9000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[8..12].copy_from_slice(&ack.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = flags;
        p.extend_from_slice(&tcp);
        p
    }

    #[test]
    fn answers_are_read_and_everything_else_is_not() {
        let reply = |answer| Reply {
            from: SocketAddrV4::new(DST, 9000),
            to_port: 40000,
            ack: 7,
            answer,
        };
        assert_eq!(
            parse_ipv4(&packet(SYN | ACK, 7)),
            Some(reply(Answer::Listening))
        );
        assert_eq!(
            parse_ipv4(&packet(RST | ACK, 7)),
            Some(reply(Answer::Refused))
        );
        for flags in [SYN, ACK, RST, ACK | 0x08, SYN | ACK | RST, 0x11] {
            assert_eq!(parse_ipv4(&packet(flags, 7)), None, "flags {flags:#x}");
        }
        let full = packet(SYN | ACK, 7);
        for len in 0..full.len() {
            assert_eq!(parse_ipv4(&full[..len]), None, "{len} bytes");
        }
        let mut udp = full.clone();
        udp[9] = 17;
        assert_eq!(parse_ipv4(&udp), None);
        let mut fragment = full.clone();
        fragment[7] = 1;
        assert_eq!(parse_ipv4(&fragment), None);
        let mut options = full;
        options[0] = 0x46; // a 24-byte IP header: the TCP header moves
        options.splice(20..20, [1, 1, 1, 0]);
        assert_eq!(parse_ipv4(&options), Some(reply(Answer::Listening)));
    }
}
