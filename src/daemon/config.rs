//! Configuration of `portcullis run`: a TOML file (default `/etc/portcullis/portcullis.toml`),
//! every key of which a command-line flag can override, so the daemon also runs with no file.
//! Unknown keys are errors that name the key and its line and column: a typo must not silently
//! fall back to a default on the hosts every packet crosses.

use super::health::HealthConfig;
pub use super::sources::Sources;
use crate::apply::Guard;
use crate::render::conntrackd::SyncLink;
use crate::render::nft::{Backend, Ifname};
use serde::{Deserialize, Deserializer, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/portcullis/portcullis.toml";
/// Where the daemon keeps its state (last-known-good export, journal, status, role, lock,
/// control socket, IPVS ownership); every command's `--state-dir` defaults to it.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/portcullis";

/// Largest export accepted by default (`max_body_bytes`, and the CLI's limit for files): far
/// above any real one (100k rows is 7 MB), small enough that a broken source cannot exhaust
/// the gateway's memory.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 << 20;

/// A configuration that cannot be used; says where and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    Syntax {
        origin: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{origin}: {setting}")]
    Invalid {
        origin: String,
        setting: InvalidSetting,
    },
}

/// A value its type allows but the daemon cannot run with.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: expected {expected}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub expected: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Applies exports to the kernel.
    Active,
    /// Polls and keeps the cache fresh, never touches the kernel (the passive Pacemaker node).
    Standby,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `http(s)://…/export.csv` or `file://…`; a list of them for several ADMIN replicas,
    /// tried in turn when one does not answer.
    pub source: Option<Sources>,
    #[serde(with = "duration")]
    pub interval: Duration,
    /// How long ADMIN may hold a request open until the export changes (`?wait=`), so a
    /// change propagates in milliseconds; `0s` turns long-polling off. A server that does not
    /// long-poll answers at once and the plain `interval` applies.
    #[serde(with = "duration")]
    pub long_poll: Duration,
    /// How often the live table is read back and compared with what was applied (drift from
    /// hand edits); a full listing costs seconds at 100k services, so keep this slow.
    #[serde(with = "duration")]
    pub audit_interval: Duration,
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    pub max_body_bytes: u64,
    pub backend: Backend,
    /// IPVS backend: how long a removed real server drained at weight 0 may keep its
    /// connections before it is deleted anyway (it goes as soon as they end).
    #[serde(with = "duration")]
    pub drain_grace: Duration,
    /// On SIGTERM, remove everything portcullis put in the kernel (as `portcullis flush`)
    /// instead of leaving the rules in place for the next start.
    pub flush_on_exit: bool,
    /// Turn on the host's expedited RCU grace periods at start (`/sys/kernel/rcu_expedited`):
    /// every nft change that deletes something otherwise waits one out, ~10 ms of a 16 ms
    /// change (see `apply::rcu`). Host-wide; `false` leaves the kernel as it is.
    pub expedite_rcu: bool,
    pub state_dir: PathBuf,
    pub role: Role,
    /// Address of the Prometheus `/metrics` and `/healthz` listener; none when absent.
    pub metrics: Option<SocketAddr>,
    /// File holding the bearer token sent to ADMIN (kept out of the config file itself).
    pub bearer_token_file: Option<PathBuf>,
    pub policy_file: Option<PathBuf>,
    pub interfaces: Interfaces,
    pub guards: Guard,
    pub tls: Tls,
    /// Connection-state sync with the other gateway (conntrackd; `portcullis sync-config`
    /// renders its configuration). Absent: no sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncLink>,
    /// Real-server health checks (see `daemon::health`).
    pub health: HealthConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Interfaces {
    /// Facing clients: new inbound traffic not accepted is dropped here.
    pub external: Vec<String>,
    /// Facing the real servers.
    pub internal: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// CA bundle to verify ADMIN with, instead of the system's.
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            interval: Duration::from_secs(3),
            long_poll: Duration::from_secs(30),
            audit_interval: Duration::from_secs(600),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            backend: Backend::Nft,
            drain_grace: Duration::from_secs(300),
            flush_on_exit: false,
            expedite_rcu: true,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            role: Role::Active,
            metrics: None,
            bearer_token_file: None,
            policy_file: None,
            interfaces: Interfaces::default(),
            guards: Guard::default(),
            tls: Tls::default(),
            sync: None,
            health: HealthConfig::default(),
        }
    }
}

/// Durations as humans write them: `3s`, `500ms`, `1m 30s`.
pub(crate) mod duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "expected a duration such as \"3s\" or \"500ms\": {e}"
            ))
        })
    }
}

impl Config {
    /// Parses a config file's text; `origin` names it in errors. The error text carries the
    /// line and column toml reports, and the offending line.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Syntax {
            origin: origin.to_owned(),
            source: Box::new(source),
        })?;
        config.validate().map_err(|setting| ConfigError::Invalid {
            origin: origin.to_owned(),
            setting,
        })?;
        Ok(config)
    }

    /// Reads and parses the file at `path`, which must exist.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// The file at [`DEFAULT_PATH`], or the defaults when there is none (the daemon and the
    /// CLI also run with flags alone).
    pub fn read_default() -> Result<Config, ConfigError> {
        match Config::read(Path::new(DEFAULT_PATH)) {
            Err(ConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(Config::default())
            }
            other => other,
        }
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let bad = |key: &'static str, expected: String| Err(InvalidSetting { key, expected });
        if let Some(expected) = self.source.as_ref().and_then(Sources::invalid) {
            return bad("source", expected);
        }
        if self.interval < Duration::from_millis(100) {
            return bad("interval", "at least 100ms".into());
        }
        if self.long_poll > Duration::from_secs(300) {
            return bad(
                "long_poll",
                "at most 5m (proxies drop idle requests)".into(),
            );
        }
        if self.audit_interval < Duration::from_secs(10) {
            return bad(
                "audit_interval",
                "at least 10s (each audit lists the whole table)".into(),
            );
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout", "more than 0s".into());
        }
        if !(self.guards.max_removed_share > 0.0 && self.guards.max_removed_share <= 1.0) {
            return bad("guards.max_removed_share", "a share in (0, 1]".into());
        }
        for name in self
            .interfaces
            .external
            .iter()
            .chain(&self.interfaces.internal)
        {
            if let Err(e) = Ifname::parse(name) {
                return bad("interfaces", e.expected());
            }
        }
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            return bad("tls", "client_cert and client_key together".into());
        }
        if let Some(sync) = &self.sync {
            if let Err(e) = Ifname::parse(&sync.interface) {
                return bad("sync.interface", e.expected());
            }
            sync.validate().map_err(|e| InvalidSetting {
                key: e.key,
                expected: e.expected.to_owned(),
            })?;
        }
        if let Some((key, expected)) = self.health.invalid() {
            return bad(key, expected.into());
        }
        Ok(())
    }

    /// The effective configuration, as a config file would state it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../rules/examples/portcullis.toml");

    #[test]
    fn the_shipped_example_is_valid() {
        let c = Config::parse(EXAMPLE, "portcullis.toml").expect("example parses");
        assert_eq!(c.interval, Duration::from_secs(3));
        assert_eq!(c.interfaces.external, ["eth0"]);
        // And what it prints reads back the same.
        assert_eq!(
            Config::parse(&c.to_toml(), "printed").expect("round trip"),
            c
        );
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(Config::parse("", "x").expect("empty"), Config::default());
    }

    #[test]
    fn unknown_keys_are_located_errors() {
        let e =
            Config::parse("interval = \"1s\"\nintervall = \"2s\"\n", "p.toml").expect_err("typo");
        let e = e.to_string();
        assert!(e.contains("p.toml"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("intervall"), "{e}");
        let e =
            Config::parse("[guards]\nmax_removed = 0.3\n", "p.toml").expect_err("typo in a table");
        let e = e.to_string();
        assert!(e.contains("line 2") && e.contains("max_removed"), "{e}");
    }

    #[test]
    fn the_sync_section_is_read_checked_and_printed() {
        let text = "[sync]\ninterface = \"sync0\"\nlocal_address = \"192.168.250.1\"\n\
                    peer_address = \"192.168.250.2\"\nignore_addresses = [\"192.0.2.10\"]\n";
        let c = Config::parse(text, "p.toml").expect("sync parses");
        let sync = c.sync.as_ref().expect("a sync section");
        assert_eq!(sync.interface, "sync0");
        assert_eq!(sync.port, 3780, "the conntrack-tools port by default");
        assert_eq!(
            Config::parse(&c.to_toml(), "printed").expect("round trip"),
            c
        );
        assert_eq!(Config::default().sync, None);
        let e = Config::parse(
            "[sync]\ninterface = \"s0\"\nlocal_address = \"10.0.0.1\"\n",
            "p.toml",
        )
        .expect_err("no peer");
        assert!(e.to_string().contains("sync.peer_address"), "{e}");
    }

    #[test]
    fn the_failover_kick_is_on_with_sync_and_can_be_tuned_or_turned_off() {
        let base = "[sync]\ninterface = \"sync0\"\nlocal_address = \"192.168.250.1\"\n\
                    peer_address = \"192.168.250.2\"\n";
        let c = Config::parse(base, "p.toml").expect("sync parses");
        let kick = &c.sync.as_ref().expect("sync").kick;
        assert!(kick.enabled);
        assert_eq!(
            (kick.icmp_copies, kick.answer_wait),
            (8, Duration::from_millis(500))
        );
        let text =
            format!("{base}[sync.kick]\nenabled = false\nicmp_copies = 3\nvip_wait = \"2s\"\n");
        let c = Config::parse(&text, "p.toml").expect("kick parses");
        let kick = &c.sync.as_ref().expect("sync").kick;
        assert_eq!(
            (kick.enabled, kick.icmp_copies, kick.vip_wait),
            (false, 3, Duration::from_secs(2))
        );
        assert_eq!(
            Config::parse(&c.to_toml(), "printed").expect("round trip"),
            c
        );
        let e = Config::parse(&format!("{base}[sync.kick]\npackets_per_second = 0\n"), "p")
            .expect_err("no rate");
        assert!(
            e.to_string().contains("sync.kick.packets_per_second"),
            "{e}"
        );
        let e = Config::parse(&format!("{base}[sync.kick]\ncopies = 3\n"), "p")
            .expect_err("unknown key");
        assert!(e.to_string().contains("copies"), "{e}");
    }

    #[test]
    fn the_health_section_reads_every_key() {
        let c = Config::parse(
            "[health]\ndefault = \"http:/health:200\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\nsource = \"10.0.0.254\"\n",
            "p.toml",
        )
        .expect("ok");
        assert_eq!(c.health.default.to_string(), "http:/health:200");
        assert_eq!(c.health.interval, Duration::from_secs(1));
        assert_eq!(c.health.timeout, Duration::from_millis(500));
        assert_eq!((c.health.rise, c.health.fall), (2, 2));
        assert_eq!(c.health.source, "10.0.0.254".parse().ok());
        assert_eq!(
            Config::parse(&c.to_toml(), "printed").expect("round trip"),
            c
        );
        assert_eq!(Config::default().health.default.to_string(), "none");
    }

    #[test]
    fn the_source_is_one_url_or_a_list_of_replicas() {
        let one = Config::parse("source = \"http://a/v1/export.csv\"\n", "p.toml").expect("one");
        assert_eq!(one.source, Some(Sources::from("http://a/v1/export.csv")));
        assert!(one
            .to_toml()
            .contains("source = \"http://a/v1/export.csv\""));
        let text = "source = [\"https://a/v1/export.csv\", \"https://b/v1/export.csv\"]\n";
        let two = Config::parse(text, "p.toml").expect("a list");
        let urls = two.source.as_ref().map(Sources::urls).unwrap_or_default();
        assert_eq!(urls, ["https://a/v1/export.csv", "https://b/v1/export.csv"]);
        assert_eq!(
            Config::parse(&two.to_toml(), "printed").expect("round trip"),
            two
        );
        // Every URL is checked, and the error names the key and the bad entry.
        let e = Config::parse("source = [\"http://a/x\", \"b\"]\n", "p.toml").expect_err("bad");
        let e = e.to_string();
        assert!(
            e.contains("p.toml") && e.contains("source") && e.contains("\"b\""),
            "{e}"
        );
        let e = Config::parse("source = 7\n", "p.toml").expect_err("not a URL");
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn the_drain_grace_is_a_duration() {
        let c = Config::parse("backend = \"ipvs\"\ndrain_grace = \"90s\"\n", "p.toml").expect("ok");
        assert_eq!(c.drain_grace, Duration::from_secs(90));
        assert_eq!(Config::default().drain_grace, Duration::from_secs(300));
    }

    #[test]
    fn values_are_checked() {
        for bad in [
            "interval = \"often\"",
            "interval = \"10ms\"",
            "long_poll = \"1h\"",
            "source = \"ftp://x\"",
            "source = []",
            "source = [\"http://a/x\", \"ftp://b\"]",
            "source = [\"http://a/x\", \"http://a/x\"]",
            "source = [1]",
            "backend = \"iptables\"",
            "drain_grace = \"soon\"",
            "role = \"leader\"",
            "[guards]\nmax_removed_share = 1.5",
            "[interfaces]\nexternal = [\"eth0; flush\"]",
            "metrics = \"localhost\"",
            "[tls]\nclient_cert = \"/a\"",
            "[sync]\ninterface = \"s0\"\nlocal_address = \"10.0.0.1\"",
            "[sync]\ninterface = \"s 0\"\nlocal_address = \"10.0.0.1\"\ntransport = \"multicast\"",
            "[sync]\ninterface = \"s0\"\nlocal_address = \"10.0.0.1\"\ntransport = \"tcp\"",
            "[sync]\ninterface = \"s0\"\nlocal_address = \"10.0.0.1\"\npeer = \"10.0.0.2\"",
            "[health]\ndefault = \"udp\"",
            "[health]\ndefault = \"http:/x:99\"",
            "[health]\nfall = 0",
            "[health]\ninterval = \"1s\"\ntimeout = \"2s\"",
            "[health]\nsource = \"gw\"",
            "[health]\nrise_count = 2",
        ] {
            assert!(Config::parse(bad, "x").is_err(), "{bad}");
        }
    }
}
