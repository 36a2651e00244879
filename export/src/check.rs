//! The `check` column (format 1.1): how the gateway probes a real server's health.
//!
//! Text forms: empty (the gateway's configured default), `none`, `tcp`, `http:PATH:STATUS`,
//! and `http:PATH:STATUS@HOST` when the server wants a `Host` header other than its own
//! address (virtual hosts). The status follows the last colon, so a path may hold colons and
//! `@` and the host is still unambiguous; a host is a DNS name or IPv4 address, no port.
//! The path travels in an HTTP request line the gateway writes, so its characters are
//! restricted to a safe subset of RFC 3986 (no spaces, quotes, commas or control characters:
//! nothing that could end the request line or need CSV quoting).

use crate::fields::FieldResult;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Longest HTTP path accepted: health paths are short; a bound keeps requests and logs small.
pub const MAX_CHECK_PATH: usize = 200;

/// An explicit health check; the empty column (the gateway's default) is `None` in a row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Check {
    /// Never probed: always in rotation (as before health checks existed).
    Disabled,
    /// A TCP connection to the real server's port must be accepted.
    Tcp,
    /// `GET path` on the real server's port must answer with `status`; `host` is the `Host`
    /// header when given (else the real server's own address and port).
    Http {
        path: Arc<str>,
        status: u16,
        host: Option<Arc<str>>,
    },
}

const EXPECTED: &str =
    "empty (the gateway's default), none, tcp, or http:PATH:STATUS[@HOST] (e.g. http:/health:200)";

/// Longest `Host` accepted: a DNS name's limit.
pub const MAX_CHECK_HOST: usize = 253;

/// A DNS name or an IPv4 address: letters, digits, `-` and `.`, not starting with `-` or
/// `.`. It travels in a header line, so nothing else is allowed.
fn host_ok(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_CHECK_HOST
        && !host.starts_with(['-', '.'])
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

fn path_char_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'/' | b'-' | b'.' | b'_' | b'~' | b'%' | b'?' | b'=' | b'&' | b'+' | b':' | b'@'
        )
}

impl Check {
    /// Parses a non-empty `check` field (the empty one is the caller's `None`).
    pub fn parse(s: &str) -> FieldResult<Self> {
        match s {
            "none" => return Ok(Self::Disabled),
            "tcp" => return Ok(Self::Tcp),
            _ => {}
        }
        let Some(rest) = s.strip_prefix("http:") else {
            return Err(EXPECTED.into());
        };
        // The status is after the last colon: a path may contain colons itself.
        let Some((path, status)) = rest.rsplit_once(':') else {
            return Err(EXPECTED.into());
        };
        let (status, host) = match status.split_once('@') {
            Some((status, host)) if host_ok(host) => (status, Some(Arc::from(host))),
            Some(_) => {
                return Err(format!(
                    "http:PATH:STATUS@HOST with a HOST of at most {MAX_CHECK_HOST} letters, digits, - and . ({EXPECTED})"
                ))
            }
            None => (status, None),
        };
        let status = match status.as_bytes() {
            [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => status.parse::<u16>().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("http:PATH:STATUS with a status 100-599 ({EXPECTED})"))?;
        if !path.starts_with('/') || path.len() > MAX_CHECK_PATH || !path.bytes().all(path_char_ok)
        {
            return Err(format!(
                "http:PATH:STATUS with a PATH starting with / of at most {MAX_CHECK_PATH} of A-Z a-z 0-9 / - . _ ~ % ? = & + : @"
            ));
        }
        Ok(Self::Http {
            path: Arc::from(path),
            status,
            host,
        })
    }
}

/// The `check` field: empty is `None`.
pub(crate) fn parse_check(s: &str) -> FieldResult<Option<Check>> {
    if s.is_empty() {
        return Ok(None);
    }
    Check::parse(s).map(Some)
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => f.write_str("none"),
            Self::Tcp => f.write_str("tcp"),
            Self::Http {
                path,
                status,
                host: None,
            } => write!(f, "http:{path}:{status}"),
            Self::Http {
                path,
                status,
                host: Some(host),
            } => write!(f, "http:{path}:{status}@{host}"),
        }
    }
}

impl TryFrom<String> for Check {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Check::parse(&s).map_err(|e| format!("expected {e}, found {}", crate::error::Quoted(&s)))
    }
}

impl From<Check> for String {
    fn from(c: Check) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_round_trips() {
        for text in [
            "none",
            "tcp",
            "http:/health:200",
            "http:/a:b/c?x=1&y=2:503",
            "http:/health:200@www.example.com",
            "http:/a@b:c:204@10.0.0.1",
        ] {
            let check = Check::parse(text).expect(text);
            assert_eq!(check.to_string(), text);
        }
        assert_eq!(parse_check(""), Ok(None));
        assert_eq!(
            Check::parse("http:/a:b:204"),
            Ok(Check::Http {
                path: Arc::from("/a:b"),
                status: 204,
                host: None,
            })
        );
        assert_eq!(
            Check::parse("http:/a@b:204@api.example"),
            Ok(Check::Http {
                path: Arc::from("/a@b"),
                status: 204,
                host: Some(Arc::from("api.example")),
            })
        );
    }

    #[test]
    fn bad_checks_are_refused() {
        for bad in [
            "NONE",
            "udp",
            "http",
            "http:",
            "http:/health",
            "http:/health:",
            "http:/health:99",
            "http:/health:600",
            "http:/health:0200",
            "http:/health:+20",
            "http:health:200",
            "http:/he alth:200",
            "http:/a\"b:200",
            "http:/a\r\nHost: x:200",
            "http:/a;b:200",
            "http:/health:200@",
            "http:/health:200@-x",
            "http:/health:200@a b",
            "http:/health:200@h:8080",
            "http:/health:200@h\r\nX-Evil: 1",
            "http:/health:200@h_o",
            &format!("http:/{}:200", "a".repeat(MAX_CHECK_PATH)),
        ] {
            assert!(Check::parse(bad).is_err(), "{bad:?}");
        }
        // `//host` is a valid path character sequence but an odd one; it stays a path.
        assert!(Check::parse("http://a:200").is_ok());
    }
}
