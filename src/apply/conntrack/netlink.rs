//! The ctnetlink socket: one dump per address family per flush (the filter runs here, in
//! Rust), then the matching entries deleted in batches. Replaces one `conntrack -D` process
//! per (VIP, real server) pair, each of which dumped the whole table again and reported its
//! count in English on stderr.

use super::message::{self, family_of, Flow};
use super::{Conntrack, ConntrackError, ConntrackFlush, Selection};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::collections::BTreeSet;
use std::fs::File;
use std::io;

/// Deletions per `sendmsg`: keeps one batch's acknowledgements well inside the receive buffer.
const BATCH: usize = 256;

/// Where `ip netns add` keeps its namespaces (iproute2's NETNS_RUN_DIR).
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Conntrack over netlink. [`Default`] opens the socket on the first flush (most applies
/// flush nothing, and the IPVS backend never does); [`ConntrackNetlink::open`] and
/// [`ConntrackNetlink::in_netns`] open it at once.
#[derive(Default)]
pub struct ConntrackNetlink {
    socket: Option<Socket>,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for ConntrackNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConntrackNetlink")
            .field("open", &self.socket.is_some())
            .finish()
    }
}

fn new_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Errors carry no copy of our request: smaller acks, and we match by sequence.
    let _ = socket.set_cap_ack(true);
    let _ = socket.set_ext_ack(true);
    let _ = socket.set_rx_buf_sz(4 << 20);
    Ok(socket)
}

impl ConntrackNetlink {
    /// A socket in this process's network namespace.
    pub fn open() -> Result<ConntrackNetlink, ConntrackError> {
        Ok(ConntrackNetlink::with_socket(new_socket()?))
    }

    /// A socket in the network namespace `ns` (as `ip netns add` names it). A netlink socket
    /// stays in the namespace it was created in, so it is created on a short-lived thread
    /// that entered `ns` (setns changes only the calling thread).
    pub fn in_netns(ns: &str) -> Result<ConntrackNetlink, ConntrackError> {
        let netns_error = |ns: &str, error| ConntrackError::Netns {
            ns: ns.to_string(),
            error,
        };
        let file = File::open(format!("{NETNS_RUN_DIR}/{ns}")).map_err(|e| netns_error(ns, e))?;
        let name = ns.to_string();
        let socket = std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| netns_error(&name, e.into()))?;
            Ok::<_, ConntrackError>(new_socket()?)
        })
        .join()
        .map_err(|_| netns_error(ns, io::Error::other("the setns thread panicked")))??;
        Ok(ConntrackNetlink::with_socket(socket))
    }

    fn with_socket(socket: Socket) -> ConntrackNetlink {
        ConntrackNetlink {
            socket: Some(socket),
            ..ConntrackNetlink::default()
        }
    }

    /// Opens the socket if [`Default`] left it for the first use.
    fn ensure_open(&mut self) -> Result<(), ConntrackError> {
        if self.socket.is_none() {
            self.socket = Some(new_socket()?);
        }
        if self.buf.is_empty() {
            // Dump replies come in datagrams of up to 32 KiB.
            self.buf = vec![0; 1 << 16];
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ConntrackError> {
        self.ensure_open()?;
        if let Some(socket) = &self.socket {
            socket.send(bytes, 0)?;
        }
        Ok(())
    }

    /// Receives one datagram into `self.buf`; returns its length.
    fn recv(&mut self) -> Result<usize, ConntrackError> {
        self.ensure_open()?;
        let (Some(socket), buf) = (&self.socket, &mut self.buf) else {
            return Err(io::Error::other("conntrack socket not open").into());
        };
        loop {
            match socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Every entry of one address family for which `keep` is true. Entries are decoded as
    /// they arrive and the rest dropped, so a large table is never held in memory.
    pub fn flows(
        &mut self,
        family: NetfilterProtoFamily,
        mut keep: impl FnMut(&Flow) -> bool,
    ) -> Result<Vec<Flow>, ConntrackError> {
        let seq = self.next_seq();
        self.send(&encode(&message::dump_request(family, seq)))?;
        let mut kept = Vec::new();
        loop {
            let n = self.recv()?;
            let mut off = 0;
            while off < n {
                let reply = message::parse_reply(&self.buf[off..n])
                    .map_err(|e| ConntrackError::Decode(e.to_string()))?;
                off += aligned(reply.header.length as usize);
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        if let Some(flow) = message::flow_of(&m)
                            .map_err(|e| ConntrackError::Decode(e.to_string()))?
                        {
                            if keep(&flow) {
                                kept.push(flow);
                            }
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(kept),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(ConntrackError::Kernel {
                            op: "conntrack dump".into(),
                            error: e.to_io(),
                        })
                    }
                    NetlinkPayload::Error(_) => return Ok(kept),
                    _ => {}
                }
            }
        }
    }

    /// Deletes the flows, `BATCH` per system call; returns how many the kernel deleted.
    /// An entry already gone (ENOENT: it expired, or its id changed) is not an error; the
    /// first other refusal is returned after every deletion was attempted.
    pub fn delete(&mut self, flows: &[Flow]) -> Result<usize, ConntrackError> {
        let mut deleted = 0;
        let mut refused = None;
        for chunk in flows.chunks(BATCH) {
            let first = self.seq.wrapping_add(1);
            let mut out = Vec::with_capacity(chunk.len() * 96);
            for flow in chunk {
                let seq = self.next_seq();
                out.extend(encode(&message::delete_request(flow, seq)));
            }
            self.send(&out)?;
            let mut acked = vec![false; chunk.len()];
            let mut pending = chunk.len();
            while pending > 0 {
                let n = self.recv()?;
                let mut off = 0;
                while off < n {
                    let reply = message::parse_reply(&self.buf[off..n])
                        .map_err(|e| ConntrackError::Decode(e.to_string()))?;
                    off += aligned(reply.header.length as usize);
                    let NetlinkPayload::Error(e) = reply.payload else {
                        continue;
                    };
                    let idx = reply.header.sequence_number.wrapping_sub(first) as usize;
                    match acked.get_mut(idx) {
                        Some(seen) if !*seen => *seen = true,
                        _ => continue,
                    }
                    pending -= 1;
                    match e.code {
                        None => deleted += 1,
                        Some(_) if e.to_io().raw_os_error() == Some(libc::ENOENT) => {}
                        Some(_) => {
                            refused.get_or_insert(ConntrackError::Kernel {
                                op: format!("conntrack delete of {}", describe(&chunk[idx])),
                                error: e.to_io(),
                            });
                        }
                    }
                }
            }
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(deleted),
        }
    }
}

impl Conntrack for ConntrackNetlink {
    fn flush(&mut self, entries: &[ConntrackFlush]) -> Result<usize, ConntrackError> {
        let selection = Selection::new(entries);
        if selection.is_empty() {
            return Ok(0);
        }
        // One dump per address family in play, not one per entry.
        let families: BTreeSet<u8> = entries.iter().map(|e| family_of(e.vip).into()).collect();
        let mut doomed = Vec::new();
        for family in families {
            doomed.extend(self.flows(family.into(), |f| selection.matches(f))?);
        }
        self.delete(&doomed)
    }
}

fn describe(flow: &Flow) -> String {
    format!(
        "proto {} {} -> {} (reply from {})",
        flow.proto, flow.orig.src, flow.orig.dst, flow.reply.src
    )
}

fn encode(msg: &NetlinkMessage<NetfilterMessage>) -> Vec<u8> {
    let mut out = vec![0; msg.buffer_len()];
    msg.serialize(&mut out);
    out
}

fn aligned(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_of_nothing_opens_no_socket() {
        let mut ct = ConntrackNetlink::default();
        assert_eq!(ct.flush(&[]).expect("nothing to flush"), 0);
        assert!(
            ct.socket.is_none(),
            "the daemon's idle syncs cost no socket"
        );
    }
}
