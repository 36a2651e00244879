//! IPVS, the kernel's layer-4 load balancer, driven over generic netlink.
//!
//! - wire: [`constants`] (from `ip_vs.h`), [`attr`], [`service`], [`dest`], [`message`];
//! - [`netlink`]: the socket ([`IpvsNetlink`]): family resolution, batched requests, dumps;
//! - [`Balancer`]: the narrow trait the sync logic uses, implemented by [`IpvsNetlink`] and by
//!   the in-memory [`TwinBalancer`];
//! - [`desired`]: the IPVS [`Table`] a desired state asks for;
//! - [`plan`]: [`IpvsPlan`], what one step will send, computed before anything is sent;
//! - [`reconcile`]: [`IpvsSync`], which keeps the services portcullis owns in step with the
//!   desired state: plans, then sends adds before the nft swap, drains (weight 0) after it,
//!   deletes once idle;
//! - [`ownership`]: the state file that says which services are ours;
//! - [`sync_daemon`]: the connection sync threads (master on the active node, backup on the
//!   standby), so connections survive a failover.

pub mod attr;
pub mod constants;
pub mod desired;
pub mod dest;
pub mod message;
pub mod netlink;
pub mod ownership;
pub mod plan;
pub mod reconcile;
pub mod service;
pub mod sync_daemon;
mod twin;

#[cfg(test)]
mod fixtures;

pub use desired::desired_table;
pub use dest::{Dest, DestId};
pub use message::{SyncDaemon, Timeouts};
pub use netlink::{IpvsError, IpvsNetlink};
pub use ownership::Ownership;
pub use plan::{IpvsPlan, Scope};
pub use reconcile::{IpvsSync, IpvsSyncError, IpvsSyncReport, DEFAULT_DRAIN_GRACE, OWNERSHIP_FILE};
pub use service::{Service, ServiceId};
pub use sync_daemon::{IpvsSyncLink, SyncDaemonOp, SyncDaemons, TwinSyncDaemons};
pub use twin::TwinBalancer;

use message::{IpvsMessage, Request};
use std::collections::BTreeMap;
use std::fmt;

/// A table of virtual services with their destinations, by identity.
pub type Table = BTreeMap<ServiceId, ServiceWithDests>;

/// One IPVS virtual service and its destinations (real servers), as the kernel holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceWithDests {
    pub service: Service,
    pub dests: BTreeMap<DestId, Dest>,
}

/// One change to the kernel's IPVS table. (Not to be confused with the nftables
/// `render::nft::transaction::Op`.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsOp {
    AddService(Service),
    EditService(Service),
    DelService(ServiceId),
    AddDest(ServiceId, Dest),
    EditDest(ServiceId, Dest),
    DelDest(ServiceId, DestId),
}

impl IpvsOp {
    pub fn request(&self) -> IpvsMessage {
        match self {
            IpvsOp::AddService(s) => Request::new_service(s),
            IpvsOp::EditService(s) => Request::set_service(s),
            IpvsOp::DelService(id) => Request::del_service(*id),
            IpvsOp::AddDest(s, d) => Request::new_dest(*s, d),
            IpvsOp::EditDest(s, d) => Request::set_dest(*s, d),
            IpvsOp::DelDest(s, d) => Request::del_dest(*s, *d),
        }
    }
}

impl fmt::Display for DestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        portcullis_export::SocketText(self.addr, Some(self.port)).fmt(f)
    }
}

impl fmt::Display for IpvsOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpvsOp::AddService(s) => write!(f, "add service {} ({})", s.id, s.scheduler),
            IpvsOp::EditService(s) => write!(f, "edit service {} ({})", s.id, s.scheduler),
            IpvsOp::DelService(id) => write!(f, "delete service {id}"),
            IpvsOp::AddDest(s, d) => write!(f, "add {s} -> {} weight {}", d.id, d.weight),
            IpvsOp::EditDest(s, d) => write!(f, "edit {s} -> {} weight {}", d.id, d.weight),
            IpvsOp::DelDest(s, d) => write!(f, "delete {s} -> {d}"),
        }
    }
}

/// The kernel's IPVS table as far as the sync logic needs it.
pub trait Balancer: Send {
    /// Every virtual service with its destinations: one service dump plus one destination
    /// dump per service. Costly at scale (seconds at 10k): start-up and audits only.
    fn table(&mut self) -> Result<Table, IpvsError>;
    /// The destinations of one service with their connection counters.
    fn dests(&mut self, svc: ServiceId) -> Result<Vec<Dest>, IpvsError>;
    /// Applies the operations in order, batched; one result per operation. A refused
    /// operation does not stop the ones after it.
    fn apply(&mut self, ops: &[IpvsOp]) -> Result<Vec<Result<(), IpvsError>>, IpvsError>;
}

impl Balancer for IpvsNetlink {
    fn table(&mut self) -> Result<Table, IpvsError> {
        let mut table = Table::new();
        for svc in self.services()? {
            let dests = self.dests(svc.id)?;
            table.insert(
                svc.id,
                ServiceWithDests {
                    dests: dests.into_iter().map(|d| (d.id, d)).collect(),
                    service: svc,
                },
            );
        }
        Ok(table)
    }
    fn dests(&mut self, svc: ServiceId) -> Result<Vec<Dest>, IpvsError> {
        IpvsNetlink::dests(self, svc)
    }
    fn apply(&mut self, ops: &[IpvsOp]) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
        self.batch(
            ops.iter()
                .map(|op| (op.to_string(), op.request()))
                .collect(),
        )
    }
}

/// Shared access, so tests can inspect a twin the sync logic owns.
impl<B: Balancer> Balancer for std::sync::Arc<std::sync::Mutex<B>> {
    fn table(&mut self) -> Result<Table, IpvsError> {
        lock(self).table()
    }
    fn dests(&mut self, svc: ServiceId) -> Result<Vec<Dest>, IpvsError> {
        lock(self).dests(svc)
    }
    fn apply(&mut self, ops: &[IpvsOp]) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
        lock(self).apply(ops)
    }
}

fn lock<B>(m: &std::sync::Mutex<B>) -> std::sync::MutexGuard<'_, B> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
