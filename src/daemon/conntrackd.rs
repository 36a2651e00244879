//! What conntrackd says about the sync link, for `portcullis status` and `/metrics`: its
//! statistics (`conntrackd -s`), read straight from its control socket so neither needs
//! conntrackd's configuration file nor its binary.
//!
//! The control protocol (conntrack-tools `src/local.c`): connect to the UNIX socket, send the
//! request as one native-endian `int` (`STATS` = 21), read the text answer until the daemon
//! closes the connection.

use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// conntrackd's `STATS` request.
const STATS: i32 = 21;
/// A healthy conntrackd answers in microseconds; a hung one must not hang a scrape.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The answer is a few hundred bytes.
const MAX_ANSWER: u64 = 64 << 10;

/// The numbers worth watching, from `conntrackd -s`. The counters only grow while the daemon
/// runs: "last message seen" is when `received_packets` last changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncStats {
    /// Connections in this node's own cache (what it sends).
    pub internal_entries: u64,
    /// Connections the peer sent (what a promotion commits).
    pub external_entries: u64,
    pub sent_packets: u64,
    pub received_packets: u64,
    pub send_errors: u64,
    pub receive_errors: u64,
    /// Sync messages the peer sent that never arrived (FTFW resends them).
    pub lost_messages: u64,
    pub malformed_messages: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConntrackdError {
    #[error("conntrackd does not answer on {}: {source}", socket.display())]
    Socket {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "conntrackd's statistics have no {0} (not conntrackd 1.4 in FTFW/UDP or multicast mode?)"
    )]
    Missing(&'static str),
}

/// Asks the conntrackd listening on `socket` for its statistics.
pub fn query_stats(socket: &Path) -> Result<SyncStats, ConntrackdError> {
    let io = |source| ConntrackdError::Socket {
        socket: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.write_all(&STATS.to_ne_bytes()).map_err(io)?;
    let mut text = String::new();
    stream
        .take(MAX_ANSWER)
        .read_to_string(&mut text)
        .map_err(io)?;
    parse_stats(&text)
}

/// Parses the text of conntrackd's `STATS` answer (the output of `conntrackd -s`).
pub fn parse_stats(text: &str) -> Result<SyncStats, ConntrackdError> {
    let mut stats = SyncStats::default();
    let mut section = "";
    let mut seen = [false; 4];
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(name) = line.strip_suffix(':').filter(|_| !line.starts_with(' ')) {
            section = name;
            continue;
        }
        match (section, words.as_slice()) {
            ("cache internal", ["current", "active", "connections:", n]) => {
                stats.internal_entries = number(n, "internal cache size")?;
                seen[0] = true;
            }
            ("cache external", ["current", "active", "connections:", n]) => {
                stats.external_entries = number(n, "external cache size")?;
                seen[1] = true;
            }
            ("message tracking", [malformed, "Malformed", "msgs", lost, "Lost", "msgs"]) => {
                stats.malformed_messages = number(malformed, "malformed messages")?;
                stats.lost_messages = number(lost, "lost messages")?;
                seen[3] = true;
            }
            (s, [sent, "Pckts", "sent", recv, "Pckts", "recv"])
                if s.starts_with("UDP traffic") || s.starts_with("Multicast traffic") =>
            {
                stats.sent_packets = number(sent, "packets sent")?;
                stats.received_packets = number(recv, "packets received")?;
                seen[2] = true;
            }
            (s, [sent, "Error", "send", recv, "Error", "recv"])
                if s.starts_with("UDP traffic") || s.starts_with("Multicast traffic") =>
            {
                stats.send_errors = number(sent, "send errors")?;
                stats.receive_errors = number(recv, "receive errors")?;
            }
            _ => {}
        }
    }
    let names = [
        "internal cache size",
        "external cache size",
        "sync traffic",
        "message tracking",
    ];
    match seen.iter().position(|s| !s) {
        Some(i) => Err(ConntrackdError::Missing(names[i])),
        None => Ok(stats),
    }
}

fn number(word: &str, what: &'static str) -> Result<u64, ConntrackdError> {
    word.parse().map_err(|_| ConntrackdError::Missing(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `conntrackd -s` of Debian's conntrackd 1.4.7 in FTFW/UDP mode (the test's gateways).
    const STATS_TEXT: &str = "cache internal:
current active connections:\t          12
connections created:\t\t          40\tfailed:\t           0
connections updated:\t\t           3\tfailed:\t           0
connections destroyed:\t\t          28\tfailed:\t           0

cache external:
current active connections:\t          50
connections created:\t\t          50\tfailed:\t           0
connections updated:\t\t           0\tfailed:\t           0
connections destroyed:\t\t           0\tfailed:\t           0

traffic processed:
                   0 Bytes                         0 Pckts

UDP traffic (active device=eth2):
                5440 Bytes sent                 9080 Bytes recv
                 120 Pckts sent                  211 Pckts recv
                   0 Error send                    2 Error recv

message tracking:
                   0 Malformed msgs                    1 Lost msgs

";

    #[test]
    fn reads_caches_traffic_and_losses() {
        assert_eq!(
            parse_stats(STATS_TEXT).expect("parses"),
            SyncStats {
                internal_entries: 12,
                external_entries: 50,
                sent_packets: 120,
                received_packets: 211,
                send_errors: 0,
                receive_errors: 2,
                lost_messages: 1,
                malformed_messages: 0,
            }
        );
    }

    #[test]
    fn multicast_traffic_counts_too() {
        let text = STATS_TEXT.replace("UDP traffic", "Multicast traffic");
        assert_eq!(parse_stats(&text).expect("parses").received_packets, 211);
    }

    #[test]
    fn an_answer_without_the_numbers_is_an_error() {
        assert!(matches!(
            parse_stats(""),
            Err(ConntrackdError::Missing("internal cache size"))
        ));
        let no_link = STATS_TEXT.replace("UDP traffic", "Something else");
        assert!(matches!(
            parse_stats(&no_link),
            Err(ConntrackdError::Missing("sync traffic"))
        ));
        let garbled = STATS_TEXT.replace("          50\n", "          5x\n");
        assert!(matches!(
            parse_stats(&garbled),
            Err(ConntrackdError::Missing("external cache size"))
        ));
    }

    #[test]
    fn no_daemon_is_a_socket_error() {
        let err = query_stats(Path::new("/nonexistent/conntrackd.sock")).expect_err("no socket");
        assert!(
            err.to_string().contains("/nonexistent/conntrackd.sock"),
            "{err}"
        );
    }
}
