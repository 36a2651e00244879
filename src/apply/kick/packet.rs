//! The kick's packets as bytes, IPv4: the out-of-window probe segment, the ICMP host
//! unreachable that quotes an endpoint's own segment, and the reading of the endpoints'
//! answers off the capture socket. Whole IP headers, because the raw socket sends with
//! `IP_HDRINCL` (the probes carry another host's source address); the kernel rewrites the
//! header checksum, fills a zero source address and a zero id, but they are computed here
//! anyway so the bytes are complete and testable.

use crate::apply::checksum::{internet as checksum, tcp_v4};
use std::net::{Ipv4Addr, SocketAddrV4};

const IP_HEADER: usize = 20;
const TCP_HEADER: usize = 20;
/// What an ICMP error must quote of the transport header: the kernel reads ports and
/// sequence number, the first 8 bytes (RFC 792).
const QUOTED_TCP: usize = 8;
pub const PROBE_LEN: usize = IP_HEADER + TCP_HEADER;
pub const ICMP_LEN: usize = IP_HEADER + 8 + IP_HEADER + QUOTED_TCP;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const ACK: u8 = 0x10;
const ICMP_DEST_UNREACH: u8 = 3;
/// Host unreachable: one of the two codes `tcp_v4_err` takes as RFC 6069's signal to undo a
/// retransmission backoff step, and a soft error (an established connection goes on).
const ICMP_HOST_UNREACH: u8 = 1;
/// The probe's window: the largest unscaled one. Should a probe fall inside the receive
/// window after all (see [`probe`]), a window update to this is harmless; 0 would stall the
/// endpoint on zero-window probes.
const PROBE_WINDOW: u16 = 0xffff;

/// An IPv4 header without options for a datagram of `total` bytes.
fn ip_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, total: usize) -> [u8; IP_HEADER] {
    let mut h = [0u8; IP_HEADER];
    h[0] = 0x45; // version 4, 5 words
    let total = u16::try_from(total).unwrap_or(u16::MAX);
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6] = 0x40; // don't fragment
    h[8] = 64; // TTL
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&[&h]);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

/// A bare ACK from `from` to `to` with sequence number `seq` and acknowledgement `ack`.
///
/// Sent with a sequence number chosen to be outside the receiver's window, it is what makes
/// a Linux endpoint answer with a duplicate ACK carrying its `snd_nxt` and `rcv_nxt`
/// (`tcp_validate_incoming`: "if an incoming segment is not acceptable, an acknowledgment
/// should be sent in reply"). It must carry ACK — a segment without is dropped before the
/// sequence check — and no timestamp option, so PAWS cannot drop it first. Two probes 2^31
/// apart make sure one is outside any window; the one that may fall inside is a bare ACK
/// whose acknowledgement the receiver almost surely refuses (older than a window, or of
/// data never sent), and carries no data.
pub fn probe(from: SocketAddrV4, to: SocketAddrV4, seq: u32, ack: u32) -> [u8; PROBE_LEN] {
    let mut p = [0u8; PROBE_LEN];
    p[..IP_HEADER].copy_from_slice(&ip_header(*from.ip(), *to.ip(), PROTO_TCP, PROBE_LEN));
    let t = &mut p[IP_HEADER..];
    t[0..2].copy_from_slice(&from.port().to_be_bytes());
    t[2..4].copy_from_slice(&to.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = (TCP_HEADER as u8 / 4) << 4;
    t[13] = ACK;
    t[14..16].copy_from_slice(&PROBE_WINDOW.to_be_bytes());
    let sum = tcp_v4(*from.ip(), *to.ip(), t);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    p
}

/// ICMP host unreachable to `quoted_from`'s host, quoting the start of a segment it sent to
/// `quoted_to` with sequence number `seq` — as if a router on the way had dropped it.
///
/// Linux (`tcp_v4_err`) finds the socket by the quoted addresses and ports; when `seq` is
/// its `snd_una` and it is backing off retransmissions, `tcp_ld_RTO_revert` undoes one
/// backoff step and retransmits at once if the shorter timeout has already passed since the
/// last retransmission (RFC 6069). Any other `seq` inside the send window only records a
/// soft error; outside it, the message is dropped. `src` unspecified: the kernel writes the
/// address of the route to `quoted_from`.
pub fn host_unreachable(
    src: Ipv4Addr,
    quoted_from: SocketAddrV4,
    quoted_to: SocketAddrV4,
    seq: u32,
) -> [u8; ICMP_LEN] {
    let mut p = [0u8; ICMP_LEN];
    let dst = *quoted_from.ip();
    p[..IP_HEADER].copy_from_slice(&ip_header(src, dst, PROTO_ICMP, ICMP_LEN));
    let icmp = &mut p[IP_HEADER..];
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = ICMP_HOST_UNREACH;
    // The quoted datagram: the header of a bare segment, then its first 8 bytes.
    let inner = ip_header(*quoted_from.ip(), *quoted_to.ip(), PROTO_TCP, PROBE_LEN);
    icmp[8..8 + IP_HEADER].copy_from_slice(&inner);
    let t = &mut icmp[8 + IP_HEADER..];
    t[0..2].copy_from_slice(&quoted_from.port().to_be_bytes());
    t[2..4].copy_from_slice(&quoted_to.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    let sum = checksum(&[icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// An endpoint's segment as the capture saw it: a pure ACK (no data, no SYN/FIN/RST).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    /// The sender's `snd_nxt` (a duplicate ACK is sent with it).
    pub seq: u32,
    /// The sender's `rcv_nxt`: what its peer has had acknowledged.
    pub ack: u32,
}

/// Reads a pure ACK from an IPv4 datagram (the capture's BPF filter keeps only those; this
/// checks again, as the filter's absence must not turn other bytes into answers).
pub fn parse_ack(d: &[u8]) -> Option<Segment> {
    let ihl = usize::from(*d.first()? & 0x0f) * 4;
    if d.first()? >> 4 != 4 || ihl < IP_HEADER || *d.get(9)? != PROTO_TCP {
        return None;
    }
    // A fragment's transport header is not where it seems.
    if u16::from_be_bytes([*d.get(6)?, *d.get(7)?]) & 0x1fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*d.get(2)?, *d.get(3)?]));
    let t = d.get(ihl..)?;
    let doff = usize::from(*t.get(12)? >> 4) * 4;
    if doff < TCP_HEADER || total != ihl + doff || t.get(13)? & 0x17 != ACK {
        return None;
    }
    let word =
        |i: usize| -> Option<u32> { Some(u32::from_be_bytes(t.get(i..i + 4)?.try_into().ok()?)) };
    let port = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*t.get(i)?, *t.get(i + 1)?])) };
    let addr = |i: usize| -> Option<Ipv4Addr> {
        let o: [u8; 4] = d.get(i..i + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(o))
    };
    Some(Segment {
        from: SocketAddrV4::new(addr(12)?, port(0)?),
        to: SocketAddrV4::new(addr(16)?, port(2)?),
        seq: word(4)?,
        ack: word(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().expect("socket address")
    }

    #[test]
    fn a_probe_is_a_bare_ack_with_correct_checksums() {
        let p = probe(
            sa("10.0.0.1:7000"),
            sa("10.0.0.2:40000"),
            0x0102_0304,
            0xa0b0_c0d0,
        );
        #[rustfmt::skip]
        // From an independent encoder (python's struct, the prototype of this module).
        let want: [u8; PROBE_LEN] = [
            // IPv4: 20 bytes, total 40, DF, TTL 64, TCP, checksum, 10.0.0.1 -> 10.0.0.2
            0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x26, 0xce,
            0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02,
            // TCP: 7000 -> 40000, seq, ack, 5 words, ACK only, window 65535, checksum, urg 0
            0x1b, 0x58, 0x9c, 0x40, 0x01, 0x02, 0x03, 0x04, 0xa0, 0xb0, 0xc0, 0xd0,
            0x50, 0x10, 0xff, 0xff, 0x7e, 0xb2, 0x00, 0x00,
        ];
        assert_eq!(p, want);
        // A correct header and segment sum to zero with their checksums in.
        assert_eq!(checksum(&[&p[..IP_HEADER]]), 0);
        assert_eq!(
            tcp_v4(
                *sa("10.0.0.1:0").ip(),
                *sa("10.0.0.2:0").ip(),
                &p[IP_HEADER..]
            ),
            0
        );
    }

    #[test]
    fn host_unreachable_quotes_the_endpoints_own_segment() {
        let p = host_unreachable(
            Ipv4Addr::UNSPECIFIED,
            sa("10.0.0.2:40000"),
            sa("192.0.2.10:7000"),
            0xdead_beef,
        );
        #[rustfmt::skip]
        let want: [u8; ICMP_LEN] = [
            // IPv4 to the endpoint (source left to the kernel), ICMP, total 56
            0x45, 0x00, 0x00, 0x38, 0x00, 0x00, 0x40, 0x00, 0x40, 0x01, 0x30, 0xc4,
            0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02,
            // ICMP type 3 code 1 (host unreachable), checksum, unused
            0x03, 0x01, 0xa7, 0xc8, 0x00, 0x00, 0x00, 0x00,
            // the quoted header: 10.0.0.2 -> 192.0.2.10, TCP
            0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x6e, 0xc4,
            0x0a, 0x00, 0x00, 0x02, 0xc0, 0x00, 0x02, 0x0a,
            // its first 8 bytes: 40000 -> 7000, seq
            0x9c, 0x40, 0x1b, 0x58, 0xde, 0xad, 0xbe, 0xef,
        ];
        assert_eq!(p, want);
        assert_eq!(checksum(&[&p[IP_HEADER..]]), 0, "ICMP checksum");
        assert_eq!(
            checksum(&[&p[IP_HEADER + 8..2 * IP_HEADER + 8]]),
            0,
            "quoted header"
        );
    }

    #[test]
    fn an_answer_is_read_back_and_anything_else_is_not() {
        let p = probe(sa("10.0.0.1:7000"), sa("10.0.0.2:40000"), 5, 9);
        assert_eq!(
            parse_ack(&p),
            Some(Segment {
                from: sa("10.0.0.1:7000"),
                to: sa("10.0.0.2:40000"),
                seq: 5,
                ack: 9
            })
        );
        let mut with_data = p.to_vec();
        with_data.push(b'x');
        with_data[3] += 1;
        assert_eq!(parse_ack(&with_data), None, "a segment with data");
        let mut syn = p;
        syn[IP_HEADER + 13] |= 0x02;
        assert_eq!(parse_ack(&syn), None, "SYN");
        let mut fragment = p;
        fragment[7] = 1;
        assert_eq!(parse_ack(&fragment), None, "a later fragment");
        let icmp = host_unreachable(Ipv4Addr::UNSPECIFIED, sa("10.0.0.2:1"), sa("10.0.0.3:2"), 0);
        assert_eq!(parse_ack(&icmp), None, "not TCP");
        // The fields read end with the flags, at byte 14 of the TCP header.
        for n in 0..IP_HEADER + 14 {
            assert_eq!(parse_ack(&p[..n]), None, "truncated to {n} bytes");
        }
    }
}
