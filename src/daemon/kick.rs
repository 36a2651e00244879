//! The failover kick after a promotion (`[sync.kick]`, nft backend; [`crate::apply::kick`]).
//!
//! Pacemaker's order is: conntrackd commits the peer's connections into the kernel, then
//! portcullis is promoted and applies its rules, then the VIPs are added. The endpoints'
//! answers to the probes must find this node, so the kick waits — as a task, the poll loop
//! goes on — until every IPv4 frontend address of the applied export and every `wait_for`
//! address is local (bounded by `vip_wait`), then kicks once. A demotion or a newer
//! promotion cancels a waiting kick.

use super::config::Role;
use super::core::Daemon;
use crate::apply::kick::{self, Options, Report};
use crate::apply::{Conntrack, ConntrackNetlink, Firewall};
use crate::render::conntrackd::SyncKick;
use crate::render::nft::Backend;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How often the kick looks for the VIPs while it waits.
const VIP_POLL: Duration = Duration::from_millis(50);

/// `/metrics` counters of the kicks, summed over the daemon's life.
#[derive(Clone, Default)]
pub struct KickMetrics {
    runs: Counter,
    connections: Counter,
    answers: Counter,
    icmp: Counter,
}

impl KickMetrics {
    pub fn register(registry: &mut Registry) -> KickMetrics {
        let m = KickMetrics::default();
        registry.register(
            "failover_kicks",
            "Failover kicks run after a promotion",
            m.runs.clone(),
        );
        registry.register(
            "failover_kick_connections",
            "Connections the failover kicks probed",
            m.connections.clone(),
        );
        registry.register(
            "failover_kick_answers",
            "Endpoints that answered a failover kick's probe",
            m.answers.clone(),
        );
        registry.register(
            "failover_kick_icmp_messages",
            "ICMP host unreachable messages the failover kicks sent to end a retransmission backoff",
            m.icmp.clone(),
        );
        m
    }

    fn record(&self, r: &Report) {
        self.runs.inc();
        self.connections.inc_by(r.connections as u64);
        self.answers
            .inc_by((r.client_answers + r.server_answers) as u64);
        self.icmp.inc_by(r.icmp_to_clients + r.icmp_to_servers);
    }
}

impl<F: Firewall, C: Conntrack> Daemon<F, C> {
    /// Called after a switch: a promotion of the nft backend with `[sync]` starts a kick;
    /// any switch cancels the one still waiting.
    pub(super) fn kick_after_switch(&mut self) {
        if let Some(waiting) = self.kick.take() {
            waiting.abort();
        }
        let Some(settings) = self.config.sync.as_ref().map(|s| s.kick.clone()) else {
            return;
        };
        if self.config.role != Role::Active
            || !settings.enabled
            || self.config.backend != Backend::Nft
        {
            return;
        }
        let Some(applied) = self.syncer.applied() else {
            tracing::warn!("failover kick skipped: no rules applied on promotion");
            return;
        };
        let vips: HashSet<IpAddr> = applied
            .services
            .values()
            .flat_map(|s| s.frontends.iter().map(|f| f.vip))
            .filter(IpAddr::is_ipv4)
            .collect();
        if vips.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let metrics = self.metrics.kick.clone();
        let task = runtime.spawn(kick_when_local(vips, settings, metrics));
        self.kick = Some(task.abort_handle());
    }
}

async fn kick_when_local(vips: HashSet<IpAddr>, settings: SyncKick, metrics: KickMetrics) {
    let promoted = Instant::now();
    let awaited: HashSet<IpAddr> = vips.iter().chain(&settings.wait_for).copied().collect();
    loop {
        match kick::not_local(&awaited) {
            Ok(missing) if missing.is_empty() => break,
            Ok(missing) if promoted.elapsed() >= settings.vip_wait => {
                tracing::warn!(
                    ?missing,
                    waited = ?settings.vip_wait,
                    "failover kick: not every VIP is here; kicking anyway"
                );
                break;
            }
            Ok(_) => tokio::time::sleep(VIP_POLL).await,
            Err(e) => {
                tracing::error!(error = %e, "failover kick skipped");
                return;
            }
        }
    }
    let waited = promoted.elapsed();
    let opts = Options {
        icmp_copies: settings.icmp_copies,
        packets_per_second: settings.packets_per_second,
        answer_wait: settings.answer_wait,
    };
    let ran = tokio::task::spawn_blocking(move || {
        let mut ct = ConntrackNetlink::open()?;
        let conns = kick::connections(&mut ct, &vips)?;
        kick::kick(&conns, &opts)
    })
    .await;
    match ran {
        Ok(Ok(r)) => {
            metrics.record(&r);
            tracing::info!(
                connections = r.connections,
                client_answers = r.client_answers,
                server_answers = r.server_answers,
                idle = r.idle,
                icmp_to_clients = r.icmp_to_clients,
                icmp_to_servers = r.icmp_to_servers,
                probes = r.probes_sent,
                send_errors = r.send_errors,
                last_send_error = r.last_send_error.as_deref().unwrap_or(""),
                waited_for_vips_ms = waited.as_millis() as u64,
                took_ms = r.elapsed.as_millis() as u64,
                "failover kick"
            );
        }
        Ok(Err(e)) => tracing::error!(error = %e, "failover kick failed"),
        Err(e) => tracing::error!(error = %e, "failover kick task failed"),
    }
}
