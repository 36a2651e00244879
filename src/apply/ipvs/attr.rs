//! A small typed netlink attribute (NLA) for building and reading IPVS messages: the IPVS
//! attribute sets are flat lists of integers, addresses and strings, plus one level of
//! nesting, so one generic value type covers all of them without a type per attribute.

use netlink_packet_core::{
    emit_u16, emit_u32, DecodeError, Emitable, Nla, NlaBuffer, NlasIterator,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    U8(u16, u8),
    /// Host byte order.
    U16(u16, u16),
    /// Network byte order (ports).
    Be16(u16, u16),
    U32(u16, u32),
    Be32(u16, u32),
    Bytes(u16, Vec<u8>),
    /// NUL-terminated on the wire.
    Str(u16, String),
    /// Sent without `NLA_F_NESTED`, like ipvsadm (libnl) and pyroute2: the IPVS family
    /// validates leniently and these are the bytes the kernel has always seen.
    Nested(u16, Vec<Attr>),
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::U8(..) => 1,
            Attr::U16(..) | Attr::Be16(..) => 2,
            Attr::U32(..) | Attr::Be32(..) => 4,
            Attr::Bytes(_, b) => b.len(),
            Attr::Str(_, s) => s.len() + 1,
            Attr::Nested(_, v) => v.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Nested(k, _)
            | Attr::U8(k, _)
            | Attr::U16(k, _)
            | Attr::Be16(k, _)
            | Attr::U32(k, _)
            | Attr::Be32(k, _)
            | Attr::Bytes(k, _)
            | Attr::Str(k, _) => *k,
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        // The buffer is exactly value_len() long (netlink-packet-core sizes it), so the
        // emit_* helpers cannot fail here.
        match self {
            Attr::U8(_, v) => buf[0] = *v,
            Attr::U16(_, v) => {
                let _ = emit_u16(buf, *v);
            }
            Attr::Be16(_, v) => buf[..2].copy_from_slice(&v.to_be_bytes()),
            Attr::U32(_, v) => {
                let _ = emit_u32(buf, *v);
            }
            Attr::Be32(_, v) => buf[..4].copy_from_slice(&v.to_be_bytes()),
            Attr::Bytes(_, b) => buf[..b.len()].copy_from_slice(b),
            Attr::Str(_, s) => {
                buf[..s.len()].copy_from_slice(s.as_bytes());
                buf[s.len()] = 0;
            }
            Attr::Nested(_, v) => v.as_slice().emit(buf),
        }
    }
}

/// The attributes of one level, as (kind without flags, raw value) pairs.
pub fn parse_level(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, DecodeError> {
    NlasIterator::new(buf)
        .map(|nla| {
            nla.map(|nla: NlaBuffer<&[u8]>| {
                let kind = nla.kind() & netlink_packet_core::NLA_TYPE_MASK;
                let len = nla.value_length();
                let value: &[u8] = nla.into_inner();
                (kind, &value[netlink_packet_core::NLA_HEADER_SIZE..][..len])
            })
        })
        .collect()
}

pub fn get<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

pub fn u8_of(v: &[u8]) -> Result<u8, DecodeError> {
    v.first()
        .copied()
        .ok_or_else(|| DecodeError::from("empty u8 attribute"))
}

pub fn u16_of(v: &[u8]) -> Result<u16, DecodeError> {
    Ok(u16::from_ne_bytes(fixed(v)?))
}

pub fn be16_of(v: &[u8]) -> Result<u16, DecodeError> {
    Ok(u16::from_be_bytes(fixed(v)?))
}

pub fn u32_of(v: &[u8]) -> Result<u32, DecodeError> {
    Ok(u32::from_ne_bytes(fixed(v)?))
}

pub fn be32_of(v: &[u8]) -> Result<u32, DecodeError> {
    Ok(u32::from_be_bytes(fixed(v)?))
}

pub fn str_of(v: &[u8]) -> Result<String, DecodeError> {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8(v[..end].to_vec()).map_err(|e| DecodeError::from(e.to_string()))
}

fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N], DecodeError> {
    v.get(..N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| DecodeError::from(format!("attribute of {} bytes, expected {N}", v.len())))
}

/// Emits a list of attributes into a fresh buffer.
pub fn emit_all(attrs: &[Attr]) -> Vec<u8> {
    let mut buf = vec![0; attrs.buffer_len()];
    attrs.emit(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_round_trip_with_padding() {
        let attrs = vec![
            Attr::Nested(1, vec![Attr::Str(6, "wlc".into()), Attr::Be16(4, 80)]),
            Attr::U8(13, 0),
        ];
        let buf = emit_all(&attrs);
        // 4 (outer) + 8 ("wlc\0") + 8 (port, padded) + 8 (u8, padded)
        assert_eq!(buf.len(), 28);
        let top = parse_level(&buf).expect("parse");
        assert_eq!(top.len(), 2);
        let inner = parse_level(get(&top, 1).expect("nested")).expect("parse inner");
        assert_eq!(str_of(get(&inner, 6).expect("sched")).expect("str"), "wlc");
        assert_eq!(be16_of(get(&inner, 4).expect("port")).expect("be16"), 80);
        assert_eq!(u8_of(get(&top, 13).expect("u8")).expect("u8"), 0);
    }

    #[test]
    fn short_values_are_errors_not_panics() {
        assert!(u32_of(&[1, 2]).is_err());
        assert!(be16_of(&[]).is_err());
        assert!(parse_level(&[8, 0, 1]).is_err());
    }
}
