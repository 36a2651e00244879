//! IPVS, the kernel's layer-4 load balancer, driven over generic netlink.
//!
//! - wire: [`constants`] (from `ip_vs.h`), [`attr`], [`service`], [`dest`], [`message`];
//! - [`netlink`]: the socket ([`IpvsNetlink`]): family resolution, batched requests, dumps;
//! - [`Balancer`]: the narrow trait the sync logic uses, implemented by [`IpvsNetlink`] and by
//!   the in-memory [`TwinBalancer`];
//! - [`reconcile`]: [`IpvsSync`], which keeps the services portcullis owns in step with the
//!   desired state: adds before the nft swap, drains (weight 0) after it, deletes once idle;
//! - [`ownership`]: the state file that says which services are ours.

pub mod attr;
pub mod constants;
pub mod dest;
pub mod message;
pub mod netlink;
pub mod ownership;
pub mod reconcile;
pub mod service;
mod twin;

#[cfg(test)]
mod fixtures;

pub use dest::{Dest, DestId};
pub use message::{SyncDaemon, Timeouts};
pub use netlink::{IpvsError, IpvsNetlink};
pub use ownership::Ownership;
pub use reconcile::{
    desired_table, IpvsSync, IpvsSyncError, IpvsSyncReport, Table, DEFAULT_DRAIN_GRACE,
    OWNERSHIP_FILE,
};
pub use service::{Service, ServiceId};
pub use twin::TwinBalancer;

use message::{IpvsMessage, Request};
use std::fmt;

/// One change to the kernel's IPVS table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddService(Service),
    EditService(Service),
    DelService(ServiceId),
    AddDest(ServiceId, Dest),
    EditDest(ServiceId, Dest),
    DelDest(ServiceId, DestId),
}

impl Op {
    pub fn request(&self) -> IpvsMessage {
        match self {
            Op::AddService(s) => Request::new_service(s),
            Op::EditService(s) => Request::set_service(s),
            Op::DelService(id) => Request::del_service(*id),
            Op::AddDest(s, d) => Request::new_dest(*s, d),
            Op::EditDest(s, d) => Request::set_dest(*s, d),
            Op::DelDest(s, d) => Request::del_dest(*s, *d),
        }
    }
}

impl fmt::Display for DestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        portcullis_export::SocketText(self.addr, Some(self.port)).fmt(f)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddService(s) => write!(f, "add service {} ({})", s.id, s.scheduler),
            Op::EditService(s) => write!(f, "edit service {} ({})", s.id, s.scheduler),
            Op::DelService(id) => write!(f, "delete service {id}"),
            Op::AddDest(s, d) => write!(f, "add {s} -> {} weight {}", d.id, d.weight),
            Op::EditDest(s, d) => write!(f, "edit {s} -> {} weight {}", d.id, d.weight),
            Op::DelDest(s, d) => write!(f, "delete {s} -> {d}"),
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
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<(), IpvsError>>, IpvsError>;
}

impl Balancer for IpvsNetlink {
    fn table(&mut self) -> Result<Table, IpvsError> {
        let mut table = Table::new();
        for svc in self.services()? {
            let dests = self.dests(svc.id)?;
            table.insert(
                svc.id,
                reconcile::Entry {
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
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
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
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
        lock(self).apply(ops)
    }
}

fn lock<B>(m: &std::sync::Mutex<B>) -> std::sync::MutexGuard<'_, B> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
