//! `portcullis run`'s loop: polls until shut down, and meanwhile answers the control socket
//! (promote/demote), SIGHUP (reload), the audit timer and the health checker. A wake or a
//! reload interrupts a poll in flight, so a long-poll held by ADMIN never delays a failover;
//! a health change does not: the fetch in flight owns what it needs (a clone of the fetcher)
//! and stays in flight while the change is applied, so a flapping server cannot starve polls.
//! Rules stay in place on exit.

use super::config::Config;
use super::control::{self, ControlError, Instance, Request};
use super::core::Daemon;
use super::fetch::{FetchError, Fetched};
use crate::apply::{Conntrack, Firewall};
use crate::render::nft::RenderOptions;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

enum Event {
    Shutdown,
    Wake,
    Reload,
    Audit,
    Health,
    PollDue,
    Fetched(Result<Fetched, FetchError>),
}

type FetchInFlight = Pin<Box<dyn Future<Output = Result<Fetched, FetchError>>>>;

impl<F: Firewall, C: Conntrack> Daemon<F, C> {
    /// Runs until `shutdown` resolves. `reload_config` produces the configuration a SIGHUP
    /// asks for (the same file and flags read again). Fails only at start, when the state
    /// directory is another daemon's or the control socket cannot be set up.
    pub async fn run<E: Display>(
        &mut self,
        shutdown: impl Future<Output = ()>,
        mut reload_config: impl FnMut() -> Result<(Config, RenderOptions), E>,
    ) -> Result<(), ControlError> {
        tokio::pin!(shutdown);
        let instance = Instance::claim(&self.config.state_dir)?;
        let mut requests = spawn_control(&instance)?;
        self.spawn_metrics();
        // SIGHUP's default action would end the process: installed before anything slow. A
        // SIGUSR1 (how promote woke daemons before the control socket) still wakes.
        let mut hangup = signal(SignalKind::hangup()).ok();
        let mut usr1 = signal(SignalKind::user_defined1()).ok();
        // A role asked for before this start (a promotion while the daemon was down) counts.
        if let Some(role) = self.wanted_role() {
            self.config.role = role;
        }
        let step = self.start().await;
        tracing::info!(?step, "started");
        let mut audit = audit_timer(self.config.audit_interval).await;
        let health_changed = self.health.changed();
        let mut next_poll = Instant::now() + self.next_delay();
        let mut in_flight: Option<FetchInFlight> = None;
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => Event::Shutdown,
                Some(Request::Wake) = requests.recv() => Event::Wake,
                _ = recv(&mut usr1) => Event::Wake,
                _ = recv(&mut hangup) => Event::Reload,
                _ = audit.tick() => Event::Audit,
                _ = health_changed.notified() => Event::Health,
                _ = tokio::time::sleep_until(next_poll), if in_flight.is_none() => Event::PollDue,
                fetched = async {
                    match in_flight.as_mut() {
                        Some(fetch) => fetch.await,
                        None => std::future::pending().await,
                    }
                }, if in_flight.is_some() => Event::Fetched(fetched),
            };
            match event {
                Event::Shutdown => {
                    tracing::info!("shutting down; rules stay in place");
                    return Ok(());
                }
                Event::Wake => {
                    // The switch is local (a promotion applies the cached export); the poll
                    // that follows must stay interruptible, so it happens in the select.
                    in_flight = None;
                    if let Some(step) = self.switch_if_asked() {
                        tracing::info!(?step, "role switched");
                        self.write_status();
                    }
                    next_poll = Instant::now();
                }
                Event::Reload => {
                    in_flight = None;
                    let audit_before = self.config.audit_interval;
                    match reload_config() {
                        Ok((config, opts)) => match self.reload(config, opts) {
                            Ok(changed) => tracing::info!(?changed, "configuration reloaded"),
                            Err(e) => {
                                tracing::error!(error = %e, "configuration not reloaded; the running one stays")
                            }
                        },
                        Err(e) => {
                            tracing::error!(error = %e, "configuration not reloaded; the running one stays")
                        }
                    }
                    if self.config.audit_interval != audit_before {
                        audit = audit_timer(self.config.audit_interval).await;
                    }
                    next_poll = Instant::now() + self.next_delay();
                }
                Event::Audit => {
                    self.audit();
                }
                Event::Health => {
                    self.on_health_change();
                }
                Event::PollDue => match self.switch_if_asked() {
                    Some(step) => {
                        self.after_poll(&step);
                        tracing::debug!(?step, "poll");
                        next_poll = Instant::now() + self.next_delay();
                    }
                    None => in_flight = Some(Box::pin(self.begin_poll())),
                },
                Event::Fetched(fetched) => {
                    in_flight = None;
                    let step = self.finish_poll(fetched);
                    self.after_poll(&step);
                    tracing::debug!(?step, "poll");
                    if self.health.retry {
                        self.on_health_change();
                    }
                    next_poll = Instant::now() + self.next_delay();
                }
            }
        }
    }

    fn spawn_metrics(&self) {
        if let Some(addr) = self.config.metrics {
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics.serve(addr).await {
                    tracing::error!(error = %e, %addr, "metrics listener failed");
                }
            });
        }
    }
}

/// Accepts control connections in a task of its own and hands their requests to the loop.
fn spawn_control(instance: &Instance) -> Result<mpsc::Receiver<Request>, ControlError> {
    let listener = instance.listen()?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(request) = control::serve_one(stream).await {
                    // A full queue already holds a wake: one more adds nothing.
                    let _ = tx.try_send(request);
                }
            });
        }
    });
    Ok(rx)
}

/// An audit timer whose first tick is one period away (start-up has just reconciled).
async fn audit_timer(period: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval(period);
    timer.tick().await;
    timer
}

/// The next delivery of a signal; never, when the handler could not be installed.
async fn recv(signal: &mut Option<Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
