//! The generic netlink socket to the kernel's IPVS: resolves the family, sends requests
//! (single, batched, dumps) and matches replies and acknowledgements by sequence number.
//!
//! Batching is what makes a 10k-service load cheap: many requests go out in one `sendmsg`
//! (the kernel processes the messages of a buffer in order and acknowledges each), instead of
//! one process or one round trip per change.

use super::dest::{Dest, DestId};
use super::message::{IpvsMessage, Request, SyncDaemon, Timeouts};
use super::service::{Service, ServiceId};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("IPVS netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error(
        "the kernel has no IPVS (generic netlink family \"IPVS\" not found; is ip_vs loaded?)"
    )]
    NoFamily,
    #[error("kernel refused {op}: {error}")]
    Kernel { op: String, error: io::Error },
    #[error("cannot decode the kernel's reply: {0}")]
    Decode(String),
}

impl IpvsError {
    /// The errno of a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IpvsError::Kernel { error, .. } => error.raw_os_error(),
            _ => None,
        }
    }

    /// The kernel refused because the service (ESRCH) or destination (ENOENT) does not exist:
    /// for a delete, someone removed it already (by hand), which is as good as deleted.
    pub fn is_already_gone(&self) -> bool {
        matches!(self.errno(), Some(libc::ESRCH) | Some(libc::ENOENT))
    }
}

/// Requests per `sendmsg`: keeps the acknowledgements of one batch well inside the socket's
/// receive buffer.
const BATCH: usize = 256;

pub struct IpvsNetlink {
    socket: Socket,
    family: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl IpvsNetlink {
    /// Opens a socket and resolves the IPVS family id (the kernel assigns it at load time).
    pub fn open() -> Result<IpvsNetlink, IpvsError> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Errors carry no copy of our request: smaller acks, and we match by sequence.
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_rx_buf_sz(4 << 20);
        let mut nl = IpvsNetlink {
            socket,
            family: 0,
            seq: 0,
            buf: vec![0; 1 << 16],
        };
        nl.family = nl.resolve_family()?;
        Ok(nl)
    }

    fn resolve_family(&mut self) -> Result<u16, IpvsError> {
        let mut genl = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(
                super::constants::IPVS_GENL_NAME.into(),
            )],
        });
        genl.finalize();
        let mut msg = NetlinkMessage::from(genl);
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        self.seq += 1;
        msg.header.sequence_number = self.seq;
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let mut family = None;
        loop {
            let n = self.recv()?;
            let mut off = 0;
            while off < n {
                let reply = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&self.buf[off..n])
                    .map_err(|e| IpvsError::Decode(e.to_string()))?;
                off += aligned(reply.header.length as usize);
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        for nla in m.payload.nlas {
                            if let GenlCtrlAttrs::FamilyId(id) = nla {
                                family = Some(id);
                            }
                        }
                    }
                    NetlinkPayload::Error(e) if e.code.is_none() => {
                        return family.ok_or(IpvsError::NoFamily)
                    }
                    NetlinkPayload::Error(_) => return Err(IpvsError::NoFamily),
                    _ => {}
                }
            }
        }
    }

    fn recv(&mut self) -> Result<usize, IpvsError> {
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn encode(&mut self, msg: IpvsMessage, flags: u16, out: &mut Vec<u8>) -> u32 {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(self.family);
        let mut nl =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(genl));
        self.seq = self.seq.wrapping_add(1);
        nl.header.flags = flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let start = out.len();
        out.resize(start + nl.buffer_len(), 0);
        nl.serialize(&mut out[start..]);
        self.seq
    }

    /// Sends the requests, `BATCH` per system call, and returns one result per request in
    /// order. A refused request does not stop the ones after it (the kernel goes on).
    pub fn batch(
        &mut self,
        requests: Vec<(String, IpvsMessage)>,
    ) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
        let mut results = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let chunk: Vec<_> = requests.by_ref().take(BATCH).collect();
            let mut out = Vec::with_capacity(chunk.len() * 128);
            let first = self.seq.wrapping_add(1);
            let mut names = Vec::with_capacity(chunk.len());
            for (name, msg) in chunk {
                self.encode(msg, NLM_F_REQUEST | NLM_F_ACK, &mut out);
                names.push(name);
            }
            self.socket.send(&out, 0)?;
            let mut got: Vec<Option<Result<(), IpvsError>>> = names.iter().map(|_| None).collect();
            let mut pending = names.len();
            while pending > 0 {
                let n = self.recv()?;
                let mut off = 0;
                while off < n {
                    let reply =
                        NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&self.buf[off..n])
                            .map_err(|e| IpvsError::Decode(e.to_string()))?;
                    off += aligned(reply.header.length as usize);
                    let NetlinkPayload::Error(e) = reply.payload else {
                        continue;
                    };
                    let idx = reply.header.sequence_number.wrapping_sub(first) as usize;
                    let Some(slot) = got.get_mut(idx) else {
                        continue;
                    };
                    if slot.is_none() {
                        pending -= 1;
                    }
                    *slot = Some(match e.code {
                        None => Ok(()),
                        Some(_) => Err(IpvsError::Kernel {
                            op: names[idx].clone(),
                            error: e.to_io(),
                        }),
                    });
                }
            }
            results.extend(got.into_iter().map(|r| r.unwrap_or(Ok(()))));
        }
        Ok(results)
    }

    /// One request, acknowledged.
    pub fn call(&mut self, op: &str, msg: IpvsMessage) -> Result<(), IpvsError> {
        self.batch(vec![(op.to_string(), msg)])?
            .pop()
            .unwrap_or(Ok(()))
    }

    /// A dump: every reply message until done.
    pub fn dump(&mut self, op: &str, msg: IpvsMessage) -> Result<Vec<IpvsMessage>, IpvsError> {
        self.exchange(op, msg, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// A single get (commands without a dump handler, e.g. `GET_CONFIG`): the reply and
    /// the acknowledgement.
    pub fn get(&mut self, op: &str, msg: IpvsMessage) -> Result<Vec<IpvsMessage>, IpvsError> {
        self.exchange(op, msg, NLM_F_REQUEST | NLM_F_ACK)
    }

    fn exchange(
        &mut self,
        op: &str,
        msg: IpvsMessage,
        flags: u16,
    ) -> Result<Vec<IpvsMessage>, IpvsError> {
        let mut out = Vec::new();
        let seq = self.encode(msg, flags, &mut out);
        self.socket.send(&out, 0)?;
        let mut replies = Vec::new();
        loop {
            let n = self.recv()?;
            let mut off = 0;
            while off < n {
                let reply =
                    NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&self.buf[off..n])
                        .map_err(|e| IpvsError::Decode(e.to_string()))?;
                off += aligned(reply.header.length as usize);
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m.payload),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(IpvsError::Kernel {
                            op: op.to_string(),
                            error: e.to_io(),
                        })
                    }
                    NetlinkPayload::Error(_) => return Ok(replies),
                    _ => {}
                }
            }
        }
    }

    pub fn services(&mut self) -> Result<Vec<Service>, IpvsError> {
        self.dump("list services", Request::get_services())?
            .iter()
            .map(|m| m.service().map_err(|e| IpvsError::Decode(e.to_string())))
            .collect()
    }

    pub fn dests(&mut self, svc: ServiceId) -> Result<Vec<Dest>, IpvsError> {
        self.dump(&format!("list {svc}"), Request::get_dests(svc))?
            .iter()
            .map(|m| {
                m.dest(svc.is_ipv6())
                    .map_err(|e| IpvsError::Decode(e.to_string()))
            })
            .collect()
    }

    pub fn new_service(&mut self, s: &Service) -> Result<(), IpvsError> {
        self.call(&format!("add {}", s.id), Request::new_service(s))
    }
    pub fn set_service(&mut self, s: &Service) -> Result<(), IpvsError> {
        self.call(&format!("edit {}", s.id), Request::set_service(s))
    }
    pub fn del_service(&mut self, id: ServiceId) -> Result<(), IpvsError> {
        self.call(&format!("delete {id}"), Request::del_service(id))
    }
    pub fn new_dest(&mut self, svc: ServiceId, d: &Dest) -> Result<(), IpvsError> {
        self.call(
            &format!("add {svc} -> {:?}", d.id),
            Request::new_dest(svc, d),
        )
    }
    pub fn set_dest(&mut self, svc: ServiceId, d: &Dest) -> Result<(), IpvsError> {
        self.call(
            &format!("edit {svc} -> {:?}", d.id),
            Request::set_dest(svc, d),
        )
    }
    pub fn del_dest(&mut self, svc: ServiceId, d: DestId) -> Result<(), IpvsError> {
        self.call(&format!("delete {svc} -> {d:?}"), Request::del_dest(svc, d))
    }
    pub fn timeouts(&mut self) -> Result<Timeouts, IpvsError> {
        let replies = self.get("get timeouts", Request::get_config())?;
        let first = replies
            .first()
            .ok_or_else(|| IpvsError::Decode("no reply to get timeouts".into()))?;
        first
            .timeouts()
            .map_err(|e| IpvsError::Decode(e.to_string()))
    }
    pub fn set_timeouts(&mut self, t: Timeouts) -> Result<(), IpvsError> {
        self.call("set timeouts", Request::set_timeouts(t))
    }
    pub fn start_daemon(&mut self, d: &SyncDaemon) -> Result<(), IpvsError> {
        self.call("start sync daemon", Request::new_daemon(d))
    }
    pub fn stop_daemon(&mut self, backup: bool) -> Result<(), IpvsError> {
        self.call("stop sync daemon", Request::del_daemon(backup))
    }
    pub fn daemons(&mut self) -> Result<Vec<SyncDaemon>, IpvsError> {
        self.dump("list sync daemons", Request::get_daemons())?
            .iter()
            .map(|m| m.daemon().map_err(|e| IpvsError::Decode(e.to_string())))
            .collect()
    }
    /// Deletes every virtual service (`ipvsadm -C`): for tests and benchmarks only, the
    /// gateway never flushes a table it shares.
    pub fn flush(&mut self) -> Result<(), IpvsError> {
        self.call("flush", Request::flush())
    }
}

fn aligned(len: usize) -> usize {
    (len + 3) & !3
}
