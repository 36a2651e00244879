//! The IPVS connection synchronisation daemon (`ipvsadm --start-daemon`), so established
//! connections — and persistence templates — survive a failover of the `ipvs` backend.
//!
//! The kernel runs a *master* thread that multicasts the state of the connections this
//! director handles over a sync interface, and a *backup* thread that creates the
//! connections it hears about. The active gateway runs the master, the standby the backup;
//! on promote and demote they swap. A backup's connections forward like any other once the
//! VIP arrives, so an established flow continues on the new active node instead of meeting a
//! RST from a director that never saw its SYN.
//!
//! Both threads of this network namespace are portcullis's once `[sync]` names an IPVS sync
//! interface: [`plan`] stops any thread that is not the one the role wants (another interface,
//! another sync id, the other state) and starts the wanted one. Without that setting nothing
//! here runs and threads started by hand (`ipvsadm --start-daemon`) are left alone.

use super::message::SyncDaemon;
use super::netlink::{IpvsError, IpvsNetlink};
use std::fmt;

/// Where the sync messages go: the interface of the link between the pair, and the sync id
/// that keeps this pair's messages apart from another pair's on the same link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsSyncLink {
    pub interface: String,
    pub sync_id: u32,
}

/// One change to the sync threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncDaemonOp {
    Start(SyncDaemon),
    /// Stops the master (`backup == false`) or the backup thread.
    Stop {
        backup: bool,
    },
}

impl fmt::Display for SyncDaemonOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncDaemonOp::Start(d) => write!(
                f,
                "start {} sync daemon on {} (sync id {})",
                state_name(d.backup),
                d.interface,
                d.sync_id
            ),
            SyncDaemonOp::Stop { backup } => {
                write!(f, "stop {} sync daemon", state_name(*backup))
            }
        }
    }
}

fn state_name(backup: bool) -> &'static str {
    if backup {
        "backup"
    } else {
        "master"
    }
}

/// The thread a role wants: the active node sends (master), the standby listens (backup).
pub fn wanted(link: &IpvsSyncLink, active: bool) -> SyncDaemon {
    SyncDaemon {
        backup: !active,
        interface: link.interface.clone(),
        sync_id: link.sync_id,
    }
}

/// What takes `running` to exactly `want`: stops first (the kernel refuses a second thread of
/// one state), then the start. Nothing when the wanted thread already runs alone.
pub fn plan(running: &[SyncDaemon], want: &SyncDaemon) -> Vec<SyncDaemonOp> {
    let mut ops: Vec<SyncDaemonOp> = running
        .iter()
        .filter(|d| *d != want)
        .map(|d| SyncDaemonOp::Stop { backup: d.backup })
        .collect();
    if !running.contains(want) {
        ops.push(SyncDaemonOp::Start(want.clone()));
    }
    ops
}

/// The kernel's sync threads as [`converge`] needs them; the in-memory twin implements it for
/// the daemon's unit tests, [`IpvsNetlink`] for real.
pub trait SyncDaemons {
    fn running(&mut self) -> Result<Vec<SyncDaemon>, IpvsError>;
    fn apply(&mut self, op: &SyncDaemonOp) -> Result<(), IpvsError>;
}

impl SyncDaemons for IpvsNetlink {
    fn running(&mut self) -> Result<Vec<SyncDaemon>, IpvsError> {
        self.daemons()
    }
    fn apply(&mut self, op: &SyncDaemonOp) -> Result<(), IpvsError> {
        match op {
            SyncDaemonOp::Start(d) => self.start_daemon(d),
            SyncDaemonOp::Stop { backup } => self.stop_daemon(*backup),
        }
    }
}

/// Shared access, so a test can inspect the twin a daemon owns.
impl<K: SyncDaemons> SyncDaemons for std::sync::Arc<std::sync::Mutex<K>> {
    fn running(&mut self) -> Result<Vec<SyncDaemon>, IpvsError> {
        super::lock(self).running()
    }
    fn apply(&mut self, op: &SyncDaemonOp) -> Result<(), IpvsError> {
        super::lock(self).apply(op)
    }
}

/// Brings the sync threads to what the role wants; returns what was done (empty when
/// nothing had to change). Stops before starts, and stops on the first refusal: a half-done
/// swap is reported, and the next call (every role switch and start-up) converges from it.
pub fn converge(
    kernel: &mut dyn SyncDaemons,
    link: &IpvsSyncLink,
    active: bool,
) -> Result<Vec<SyncDaemonOp>, IpvsError> {
    let ops = plan(&kernel.running()?, &wanted(link, active));
    for op in &ops {
        kernel.apply(op)?;
    }
    Ok(ops)
}

/// The sync threads this network namespace's kernel runs, as `portcullis status` shows them.
pub fn running_threads() -> Result<Vec<SyncDaemon>, IpvsError> {
    IpvsNetlink::open()?.daemons()
}

/// Connections in this network namespace's IPVS table, the synchronised ones included:
/// the entries of `/proc/net/ip_vs_conn` (what `ipvsadm -Lnc` lists), after its header.
pub fn connection_count() -> std::io::Result<usize> {
    use std::io::BufRead;
    let table = std::fs::File::open("/proc/net/ip_vs_conn")?;
    let lines = std::io::BufReader::new(table).lines().count();
    Ok(lines.saturating_sub(1))
}

/// The in-memory twin: threads as a list, the kernel's refusals of a second thread of one
/// state (EEXIST) and of stopping one that does not run (ESRCH).
#[derive(Debug, Default)]
pub struct TwinSyncDaemons {
    pub threads: Vec<SyncDaemon>,
}

impl SyncDaemons for TwinSyncDaemons {
    fn running(&mut self) -> Result<Vec<SyncDaemon>, IpvsError> {
        Ok(self.threads.clone())
    }
    fn apply(&mut self, op: &SyncDaemonOp) -> Result<(), IpvsError> {
        let refuse = |errno| IpvsError::Kernel {
            op: op.to_string(),
            error: std::io::Error::from_raw_os_error(errno),
        };
        match op {
            SyncDaemonOp::Start(d) => {
                if self.threads.iter().any(|t| t.backup == d.backup) {
                    return Err(refuse(libc::EEXIST));
                }
                self.threads.push(d.clone());
            }
            SyncDaemonOp::Stop { backup } => {
                let before = self.threads.len();
                self.threads.retain(|t| t.backup != *backup);
                if self.threads.len() == before {
                    return Err(refuse(libc::ESRCH));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> IpvsSyncLink {
        IpvsSyncLink {
            interface: "sync0".into(),
            sync_id: 7,
        }
    }

    #[test]
    fn the_active_node_runs_the_master_and_the_standby_the_backup() {
        let mut k = TwinSyncDaemons::default();
        converge(&mut k, &link(), true).unwrap();
        assert_eq!(k.threads, [wanted(&link(), true)]);
        assert!(!k.threads[0].backup);
        let mut k = TwinSyncDaemons::default();
        converge(&mut k, &link(), false).unwrap();
        assert!(k.threads[0].backup);
    }

    #[test]
    fn promote_swaps_backup_for_master_stopping_first() {
        let mut k = TwinSyncDaemons::default();
        converge(&mut k, &link(), false).unwrap();
        let ops = converge(&mut k, &link(), true).unwrap();
        assert_eq!(
            ops,
            [
                SyncDaemonOp::Stop { backup: true },
                SyncDaemonOp::Start(wanted(&link(), true))
            ]
        );
        assert_eq!(k.threads, [wanted(&link(), true)]);
    }

    #[test]
    fn a_converged_node_sends_nothing() {
        let mut k = TwinSyncDaemons::default();
        converge(&mut k, &link(), true).unwrap();
        assert!(converge(&mut k, &link(), true).unwrap().is_empty());
    }

    #[test]
    fn a_thread_on_another_interface_or_sync_id_is_replaced() {
        let mut k = TwinSyncDaemons {
            threads: vec![
                SyncDaemon {
                    backup: false,
                    interface: "eth9".into(),
                    sync_id: 7,
                },
                SyncDaemon {
                    backup: true,
                    interface: "sync0".into(),
                    sync_id: 1,
                },
            ],
        };
        converge(&mut k, &link(), true).unwrap();
        assert_eq!(k.threads, [wanted(&link(), true)]);
    }

    #[test]
    fn a_refusal_stops_the_swap_and_the_next_call_finishes_it() {
        // A twin that refuses the first start, as a kernel whose interface is not up yet.
        struct RefuseOnce(TwinSyncDaemons, bool);
        impl SyncDaemons for RefuseOnce {
            fn running(&mut self) -> Result<Vec<SyncDaemon>, IpvsError> {
                self.0.running()
            }
            fn apply(&mut self, op: &SyncDaemonOp) -> Result<(), IpvsError> {
                if matches!(op, SyncDaemonOp::Start(_)) && !self.1 {
                    self.1 = true;
                    return Err(IpvsError::Kernel {
                        op: op.to_string(),
                        error: std::io::Error::from_raw_os_error(libc::ENODEV),
                    });
                }
                self.0.apply(op)
            }
        }
        let mut k = RefuseOnce(TwinSyncDaemons::default(), false);
        assert!(converge(&mut k, &link(), true).is_err());
        assert!(k.0.threads.is_empty());
        converge(&mut k, &link(), true).unwrap();
        assert_eq!(k.0.threads, [wanted(&link(), true)]);
    }
}
