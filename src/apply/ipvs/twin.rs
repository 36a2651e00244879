//! The in-memory twin of the kernel's IPVS table: the same operations with the kernel's
//! errors (EEXIST, ESRCH, ENOENT), connection counters tests can set, and a record of what was
//! sent, so the sync logic is unit-tested without a kernel.

use super::netlink::IpvsError;
use super::{Balancer, Dest, IpvsOp, ServiceId, ServiceWithDests, Table};
use std::io;

#[derive(Clone, Debug, Default)]
pub struct TwinBalancer {
    pub table: Table,
    /// Every batch applied, in order.
    pub batches: Vec<Vec<IpvsOp>>,
    /// Full-table dumps served.
    pub dumps: usize,
    /// When set, the next operation is refused with this errno (and changes nothing).
    pub fail_next: Option<i32>,
}

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;

fn refuse(op: &IpvsOp, errno: i32) -> IpvsError {
    IpvsError::Kernel {
        op: op.to_string(),
        error: io::Error::from_raw_os_error(errno),
    }
}

impl TwinBalancer {
    /// Sets the active connections of a destination (what live clients would do).
    pub fn set_active(&mut self, svc: ServiceId, dest: super::DestId, active: u32) {
        if let Some(d) = self
            .table
            .get_mut(&svc)
            .and_then(|e| e.dests.get_mut(&dest))
        {
            d.active_conns = active;
        }
    }

    pub fn weight(&self, svc: ServiceId, dest: super::DestId) -> Option<u32> {
        self.table.get(&svc)?.dests.get(&dest).map(|d| d.weight)
    }

    fn apply_one(&mut self, op: &IpvsOp) -> Result<(), IpvsError> {
        if let Some(errno) = self.fail_next.take() {
            return Err(refuse(op, errno));
        }
        match op {
            IpvsOp::AddService(s) => {
                if self.table.contains_key(&s.id) {
                    return Err(refuse(op, EEXIST));
                }
                self.table.insert(
                    s.id,
                    ServiceWithDests {
                        service: s.clone(),
                        dests: Default::default(),
                    },
                );
            }
            IpvsOp::EditService(s) => {
                let e = self.table.get_mut(&s.id).ok_or_else(|| refuse(op, ESRCH))?;
                e.service = s.clone();
            }
            IpvsOp::DelService(id) => {
                self.table.remove(id).ok_or_else(|| refuse(op, ESRCH))?;
            }
            IpvsOp::AddDest(svc, d) => {
                let e = self.table.get_mut(svc).ok_or_else(|| refuse(op, ESRCH))?;
                if e.dests.contains_key(&d.id) {
                    return Err(refuse(op, EEXIST));
                }
                e.dests.insert(d.id, counters_cleared(d));
            }
            IpvsOp::EditDest(svc, d) => {
                let e = self.table.get_mut(svc).ok_or_else(|| refuse(op, ESRCH))?;
                let cur = e.dests.get_mut(&d.id).ok_or_else(|| refuse(op, ENOENT))?;
                let (active, inact) = (cur.active_conns, cur.inact_conns);
                *cur = d.clone();
                cur.active_conns = active;
                cur.inact_conns = inact;
            }
            IpvsOp::DelDest(svc, id) => {
                let e = self.table.get_mut(svc).ok_or_else(|| refuse(op, ESRCH))?;
                e.dests.remove(id).ok_or_else(|| refuse(op, ENOENT))?;
            }
        }
        Ok(())
    }
}

fn counters_cleared(d: &Dest) -> Dest {
    let mut d = d.clone();
    d.active_conns = 0;
    d.inact_conns = 0;
    d
}

impl Balancer for TwinBalancer {
    fn table(&mut self) -> Result<Table, IpvsError> {
        self.dumps += 1;
        Ok(self.table.clone())
    }
    fn dests(&mut self, svc: ServiceId) -> Result<Vec<Dest>, IpvsError> {
        Ok(self
            .table
            .get(&svc)
            .map(|e| e.dests.values().cloned().collect())
            .unwrap_or_default())
    }
    fn apply(&mut self, ops: &[IpvsOp]) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
        self.batches.push(ops.to_vec());
        Ok(ops.iter().map(|op| self.apply_one(op)).collect())
    }
}
