//! The IPVS connection sync threads of the `ipvs` backend with a `[sync]` link: the active
//! node runs the master, the standby the backup ([`crate::apply::ipvs::sync_daemon`]). Set
//! at start-up and on every role switch, before the switch's apply, so a promoted node
//! already holds the synchronised connections when its rules and VIPs take traffic.

use super::config::Role;
use super::core::Daemon;
use crate::apply::ipvs::{sync_daemon, IpvsSyncLink, SyncDaemons};
use crate::apply::{Conntrack, Firewall};

/// The kernel's sync threads and the link they use.
pub struct SyncThreads {
    pub kernel: Box<dyn SyncDaemons + Send>,
    pub link: IpvsSyncLink,
}

impl<F: Firewall, C: Conntrack> Daemon<F, C> {
    /// Runs the sync thread of the current role (none configured: nothing). A refusal is
    /// logged and retried at the next switch or start: the data plane does not wait for it.
    pub(super) fn converge_sync_threads(&mut self) {
        let Some(threads) = self.sync_threads.as_mut() else {
            return;
        };
        let active = self.config.role == Role::Active;
        match super::step::off_runtime(|| {
            sync_daemon::converge(threads.kernel.as_mut(), &threads.link, active)
        }) {
            Ok(ops) => {
                for op in ops {
                    tracing::info!(%op, "ipvs connection sync");
                }
            }
            Err(e) => tracing::error!(error = %e, "ipvs connection sync threads not set"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::ipvs::TwinSyncDaemons;
    use crate::apply::{RecordingConntrack, TwinFirewall};
    use crate::daemon::config::Config;
    use crate::daemon::Step;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn the_role_decides_the_sync_thread_and_a_switch_swaps_it_first() {
        let dir = crate::test_dir("sync-threads");
        std::fs::write(dir.join("export.csv"), b"").expect("write export");
        let config = Config {
            source: Some(format!("file://{}", dir.join("export.csv").display()).into()),
            state_dir: dir.join("state"),
            role: Role::Standby,
            ..Config::default()
        };
        let opts = super::super::step_tests::options(&["eth0"]);
        let mut d = Daemon::new(
            config,
            TwinFirewall::default(),
            RecordingConntrack::default(),
            opts,
        )
        .expect("daemon");
        let kernel = Arc::new(Mutex::new(TwinSyncDaemons::default()));
        let link = IpvsSyncLink {
            interface: "sync0".into(),
            sync_id: 9,
        };
        d.sync_threads = Some(SyncThreads {
            kernel: Box::new(Arc::clone(&kernel)),
            link: link.clone(),
        });
        let threads = || kernel.lock().expect("twin").threads.clone();

        d.start().await;
        assert_eq!(
            threads(),
            [sync_daemon::wanted(&link, false)],
            "standby: backup"
        );

        super::super::role::write_role(&d.config.state_dir, Role::Active).expect("promote");
        d.poll_once().await;
        assert_eq!(
            threads(),
            [sync_daemon::wanted(&link, true)],
            "active: master"
        );

        super::super::role::write_role(&d.config.state_dir, Role::Standby).expect("demote");
        assert_eq!(d.poll_once().await, Step::Demoted);
        assert_eq!(
            threads(),
            [sync_daemon::wanted(&link, false)],
            "demoted: backup"
        );
    }
}
