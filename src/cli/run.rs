//! `portcullis run`: configuration from the file, then flag by flag from the command line, then
//! the polling daemon (or, with `--check-config`, the effective configuration printed).

use super::error::{CliError, Exit, OK};
use super::pipeline::render_options;
use crate::apply::ipvs::{IpvsNetlink, IpvsSyncError, IpvsSyncLink};
use crate::apply::{ConntrackNetlink, NftCli};
use crate::daemon::config::{Config, ConfigError, Role};
use crate::daemon::sync_threads::SyncThreads;
use crate::daemon::Daemon;
use crate::render::nft::Backend;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Configuration file. The default path may be absent (defaults and flags apply); a path
    /// given explicitly must exist.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print the effective one, and exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check_config: bool,
    /// Export URL; repeat it for several ADMIN replicas, tried in turn when one does not
    /// answer (replaces the file's `source`).
    #[arg(long)]
    pub source: Vec<String>,
    /// Poll period, e.g. `3s`, `500ms`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// How long ADMIN may hold a poll until the export changes, e.g. `30s`; `0s`: off.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub long_poll: Option<Duration>,
    /// How often the live table is read back to repair drift, e.g. `10m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub audit_interval: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,
    #[arg(long)]
    pub max_body_bytes: Option<u64>,
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// IPVS backend: longest a removed real server drains before it is deleted, e.g. `5m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_grace: Option<Duration>,
    /// Remove our table (and owned IPVS services) on SIGTERM instead of leaving the rules.
    #[arg(long)]
    pub flush_on_exit: Option<bool>,
    /// Turn on the host's expedited RCU grace periods at start (each nft change is ~5× faster).
    #[arg(long)]
    pub expedite_rcu: Option<bool>,
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Listen address for /metrics and /healthz.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    #[arg(long)]
    pub bearer_token_file: Option<PathBuf>,
    #[arg(long)]
    pub policy_file: Option<PathBuf>,
    /// Interface facing clients (repeatable; replaces the file's list).
    #[arg(long = "external-iface")]
    pub external: Vec<String>,
    /// Interface facing the real servers (repeatable; replaces the file's list).
    #[arg(long = "internal-iface")]
    pub internal: Vec<String>,
    #[arg(long)]
    pub max_removed_share: Option<f64>,
    #[arg(long)]
    pub allow_remove_all: Option<bool>,
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    #[arg(long)]
    pub client_cert: Option<PathBuf>,
    #[arg(long)]
    pub client_key: Option<PathBuf>,
    /// Health check of rows without one (TCP services): none, tcp or http:PATH:STATUS[@HOST].
    #[arg(long, value_parser = parse_check)]
    pub health_default: Option<portcullis_export::Check>,
    /// Time between two health probes of one real server, e.g. `2s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_interval: Option<Duration>,
    /// Deadline of one health probe, e.g. `1s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Passed probes in a row that bring a real server back.
    #[arg(long)]
    pub health_rise: Option<u32>,
    /// Failed probes in a row that take a real server out.
    #[arg(long)]
    pub health_fall: Option<u32>,
    /// Source address of health probes (the gateway's internal side).
    #[arg(long)]
    pub health_source: Option<std::net::IpAddr>,
    /// Health probes in flight at once, at most.
    #[arg(long)]
    pub health_max_concurrent: Option<usize>,
    /// How tcp health checks reach a server: a half-open handshake, or a full connection.
    #[arg(long, value_enum)]
    pub health_tcp_probe: Option<crate::daemon::health::TcpProbe>,
}

fn parse_check(s: &str) -> Result<portcullis_export::Check, String> {
    portcullis_export::Check::parse(s).map_err(|e| format!("expected {e}"))
}

/// The file (if any), then every flag given on top of it, then validation.
pub fn effective_config(args: &RunArgs) -> Result<Config, ConfigError> {
    let mut c = match &args.config {
        Some(path) => Config::read(path)?,
        None => Config::read_default()?,
    };
    macro_rules! set {
        ($($field:ident).+ <- $value:expr) => {
            if let Some(v) = $value.clone() {
                c.$($field).+ = v;
            }
        };
    }
    if !args.source.is_empty() {
        c.source = Some(crate::daemon::config::Sources(args.source.clone()));
    }
    set!(interval <- args.interval);
    set!(long_poll <- args.long_poll);
    set!(audit_interval <- args.audit_interval);
    set!(request_timeout <- args.request_timeout);
    set!(max_body_bytes <- args.max_body_bytes);
    set!(backend <- args.backend);
    set!(drain_grace <- args.drain_grace);
    set!(flush_on_exit <- args.flush_on_exit);
    set!(expedite_rcu <- args.expedite_rcu);
    set!(state_dir <- args.state_dir);
    set!(role <- args.role);
    set!(guards.max_removed_share <- args.max_removed_share);
    set!(guards.allow_remove_all <- args.allow_remove_all);
    set!(health.default <- args.health_default);
    set!(health.interval <- args.health_interval);
    set!(health.timeout <- args.health_timeout);
    set!(health.rise <- args.health_rise);
    set!(health.fall <- args.health_fall);
    set!(health.max_concurrent <- args.health_max_concurrent);
    set!(health.tcp_probe <- args.health_tcp_probe);
    if args.health_source.is_some() {
        c.health.source = args.health_source;
    }
    if args.metrics.is_some() {
        c.metrics = args.metrics;
    }
    for (field, value) in [
        (&mut c.bearer_token_file, &args.bearer_token_file),
        (&mut c.policy_file, &args.policy_file),
        (&mut c.tls.ca_file, &args.ca_file),
        (&mut c.tls.client_cert, &args.client_cert),
        (&mut c.tls.client_key, &args.client_key),
    ] {
        if value.is_some() {
            field.clone_from(value);
        }
    }
    if !args.external.is_empty() {
        c.interfaces.external = args.external.clone();
    }
    if !args.internal.is_empty() {
        c.interfaces.internal = args.internal.clone();
    }
    c.validate().map_err(|setting| ConfigError::Invalid {
        origin: "effective configuration".into(),
        setting,
    })?;
    Ok(c)
}

/// The render options the configuration asks for.
fn options_of(config: &Config) -> Result<crate::render::nft::RenderOptions, CliError> {
    Ok(render_options(
        config.policy_file.as_deref(),
        &config.interfaces.external,
        &config.interfaces.internal,
        config.backend,
    )?)
}

pub fn run(args: &RunArgs) -> Result<Exit, CliError> {
    let config = effective_config(args)?;
    if args.check_config {
        print!("{}", config.to_toml());
        return Ok(OK);
    }
    let opts = options_of(&config)?;
    if config.expedite_rcu {
        expedite_rcu();
    }
    // The IPVS backend: IPVS services are kept in step around every nft transaction.
    let ipvs = match config.backend {
        Backend::Ipvs => Some(crate::apply::ipvs::IpvsSync::open(
            &config.state_dir,
            config.drain_grace,
        )?),
        Backend::Nft => None,
    };
    let mut daemon = Daemon::new(config, NftCli::default(), ConntrackNetlink::default(), opts)?;
    if let Some(ipvs) = ipvs {
        daemon.syncer.set_ipvs(ipvs);
        if let Some(sync) = &daemon.config.sync {
            daemon.sync_threads = Some(SyncThreads {
                kernel: Box::new(IpvsNetlink::open().map_err(IpvsSyncError::from)?),
                link: IpvsSyncLink {
                    interface: sync.interface.clone(),
                    sync_id: sync.ipvs_sync_id.into(),
                },
            });
        }
    }
    // Two workers: the listeners (/metrics, /healthz, the control socket) run on them while
    // the daemon's own future, on this thread, waits for nft or netlink.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::io("cannot start the runtime"))?;
    // SIGHUP re-reads the same file with the same flags on top, as at start.
    let reload = || {
        let config = effective_config(args).map_err(CliError::from)?;
        let opts = options_of(&config)?;
        Ok::<_, CliError>((config, opts))
    };
    runtime.block_on(async {
        let shutdown = shutdown_signal();
        daemon.run(shutdown, reload).await
    })?;
    if daemon.config.flush_on_exit {
        tracing::warn!("flush_on_exit: removing the rules");
        return super::live::flush(&daemon.config.state_dir);
    }
    Ok(OK)
}

/// Expedited RCU grace periods for the host (`expedite_rcu`, on by default): said in the
/// journal when this run turned them on, warned about when it could not.
fn expedite_rcu() {
    use crate::apply::rcu::{expedite, Expedited, RCU_EXPEDITED};
    match expedite(std::path::Path::new(RCU_EXPEDITED)) {
        Ok(Expedited::TurnedOn) => tracing::info!(
            switch = RCU_EXPEDITED,
            "turned on expedited RCU grace periods for this host: an nft change no longer waits one out (expedite_rcu = false leaves them alone)"
        ),
        Ok(Expedited::AlreadyOn) => tracing::debug!("expedited RCU grace periods already on"),
        Err(e) => tracing::warn!(
            switch = RCU_EXPEDITED,
            error = %e,
            "cannot turn on expedited RCU grace periods: every nft change that deletes something waits one out (~10 ms)"
        ),
    }
}

/// SIGTERM or SIGINT: stop polling; the rules stay in place unless `flush_on_exit`. The
/// handlers are installed here, at once (inside the runtime), not when the future is first
/// polled: a SIGTERM during the start-up apply must stop the daemon cleanly too.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(term) => {}
            _ = wait(int) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_work_without_one() {
        let args = RunArgs {
            config: None,
            source: vec!["http://127.0.0.1:9/export.csv".into()],
            interval: Some(Duration::from_secs(1)),
            role: Some(Role::Standby),
            external: vec!["eth9".into()],
            ..RunArgs::default()
        };
        // The default path does not exist on a test machine: defaults plus flags.
        let c = effective_config(&args).expect("valid");
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.role, Role::Standby);
        assert_eq!(c.interfaces.external, ["eth9"]);

        let file = crate::test_dir("run").join("portcullis.toml");
        std::fs::write(&file, "interval = \"5s\"\nrole = \"active\"\n").expect("write");
        let args = RunArgs {
            config: Some(file.clone()),
            role: Some(Role::Standby),
            ..RunArgs::default()
        };
        let c = effective_config(&args).expect("valid");
        assert_eq!(
            (c.interval, c.role),
            (Duration::from_secs(5), Role::Standby)
        );

        let missing = RunArgs {
            config: Some(PathBuf::from("/no/such/portcullis.toml")),
            ..RunArgs::default()
        };
        assert!(
            effective_config(&missing).is_err(),
            "an explicit path must exist"
        );
        let bad = RunArgs {
            interval: Some(Duration::from_millis(1)),
            ..RunArgs::default()
        };
        assert!(effective_config(&bad).is_err(), "flags are validated too");

        let health = RunArgs {
            health_default: Some(parse_check("http:/health:200").expect("valid")),
            health_interval: Some(Duration::from_secs(1)),
            health_fall: Some(2),
            health_source: "10.0.0.254".parse().ok(),
            ..RunArgs::default()
        };
        let c = effective_config(&health).expect("valid");
        assert_eq!(c.health.default.to_string(), "http:/health:200");
        assert_eq!(
            (c.health.interval, c.health.fall),
            (Duration::from_secs(1), 2)
        );
        assert_eq!(c.health.source, "10.0.0.254".parse().ok());
        assert!(parse_check("icmp").is_err());

        let replicas = RunArgs {
            source: vec![
                "http://a/v1/export.csv".into(),
                "http://b/v1/export.csv".into(),
            ],
            ..RunArgs::default()
        };
        let c = effective_config(&replicas).expect("valid");
        let urls = c
            .source
            .as_ref()
            .map(|s| s.urls().to_vec())
            .unwrap_or_default();
        assert_eq!(urls, ["http://a/v1/export.csv", "http://b/v1/export.csv"]);
        let bad = RunArgs {
            source: vec!["http://a/v1/export.csv".into(), "admin-b".into()],
            ..RunArgs::default()
        };
        let e = effective_config(&bad).expect_err("every --source is checked");
        assert!(e.to_string().contains("\"admin-b\""), "{e}");
    }
}
