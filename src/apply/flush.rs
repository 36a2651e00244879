//! Removing everything portcullis put in the kernel, and nothing else (`portcullis flush`,
//! `flush_on_exit`): our nftables table, and the IPVS services the ownership file lists.
//! Services someone deleted already (ESRCH/ENOENT) count as done. Without an ownership
//! file nothing in IPVS is known to be ours, so IPVS is not even opened: a host without IPVS
//! flushes fine.

use super::error::NftError;
use super::ipvs::{Balancer, IpvsError, IpvsNetlink, IpvsOp, Ownership, ServiceId, OWNERSHIP_FILE};
use super::{Firewall, NftCli};
use std::path::Path;

/// What a flush removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Our nft table existed and was deleted (`false`: there was none).
    pub nft_table_deleted: bool,
    /// Owned IPVS services deleted now, in order.
    pub ipvs_deleted: Vec<ServiceId>,
    /// Owned IPVS services someone had deleted already: counted as done.
    pub ipvs_already_gone: Vec<ServiceId>,
}

/// One part of a flush that failed; the other parts were still attempted.
#[derive(Debug, thiserror::Error)]
pub enum FlushFailure {
    /// The ownership file could not be read or rewritten.
    #[error("{0}")]
    Ownership(#[source] std::io::Error),
    /// IPVS could not be reached at all.
    #[error("{0}")]
    Netlink(#[source] IpvsError),
    /// The batch of deletes could not be sent or its answers not read.
    #[error("flush of IPVS failed: {0}")]
    Batch(#[source] IpvsError),
    /// The kernel refused to delete one owned service (it stays owned).
    #[error("{0}")]
    IpvsRefused(#[source] IpvsError),
    #[error("flush failed: {0}")]
    Nft(#[source] NftError),
}

/// A flush that did not remove everything: what it did remove, and what failed.
#[derive(Debug, thiserror::Error)]
#[error("{}", .failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct FlushError {
    pub done: FlushReport,
    pub failures: Vec<FlushFailure>,
}

/// Deletes our nft table and the IPVS services `state_dir`'s ownership file lists.
pub fn flush_owned(state_dir: &Path) -> Result<FlushReport, FlushError> {
    let open_ipvs = || IpvsNetlink::open().map(|n| Box::new(n) as Box<dyn Balancer>);
    flush(
        &mut NftCli::default(),
        open_ipvs,
        &state_dir.join(OWNERSHIP_FILE),
    )
}

/// [`flush_owned`] with the kernels given: IPVS is opened only when something is owned.
pub fn flush(
    firewall: &mut dyn Firewall,
    open_ipvs: impl FnOnce() -> Result<Box<dyn Balancer>, IpvsError>,
    ownership_file: &Path,
) -> Result<FlushReport, FlushError> {
    let mut done = FlushReport::default();
    let mut failures = Vec::new();
    if let Err(e) = flush_ipvs(open_ipvs, ownership_file, &mut done) {
        failures.extend(e);
    }
    match firewall.delete_table() {
        Ok(existed) => done.nft_table_deleted = existed,
        Err(e) => failures.push(FlushFailure::Nft(e)),
    }
    if failures.is_empty() {
        Ok(done)
    } else {
        Err(FlushError { done, failures })
    }
}

fn flush_ipvs(
    open_ipvs: impl FnOnce() -> Result<Box<dyn Balancer>, IpvsError>,
    ownership_file: &Path,
    done: &mut FlushReport,
) -> Result<(), Vec<FlushFailure>> {
    if !ownership_file.exists() {
        return Ok(());
    }
    let mut ownership =
        Ownership::load(ownership_file).map_err(|e| vec![FlushFailure::Ownership(e)])?;
    if ownership.owned.is_empty() {
        return Ok(());
    }
    let mut balancer = open_ipvs().map_err(|e| vec![FlushFailure::Netlink(e)])?;
    let ops: Vec<IpvsOp> = ownership
        .owned
        .iter()
        .map(|id| IpvsOp::DelService(*id))
        .collect();
    let results = balancer
        .apply(&ops)
        .map_err(|e| vec![FlushFailure::Batch(e)])?;
    let mut failures = Vec::new();
    let mut removed = Vec::new();
    for (op, result) in ops.iter().zip(results) {
        let IpvsOp::DelService(id) = op else { continue };
        match result {
            Ok(()) => {
                done.ipvs_deleted.push(*id);
                removed.push(*id);
            }
            Err(e) if e.is_already_gone() => {
                done.ipvs_already_gone.push(*id);
                removed.push(*id);
            }
            Err(e) => failures.push(FlushFailure::IpvsRefused(e)),
        }
    }
    // What is gone is no longer ours; what the kernel kept stays owned for the next flush.
    if let Err(e) = ownership.retain(|id| !removed.contains(id)) {
        failures.push(FlushFailure::Ownership(e));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::ipvs::{desired_table, TwinBalancer};
    use crate::apply::TwinFirewall;
    use crate::model::DesiredState;
    use std::sync::{Arc, Mutex};

    fn dir(tag: &str) -> std::path::PathBuf {
        crate::test_dir(&format!("flush-{tag}"))
    }

    fn twin_with(n: usize) -> (Arc<Mutex<TwinBalancer>>, Vec<ServiceId>) {
        let table = desired_table(&DesiredState::from_rows(&crate::synth::rows_with_services(
            n,
        )));
        let ids = table.keys().copied().collect();
        let twin = TwinBalancer {
            table,
            ..Default::default()
        };
        (Arc::new(Mutex::new(twin)), ids)
    }

    fn opener(
        twin: &Arc<Mutex<TwinBalancer>>,
    ) -> impl FnOnce() -> Result<Box<dyn Balancer>, IpvsError> {
        let twin = twin.clone();
        move || Ok(Box::new(twin) as Box<dyn Balancer>)
    }

    #[test]
    fn deletes_what_we_own_counts_the_already_gone_and_keeps_the_foreign() {
        let d = dir("owned");
        let file = d.join(OWNERSHIP_FILE);
        let (twin, ids) = twin_with(4);
        let (ours, foreign) = ids.split_at(3);
        let mut own = Ownership::load(&file).expect("load");
        own.extend(ours.iter().copied()).expect("save");
        // One of ours was deleted by hand already.
        twin.lock().expect("lock").table.remove(&ours[0]);
        let mut fw = TwinFirewall {
            table: Some(Default::default()),
            ..Default::default()
        };
        let report = flush(&mut fw, opener(&twin), &file).expect("flush");
        assert_eq!(
            report,
            FlushReport {
                nft_table_deleted: true,
                ipvs_deleted: ours[1..].to_vec(),
                ipvs_already_gone: vec![ours[0]],
            }
        );
        assert!(fw.table.is_none());
        let left: Vec<_> = twin.lock().expect("lock").table.keys().copied().collect();
        assert_eq!(left, foreign, "only the foreign service is left");
        assert!(Ownership::load(&file).expect("reload").owned.is_empty());
        // Again: nothing left to do, and that is success.
        let again = flush(&mut fw, opener(&twin), &file).expect("flush again");
        assert_eq!(again, FlushReport::default());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn without_an_ownership_file_ipvs_is_not_even_opened() {
        let d = dir("none");
        let mut fw = TwinFirewall::default();
        let never = || -> Result<Box<dyn Balancer>, IpvsError> { panic!("IPVS opened") };
        let report = flush(&mut fw, never, &d.join(OWNERSHIP_FILE)).expect("flush");
        assert_eq!(report, FlushReport::default(), "no table, nothing owned");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_refused_delete_stays_owned_and_the_nft_table_still_goes() {
        let d = dir("refused");
        let file = d.join(OWNERSHIP_FILE);
        let (twin, ids) = twin_with(2);
        Ownership::load(&file)
            .expect("load")
            .extend(ids.iter().copied())
            .expect("save");
        twin.lock().expect("lock").fail_next = Some(libc::ENOMEM);
        let mut fw = TwinFirewall {
            table: Some(Default::default()),
            ..Default::default()
        };
        let err = flush(&mut fw, opener(&twin), &file).expect_err("refused");
        assert!(matches!(&err.failures[..], [FlushFailure::IpvsRefused(_)]));
        assert!(err.done.nft_table_deleted, "the nft table goes anyway");
        assert_eq!(err.done.ipvs_deleted, ids[1..]);
        assert_eq!(
            Ownership::load(&file).expect("reload").owned,
            [ids[0]].into_iter().collect(),
            "the service the kernel kept is still ours"
        );
        let _ = std::fs::remove_dir_all(d);
    }
}
