//! One type per export column value, each with the only parser and printer of its text form.
//!
//! Values that reach rule text (names, ports, addresses) can only be built through these parsers,
//! so a string like `x; flush ruleset` can never get past the contract into an nft or ipvsadm line.

use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Parses one field; the error is the "expected …" half of the message.
pub(crate) type FieldResult<T> = Result<T, String>;

// Names are shared (`Arc<str>`): one export mentions the same service type and instance in
// many rows, and the model keeps them again; sharing makes those copies free.

/// A service type such as `pgw` or `tg`: `[a-z0-9][a-z0-9_-]{0,31}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceType(Arc<str>);

/// An instance id such as `pgw.app1.1`: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(Arc<str>);

fn check_name(
    s: &str,
    max: usize,
    first_ok: impl Fn(u8) -> bool,
    rest_ok: impl Fn(u8) -> bool,
) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.len() <= max && first_ok(b[0]) && b[1..].iter().all(|&c| rest_ok(c))
}

impl ServiceType {
    pub fn parse(s: &str) -> FieldResult<Self> {
        let lower_digit = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if check_name(s, 32, lower_digit, |c| {
            lower_digit(c) || c == b'_' || c == b'-'
        }) {
            Ok(Self(Arc::from(s)))
        } else {
            Err("a service type: 1-32 of a-z 0-9 _ - starting with a letter or digit".into())
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl InstanceId {
    pub fn parse(s: &str) -> FieldResult<Self> {
        if check_name(
            s,
            64,
            |c| c.is_ascii_alphanumeric(),
            |c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'),
        ) {
            Ok(Self(Arc::from(s)))
        } else {
            Err("an instance id: 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit".into())
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_conversions {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                Self::parse(&s)
                    .map_err(|e| format!("expected {e}, found {}", crate::error::Quoted(&s)))
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0.to_string()
            }
        }
        /// Lets a set of names be searched by `&str` (interning in the parser).
        impl Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype_conversions!(ServiceType);
string_newtype_conversions!(InstanceId);

/// Transport protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn parse(s: &str) -> FieldResult<Self> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err("tcp or udp".into()),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive port range; a single port has `first == last`. Ports are 1..=65535.
/// Serialized as its CSV text (`"443"`, `"20000-29999"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }
    pub fn is_single(self) -> bool {
        self.first == self.last
    }
    pub fn overlaps(self, other: PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
    pub fn parse(s: &str) -> FieldResult<Self> {
        const EXPECTED: &str = "a port 1-65535 or an inclusive range FIRST-LAST";
        let range = match s.split_once('-') {
            None => PortRange::single(parse_port(s).ok_or(EXPECTED)?),
            Some((a, b)) => PortRange {
                first: parse_port(a).ok_or(EXPECTED)?,
                last: parse_port(b).ok_or(EXPECTED)?,
            },
        };
        if range.first > range.last {
            return Err("a range whose first port is not above its last".into());
        }
        Ok(range)
    }
}

impl From<PortRange> for String {
    fn from(p: PortRange) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        PortRange::parse(&s)
            .map_err(|e| format!("expected {e}, found {}", crate::error::Quoted(&s)))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Digits only (no sign, no spaces), no leading zeros beyond "0" itself, within `max`.
fn parse_decimal(s: &str, max: u64) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty()
        || b.len() > 10
        || !b.iter().all(u8::is_ascii_digit)
        || (b.len() > 1 && b[0] == b'0')
    {
        return None;
    }
    s.parse::<u64>().ok().filter(|&v| v <= max)
}

fn parse_port(s: &str) -> Option<u16> {
    parse_decimal(s, 65535)
        .filter(|&p| p >= 1)
        .map(|p| p as u16)
}

pub(crate) fn parse_rport(s: &str) -> FieldResult<Option<u16>> {
    if s.is_empty() {
        return Ok(None);
    }
    parse_port(s)
        .map(Some)
        .ok_or_else(|| "empty (same as the external port) or a port 1-65535".into())
}

pub(crate) fn parse_fwmark(s: &str) -> FieldResult<Option<u32>> {
    if s.is_empty() {
        return Ok(None);
    }
    parse_decimal(s, u32::MAX as u64)
        .filter(|&v| v >= 1)
        .map(|v| Some(v as u32))
        .ok_or_else(|| "empty or a decimal fwmark 1-4294967295".into())
}

pub(crate) fn parse_weight(s: &str) -> FieldResult<u16> {
    parse_decimal(s, 65535)
        .map(|v| v as u16)
        .ok_or_else(|| "a weight 0-65535 (0 drains the real server)".into())
}

/// Longest persistence IPVS accepts: 31 days.
pub const MAX_PERSISTENCE: u32 = 2_678_400;

pub(crate) fn parse_persistence(s: &str) -> FieldResult<Option<u32>> {
    if s.is_empty() {
        return Ok(None);
    }
    parse_decimal(s, MAX_PERSISTENCE as u64)
        .filter(|&v| v >= 1)
        .map(|v| Some(v as u32))
        .ok_or_else(|| format!("empty or a persistence timeout in seconds 1-{MAX_PERSISTENCE}"))
}

/// Addresses in canonical text only: `std`'s parser already rejects zone ids, brackets and
/// ports, so what it accepts is exactly what may appear in a rule.
pub(crate) fn parse_ip(s: &str, what: &str) -> FieldResult<std::net::IpAddr> {
    s.parse()
        .map_err(|_| format!("{what} as an IPv4 or IPv6 address"))
}

/// IPVS scheduler, by its kernel module suffix (`ip_vs_wlc` → `wlc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    Mh,
}

impl Scheduler {
    pub const ALL: [Scheduler; 11] = [
        Self::Rr,
        Self::Wrr,
        Self::Lc,
        Self::Wlc,
        Self::Lblc,
        Self::Lblcr,
        Self::Dh,
        Self::Sh,
        Self::Sed,
        Self::Nq,
        Self::Mh,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rr => "rr",
            Self::Wrr => "wrr",
            Self::Lc => "lc",
            Self::Wlc => "wlc",
            Self::Lblc => "lblc",
            Self::Lblcr => "lblcr",
            Self::Dh => "dh",
            Self::Sh => "sh",
            Self::Sed => "sed",
            Self::Nq => "nq",
            Self::Mh => "mh",
        }
    }
    pub fn parse(s: &str) -> FieldResult<Self> {
        Self::ALL
            .into_iter()
            .find(|sched| sched.as_str() == s)
            .ok_or_else(|| {
                "a scheduler: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq or mh".into()
            })
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IPVS forwarding method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Masquerading: the gateway rewrites the destination (and sees replies).
    Nat,
    /// Direct routing: the real server answers the client itself; ports cannot change.
    Dr,
    /// IP-in-IP tunnelling; ports cannot change.
    Tun,
}

impl Method {
    pub fn parse(s: &str) -> FieldResult<Self> {
        match s {
            "nat" => Ok(Self::Nat),
            "dr" => Ok(Self::Dr),
            "tun" => Ok(Self::Tun),
            _ => Err("nat, dr or tun".into()),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Dr => "dr",
            Self::Tun => "tun",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_their_patterns() {
        assert!(ServiceType::parse("pgw").is_ok());
        assert!(ServiceType::parse("a_b-9").is_ok());
        assert!(ServiceType::parse(&"a".repeat(32)).is_ok());
        for bad in [
            "",
            "-a",
            "Pgw",
            "x; flush ruleset",
            &"a".repeat(33),
            "a\"b",
            "é",
        ] {
            assert!(ServiceType::parse(bad).is_err(), "{bad:?}");
        }
        assert!(InstanceId::parse("pgw.app1.1").is_ok());
        for bad in ["", ".a", "a b", "a;b", &"a".repeat(65), "a\"", "a\\b"] {
            assert!(InstanceId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(PortRange::parse("443"), Ok(PortRange::single(443)));
        assert_eq!(
            PortRange::parse("20000-29999"),
            Ok(PortRange {
                first: 20000,
                last: 29999
            })
        );
        for bad in [
            "0", "65536", "-1", "+1", "01", "1-", "-5", "5-4", "1--2", " 1", "1 ", "a",
        ] {
            assert!(PortRange::parse(bad).is_err(), "{bad:?}");
        }
        assert!(PortRange::parse("7-7").is_ok_and(PortRange::is_single));
    }

    #[test]
    fn numbers_have_their_bounds() {
        assert_eq!(parse_fwmark(""), Ok(None));
        assert_eq!(parse_fwmark("4294967295"), Ok(Some(u32::MAX)));
        assert!(parse_fwmark("0").is_err());
        assert!(parse_fwmark("4294967296").is_err());
        assert!(parse_fwmark("0x10").is_err());
        assert_eq!(parse_weight("0"), Ok(0));
        assert!(parse_weight("65536").is_err());
        assert!(parse_weight("").is_err());
        assert_eq!(parse_persistence("2678400"), Ok(Some(MAX_PERSISTENCE)));
        assert!(parse_persistence("2678401").is_err());
        assert!(parse_persistence("0").is_err());
    }

    #[test]
    fn addresses_are_plain() {
        assert!(parse_ip("10.0.0.1", "x").is_ok());
        assert!(parse_ip("2001:db8::1", "x").is_ok());
        for bad in [
            "10.0.0.1/24",
            "[::1]",
            "fe80::1%eth0",
            "10.0.0.1:80",
            "010.0.0.1",
            "host",
        ] {
            assert!(parse_ip(bad, "x").is_err(), "{bad:?}");
        }
    }
}
