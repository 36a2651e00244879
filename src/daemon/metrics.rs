//! Prometheus metrics and the health check, served on the configured address:
//! `/metrics` (text exposition, via the prometheus-client crate), `/healthz`, and `/health`
//! (the real-server health checks as JSON: every target, and what is held down).
//!
//! Alert on `portcullis_seconds_since_last_sync` (rules not refreshed: ADMIN down, exports
//! rejected or refused), on `rate(portcullis_polls_total{outcome="failed"}[5m])`, and on any
//! increase of `portcullis_guard_refusals_total`. With a `[sync]` section, conntrackd's
//! statistics are read at each scrape (`portcullis_sync_*`): alert on `portcullis_sync_up == 0`
//! and on `changes(portcullis_sync_packets{direction="received"}[1m]) == 0` (no message from
//! the peer: link or peer down).

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceUrl {
    pub url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Cache {
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: &'static str,
}

/// conntrackd's numbers, read from its control socket at each scrape.
#[derive(Clone)]
struct SyncMetrics {
    socket: Arc<PathBuf>,
    up: Gauge,
    entries: Family<Cache, Gauge>,
    packets: Family<Direction, Gauge>,
    errors: Family<Direction, Gauge>,
    lost: Gauge,
}

impl SyncMetrics {
    fn register(registry: &mut Registry, socket: PathBuf) -> Self {
        let m = SyncMetrics {
            socket: Arc::new(socket),
            up: Gauge::default(),
            entries: Family::default(),
            packets: Family::default(),
            errors: Family::default(),
            lost: Gauge::default(),
        };
        registry.register(
            "sync_up",
            "1 if conntrackd answered on its control socket at this scrape",
            m.up.clone(),
        );
        registry.register(
            "sync_entries",
            "Connections in conntrackd's caches: internal (this node's), external (from the peer)",
            m.entries.clone(),
        );
        registry.register(
            "sync_packets",
            "Sync packets sent to and received from the peer (conntrackd's counters)",
            m.packets.clone(),
        );
        registry.register(
            "sync_errors",
            "Send and receive errors on the sync link (conntrackd's counters)",
            m.errors.clone(),
        );
        registry.register(
            "sync_lost_messages",
            "Sync messages from the peer that were lost (FTFW resends them)",
            m.lost.clone(),
        );
        m
    }

    fn refresh(&self) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        match super::conntrackd::query_stats(&self.socket) {
            Ok(s) => {
                self.up.set(1);
                for (cache, n) in [
                    ("internal", s.internal_entries),
                    ("external", s.external_entries),
                ] {
                    self.entries.get_or_create(&Cache { cache }).set(gauge(n));
                }
                for (direction, packets, errors) in [
                    ("sent", s.sent_packets, s.send_errors),
                    ("received", s.received_packets, s.receive_errors),
                ] {
                    let d = Direction { direction };
                    self.packets.get_or_create(&d).set(gauge(packets));
                    self.errors.get_or_create(&d).set(gauge(errors));
                }
                self.lost.set(gauge(s.lost_messages));
            }
            Err(e) => {
                tracing::debug!(error = %e, "conntrackd statistics");
                self.up.set(0);
            }
        }
    }
}

/// Shared between the poll loop (which records) and the HTTP listener (which reads).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub polls: Family<Outcome, Counter>,
    pub guard_refusals: Counter,
    pub apply_seconds: Histogram,
    pub virtual_services: Gauge,
    pub real_servers: Gauge,
    /// 1 for the ADMIN replica (export URL) in use; only that one is listed.
    source: Family<SourceUrl, Gauge>,
    source_switches: Counter,
    since_last_sync: Gauge,
    last_sync_unix: Arc<AtomicU64>,
    sync: Option<SyncMetrics>,
    /// The health checker's findings (its per-target series are registered here).
    pub health: Arc<super::health::board::Board>,
    pub kick: super::kick::KickMetrics,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(None)
    }
}

impl Metrics {
    /// The daemon's metrics, and conntrackd's when `sync_socket` names its control socket.
    pub fn new(sync_socket: Option<PathBuf>) -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let polls = Family::<Outcome, Counter>::default();
        let guard_refusals = Counter::default();
        // 1 ms … ~16 s: an increment is milliseconds, a cold 100k-service table seconds.
        let apply_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
        );
        let virtual_services = Gauge::default();
        let real_servers = Gauge::default();
        let since_last_sync = Gauge::default();
        registry.register("polls", "Polls of ADMIN by outcome", polls.clone());
        registry.register(
            "guard_refusals",
            "Exports refused by the removal guard",
            guard_refusals.clone(),
        );
        registry.register(
            "apply_duration_seconds",
            "Time to apply an export to the kernel",
            apply_seconds.clone(),
        );
        registry.register(
            "virtual_services",
            "Virtual services applied",
            virtual_services.clone(),
        );
        registry.register("real_servers", "Real servers applied", real_servers.clone());
        registry.register(
            "seconds_since_last_sync",
            "Seconds since the rules were last confirmed current (applied, adopted or unchanged)",
            since_last_sync.clone(),
        );
        let source = Family::<SourceUrl, Gauge>::default();
        let source_switches = Counter::default();
        registry.register(
            "source",
            "The export URL (ADMIN replica) in use, labelled url; always 1",
            source.clone(),
        );
        registry.register(
            "source_switches",
            "Switches to another ADMIN replica because the one in use did not answer",
            source_switches.clone(),
        );
        let sync = sync_socket.map(|socket| SyncMetrics::register(&mut registry, socket));
        let kick = super::kick::KickMetrics::register(&mut registry);
        let health = Arc::new(super::health::board::Board::default());
        let target = &health.metrics;
        registry.register(
            "real_server_up",
            "Health check of a real server endpoint: 1 up, 0 down",
            target.up.clone(),
        );
        registry.register(
            "real_server_check_latency_seconds",
            "Duration of the last health probe of a real server endpoint",
            target.latency_seconds.clone(),
        );
        registry.register(
            "real_server_transitions",
            "Health transitions (up to down or back) of a real server endpoint",
            target.transitions.clone(),
        );
        Metrics {
            sync,
            kick,
            health,
            registry: Arc::new(registry),
            polls,
            guard_refusals,
            apply_seconds,
            virtual_services,
            real_servers,
            source,
            source_switches,
            since_last_sync,
            last_sync_unix: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn poll(&self, outcome: &'static str) {
        self.polls.get_or_create(&Outcome { outcome }).inc();
    }

    /// `url` is the replica in use from now on (start, reload).
    pub fn source_in_use(&self, url: &str) {
        self.source.clear();
        self.source
            .get_or_create(&SourceUrl {
                url: url.to_owned(),
            })
            .set(1);
    }

    /// The replica at `from` did not answer; `to` is asked next.
    pub fn source_switched(&self, from: &str, to: &str) {
        self.source_switches.inc();
        self.source.remove(&SourceUrl {
            url: from.to_owned(),
        });
        self.source_in_use(to);
    }

    /// The rules are known to match the current export.
    pub fn synced(&self) {
        self.last_sync_unix.store(now(), Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let last = self.last_sync_unix.load(Ordering::Relaxed);
        // Never synced: report the age of the process's first scrape as "forever" is not a number.
        let age = if last == 0 {
            -1
        } else {
            now().saturating_sub(last) as i64
        };
        self.since_last_sync.set(age);
        if let Some(sync) = &self.sync {
            sync.refresh();
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.push_str("# encoding error\n");
        }
        out
    }

    /// When the rules were last confirmed current (Unix seconds; 0 = never).
    pub fn last_sync_unix(&self) -> u64 {
        self.last_sync_unix.load(Ordering::Relaxed)
    }

    pub fn healthy(&self) -> bool {
        self.last_sync_unix.load(Ordering::Relaxed) != 0
    }

    /// Serves `/metrics` and `/healthz` until the process ends.
    pub async fn serve(self, addr: std::net::SocketAddr) -> std::io::Result<()> {
        use axum::{http::StatusCode, routing::get, Router};
        let m = self.clone();
        let h = self.clone();
        let board = self.health.clone();
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let m = m.clone();
                    // Blocking: it may ask conntrackd (at most a second).
                    async move {
                        tokio::task::spawn_blocking(move || m.render())
                            .await
                            .unwrap_or_else(|_| "# rendering failed\n".to_owned())
                    }
                }),
            )
            .route(
                "/healthz",
                get(move || {
                    let h = h.clone();
                    async move {
                        if h.healthy() {
                            (StatusCode::OK, "ok\n")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "no successful sync yet\n")
                        }
                    }
                }),
            )
            .route(
                "/health",
                get(move || {
                    let board = board.clone();
                    async move {
                        let json = serde_json::to_string_pretty(&board.view())
                            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                        ([("content-type", "application/json")], json + "\n")
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind(addr).await?;
        super::listener::serve_bounded(listener, app).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_exposition_format() {
        let m = Metrics::default();
        m.poll("not_modified");
        m.poll("applied");
        m.virtual_services.set(7);
        m.apply_seconds.observe(0.004);
        assert!(!m.healthy());
        m.synced();
        assert!(m.healthy());
        let text = m.render();
        assert!(
            text.contains("portcullis_polls_total{outcome=\"applied\"} 1"),
            "{text}"
        );
        assert!(text.contains("portcullis_virtual_services 7"), "{text}");
        assert!(
            text.contains("portcullis_seconds_since_last_sync 0"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_apply_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        m.source_in_use("http://a/v1/export.csv");
        m.source_switched("http://a/v1/export.csv", "http://b/v1/export.csv");
        let text = m.render();
        assert!(
            text.contains("portcullis_source{url=\"http://b/v1/export.csv\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("url=\"http://a/"),
            "only the one in use: {text}"
        );
        assert!(
            text.contains("portcullis_source_switches_total 1"),
            "{text}"
        );
        assert!(
            !text.contains("portcullis_sync"),
            "no [sync], no sync metrics: {text}"
        );
    }

    #[test]
    fn an_absent_conntrackd_is_reported_down() {
        let m = Metrics::new(Some("/nonexistent/conntrackd.sock".into()));
        let text = m.render();
        assert!(text.contains("portcullis_sync_up 0"), "{text}");
    }
}
